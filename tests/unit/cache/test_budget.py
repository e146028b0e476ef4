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

import dataclasses
import os

from oslo_config import cfg
import pytest

from cachekeeper.cache import budget
from cachekeeper.cache import eviction
from cachekeeper.cache import facts
from cachekeeper.cache import names
from cachekeeper.cache import plan
from cachekeeper.conf import image_cache

NOW = 1800000000.0
MINUTE = 60
HOUR = 3600
DAY = 86400
MiB = 1024 * 1024

POLICY = facts.Policy(remove_unused=True, original_min_age=DAY,
                      resized_min_age=HOUR, swap_min_age=DAY,
                      ephemeral_min_age=DAY,
                      pinned_names=frozenset(['pinned']),
                      residue_min_age=DAY)
# 10 MiB at most; the watermarks off unless a test turns them on.
LIMITS = budget.Limits(max_cache_bytes=10 * MiB, high_percent=100,
                       low_percent=0, eviction_min_age=10 * MINUTE)


def sha1(label):
    return names.image_cache_name(label)


def base_file(name, age, mib=1, kind=facts.ORIGINAL, file_type='file'):
    return facts.BaseFile(name=name, path='/instances/_base/' + name,
                          kind=kind, file_type=file_type, size=mib * MiB,
                          allocated=mib * MiB, mtime=NOW - age, dev=1,
                          ino=hash(name) & 0xffff)


class Cache:
    """Files and what uses them; plan() gives the decisions to budget."""

    def __init__(self):
        self.files = []
        self.usage = facts.Usage()

    def add(self, label, age, mib=1, used=False, **kwargs):
        name = kwargs.pop('name', None) or sha1(label)
        self.files.append(base_file(name, age, mib, **kwargs))
        if used:
            self.usage.add_reference(facts.Reference(
                name=name, source='/instances/%s/disk' % label))
        return name

    def plan(self):
        return plan.plan(self.files, self.usage, POLICY, NOW)

    def apply(self, limits=LIMITS, history=None, filesystem=None,
              waiting=()):
        return budget.apply(self.plan(), self.usage, history or {},
                            limits, filesystem, list(waiting), NOW)


def by_name(decisions):
    return {d.base_file.name: d for d in decisions}


def evicted_names(decisions):
    return [d.base_file.name for d in decisions if d.drain_now and
            d.reason.startswith(budget.OVER_BUDGET + ' (')]


def test_a_cache_within_its_budget_is_left_as_planned():
    cache = Cache()
    cache.add('a', 2 * HOUR, mib=4)
    cache.add('b', 3 * HOUR, mib=6)
    decisions, outcome = cache.apply()
    assert cache.plan() == decisions
    assert not outcome.over
    assert outcome.cache_bytes == 10 * MiB
    assert outcome.evicted == ()


def test_no_bound_and_watermarks_off_never_evict():
    cache = Cache()
    cache.add('a', 2 * HOUR, mib=400)
    off = budget.Limits(max_cache_bytes=0, high_percent=100)
    full = budget.Filesystem(size=100 * MiB, used=100 * MiB)
    decisions, outcome = cache.apply(limits=off, filesystem=full)
    assert cache.plan() == decisions
    assert not outcome.over


def test_only_regular_files_count():
    cache = Cache()
    cache.add('a', 2 * HOUR, mib=10)
    cache.add('link', 2 * HOUR, mib=50, name='link', kind=facts.FOREIGN,
              file_type='symlink')
    _, outcome = cache.apply()
    assert outcome.cache_bytes == 10 * MiB
    assert not outcome.over


