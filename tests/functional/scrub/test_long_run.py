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

"""Many drain cycles in one process: nothing may pile up.

glance's scrubber daemon recursed once per wake-up and died after about a
thousand of them; here 10,000 cycles run under a recursion limit barely
above the starting depth, and memory and open descriptors must stay flat.
"""

import gc
import os
import sys

import pytest

from cachekeeper.scrub import entries as scrub_entries
from tests.lib import scrubtree

CYCLES = 10000
WARM_UP = 1000
# Seconds of fake time per cycle; a file every ten cycles, each waits
# five.
TICK = 60
SCRUB_DELAY = 5 * TICK
# Frames the code under test may use on top of the test's own.
STACK_ALLOWANCE = 120
# Growth allowed after the warm-up: noise, not a leak of any size.
RSS_ALLOWANCE = 1024 * 1024
BLOCKS_ALLOWANCE = 500


def stack_depth():
    depth = 0
    frame = sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back
    return depth


def open_fds():
    return len(os.listdir('/proc/self/fd'))


def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


@pytest.fixture
def recursion_limit():
    """The recursion limit, as it was before the test, after it."""
    limit = sys.getrecursionlimit()
    yield limit
    sys.setrecursionlimit(limit)


def cycle(scrub, number):
    now = scrubtree.NOW + number * TICK
    if number % 10 == 0:
        base_file = scrub.make_file(scrubtree.image_name(number))
        scrub.quarantine(base_file, now=now)
    return scrub.queue.drain(now, SCRUB_DELAY, 3)


def test_drain_cycles_stay_flat(scrub, recursion_limit):
    sys.setrecursionlimit(stack_depth() + STACK_ALLOWANCE)
    drained = 0
    for number in range(WARM_UP):
        drained += cycle(scrub, number).drained
    gc.collect()
    fds, memory, blocks = open_fds(), rss(), sys.getallocatedblocks()
    for number in range(WARM_UP, CYCLES):
        result = cycle(scrub, number)
        assert result.errors == []
        drained += result.drained
    gc.collect()
    assert fds == open_fds()
    assert rss() - memory < RSS_ALLOWANCE
    # Python objects, however small, that outlive their cycle.
    assert sys.getallocatedblocks() - blocks < BLOCKS_ALLOWANCE
    # Every file was drained (each waits only half of the ten cycles
    # between two files), and once.
    files = CYCLES // 10
    assert files == drained
    assert scrub.queue.counts() == {scrub_entries.DRAINED: files}
