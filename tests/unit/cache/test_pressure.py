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

from cachekeeper.cache import budget
from cachekeeper.cache import pressure

MiB = 1024 * 1024
LIMITS = budget.Limits(max_cache_bytes=10 * MiB, max_cache_files=4,
                       high_percent=85, low_percent=80)
ROOMY = budget.Filesystem(size=100 * MiB, used=50 * MiB)


def check(cache_mib=5, files=2, filesystem=ROOMY):
    return budget.measure(LIMITS, cache_mib * MiB, files, filesystem)


def test_within_the_budget_no_pass():
    assert pressure.decide(None, check(), new_files=3) == (False, None)


def test_each_limit_starts_the_pressure_and_a_pass():
    for outcome in (check(cache_mib=11), check(files=5),
                    check(filesystem=budget.Filesystem(100 * MiB,
                                                       86 * MiB))):
        assert pressure.decide(None, outcome, new_files=0) == (True,
                                                               outcome)


def test_while_it_lasts_a_pass_runs_again_only_for_new_files():
    started = check(cache_mib=11)
    still = check(cache_mib=12)
    assert pressure.decide(started, still, new_files=0) == (False, started)
    assert pressure.decide(started, still, new_files=1) == (True, started)


def test_within_again_ends_the_pressure():
    assert pressure.decide(check(files=5), check(), new_files=0) == (
        False, None)


def test_the_limits_themselves_are_within():
    assert not check(cache_mib=10, files=4,
                     filesystem=budget.Filesystem(100 * MiB, 85 * MiB)).over