def test_least_recently_used_unused_files_go_first():
    cache = Cache()
    used = cache.add('used', 30 * DAY, mib=4, used=True)
    oldest = cache.add('oldest', 20 * HOUR, mib=2)
    older = cache.add('older', 10 * HOUR, mib=2)
    newer = cache.add('newer', 2 * HOUR, mib=2)
    newest = cache.add('newest', 1 * HOUR, mib=2)
    decisions, outcome = cache.apply()
    # 12 MiB against 10: two files of 2 MiB would do, one is not enough.
    assert outcome.size_excess == 2 * MiB
    assert outcome.evicted == (oldest,)
    assert outcome.evicted_bytes == 2 * MiB
    assert outcome.shortfall == 0
    verdicts = {name: d.verdict for name, d in by_name(decisions).items()}
    assert verdicts == {used: facts.IN_USE, oldest: facts.REMOVABLE,
                        older: facts.TOO_YOUNG, newer: facts.TOO_YOUNG,
                        newest: facts.TOO_YOUNG}


def test_evicts_until_within_the_bound():
    cache = Cache()
    names = [cache.add('f%d' % age, age * HOUR, mib=3)
             for age in (5, 4, 3, 2, 1)]
    decisions, outcome = cache.apply()
    # 15 MiB against 10: two files bring it to 9 MiB.
    assert tuple(names[:2]) == outcome.evicted
    assert names[:2] == evicted_names(decisions)


def test_an_evicted_file_says_why_and_drains_now():
    cache = Cache()
    name = cache.add('big', 5 * HOUR, mib=12)
    decisions, outcome = cache.apply()
    evicted = by_name(decisions)[name]
    assert evicted.verdict == facts.REMOVABLE
    assert evicted.drain_now
    assert LIMITS.eviction_min_age == evicted.min_age
    assert evicted.reason == (
        'over budget (cache 12.0 MiB > 10.0 MiB max): last used 5h ago, '
        'evicted least recently used first')


def test_files_in_use_and_pinned_files_are_never_evicted():
    cache = Cache()
    used = cache.add('used', 30 * DAY, mib=8, used=True)
    cache.add('p', 30 * DAY, mib=4, name='pinned')
    unused = cache.add('unused', 2 * HOUR, mib=1)
    decisions, outcome = cache.apply()
    assert outcome.evicted == (unused,)
    assert by_name(decisions)[used].verdict == facts.IN_USE
    assert by_name(decisions)[
        'pinned'].verdict == facts.PINNED
    assert outcome.shortfall == 2 * MiB
    assert outcome.held[budget.HELD_IN_USE] == 8 * MiB
    assert outcome.held[budget.HELD_PINNED] == 4 * MiB


def test_files_in_use_alone_over_the_bound_give_one_message():
    cache = Cache()
    cache.add('used', 30 * DAY, mib=12, used=True)
    _, outcome = cache.apply()
    assert outcome.shortfall == 2 * MiB
    assert outcome.shortfall_message() == (
        'The image cache cannot get within its budget (cache 12.0 MiB > '
        '10.0 MiB max): 2.0 MiB more would have to go, but what is left '
        'is 12.0 MiB in use; files in use and pinned files are never '
        'evicted: raise [image_cache] max_cache_size_mb')


def test_no_message_when_the_budget_can_be_met():
    cache = Cache()
    cache.add('unused', 2 * HOUR, mib=12)
    _, outcome = cache.apply()
    assert outcome.shortfall_message() is None


def test_recently_used_files_are_never_evicted():
    cache = Cache()
    recent = cache.add('recent', 5 * MINUTE, mib=12)
    decisions, outcome = cache.apply()
    assert outcome.evicted == ()
    assert by_name(decisions)[recent].verdict == facts.TOO_YOUNG
    assert outcome.held[budget.HELD_RECENT] == 12 * MiB


def test_eviction_minimum_age_is_inclusive():
    cache = Cache()
    name = cache.add('edge', LIMITS.eviction_min_age, mib=12)
    _, outcome = cache.apply()
    assert outcome.evicted == (name,)


def test_future_mtime_is_never_evicted():
    cache = Cache()
    cache.add('future', -HOUR, mib=12)
    _, outcome = cache.apply()
    assert outcome.evicted == ()


