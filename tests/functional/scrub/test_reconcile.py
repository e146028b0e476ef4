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
from tests.lib import scrubtree

NOW = scrubtree.NOW
HOUR = 3600
DELAY = 1800


class ReconcileTree(scrubtree.ScrubTree):

    def place_in_quarantine(self, quarantine_name, content=b'orphan'):
        path = os.path.join(self.host_dir(), quarantine_name)
        with open(path, 'wb') as f:
            f.write(content)
        return path


scrub = scrubtree.tree_fixture(ReconcileTree)


def test_file_without_entry_is_adopted_not_deleted(scrub):
    name = scrubtree.image_name(1)
    path = scrub.place_in_quarantine('7-' + name)
    result = scrub.queue.reconcile(NOW)
    assert result.adopted == 1
    [entry] = scrub.queue.entries()
    assert (name, os.path.join(scrub.cache_dir, name), path, facts.ORIGINAL,
            scrub_entries.QUEUED, NOW, os.lstat(path).st_ino) == (
        entry.name, entry.path, entry.quarantine_path, entry.kind,
        entry.state, entry.queued_at, entry.ino)
    assert os.path.exists(path)
    # Adopted once only.
    assert scrub.queue.reconcile(NOW).adopted == 0
    assert len(scrub.queue.entries()) == 1
    # It waits for the scrub delay like any other entry.
    assert scrub.queue.drain(NOW + DELAY - 1, DELAY,
                             3).drained == 0
    # And it can be restored.
    scrub.queue.restore(entry.id, NOW)
    assert [name] == scrub.cache_names()


def test_adopted_file_without_entry_id_keeps_its_name(scrub):
    scrub.place_in_quarantine('stray')
    scrub.queue.reconcile(NOW)
    [entry] = scrub.queue.entries()
    assert (entry.name, entry.kind) == ('stray', facts.FOREIGN)


def test_non_files_in_quarantine_are_left_alone(scrub):
    os.mkdir(os.path.join(scrub.host_dir(), 'a-directory'))
    os.symlink('/etc/hostname', os.path.join(scrub.host_dir(), 'a-link'))
    assert scrub.queue.reconcile(NOW).adopted == 0
    assert scrub.quarantined_names() == ['a-directory', 'a-link']


def test_entry_whose_file_is_back_in_the_cache_is_rolled_back(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    os.rename(entry.quarantine_path, entry.path)
    result = scrub.queue.reconcile(NOW)
    assert result.rolled_back == 1
    assert scrub.queue.entry(entry.id).state == scrub_entries.ROLLED_BACK


def test_entry_whose_file_is_gone_is_drained(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    os.unlink(entry.quarantine_path)
    result = scrub.queue.reconcile(NOW)
    assert result.drained == 1
    assert scrub.queue.entry(entry.id).state == scrub_entries.DRAINED


def test_consistent_queue_is_left_as_it_is(scrub):
    entries = [scrub.quarantine(scrub.make_file(scrubtree.image_name(n)))
               for n in range(3)]
    result = scrub.queue.reconcile(NOW + HOUR)
    assert result == reconcile.ReconcileResult()
    assert entries == scrub.queue.entries()
