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

``python -m tests.stress.passloop --config-file F --report R``
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
from cachekeeper.cache import manager
from cachekeeper import config
from cachekeeper.scrub import queue

LOG = logging.getLogger(__name__)


def run(conf, stop_event):
    scrub_queue = queue.from_conf(conf)
    scrub_queue.check_quarantine_dir()
    scrub_queue.reconcile(time.time())
    cache_manager = manager.CacheManager(conf, scrub_queue)
    verdicts = collections.Counter()
    kept_reasons = collections.Counter()
    errors = collections.Counter()
    passes = 0
    longest = 0.0
    try:
        while not stop_event.is_set():
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
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    conf = config.CONF
    config.parse_args([sys.argv[0], '--config-file', args.config_file])
    logging.setup(conf, 'cachekeeper')
    stop_event = threading.Event()
    signal.signal(signal.SIGTERM, lambda signo, frame: stop_event.set())
    try:
        report = run(conf, stop_event)
    except Exception:
        LOG.exception('The pass loop failed')
        return 1
    with open(args.report, 'w') as f:
        json.dump(report, f)
    return 0


if __name__ == '__main__':
    sys.exit(main())