def test_a_doubt_vetoes_eviction():
    cache = Cache()
    doubted = cache.add('doubted', 20 * HOUR, mib=6)
    other = cache.add('other', 2 * HOUR, mib=6)
    cache.usage.add_doubt(facts.Doubt(
        '/instances/x/disk', 'I/O error', frozenset([doubted])))
    decisions, outcome = cache.apply()
    assert outcome.evicted == (other,)
    assert by_name(decisions)[
        doubted].verdict == facts.TOO_YOUNG


def test_a_doubt_about_any_file_evicts_nothing():
    cache = Cache()
    cache.add('a', 20 * HOUR, mib=12)
    cache.usage.add_doubt(facts.Doubt('/instances/x/disk', 'timeout'))
    _, outcome = cache.apply()
    assert outcome.evicted == ()
    assert outcome.held[budget.HELD_DOUBT] == 12 * MiB


def test_removal_disabled_evicts_nothing():
    cache = Cache()
    cache.add('a', 20 * HOUR, mib=12)
    rules = dataclasses.replace(POLICY, remove_unused=False)
    decisions = plan.plan(cache.files, cache.usage, rules, NOW)
    _, outcome = budget.apply(decisions, cache.usage, {}, LIMITS, None,
                              [], NOW)
    assert outcome.evicted == ()
    assert outcome.held[budget.HELD_KEPT] == 12 * MiB


def test_residue_and_foreign_files_are_not_evicted():
    cache = Cache()
    cache.add('p', 2 * HOUR, mib=6, name=sha1('x') + '.part',
              kind=facts.RESIDUE)
    cache.add('f', 20 * HOUR, mib=6, name='notes.txt',
              kind=facts.FOREIGN)
    _, outcome = cache.apply()
    assert outcome.evicted == ()
    assert outcome.shortfall == 2 * MiB


def test_removable_files_count_first():
    cache = Cache()
    old = cache.add('old', 2 * DAY, mib=4)
    young = cache.add('young', 2 * HOUR, mib=8)
    decisions, outcome = cache.apply()
    # 12 MiB, and the old file goes anyway: that is enough.
    assert outcome.evicted == ()
    assert by_name(decisions)[young].verdict == facts.TOO_YOUNG
    removable = by_name(decisions)[old]
    assert removable.verdict == facts.REMOVABLE
    # It leaves the cache by quarantine: no need to drain it now.
    assert not removable.drain_now


def test_stale_residue_counts_first():
    cache = Cache()
    cache.add('p', 2 * DAY, mib=4, name=sha1('x') + '.part',
              kind=facts.RESIDUE)
    cache.add('young', 2 * HOUR, mib=8)
    _, outcome = cache.apply()
    assert outcome.evicted == ()


def test_last_use_is_the_later_of_mtime_and_the_ledger():
    cache = Cache()
    # Its mtime is old, but a pass saw it in use an hour ago.
    seen = cache.add('seen', 20 * HOUR, mib=3)
    other = cache.add('other', 5 * HOUR, mib=3)
    cache.add('third', 4 * HOUR, mib=6)
    _, outcome = cache.apply(
        history={seen: facts.FileHistory(last_seen_in_use=NOW - HOUR)})
    assert outcome.evicted == (other,)


def test_ledger_use_within_eviction_minimum_age_protects():
    cache = Cache()
    seen = cache.add('seen', 20 * HOUR, mib=12)
    _, outcome = cache.apply(
        history={seen: facts.FileHistory(last_seen_in_use=NOW - MINUTE)})
    assert outcome.evicted == ()


def test_ties_are_broken_by_name():
    cache = Cache()
    names = sorted(cache.add(label, 3 * HOUR, mib=6)
                   for label in ('x', 'y'))
    _, outcome = cache.apply()
    assert outcome.evicted == (names[0],)


@pytest.mark.parametrize('kind, name', [
    (facts.RESIZED, sha1('r') + '_10737418240'),
    (facts.LEGACY_SM, sha1('r') + '_sm'),
    (facts.SWAP, 'swap_512'),
    (facts.EPHEMERAL, 'ephemeral_1_0706d66')])
