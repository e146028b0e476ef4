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
daemon runs, and running totals that survive the queue's forgetting.
"""

import os

from cachekeeper.cache import locks
from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.state import totals
from tests.functional.scrub import base

NOW = base.NOW
DELAY = 1800


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
        self.assertEqual(scrub_entries.DRAINED,
                         self.queue.entry(entry.id).state)
        self.assertEqual(scrub_entries.QUEUED,
                         self.queue.entry(waiting.id).state)

    def test_a_future_drain_at_waits_for_it(self):
        base_file = self.make_file(base.image_name(1))
        with locks.nova_lock(self.instances_path, base_file.name):
            entry = self.queue.quarantine(base_file, 'x', NOW,
                                          drain_at=NOW + 60)
        self.assertEqual(0, self.queue.drain(NOW + 30, 0, 5).drained)
        self.assertEqual(1, self.queue.drain(NOW + 60, DELAY, 5).drained)
        self.assertEqual(scrub_entries.DRAINED,
                         self.queue.entry(entry.id).state)

    def test_expedite_makes_queued_entries_due_now(self):
        first = self.quarantine(self.make_file(base.image_name(1)))
        second = self.quarantine(self.make_file(base.image_name(2)))
        self.assertEqual(1, self.queue.expedite([first.id], NOW + 5))
        # Only queued entries, and only once.
        self.assertEqual(0, self.queue.expedite([first.id], NOW + 6))
        self.assertEqual(1, self.queue.drain(NOW + 10, DELAY, 5).drained)
        self.assertEqual(scrub_entries.DRAINED,
                         self.queue.entry(first.id).state)
        self.assertEqual(scrub_entries.QUEUED,
                         self.queue.entry(second.id).state)
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
        self.set_entry(entry.id, state=scrub_entries.PARKED)
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
        self.assertEqual([(base.image_name(2), scrub_entries.QUEUED, orphan)],
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
        later = NOW + scrub_entries.HISTORY_RETENTION + 1
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
