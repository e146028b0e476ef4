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

"""Removed files that come back, found in a real scrub queue's history."""

import os

from cachekeeper.cache import locks
from cachekeeper.cache import scan
from cachekeeper.state import ledger
from cachekeeper.state import totals
from cachekeeper import thrash
from tests.lib import scrubtree

NOW = scrubtree.NOW
DELAY = 1800
HOUR = 3600
DAY = 86400


class ThrashTree(scrubtree.ScrubTree):
    """A ScrubTree where removed files come back."""

    def remove(self, name, now=NOW, reason='unused for 1d'):
        base_file = self.make_file(name)
        with locks.nova_lock(self.instances_path, base_file.name):
            return self.queue.quarantine(base_file, reason, now)

    def come_back(self, name, when):
        path = os.path.join(self.cache_dir, name)
        with open(path, 'wb') as f:
            f.write(b'downloaded again')
        os.utime(path, (when, when))

    def detect(self, now, window=DAY):
        return thrash.detect(self.queue.state_db, scan.scan(self.cache_dir),
                             now, window)


scrub = scrubtree.tree_fixture(ThrashTree)


def test_a_file_back_within_the_window_is_detected_once(scrub):
    name = scrubtree.image_name(1)
    entry = scrub.remove(name)
    scrub.queue.drain(NOW + DELAY, DELAY, 5)
    scrub.come_back(name, NOW + 2 * HOUR)
    [comeback] = scrub.detect(NOW + 3 * HOUR)
    assert (entry.id, NOW, NOW + 2 * HOUR) == (
        comeback.entry_id, comeback.removed_at,
        comeback.came_back_at)
    assert comeback.warning() == (
        'Image cache file %s came back 2h after a pass removed it '
        '(unused for 1d; scrub queue entry %d): it was made again for '
        'nothing; consider a longer [image_cache] '
        'remove_unused_original_minimum_age_seconds'
        % (entry.path, entry.id))
    assert NOW + 2 * HOUR == scrub.queue.entry(entry.id).returned_at
    assert scrub.detect(NOW + 4 * HOUR) == []
    assert scrub.queue.totals()[totals.COMEBACKS] == 1


def test_a_file_back_while_still_in_quarantine_counts(scrub):
    name = scrubtree.image_name(1)
    scrub.remove(name)
    scrub.come_back(name, NOW + 60)
    assert len(scrub.detect(NOW + 120)) == 1


def test_a_file_back_after_the_window_is_not_thrash(scrub):
    name = scrubtree.image_name(1)
    entry = scrub.remove(name)
    scrub.come_back(name, NOW + 2 * DAY)
    assert scrub.detect(NOW + 2 * DAY + 60) == []
    # Recorded all the same, so that it is not looked at again.
    assert scrub.queue.entry(entry.id).returned_at is not None
    assert scrub.queue.totals()[totals.COMEBACKS] == 0


def test_every_file_back_counts_once_in_the_ledger(scrub):
    # For the eviction policy: also after the window, and once however
    # many passes see it back.
    name, late = scrubtree.image_name(1), scrubtree.image_name(2)
    scrub.remove(name)
    scrub.remove(late)
    scrub.come_back(name, NOW + 60)
    scrub.come_back(late, NOW + 2 * DAY)
    scrub.detect(NOW + 2 * DAY + 60)
    scrub.detect(NOW + 2 * DAY + 120)
    state_db = scrub.queue.state_db
    assert ledger.lookup(state_db, name).comebacks == 1
    assert ledger.lookup(state_db, late).comebacks == 1


def test_an_evicted_file_asks_for_a_bigger_budget(scrub):
    name = 'swap_512'
    scrub.remove(name, reason='over budget (cache 2.0 MiB > 1.0 MiB '
                             'max): last used 2h ago')
    scrub.come_back(name, NOW + 60)
    [comeback] = scrub.detect(NOW + 120)
    assert ('consider a bigger budget ([image_cache] '
            'max_cache_size_mb') in comeback.warning()


def test_restored_and_rolled_back_files_are_not_thrash(scrub):
    restored = scrub.remove(scrubtree.image_name(1))
    scrub.queue.restore(restored.id, NOW + 60)
    assert scrub.detect(NOW + 120) == []


def test_the_very_file_quarantined_after_the_scan_is_not_thrash(scrub):
    name = scrubtree.image_name(1)
    seen = scan.scan(scrub.cache_dir) + [scrub.make_file(name)]
    # Another pass quarantines it between this pass's scan and its
    # detection.
    with locks.nova_lock(scrub.instances_path, name):
        scrub.queue.quarantine(seen[-1], 'unused', NOW)
    assert thrash.detect(scrub.queue.state_db, seen,
                         NOW + 1, DAY) == []


def test_window_zero_detects_nothing(scrub):
    name = scrubtree.image_name(1)
    scrub.remove(name)
    scrub.come_back(name, NOW + 60)
    assert scrub.detect(NOW + 120, window=0) == []
