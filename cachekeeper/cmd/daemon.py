# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""cachekeeper: the image cache daemon (runs in the foreground)."""

import sys

from oslo_config import cfg
from oslo_log import log as logging

from cachekeeper import concurrency
from cachekeeper.conf import paths
from cachekeeper import config
from cachekeeper import printable
from cachekeeper.scrub import quarantine
from cachekeeper.state import db
from cachekeeper import systemd
from cachekeeper import version

CONF = config.CONF
LOG = logging.getLogger(__name__)


def main():
    try:
        config.parse_args(sys.argv)
    except config.ConfigError as e:
        for problem in e.problems:
            print('cachekeeper: %s' % problem, file=sys.stderr)
        return config.EXIT_CONFIG
    # A reload with bad values keeps the running ones.
    CONF.register_mutate_hook(config.ReloadGuard(CONF))
    notifier = systemd.Notifier.from_environment()
    concurrency.init_backend(CONF.service_backend)
    # A Glance outage is told once by cachekeeper.glance.catalog, not at every
    # retry by keystoneauth.
    logging.set_defaults(default_log_levels=(
        logging.get_default_log_levels() + ['keystoneauth.session=ERROR']))
    logging.setup(CONF, 'cachekeeper')
    printable.escape_log_messages()
    # Imported only now: these modules bind to the backend chosen above.
    from oslo_service import service as oslo_service

    from cachekeeper import service

    try:
        # Checked before the launcher starts, so that a state database or
        # quarantine directory that cannot be used is a start-up error.
        service.open_scrub_queue().close()
    except (db.StateError, quarantine.QuarantineError) as e:
        print('cachekeeper: %s' % e, file=sys.stderr)
        return config.EXIT_CONFIG
    LOG.info('cachekeeper %s starting on the %s backend; image cache %s',
             version.version_string(), CONF.service_backend,
             paths.cache_dir(CONF))
    cachekeeper_service = service.CacheKeeperService(notifier)
    service.setup_reports(cachekeeper_service)
    launcher = oslo_service.launch(CONF, cachekeeper_service, workers=1,
                                   restart_method='mutate')
    while True:
        try:
            launcher.wait()
        except (cfg.Error, OSError, ValueError) as e:
            # At SIGHUP oslo.config reads the files again before any hook
            # sees them: a file gone, unreadable, not UTF-8 or no longer
            # ini ends the wait with the running configuration untouched.
            # Values that do not validate are config.ReloadGuard's
            # business.
            LOG.error('Configuration not reloaded, the running values '
                      'stay: %s', e)
            continue
        break
    notifier.stopping()
    return 0
