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

"""The image cache's disk-space budget: what to free, and in which order.

Aging by time alone lets a host run out of disk with gigabytes of unused
files that are not old enough yet. The budget has two triggers, as
kubelet's image garbage collection has: the space the cache's files
allocate (``[image_cache] max_cache_size_mb``), and the usage of the
filesystem that holds the cache (over ``disk_high_watermark_percent``, free
down to ``disk_low_watermark_percent``). A cap on the number of files
(``max_cache_files``, as cinder's ``image_volume_cache_max_count``) is the
third.

When a trigger fires, space comes first from what goes anyway: download
residue and the files plan found removable (they leave the cache in this
pass), then, for the filesystem, the files waiting in the scrub queue,
oldest first. Only then are unused files evicted, in the order of
``[image_cache] eviction_policy`` (cachekeeper.cache.eviction: least
recently used first, or lowest expected cost first), ignoring their kind's
minimum age but never one used within ``eviction_minimum_age_seconds``. A
file's last use is the later of its mtime and the last pass that saw it in
use. Files in use, pinned files, files the inventory has doubts about and
files kept for any other reason are never evicted. Whatever must free
filesystem space drains at once: quarantined, a file still holds its
blocks.

Everything here is a pure function of its arguments, like plan.
"""

import dataclasses

from oslo_utils import units

from cachekeeper.cache import eviction
from cachekeeper.cache import facts
from cachekeeper import fmt

OVER_BUDGET = 'over budget'

# Kinds a pass may evict: the cache files nova makes.
EVICTABLE_KINDS = (facts.ORIGINAL, facts.RESIZED, facts.LEGACY_SM,
                   facts.SWAP, facts.EPHEMERAL)

# Why bytes stay in the cache although it is over budget, in report order.
HELD_IN_USE = 'in use'
HELD_PINNED = 'pinned'
HELD_RECENT = 'used within eviction_minimum_age_seconds'
HELD_DOUBT = 'held back by unreadable disks'
HELD_KEPT = 'kept for other reasons'


@dataclasses.dataclass(frozen=True)
class Limits:
    """The budget, from the [image_cache] options.

    ``max_cache_bytes`` and ``max_cache_files`` 0 are no bound;
    ``high_percent`` 100 never fires.
    """

    max_cache_bytes: int = 0
    high_percent: int = 100
    low_percent: int = 0
    eviction_min_age: int = 0
    eviction_policy: str = eviction.LRU
    max_cache_files: int = 0

    @classmethod
    def from_conf(cls, conf):
        opts = conf.image_cache
        return cls(max_cache_bytes=opts.max_cache_size_mb * units.Mi,
                   high_percent=opts.disk_high_watermark_percent,
                   low_percent=opts.disk_low_watermark_percent,
                   eviction_min_age=opts.eviction_minimum_age_seconds,
                   eviction_policy=opts.eviction_policy,
                   max_cache_files=opts.max_cache_files)


@dataclasses.dataclass(frozen=True)
class Filesystem:
    """Space on the filesystem of the cache, counted as df counts it.

    ``size`` is used plus available space: the blocks reserved for root
    are left out, so a full filesystem is 100% used.
    """

    size: int
    used: int

    @classmethod
    def from_statvfs(cls, st):
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        return cls(size=used + st.f_bavail * st.f_frsize, used=used)

    @property
    def available(self):
        return self.size - self.used

    @property
    def percent(self):
        return 100.0 * self.used / self.size if self.size else 0.0


