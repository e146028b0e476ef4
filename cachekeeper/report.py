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

"""The report of one pass: the JSON document, the summary line, the file."""

import collections
import dataclasses
import json
import os
import tempfile

from oslo_utils import units

from cachekeeper.cache import facts

REPORT_FILE = 'last_pass.json'


@dataclasses.dataclass(frozen=True)
class FileReport:
    path: str
    kind: str
    verdict: str
    age_s: float
    size: int
    reason: str

    @classmethod
    def from_decision(cls, decision, verdict=None, reason=None):
        return cls(path=decision.base_file.path,
                   kind=decision.base_file.kind,
                   verdict=verdict or decision.verdict,
                   age_s=round(decision.age, 1),
                   size=decision.base_file.size,
                   reason=reason or decision.reason)


@dataclasses.dataclass
class PassReport:
    files: list = dataclasses.field(default_factory=list)
    bytes_queued: int = 0
    bytes_reclaimed: int = 0
    parked: int = 0
    errors: list = dataclasses.field(default_factory=list)
    duration_s: float = 0.0
    dry_run: bool = False
    interrupted: bool = False

    def add_error(self, path, message):
        self.errors.append({'path': path, 'message': message})

    @property
    def summary(self):
        counts = collections.Counter(f.verdict for f in self.files)
        return {verdict: counts[verdict] for verdict in facts.VERDICTS}

    @property
    def exit_code(self):
        """0: pass done; 1: pass done with per-file errors."""
        return 1 if self.errors else 0

    def to_dict(self):
        return {
            'files': [dataclasses.asdict(f) for f in self.files],
            'summary': self.summary,
            'bytes_queued': self.bytes_queued,
            'bytes_reclaimed': self.bytes_reclaimed,
            'errors': list(self.errors),
            'duration_s': round(self.duration_s, 3),
        }

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def summary_line(self):
        """The one INFO line a pass logs."""
        counts = ' '.join('%s=%d' % item for item in self.summary.items())
        return ('%sPass %s in %.2fs: %d files (%s); %s queued for removal, '
                '%s reclaimed on disk; %d parked; %d errors' % (
                    'Dry-run ' if self.dry_run else '',
                    'interrupted' if self.interrupted else 'done',
                    self.duration_s, len(self.files), counts,
                    _size(self.bytes_queued),
                    _size(self.bytes_reclaimed), self.parked,
                    len(self.errors)))


def _size(nbytes):
    return '%.1f MiB' % (nbytes / units.Mi)


def write(report, state_path):
    """Write the JSON report into ``state_path`` atomically."""
    fd, tmp = tempfile.mkstemp(dir=state_path, prefix='.' + REPORT_FILE)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(report.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(state_path, REPORT_FILE))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
