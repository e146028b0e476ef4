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

"""cachekeeper's own leftovers: temporary files of interrupted writes.

cachekeeper writes some files under a temporary name and renames (or
links) them into place: the pass report, the metrics file, new nova lock
files, and the probe for O_DIRECT in the image cache. Each temporary file
lives for less than a second; one that is older than
``[image_cache] residue_minimum_age_seconds`` belongs to a process that
died, and a pass deletes it. nova's lock files (``nova-*``) never match.
Download residue in the image cache is plan's and execute's business.
"""

import dataclasses
import os
import re
import stat

from oslo_log import log as logging

from cachekeeper.cache import facts
from cachekeeper.cache import locks
from cachekeeper.cache import plan
from cachekeeper import coordination
from cachekeeper import glance
from cachekeeper import report

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Leftovers:
    """What a clean-up found: a FileReport per file, errors, bytes freed."""

    files: list = dataclasses.field(default_factory=list)
    errors: list = dataclasses.field(default_factory=list)
    bytes_removed: int = 0

    def add_error(self, path, message):
        self.errors.append({'path': path, 'message': message})


def _prefix(prefix):
    return lambda name: name.startswith(prefix)


def places(conf):
    """Yield (directory, test of a name) for each kind of temporary file."""
    yield conf.state_path, _prefix('.' + report.REPORT_FILE)
    yield (locks.locks_dir(conf.instances_path),
           _prefix(locks.TEMPORARY_PREFIX))
    backend_dir = coordination.file_backend_dir(
        conf.coordination.backend_url)
    if backend_dir is not None:
        # Its lock files are made as nova's are.
        yield backend_dir, _prefix(locks.TEMPORARY_PREFIX)
    yield (os.path.join(conf.instances_path,
                        conf.image_cache.subdirectory_name),
           _prefix(glance.DIRECT_IO_PROBE_PREFIX))
    if conf.metrics_file:
        # prometheus_client's write_to_textfile: <file>.<pid>.<thread id>
        pattern = re.compile(re.escape(os.path.basename(conf.metrics_file))
                             + r'\.[0-9]+\.[0-9]+')
        yield os.path.dirname(conf.metrics_file), pattern.fullmatch


def remove(conf, now, dry_run=False):
    """Delete cachekeeper's stale temporary files; return the Leftovers."""
    min_age = conf.image_cache.residue_minimum_age_seconds
    leftovers = Leftovers()
    for directory, matches in places(conf):
        try:
            names = sorted(filter(matches, os.listdir(directory)))
        except (FileNotFoundError, NotADirectoryError):
            # Missing, nothing was left there; not a directory, the pass
            # reports it (the image cache) or it is not cachekeeper's.
            continue
        except OSError as e:
            leftovers.add_error(directory, 'cannot look for temporary files '
                                'in %s: %s' % (directory, e.strerror))
            continue
        for name in names:
            if name.startswith(locks.LOCK_FILE_PREFIX):
                continue
            _remove_one(os.path.join(directory, name), now, min_age,
                        dry_run, leftovers)
    return leftovers


def _remove_one(path, now, min_age, dry_run, leftovers):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    age = now - st.st_mtime
    if not stat.S_ISREG(st.st_mode) or age < min_age:
        return
    reason = ('temporary file of cachekeeper left by an interrupted write, '
              'unmodified for %s (minimum %s)' % (
                  plan.format_duration(age), plan.format_duration(min_age)))
    if dry_run:
        reason = 'dry run: would remove: ' + reason
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as e:
            leftovers.add_error(path, 'cannot remove temporary file %s: %s'
                                % (path, e.strerror))
            return
        leftovers.bytes_removed += st.st_blocks * 512
        LOG.info('Removed %s: %s', path, reason)
    leftovers.files.append(report.FileReport(
        path=path, kind=facts.RESIDUE, verdict=facts.REMOVED,
        age_s=round(age, 1), size=st.st_size, reason=reason))
