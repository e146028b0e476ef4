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

import pytest

from cachekeeper.cache import eviction
from cachekeeper.cache import facts

NOW = 1800000000.0
HOUR = 3600
DAY = 86400
WEEK = 7 * DAY
MiB = 1024 * 1024
GiB = 1024 * MiB

History = facts.FileHistory


def base_file(name, age, size=GiB):
    return facts.BaseFile(name=name, path='/instances/_base/' + name,
                          kind=facts.ORIGINAL, file_type='file', size=size,
                          allocated=size, mtime=NOW - age, dev=1, ino=1)


def order(policy, *candidates):
    """The names of ``candidates`` ((BaseFile, History)), first to go first.
    """
    return [r.base_file.name
            for r in eviction.eviction_order(candidates, policy, NOW)]


def test_lru_evicts_the_least_recently_used_first():
    assert order(eviction.LRU,
                 (base_file('new', HOUR), facts.NO_HISTORY),
                 (base_file('old', DAY), History(uses=50))) == ['old', 'new']


def test_the_last_use_is_the_later_of_mtime_and_the_ledger():
    seen = base_file('seen', 2 * DAY)
    history = History(last_seen_in_use=NOW - HOUR)
    assert eviction.last_use(seen, history) == NOW - HOUR
    assert eviction.last_use(seen, History(
        last_seen_in_use=NOW - 3 * DAY)) == NOW - 2 * DAY
    assert order(eviction.LRU,
                 (seen, history),
                 (base_file('other', 2 * HOUR), facts.NO_HISTORY)) == [
        'other', 'seen']


@pytest.mark.parametrize('policy', eviction.POLICIES)
def test_ties_go_by_name(policy):
    assert order(policy,
                 (base_file('b', HOUR), facts.NO_HISTORY),
                 (base_file('a', HOUR), facts.NO_HISTORY)) == ['a', 'b']


def test_without_history_cost_evicts_files_of_a_size_as_lru_does():
    candidates = [(base_file(name, age * HOUR), facts.NO_HISTORY)
                  for name, age in (('b', 3), ('a', 1), ('c', 2))]
    assert order(eviction.COST, *candidates) == order(eviction.LRU,
                                                      *candidates)


def test_a_file_without_history_earns_its_own_download():
    # One use a week, the download; 1 GiB and the overhead per download.
    assert eviction.credit(base_file('a', HOUR), facts.NO_HISTORY,
                           NOW) == pytest.approx(1.25 * DAY)


def test_cost_keeps_a_file_instances_keep_coming_back_to():
    popular = base_file('popular', 10 * HOUR)
    assert order(eviction.COST,
                 (popular, History(first_seen_in_use=NOW - WEEK, uses=6)),
                 (base_file('recent', HOUR), facts.NO_HISTORY)) == [
        'recent', 'popular']


def test_a_comeback_counts_as_a_use():
    assert eviction.credit(
        base_file('a', HOUR), History(comebacks=2), NOW) == eviction.credit(
        base_file('a', HOUR), History(uses=2), NOW)


def test_uses_are_counted_per_week_of_history():
    recent = History(first_seen_in_use=NOW - WEEK, uses=7)
    long_known = History(first_seen_in_use=NOW - 4 * WEEK, uses=7)
    f = base_file('a', HOUR)
    assert eviction.credit(f, long_known, NOW) == pytest.approx(
        eviction.credit(f, recent, NOW) / 4)
    # A file known for less than a week counts over a week.
    young = History(first_seen_in_use=NOW - DAY, uses=7)
    assert eviction.credit(f, young, NOW) == eviction.credit(f, recent, NOW)


def test_a_file_popular_long_ago_does_not_stay_for_ever():
    # A thousand uses over a year, none in the last half year.
    forgotten = (base_file('forgotten', 26 * WEEK),
                 History(first_seen_in_use=NOW - 52 * WEEK,
                         last_seen_in_use=NOW - 26 * WEEK, uses=1000))
    used_once = (base_file('once', DAY), facts.NO_HISTORY)
    assert order(eviction.COST, forgotten, used_once) == ['forgotten',
                                                          'once']


def test_small_files_earn_more_credit_per_use():
    history = History(uses=3)
    small = eviction.credit(base_file('small', HOUR, 64 * MiB), history, NOW)
    big = eviction.credit(base_file('big', HOUR, 16 * GiB), history, NOW)
    assert small > 4 * big
    # Per byte a big file's credit tends to its uses alone.
    assert big == pytest.approx(4 * DAY, rel=0.02)


def test_an_empty_file_has_a_credit():
    assert eviction.credit(base_file('empty', HOUR, 0), facts.NO_HISTORY,
                           NOW) > 0


def test_the_parts_of_a_priority():
    ranked, = eviction.eviction_order(
        [(base_file('a', 5 * HOUR),
          History(first_seen_in_use=NOW - 2 * WEEK, uses=3, comebacks=1))],
        eviction.COST, NOW)
    # 5 uses over two weeks: 2.5 a week, at 1.25 days each.
    assert ranked.parts(NOW) == (
        'last used 5h ago, 3 uses, 1 comeback in 14d, 1.0 GiB to download '
        'again: credit 3d 3h')
    ranked, = eviction.eviction_order(
        [(base_file('a', 5 * HOUR), facts.NO_HISTORY)], eviction.LRU, NOW)
    assert ranked.parts(NOW) == 'last used 5h ago'
    assert ranked.priority == NOW - 5 * HOUR


def test_order_texts():
    assert eviction.order_text(eviction.LRU) == 'least recently used first'
    assert eviction.order_text(eviction.COST) == 'lowest expected cost first'
