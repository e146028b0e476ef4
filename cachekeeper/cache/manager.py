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

"""One pass over the image cache, from scan to report."""

import os
import time

from oslo_log import log as logging

from cachekeeper.cache import facts
from cachekeeper.cache import scan
from cachekeeper import report

LOG = logging.getLogger(__name__)


def cache_dir(conf):
    return os.path.join(conf.instances_path,
                        conf.image_cache.subdirectory_name)


class CacheManager:
    """Runs passes; keeps what must outlive one pass (warn-once state)."""

    def __init__(self, conf):
        self.conf = conf

    def run_pass(self, dry_run=False, stop_event=None):
        started = time.monotonic()
        now = time.time()
        result = report.PassReport(dry_run=dry_run)
        for base_file in scan.scan(cache_dir(self.conf)):
            if stop_event is not None and stop_event.is_set():
                result.interrupted = True
                break
            verdict = (facts.IGNORED if base_file.kind == facts.FOREIGN
                       else facts.KEPT)
            decision = facts.Decision(base_file, verdict, 'scanned only',
                                      age=now - base_file.mtime)
            result.files.append(report.FileReport.from_decision(decision))
        result.duration_s = time.monotonic() - started
        return result
