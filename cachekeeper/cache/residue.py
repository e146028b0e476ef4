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
Where the writers above this library (the pass report, a file
coordination backend) keep their temporary files, the caller says.
"""

import dataclasses
import os
import re
import stat

from oslo_log import log as logging

from cachekeeper.cache import facts
from cachekeeper.cache import locks
from cachekeeper.cache import names
from cachekeeper.conf import paths
from cachekeeper import fmt

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


def places(conf, report_prefix, backend_dir=None):
    """Yield (directory, test of a name) for each kind of temporary file.

    ``report_prefix`` starts the temporary names of the pass report in
    ``state_path``; ``backend_dir`` is the directory of a file
    coordination backend, None without one.
    """
    yield conf.state_path, _prefix(report_prefix)
    yield (locks.locks_dir(conf.instances_path),
           _prefix(locks.TEMPORARY_PREFIX))
    if backend_dir is not None:
        # Its lock files are made as nova's are.
        yield backend_dir, _prefix(locks.TEMPORARY_PREFIX)
    yield paths.cache_dir(conf), _prefix(names.DIRECT_IO_PROBE_PREFIX)
    if conf.metrics_file:
        # prometheus_client's write_to_textfile: <file>.<pid>.<thread id>
        pattern = re.compile(re.escape(os.path.basename(conf.metrics_file)) +
                             r'\.[0-9]+\.[0-9]+')
        yield os.path.dirname(conf.metrics_file), pattern.fullmatch


def remove(conf, now, report_prefix, backend_dir=None, dry_run=False):
    """Delete cachekeeper's stale temporary files; return the Leftovers.

    ``report_prefix`` and ``backend_dir`` are as places() takes them.
    """
    min_age = conf.image_cache.residue_minimum_age_seconds
    leftovers = Leftovers()
    for directory, matches in places(conf, report_prefix, backend_dir):
        try:
            found = sorted(filter(matches, os.listdir(directory)))
        except (FileNotFoundError, NotADirectoryError):
            # Missing, nothing was left there; not a directory, the pass
            # reports it (the image cache) or it is not cachekeeper's.
            continue
        except OSError as e:
            leftovers.add_error(directory, 'cannot look for temporary files '
                                'in %s: %s' % (directory, e.strerror))
            continue
        for name in found:
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
                  fmt.duration(age), fmt.duration(min_age)))
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
    leftovers.files.append(facts.FileReport(
        path=path, kind=facts.RESIDUE, verdict=facts.REMOVED,
        age_s=round(age, 1), size=st.st_size, reason=reason))
