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

"""Thrash: removed image cache files that come back soon after.

A file that nova downloads (or creates) again shortly after a pass removed
it cost a download for nothing: its minimum age is too short, or the
cache's budget too small. The scrub queue remembers every removal for a
while; a pass that finds a file of the same name back in the cache records
the comeback on the queue entry, so that each one is counted and reported
once.

It is a top-level module, not part of cachekeeper.scrub or
cachekeeper.cache, for the reason status.py is: it reads both. It judges
the rules of the pass (cache.plan and cache.budget, whose options its
advice names) by the queue's history of removals (scrub.entries). In scrub
it would tie the queue to the pass's rules; in cache, the pass's library
to the queue's records. The pass's manager, above both, calls it.
"""

import dataclasses

from cachekeeper.cache import budget
from cachekeeper.cache import facts
from cachekeeper.cache import plan
from cachekeeper import fmt
from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.state import ledger
from cachekeeper.state import totals

# The states of an entry whose file left the cache for good or for now.
_REMOVED_STATES = (scrub_entries.QUEUED, scrub_entries.DRAINING,
                   scrub_entries.PARKED, scrub_entries.DRAINED)

_AGE_OPTIONS = {
    facts.ORIGINAL: 'remove_unused_original_minimum_age_seconds',
    facts.RESIZED: 'remove_unused_resized_minimum_age_seconds',
    facts.LEGACY_SM: 'remove_unused_resized_minimum_age_seconds',
    facts.SWAP: 'remove_unused_swap_minimum_age_seconds',
    facts.EPHEMERAL: 'remove_unused_ephemeral_minimum_age_seconds',
}

# An mtime read as float seconds and one read in nanoseconds agree this far.
_MTIME_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class Comeback:
    """A removed cache file that is back within the thrash window."""

    entry_id: int
    path: str
    kind: str
    reason: str
    removed_at: float
    came_back_at: float

    def advice(self):
        """What would have kept the file, as an option to change."""
        if self.reason.startswith(budget.OVER_BUDGET):
            return ('a bigger budget ([image_cache] max_cache_size_mb, '
                    'disk_high_watermark_percent)')
        if self.reason.startswith(plan.DELETED_IN_GLANCE):
            option = 'remove_deleted_image_minimum_age_seconds'
        else:
            option = _AGE_OPTIONS.get(self.kind)
        if option is None:
            return 'a longer minimum age'
        return 'a longer [image_cache] %s' % option

    def warning(self):
        return ('Image cache file %s came back %s after a pass removed it '
                '(%s; scrub queue entry %d): it was made again for nothing; '
                'consider %s' % (
                    self.path,
                    fmt.duration(self.came_back_at - self.removed_at),
                    self.reason, self.entry_id, self.advice()))


def detect(state_db, base_files, now, window):
    """Record the removed files that are back; return the Comebacks.

    ``base_files`` is what a scan of the cache found; a file that came back
    more than ``window`` seconds after its removal is recorded (on its
    scrub queue entry, and once per file in the ledger, for the eviction
    policy) but not returned. When it came back is its mtime (a download
    writes it), kept between its removal and ``now``. A window of 0 detects
    nothing.
    """
    if window <= 0:
        return []
    present = {b.path: b for b in base_files if b.is_regular}
    comebacks = []
    with state_db.transaction() as connection:
        counted = set()
        returned = set()
        for entry in scrub_entries.not_returned(connection, _REMOVED_STATES):
            base_file = present.get(entry.path)
            if base_file is None or _recorded_file(base_file, entry):
                continue
            came_back_at = min(max(base_file.mtime, entry.queued_at), now)
            scrub_entries.set_returned(connection, entry.id, came_back_at)
            returned.add(entry.name)
            # An earlier removal of the same name counts once, with the
            # latest.
            if (entry.path in counted or
                    came_back_at - entry.queued_at > window):
                continue
            counted.add(entry.path)
            comebacks.append(Comeback(
                entry_id=entry.id, path=entry.path, kind=entry.kind,
                reason=entry.reason, removed_at=entry.queued_at,
                came_back_at=came_back_at))
        totals.add(connection, totals.COMEBACKS, len(comebacks))
        ledger.add_comebacks(connection, returned)
    return comebacks


def _recorded_file(base_file, entry):
    """Whether ``base_file`` is the very file the entry recorded.

    It is when another pass quarantined it after this pass's scan.
    """
    return (base_file.ino == entry.ino and
            abs(base_file.mtime - entry.mtime_ns / 1e9) <
            _MTIME_TOLERANCE)
