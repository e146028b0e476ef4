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

"""Cache passes back to back, as fast as they go, until SIGTERM.

The daemon waits at least a second between passes ([image_cache]
manager_interval is whole seconds, as in nova). The race test wants no
gap at all, so this runs CacheManager.run_pass, the daemon's own pass, in
a loop in a process of its own, and writes what the passes did as JSON:

``python -m tests.stress.passloop --config-file F --report R
[--inspect-method M]...``
"""

import argparse
import collections
import json
import signal
import sys
import threading
import time

from oslo_log import log as logging

from cachekeeper.cache import facts
from cachekeeper.conf import paths
from cachekeeper import config
from cachekeeper import coordination
from cachekeeper import manager
from cachekeeper.scrub import queue

LOG = logging.getLogger(__name__)


def run(conf, stop_event, inspect_methods=()):
    scrub_queue = queue.from_conf(conf)
    scrub_queue.check_quarantine_dir()
    scrub_queue.reconcile(time.time())
    # As the daemon's service does: the pass removes only as the leader.
    coordinator = coordination.Coordinator.from_conf(
        conf, paths.cache_dir(conf),
        wants_leadership=lambda: conf.image_cache.remove_unused_base_images)
    coordinator.start()
    cache_manager = manager.CacheManager(conf, scrub_queue, coordinator)
    verdicts = collections.Counter()
    kept_reasons = collections.Counter()
    errors = collections.Counter()
    passes = 0
    longest = 0.0
    try:
        while not stop_event.is_set():
            if inspect_methods:
                # As an operator would with a SIGHUP: the option is mutable.
                method = inspect_methods[passes % len(inspect_methods)]
                conf.set_override('inspect_method', method,
                                  group='image_cache')
            result = cache_manager.run_pass(stop_event=stop_event)
            passes += 1
            longest = max(longest, result.duration_s)
            for entry in result.files:
                verdicts[entry.verdict] += 1
                if entry.verdict == facts.KEPT:
                    kept_reasons[entry.reason.split(':')[0]] += 1
            for error in result.errors:
                errors[error['message'][:160]] += 1
        counts = scrub_queue.counts()
    finally:
        coordinator.stop()
        scrub_queue.close()
    return {
        'passes': passes,
        'removed': verdicts[facts.QUEUED],
        'verdicts': dict(verdicts),
        'kept_reasons': dict(kept_reasons),
        'errors': dict(errors),
        'longest_pass_s': longest,
        'scrub_queue': counts,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config-file', required=True)
    parser.add_argument('--report', required=True)
    parser.add_argument('--inspect-method', action='append', default=[],
                        dest='inspect_methods',
                        help='[image_cache] inspect_method of the passes; '
                             'given more than once, the passes take turns.')
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    conf = config.CONF
    config.parse_args([sys.argv[0], '--config-file', args.config_file])
    logging.setup(conf, 'cachekeeper')
    stop_event = threading.Event()
    signal.signal(signal.SIGTERM, lambda signo, frame: stop_event.set())
    try:
        report = run(conf, stop_event, args.inspect_methods)
    except Exception:
        LOG.exception('The pass loop failed')
        return 1
    with open(args.report, 'w') as f:
        json.dump(report, f)
    return 0


if __name__ == '__main__':
    sys.exit(main())
