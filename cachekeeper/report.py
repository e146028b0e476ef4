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

from cachekeeper.cache import facts
from cachekeeper import fmt
from cachekeeper import smallfile

# The version of every JSON document cachekeeper prints or writes (the
# pass report, cache status, cache list, cache pins, scrub list), in its
# key schema_version: raised when a key is renamed, removed or changes its
# meaning; new keys may come without it.
SCHEMA_VERSION = 1

REPORT_FILE = 'last_pass.json'
# The report is written under a temporary name starting with this (see
# smallfile.replace_json); a pass removes one a dead process left.
TEMPORARY_PREFIX = '.' + REPORT_FILE

# What started a pass: the daemon's manager_interval, its pressure check
# (the cache over its budget between passes), or cachekeeper-manage.
TRIGGER_INTERVAL = 'interval'
TRIGGER_PRESSURE = 'pressure'
TRIGGER_COMMAND = 'command'


@dataclasses.dataclass
class PassReport:
    """What one pass did.

    Besides the keys of the command line contract, the JSON has: when the
    pass started and finished (seconds since the epoch), its ``result``,
    the files and bytes of the cache after it (``cache``: files,
    apparent_bytes, allocated_bytes), the disk-space ``budget`` it applied
    and how many removed files came back (``comebacks``).

    ``budget`` has the limits (max_cache_bytes, high_watermark_percent,
    low_watermark_percent), whether the cache was over them (over_size,
    over_watermark), the cache's allocated bytes and the filesystem's
    usage before and after the pass (cache_bytes_before, ..._after,
    filesystem_percent_before, ..._after, None when unknown), what was
    done (evicted_files, evicted_bytes, expedited_entries: queued files
    deleted early) and whether the cache is ``within`` its budget after;
    for ``max_cache_files`` too: max_cache_files, over_files,
    cache_files_before and ..._after. ``trigger`` is what started the
    pass (TRIGGER_*).
    """

    files: list = dataclasses.field(default_factory=list)
    bytes_queued: int = 0
    bytes_reclaimed: int = 0
    parked: int = 0
    errors: list = dataclasses.field(default_factory=list)
    duration_s: float = 0.0
    dry_run: bool = False
    interrupted: bool = False
    started_at: float = None
    finished_at: float = None
    cache: dict = None
    budget: dict = None
    comebacks: int = 0
    trigger: str = TRIGGER_COMMAND

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

    @property
    def result(self):
        if self.interrupted:
            return RESULT_INTERRUPTED
        return RESULT_ERRORS if self.errors else RESULT_DONE

    def to_dict(self):
        return {
            'schema_version': SCHEMA_VERSION,
            # facts.FileReport's fields are plain values: no deep copy
            # needed.
            'files': [f.to_dict() for f in self.files],
            'summary': self.summary,
            'bytes_queued': self.bytes_queued,
            'bytes_reclaimed': self.bytes_reclaimed,
            'errors': list(self.errors),
            'duration_s': round(self.duration_s, 3),
            'started_at': self.started_at,
            'finished_at': self.finished_at,
            'result': self.result,
            'parked': self.parked,
            'cache': self.cache,
            'budget': self.budget,
            'comebacks': self.comebacks,
            'trigger': self.trigger,
        }

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def summary_line(self):
        """The one INFO line a pass logs (and ``cache pass`` ends with)."""
        counts = ' '.join('%s=%d' % item for item in self.summary.items())
        return ('%sPass %s in %.2fs%s: %d files (%s); %s queued for removal, '
                '%s reclaimed on disk; %d parked; %d errors' % (
                    'Dry-run ' if self.dry_run else '',
                    'interrupted' if self.interrupted else 'done',
                    self.duration_s,
                    # Only the pressure check's passes come at their own
                    # times: the others' times say what started them.
                    (', trigger=%s' % self.trigger
                     if self.trigger == TRIGGER_PRESSURE else ''),
                    len(self.files), counts,
                    fmt.mib(self.bytes_queued),
                    fmt.mib(self.bytes_reclaimed), self.parked,
                    len(self.errors))) + self._budget_text()

    def _budget_text(self):
        budget = self.budget
        if not budget or not (budget['over_size'] or
                              budget['over_watermark'] or
                              budget['over_files']):
            return ''
        over = []
        if budget['over_size']:
            over.append('cache %s > %s max' % (
                fmt.mib(budget['cache_bytes_before']),
                fmt.mib(budget['max_cache_bytes'])))
        if budget['over_files']:
            over.append('cache %d files > %d max' % (
                budget['cache_files_before'], budget['max_cache_files']))
        if budget['over_watermark']:
            over.append('filesystem %.1f%% > %d%% high watermark' % (
                budget['filesystem_percent_before'],
                budget['high_watermark_percent']))
        text = '; over budget (%s): %s %d files (%s)' % (
            ', '.join(over), 'would evict' if self.dry_run else 'evicted',
            budget['evicted_files'], fmt.mib(budget['evicted_bytes']))
        if budget['expedited_entries']:
            text += ', %d queued files deleted early' % (
                budget['expedited_entries'])
        if self.dry_run:
            return text
        now = ['cache %s' % fmt.mib(budget['cache_bytes_after'])]
        if budget['over_files']:
            now.append('%d files' % budget['cache_files_after'])
        if budget['filesystem_percent_after'] is not None:
            now.append('filesystem %.1f%%'
                       % budget['filesystem_percent_after'])
        return '%s; now %s, %s' % (
            text, ', '.join(now),
            'within budget' if budget['within'] else 'still over budget')


RESULT_DONE = 'done'
RESULT_ERRORS = 'done with errors'
RESULT_INTERRUPTED = 'interrupted'


def read(state_path):
    """Return the last report written into ``state_path`` (a dict) or None.

    Raises ValueError when the file is not a report.
    """
    try:
        with open(os.path.join(state_path, REPORT_FILE)) as f:
            document = json.load(f)
    except FileNotFoundError:
        return None
    if not isinstance(document, dict) or 'files' not in document:
        raise ValueError('%s is not a pass report'
                         % os.path.join(state_path, REPORT_FILE))
    return document


def write(report, state_path):
    """Write the JSON report into ``state_path`` atomically."""
    smallfile.replace_json(os.path.join(state_path, REPORT_FILE),
                           report.to_dict(), TEMPORARY_PREFIX)
