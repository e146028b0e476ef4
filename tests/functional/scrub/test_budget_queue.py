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

"""What the disk-space budget needs of the scrub queue, on real files.

Entries due at once (drain_at, expedite), adoption of orphans while the
daemon runs, running totals that survive the queue's forgetting, and the
detection of removed files that come back (thrash).
"""

import os

from cachekeeper.cache import locks
from cachekeeper.cache import scan
from cachekeeper.scrub import queue
from cachekeeper.scrub import thrash
from cachekeeper.scrub import totals
from tests.functional.scrub import base

NOW = base.NOW
DELAY = 1800
HOUR = 3600
DAY = 86400


class DueAtOnceTestCase(base.ScrubTestCase):

    def test_an_entry_with_drain_at_skips_the_scrub_delay(self):
        base_file = self.make_file(base.image_name(1))
        with locks.nova_lock(self.instances_path, base_file.name):
            entry = self.queue.quarantine(base_file, 'over budget', NOW,
                                          drain_at=NOW)
        self.assertEqual(NOW, entry.drain_at)
        waiting = self.quarantine(self.make_file(base.image_name(2)))
        result = self.queue.drain(NOW + 1, DELAY, 5)
        self.assertEqual(1, result.drained)
        self.assertEqual(queue.DRAINED, self.queue.entry(entry.id).state)
        self.assertEqual(queue.QUEUED, self.queue.entry(waiting.id).state)

    def test_a_future_drain_at_waits_for_it(self):
        base_file = self.make_file(base.image_name(1))
        with locks.nova_lock(self.instances_path, base_file.name):
            entry = self.queue.quarantine(base_file, 'x', NOW,
                                          drain_at=NOW + 60)
        self.assertEqual(0, self.queue.drain(NOW + 30, 0, 5).drained)
        self.assertEqual(1, self.queue.drain(NOW + 60, DELAY, 5).drained)
        self.assertEqual(queue.DRAINED, self.queue.entry(entry.id).state)

    def test_expedite_makes_queued_entries_due_now(self):
        first = self.quarantine(self.make_file(base.image_name(1)))
        second = self.quarantine(self.make_file(base.image_name(2)))
        self.assertEqual(1, self.queue.expedite([first.id], NOW + 5))
        # Only queued entries, and only once.
        self.assertEqual(0, self.queue.expedite([first.id], NOW + 6))
        self.assertEqual(1, self.queue.drain(NOW + 10, DELAY, 5).drained)
        self.assertEqual(queue.DRAINED, self.queue.entry(first.id).state)
        self.assertEqual(queue.QUEUED, self.queue.entry(second.id).state)
        self.assertEqual([], os.listdir(self.cache_dir))

    def test_expedite_leaves_entries_in_other_states(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        self.queue.restore(entry.id, NOW)
        self.assertEqual(0, self.queue.expedite([entry.id], NOW))
        self.assertIsNone(self.queue.entry(entry.id).drain_at)

    def test_a_parked_entry_is_not_drained_by_drain_at(self):
        base_file = self.make_file(base.image_name(1))
        with locks.nova_lock(self.instances_path, base_file.name):
            entry = self.queue.quarantine(base_file, 'x', NOW, drain_at=NOW)
        self.set_entry(entry.id, state=queue.PARKED)
        self.assertEqual(0, self.queue.drain(NOW + 10, 0, 5).drained)


class AdoptOrphansTestCase(base.ScrubTestCase):

    def test_files_in_quarantine_without_an_entry_are_queued(self):
        known = self.quarantine(self.make_file(base.image_name(1)))
        orphan = os.path.join(self.host_dir(), '99-' + base.image_name(2))
        with open(orphan, 'wb') as f:
            f.write(b'x' * 100)
        self.assertEqual(1, self.queue.adopt_orphans(NOW))
        self.assertEqual(0, self.queue.adopt_orphans(NOW))
        adopted = [e for e in self.queue.entries() if e.id != known.id]
        self.assertEqual([(base.image_name(2), queue.QUEUED, orphan)],
                         [(e.name, e.state, e.quarantine_path)
                          for e in adopted])
        # Adopted, then drained like any other entry: never on the spot.
        self.assertTrue(os.path.exists(orphan))
        self.queue.drain(NOW + DELAY, DELAY, 5)
        self.assertFalse(os.path.exists(orphan))


class TotalsTestCase(base.ScrubTestCase):

    def test_reclaimed_bytes_survive_the_queue_forgetting_entries(self):
        for number in range(3):
            self.quarantine(self.make_file(base.image_name(number),
                                           content=b'x' * 8192))
        self.queue.drain(NOW, 0, 5)
        reclaimed = self.queue.totals()[totals.RECLAIMED_BYTES]
        self.assertGreaterEqual(reclaimed, 3 * 8192)
        later = NOW + queue.HISTORY_RETENTION + 1
        self.queue.drain(later, 0, 5)
        self.assertEqual([], self.queue.entries())
        self.assertEqual(reclaimed,
                         self.queue.totals()[totals.RECLAIMED_BYTES])

    def test_totals_add_up_and_outlive_the_connection(self):
        totals.increase(self.queue.state_db, errors=2, comebacks=1)
        totals.increase(self.queue.state_db, errors=3, reclaimed_bytes=10)
        reopened = self.make_queue()
        self.assertEqual({totals.RECLAIMED_BYTES: 10, totals.ERRORS: 5,
                          totals.COMEBACKS: 1}, reopened.totals())


class ThrashTestCase(base.ScrubTestCase):

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

    def test_a_file_back_within_the_window_is_detected_once(self):
        name = base.image_name(1)
        entry = self.remove(name)
        self.queue.drain(NOW + DELAY, DELAY, 5)
        self.come_back(name, NOW + 2 * HOUR)
        [comeback] = self.detect(NOW + 3 * HOUR)
        self.assertEqual((entry.id, NOW, NOW + 2 * HOUR),
                         (comeback.entry_id, comeback.removed_at,
                          comeback.came_back_at))
        self.assertEqual(
            'Image cache file %s came back 2h after a pass removed it '
            '(unused for 1d; scrub queue entry %d): it was made again for '
            'nothing; consider a longer [image_cache] '
            'remove_unused_original_minimum_age_seconds'
            % (entry.path, entry.id), comeback.warning())
        self.assertEqual(NOW + 2 * HOUR,
                         self.queue.entry(entry.id).returned_at)
        self.assertEqual([], self.detect(NOW + 4 * HOUR))
        self.assertEqual(1, self.queue.totals()[totals.COMEBACKS])

    def test_a_file_back_while_still_in_quarantine_counts(self):
        name = base.image_name(1)
        self.remove(name)
        self.come_back(name, NOW + 60)
        self.assertEqual(1, len(self.detect(NOW + 120)))

    def test_a_file_back_after_the_window_is_not_thrash(self):
        name = base.image_name(1)
        entry = self.remove(name)
        self.come_back(name, NOW + 2 * DAY)
        self.assertEqual([], self.detect(NOW + 2 * DAY + 60))
        # Recorded all the same, so that it is not looked at again.
        self.assertIsNotNone(self.queue.entry(entry.id).returned_at)
        self.assertEqual(0, self.queue.totals()[totals.COMEBACKS])

    def test_an_evicted_file_asks_for_a_bigger_budget(self):
        name = 'swap_512'
        self.remove(name, reason='over budget (cache 2.0 MiB > 1.0 MiB '
                                 'max): last used 2h ago')
        self.come_back(name, NOW + 60)
        [comeback] = self.detect(NOW + 120)
        self.assertIn('consider a bigger budget ([image_cache] '
                      'max_cache_size_mb', comeback.warning())

    def test_restored_and_rolled_back_files_are_not_thrash(self):
        restored = self.remove(base.image_name(1))
        self.queue.restore(restored.id, NOW + 60)
        self.assertEqual([], self.detect(NOW + 120))

    def test_the_very_file_quarantined_after_the_scan_is_not_thrash(self):
        name = base.image_name(1)
        seen = scan.scan(self.cache_dir) + [self.make_file(name)]
        # Another pass quarantines it between this pass's scan and its
        # detection.
        with locks.nova_lock(self.instances_path, name):
            self.queue.quarantine(seen[-1], 'unused', NOW)
        self.assertEqual([], thrash.detect(self.queue.state_db, seen,
                                           NOW + 1, DAY))

    def test_window_zero_detects_nothing(self):
        name = base.image_name(1)
        self.remove(name)
        self.come_back(name, NOW + 60)
        self.assertEqual([], self.detect(NOW + 120, window=0))