def test_every_kind_nova_makes_may_be_evicted(kind, name):
    cache = Cache()
    cache.add('x', 30 * MINUTE, mib=12, name=name, kind=kind)
    _, outcome = cache.apply()
    assert outcome.evicted == (name,)


WATERMARK_LIMITS = budget.Limits(max_cache_bytes=0, high_percent=85,
                                 low_percent=80, eviction_min_age=10 * MINUTE)


def test_at_the_high_watermark_nothing_happens():
    cache = Cache()
    cache.add('a', 2 * HOUR, mib=10)
    at_high = budget.Filesystem(size=100 * MiB, used=85 * MiB)
    _, outcome = cache.apply(WATERMARK_LIMITS, filesystem=at_high)
    assert not outcome.over


def test_over_the_high_watermark_frees_down_to_the_low_one():
    cache = Cache()
    names = [cache.add('f%d' % age, age * HOUR, mib=2)
             for age in (6, 5, 4, 3, 2, 1)]
    over = budget.Filesystem(size=100 * MiB, used=86 * MiB)
    decisions, outcome = cache.apply(WATERMARK_LIMITS, filesystem=over)
    assert outcome.over_watermark
    assert not outcome.over_size
    assert outcome.filesystem_excess == 6 * MiB
    assert tuple(names[:3]) == outcome.evicted
    assert '(filesystem 86.0% > 85% high watermark)' in (
        by_name(decisions)[names[0]].reason)


def test_the_queue_then_removable_files_go_before_eviction():
    cache = Cache()
    removable = cache.add('removable', 2 * DAY, mib=2)
    young = [cache.add('f%d' % age, age * HOUR, mib=2)
             for age in (3, 2)]
    waiting = [budget.Waiting(entry_id=7, allocated=2 * MiB,
                              queued_at=NOW - 60),
               budget.Waiting(entry_id=5, allocated=1 * MiB,
                              queued_at=NOW - 600)]
    over = budget.Filesystem(size=100 * MiB, used=86 * MiB)
    decisions, outcome = cache.apply(WATERMARK_LIMITS, filesystem=over,
                                     waiting=waiting)
    # 6 MiB: the queue (oldest first) gives 3, the removable file 2,
    # one eviction the last one.
    assert outcome.expedited == (5, 7)
    assert by_name(decisions)[removable].drain_now
    assert outcome.evicted == (young[0],)
    assert outcome.shortfall == 0


def test_the_queue_alone_may_be_enough():
    cache = Cache()
    cache.add('young', 2 * HOUR, mib=2)
    waiting = [budget.Waiting(entry_id=n, allocated=4 * MiB,
                              queued_at=NOW - n) for n in (1, 2, 3)]
    over = budget.Filesystem(size=100 * MiB, used=90 * MiB)
    _, outcome = cache.apply(WATERMARK_LIMITS, filesystem=over,
                             waiting=waiting)
    assert outcome.expedited == (3, 2, 1)
    assert outcome.evicted == ()


def test_the_queue_does_not_count_for_the_size_bound():
    cache = Cache()
    young = cache.add('young', 2 * HOUR, mib=12)
    waiting = [budget.Waiting(entry_id=1, allocated=50 * MiB,
                              queued_at=NOW - 60)]
    _, outcome = cache.apply(LIMITS, waiting=waiting)
    assert outcome.expedited == ()
    assert outcome.evicted == (young,)


def test_both_triggers_must_be_met():
    cache = Cache()
    names = [cache.add('f%d' % age, age * HOUR, mib=2)
             for age in (5, 4, 3, 2, 1)]
    limits = budget.Limits(max_cache_bytes=8 * MiB, high_percent=85,
                           low_percent=80, eviction_min_age=0)
    # The size needs 2 MiB, the filesystem 4.
    over = budget.Filesystem(size=100 * MiB, used=84 * MiB + 1)
    _, outcome = cache.apply(limits, filesystem=over)
    assert not outcome.over_watermark
    over = budget.Filesystem(size=100 * MiB, used=84 * MiB)
    limits = budget.Limits(max_cache_bytes=8 * MiB, high_percent=83,
                           low_percent=80, eviction_min_age=0)
    _, outcome = cache.apply(limits, filesystem=over)
    assert tuple(names[:2]) == outcome.evicted
    assert outcome.over_text() == (
        'cache 10.0 MiB > 8.0 MiB max, filesystem 84.0% > 83% high '
        'watermark')


