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

"""Reconcile on real files: entries settled from where their inode is."""

import os

from cachekeeper.cache import facts
from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.scrub import reconcile
from tests.functional.scrub import base

NOW = base.NOW
HOUR = 3600
DELAY = 1800


class ReconcileTestCase(base.ScrubTestCase):

    def place_in_quarantine(self, quarantine_name, content=b'orphan'):
        path = os.path.join(self.host_dir(), quarantine_name)
        with open(path, 'wb') as f:
            f.write(content)
        return path

    def test_file_without_entry_is_adopted_not_deleted(self):
        name = base.image_name(1)
        path = self.place_in_quarantine('7-' + name)
        result = self.queue.reconcile(NOW)
        self.assertEqual(1, result.adopted)
        [entry] = self.queue.entries()
        self.assertEqual(
            (name, os.path.join(self.cache_dir, name), path, facts.ORIGINAL,
             scrub_entries.QUEUED, NOW, os.lstat(path).st_ino),
            (entry.name, entry.path, entry.quarantine_path, entry.kind,
             entry.state, entry.queued_at, entry.ino))
        self.assertTrue(os.path.exists(path))
        # Adopted once only.
        self.assertEqual(0, self.queue.reconcile(NOW).adopted)
        self.assertEqual(1, len(self.queue.entries()))
        # It waits for the scrub delay like any other entry.
        self.assertEqual(0, self.queue.drain(NOW + DELAY - 1, DELAY,
                                             3).drained)
        # And it can be restored.
        self.queue.restore(entry.id, NOW)
        self.assertEqual([name], self.cache_names())

    def test_adopted_file_without_entry_id_keeps_its_name(self):
        self.place_in_quarantine('stray')
        self.queue.reconcile(NOW)
        [entry] = self.queue.entries()
        self.assertEqual(('stray', facts.FOREIGN), (entry.name, entry.kind))

    def test_non_files_in_quarantine_are_left_alone(self):
        os.mkdir(os.path.join(self.host_dir(), 'a-directory'))
        os.symlink('/etc/hostname', os.path.join(self.host_dir(), 'a-link'))
        self.assertEqual(0, self.queue.reconcile(NOW).adopted)
        self.assertEqual(['a-directory', 'a-link'], self.quarantined_names())

    def test_entry_whose_file_is_back_in_the_cache_is_rolled_back(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        os.rename(entry.quarantine_path, entry.path)
        result = self.queue.reconcile(NOW)
        self.assertEqual(1, result.rolled_back)
        self.assertEqual(scrub_entries.ROLLED_BACK,
                         self.queue.entry(entry.id).state)

    def test_entry_whose_file_is_gone_is_drained(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        os.unlink(entry.quarantine_path)
        result = self.queue.reconcile(NOW)
        self.assertEqual(1, result.drained)
        self.assertEqual(scrub_entries.DRAINED,
                         self.queue.entry(entry.id).state)

    def test_consistent_queue_is_left_as_it_is(self):
        entries = [self.quarantine(self.make_file(base.image_name(n)))
                   for n in range(3)]
        result = self.queue.reconcile(NOW + HOUR)
        self.assertEqual(reconcile.ReconcileResult(), result)
        self.assertEqual(entries, self.queue.entries())