@dataclasses.dataclass(frozen=True)
class Waiting:
    """A file in the scrub queue, waiting for its delay in quarantine."""

    entry_id: int
    allocated: int
    queued_at: float


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the budget asked of a pass.

    ``size_excess`` and ``filesystem_excess`` are the bytes to free for
    each trigger (0: not over); ``ranking`` every file that could be
    evicted, as eviction.Ranked in the policy's order, the first to go
    first (also when nothing is over, for cache explain); ``evicted`` the
    names of the files evicted, in that order; ``expedited`` the scrub
    queue entries to delete now; ``shortfall`` the bytes still missing once
    everything that may go has gone; ``held`` the bytes that stay, by
    HELD_* reason. ``files`` is the number of the cache's regular files,
    ``files_excess`` how many must go for max_cache_files, and
    ``files_shortfall`` how many of them could not.
    """

    limits: Limits
    cache_bytes: int
    filesystem: Filesystem = None
    size_excess: int = 0
    filesystem_excess: int = 0
    ranking: tuple = ()
    evicted: tuple = ()
    evicted_bytes: int = 0
    expedited: tuple = ()
    shortfall: int = 0
    held: dict = dataclasses.field(default_factory=dict)
    files: int = 0
    files_excess: int = 0
    files_shortfall: int = 0

    @property
    def over_size(self):
        return self.size_excess > 0

    @property
    def over_files(self):
        return self.files_excess > 0

    @property
    def over_watermark(self):
        return self.filesystem_excess > 0

    @property
    def over(self):
        return self.over_size or self.over_watermark or self.over_files

    def over_text(self):
        """Say which limits the cache is over, with the numbers."""
        parts = []
        if self.over_size:
            parts.append('cache %s > %s max' % (
                fmt.size(self.cache_bytes),
                fmt.size(self.limits.max_cache_bytes)))
        if self.over_files:
            parts.append('cache %d files > %d max' % (
                self.files, self.limits.max_cache_files))
        if self.over_watermark:
            parts.append('filesystem %.1f%% > %d%% high watermark' % (
                self.filesystem.percent, self.limits.high_percent))
        return ', '.join(parts)

    def shortfall_message(self):
        """The warning for a budget that cannot be met, or None."""
        if not (self.shortfall or self.files_shortfall):
            return None
        held = ', '.join('%s %s' % (fmt.size(nbytes), reason)
                         for reason, nbytes in self.held.items() if nbytes)
        advice = []
        if self.over_size:
            advice.append('raise [image_cache] max_cache_size_mb')
        if self.files_shortfall:
            advice.append('raise [image_cache] max_cache_files')
        if self.over_watermark:
            advice.append('free space on the filesystem')
        missing = ([fmt.size(self.shortfall)] if self.shortfall else []) + (
            ['%d %s' % (self.files_shortfall,
                        'file' if self.files_shortfall == 1 else 'files')]
            if self.files_shortfall else [])
        return ('The image cache cannot get within its budget (%s): %s more '
                'would have to go, but what is left is %s; files in use and '
                'pinned files are never evicted: %s' % (
                    self.over_text(), ' and '.join(missing),
                    held or 'nothing', ' or '.join(advice)))


def excess(limits, cache_bytes, filesystem):
    """Return the bytes to free for (the size bound, the watermarks)."""
    size_excess = 0
    if limits.max_cache_bytes and cache_bytes > limits.max_cache_bytes:
        size_excess = cache_bytes - limits.max_cache_bytes
    filesystem_excess = 0
    if (filesystem is not None and filesystem.size and
            filesystem.used * 100 > limits.high_percent * filesystem.size):
        filesystem_excess = (filesystem.used -
                             limits.low_percent * filesystem.size // 100)
    return size_excess, filesystem_excess


def measure(limits, cache_bytes, files, filesystem):
    """Return the Outcome of a cache before anything is ranked or evicted.

    What is over the budget, and by how much: what a pass starts from, and
    all the pressure check between passes asks. ``files`` is the number
    of the cache's regular files.
    """
    size_excess, filesystem_excess = excess(limits, cache_bytes, filesystem)
    files_excess = 0
    if limits.max_cache_files and files > limits.max_cache_files:
        files_excess = files - limits.max_cache_files
    return Outcome(limits, cache_bytes, filesystem, size_excess,
                   filesystem_excess, files=files, files_excess=files_excess)


class _Freed:
    """Bytes (and files) freed so far, for each trigger."""

    def __init__(self, size_excess, filesystem_excess, files_excess):
        self.size_excess = size_excess
        self.filesystem_excess = filesystem_excess
        self.files_excess = files_excess
        self.size = 0
        self.filesystem = 0
        self.files = 0

    @property
    def filesystem_done(self):
        return self.filesystem >= self.filesystem_excess

    @property
    def done(self):
        return (self.size >= self.size_excess and self.filesystem_done and
                self.files >= self.files_excess)

    def shortfall(self):
        return max(self.size_excess - self.size,
                   self.filesystem_excess - self.filesystem, 0)


def apply(decisions, usage, history, limits, filesystem, waiting, now,
          order=eviction.eviction_order):
    """Bring a plan within the budget; return (decisions, Outcome).

    ``decisions`` come from plan.plan (same order out); ``usage`` is the
    pass's facts.Usage, whose doubts veto eviction; ``history`` maps names
    to what the state database remembers of them (facts.FileHistory);
    ``filesystem`` is a Filesystem or None when unknown; ``waiting`` the
    scrub queue's Waiting entries; ``now`` the time ages are measured at.
    ``order`` ranks the files that may go (eviction.eviction_order; the
    eviction benchmark gives it Belady's offline optimum instead).
    """
    regular = [(index, d) for index, d in enumerate(decisions)
               if d.base_file.is_regular]
    cache_bytes = sum(d.base_file.allocated for _, d in regular)

    def ranked(candidates):
        return order([(d.base_file, _history(d, history))
                      for _, d in candidates],
                     limits.eviction_policy, now)

    ranking = tuple(ranked(_candidates(regular, usage, history, limits,
                                       now)))
    outcome = dataclasses.replace(
        measure(limits, cache_bytes, len(regular), filesystem),
        ranking=ranking)
    if not outcome.over:
        return list(decisions), outcome
    over = outcome.over_text()
    index_of = {d.base_file.name: index for index, d in regular}
    freed = _Freed(outcome.size_excess, outcome.filesystem_excess,
                   outcome.files_excess)
    removable = []
    for index, d in regular:
        if d.verdict != facts.REMOVABLE:
            continue
        freed.size += d.base_file.allocated
        freed.files += 1
        if d.base_file.kind == facts.RESIDUE:
            # Deleted outright, not quarantined.
            freed.filesystem += d.base_file.allocated
        else:
            removable.append((index, d))
    expedited = []
    for entry in sorted(waiting, key=lambda w: (w.queued_at, w.entry_id)):
        if freed.filesystem_done:
            break
        expedited.append(entry.entry_id)
        freed.filesystem += entry.allocated
    result = list(decisions)
    for going in ranked(removable):
        if freed.filesystem_done:
            break
        index = index_of[going.base_file.name]
        d = decisions[index]
        result[index] = dataclasses.replace(
            d, drain_now=True,
            reason='%s; deleted at once, %s (%s)' % (d.reason, OVER_BUDGET,
                                                     over))
        freed.filesystem += d.base_file.allocated
    evicted = []
    for going in ranking:
        if freed.done:
            break
        index = index_of[going.base_file.name]
        result[index] = dataclasses.replace(
            decisions[index], verdict=facts.REMOVABLE,
            min_age=limits.eviction_min_age, drain_now=True,
            reason='%s (%s): %s, evicted %s' % (
                OVER_BUDGET, over, going.parts(now),
                eviction.order_text(going.policy)))
        evicted.append(going.base_file)
        freed.size += going.base_file.allocated
        freed.filesystem += going.base_file.allocated
        freed.files += 1
    evicted_names = {b.name for b in evicted}
    return result, dataclasses.replace(
        outcome,
        evicted=tuple(b.name for b in evicted),
        evicted_bytes=sum(b.allocated for b in evicted),
        expedited=tuple(expedited), shortfall=freed.shortfall(),
        files_shortfall=max(freed.files_excess - freed.files, 0),
        held=_held([d for _, d in regular
                    if d.base_file.name not in evicted_names],
                   usage, history, limits, now))


def _history(decision, history):
    return history.get(decision.base_file.name, facts.NO_HISTORY)


def _evictable(decision, usage, history, limits, now):
    """Whether an unused file may be evicted; None if it is not unused."""
    base_file = decision.base_file
    if (decision.verdict != facts.TOO_YOUNG or
            base_file.kind not in EVICTABLE_KINDS):
        return None
    if usage.doubts_about(base_file.name):
        return False
    used = eviction.last_use(base_file, _history(decision, history))
    return now - used >= limits.eviction_min_age


def _candidates(regular, usage, history, limits, now):
    return [(index, d) for index, d in regular
            if _evictable(d, usage, history, limits, now)]


def _held(decisions, usage, history, limits, now):
    """The bytes that stay in the cache, by HELD_* reason."""
    held = dict.fromkeys((HELD_IN_USE, HELD_PINNED, HELD_RECENT, HELD_DOUBT,
                          HELD_KEPT), 0)
    for d in decisions:
        if d.verdict == facts.REMOVABLE:
            continue
        if d.verdict == facts.IN_USE:
            reason = HELD_IN_USE
        elif d.verdict == facts.PINNED:
            reason = HELD_PINNED
        elif usage.doubts_about(d.base_file.name):
            reason = HELD_DOUBT
        elif _evictable(d, usage, history, limits, now) is False:
            reason = HELD_RECENT
        else:
            reason = HELD_KEPT
        held[reason] += d.base_file.allocated
    return held