def test_unknown_filesystem_never_triggers():
    cache = Cache()
    cache.add('a', 2 * HOUR, mib=2)
    _, outcome = cache.apply(WATERMARK_LIMITS, filesystem=None)
    assert not outcome.over


def test_shortfall_on_a_full_filesystem():
    cache = Cache()
    cache.add('used', 2 * HOUR, mib=2, used=True)
    over = budget.Filesystem(size=100 * MiB, used=95 * MiB)
    _, outcome = cache.apply(WATERMARK_LIMITS, filesystem=over)
    assert outcome.shortfall == 15 * MiB
    assert 'free space on the filesystem' in outcome.shortfall_message()


def test_counts_as_df_does():
    # Real numbers of this file system: df's Use% leaves out the
    # blocks reserved for root.
    st = os.statvfs(os.path.dirname(__file__))
    filesystem = budget.Filesystem.from_statvfs(st)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    assert used == filesystem.used
    assert st.f_bavail * st.f_frsize == filesystem.available
    assert filesystem.percent == pytest.approx(
        100.0 * used / (used + st.f_bavail * st.f_frsize), abs=1e-7)


def test_excess_is_what_reaches_the_low_watermark():
    limits = budget.Limits(high_percent=85, low_percent=80)
    over = budget.Filesystem(size=1000, used=901)
    assert budget.excess(limits, 0, over) == (0, 101)


def test_from_the_image_cache_options():
    conf = cfg.ConfigOpts()
    image_cache.register_opts(conf)
    conf([], project='cachekeeper-test', default_config_files=[])
    try:
        assert budget.Limits.from_conf(conf) == budget.Limits(
            0, 85, 80, 600, eviction.COST)
        conf.set_override('max_cache_size_mb', 3, group='image_cache')
        assert budget.Limits.from_conf(conf).max_cache_bytes == 3 * MiB
        conf.set_override('max_cache_files', 7, group='image_cache')
        assert budget.Limits.from_conf(conf).max_cache_files == 7
    finally:
        conf.reset()


COST_LIMITS = dataclasses.replace(LIMITS, eviction_policy=eviction.COST)


def test_under_cost_a_file_instances_come_back_to_is_spared():
    cache = Cache()
    popular = cache.add('popular', 5 * HOUR, mib=6)
    recent = cache.add('recent', 1 * HOUR, mib=6)
    history = {popular: facts.FileHistory(uses=4, comebacks=1)}
    decisions, outcome = cache.apply(COST_LIMITS, history=history)
    assert outcome.evicted == (recent,)
    assert by_name(decisions)[recent].reason == (
        'over budget (cache 12.0 MiB > 10.0 MiB max): last used 1h ago, '
        '0 uses, 0 comebacks, 6.0 MiB to download again: credit 43d 16h, '
        'evicted lowest expected cost first')
    # The same history means nothing to lru.
    _, outcome = cache.apply(LIMITS, history=history)
    assert outcome.evicted == (popular,)


def test_under_cost_the_watermarks_evict_in_the_same_order():
    cache = Cache()
    popular = cache.add('popular', 5 * HOUR, mib=2)
    others = [cache.add('f%d' % age, age * HOUR, mib=2) for age in (4, 3, 1)]
    history = {popular: facts.FileHistory(uses=4)}
    over = budget.Filesystem(size=100 * MiB, used=86 * MiB)
    _, outcome = cache.apply(WATERMARK_LIMITS, filesystem=over,
                             history=history)
    assert outcome.evicted == (popular, others[0], others[1])
    limits = dataclasses.replace(WATERMARK_LIMITS,
                                 eviction_policy=eviction.COST)
    _, outcome = cache.apply(limits, filesystem=over, history=history)
    assert outcome.over_watermark
    assert outcome.evicted == tuple(others)


def test_the_ranking_is_there_within_the_budget_too():
    cache = Cache()
    cache.add('used', 30 * DAY, mib=1, used=True)
    old = cache.add('old', 5 * HOUR, mib=1)
    new = cache.add('new', 1 * HOUR, mib=1)
    cache.add('recent', 5 * MINUTE, mib=1)
    _, outcome = cache.apply()
    assert not outcome.over
    # Only what could be evicted: not the file in use, not the recent one.
    assert [r.base_file.name for r in outcome.ranking] == [old, new]
    assert outcome.evicted == ()


def test_a_given_order_replaces_the_policy():
    cache = Cache()
    first = cache.add('first', 1 * HOUR, mib=6)
    cache.add('second', 5 * HOUR, mib=6)

    def by_name_descending(candidates, policy, now):
        assert policy == eviction.LRU and now == NOW
        return sorted((eviction.Ranked(b, 'test', b.mtime, h, 0)
                       for b, h in candidates),
                      key=lambda r: r.base_file.name, reverse=True)

    decisions, outcome = budget.apply(
        cache.plan(), cache.usage, {}, LIMITS, None, [], NOW,
        order=by_name_descending)
    expected = max(first, sha1('second'))
    assert outcome.evicted == (expected,)
    assert by_name(decisions)[expected].reason.endswith(
        'evicted in test order')


FILES_LIMITS = budget.Limits(max_cache_files=3, eviction_min_age=10 * MINUTE)


def test_over_the_file_cap_evicts_until_within_it():
    cache = Cache()
    used = cache.add('used', 30 * DAY, used=True)
    oldest = cache.add('oldest', 20 * HOUR)
    older = cache.add('older', 10 * HOUR)
    cache.add('newer', 2 * HOUR)
    cache.add('newest', 1 * HOUR)
    decisions, outcome = cache.apply(limits=FILES_LIMITS)
    assert outcome.files == 5
    assert outcome.files_excess == 2
    assert outcome.over_files and not outcome.over_size
    assert outcome.over_text() == 'cache 5 files > 3 max'
    assert outcome.evicted == (oldest, older)
    assert outcome.files_shortfall == 0
    assert by_name(decisions)[used].verdict == facts.IN_USE


def test_removable_files_count_for_the_file_cap():
    cache = Cache()
    cache.add('old', 2 * DAY)
    cache.add('a', 2 * HOUR)
    cache.add('b', 1 * HOUR)
    cache.add('c', 1 * HOUR)
    _, outcome = cache.apply(limits=FILES_LIMITS)
    # The removable file leaves the cache this pass: enough.
    assert outcome.files_excess == 1
    assert outcome.evicted == ()


def test_a_file_cap_that_cannot_be_met_says_so():
    cache = Cache()
    for label in ('a', 'b', 'c', 'd'):
        cache.add(label, DAY, used=True)
    _, outcome = cache.apply(limits=FILES_LIMITS)
    assert outcome.files_shortfall == 1
    assert outcome.shortfall == 0
    message = outcome.shortfall_message()
    assert '1 file more would have to go' in message
    assert 'raise [image_cache] max_cache_files' in message


def test_measure_says_what_is_over_without_ranking():
    limits = budget.Limits(max_cache_bytes=10 * MiB, max_cache_files=2,
                           high_percent=85, low_percent=80)
    full = budget.Filesystem(size=100 * MiB, used=90 * MiB)
    outcome = budget.measure(limits, 12 * MiB, 3, full)
    assert (outcome.size_excess, outcome.files_excess,
            outcome.filesystem_excess) == (2 * MiB, 1, 10 * MiB)
    assert outcome.ranking == () and outcome.evicted == ()
    within = budget.measure(limits, 10 * MiB, 2,
                            budget.Filesystem(size=100 * MiB, used=85 * MiB))
    assert not within.over


def test_no_file_cap_by_default():
    assert not budget.measure(budget.Limits(), 0, 10 ** 6, None).over
