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
from tests.lib import scrubtree

NOW = scrubtree.NOW
DELAY = 1800


def test_an_entry_with_drain_at_skips_the_scrub_delay(scrub):
    base_file = scrub.make_file(scrubtree.image_name(1))
    with locks.nova_lock(scrub.instances_path, base_file.name):
        entry = scrub.queue.quarantine(base_file, 'over budget', NOW,
                                       drain_at=NOW)
    assert entry.drain_at == NOW
    waiting = scrub.quarantine(scrub.make_file(scrubtree.image_name(2)))
    result = scrub.queue.drain(NOW + 1, DELAY, 5)
    assert result.drained == 1
    assert scrub.queue.entry(entry.id).state == scrub_entries.DRAINED
    assert scrub.queue.entry(waiting.id).state == scrub_entries.QUEUED


def test_a_future_drain_at_waits_for_it(scrub):
    base_file = scrub.make_file(scrubtree.image_name(1))
    with locks.nova_lock(scrub.instances_path, base_file.name):
        entry = scrub.queue.quarantine(base_file, 'x', NOW,
                                       drain_at=NOW + 60)
    assert scrub.queue.drain(NOW + 30, 0, 5).drained == 0
    assert scrub.queue.drain(NOW + 60, DELAY, 5).drained == 1
    assert scrub.queue.entry(entry.id).state == scrub_entries.DRAINED


def test_expedite_makes_queued_entries_due_now(scrub):
    first = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    second = scrub.quarantine(scrub.make_file(scrubtree.image_name(2)))
    assert scrub.queue.expedite([first.id], NOW + 5) == 1
    # Only queued entries, and only once.
    assert scrub.queue.expedite([first.id], NOW + 6) == 0
    assert scrub.queue.drain(NOW + 10, DELAY, 5).drained == 1
    assert scrub.queue.entry(first.id).state == scrub_entries.DRAINED
    assert scrub.queue.entry(second.id).state == scrub_entries.QUEUED
    assert os.listdir(scrub.cache_dir) == []


def test_expedite_leaves_entries_in_other_states(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    scrub.queue.restore(entry.id, NOW)
    assert scrub.queue.expedite([entry.id], NOW) == 0
    assert scrub.queue.entry(entry.id).drain_at is None


def test_a_parked_entry_is_not_drained_by_drain_at(scrub):
    base_file = scrub.make_file(scrubtree.image_name(1))
    with locks.nova_lock(scrub.instances_path, base_file.name):
        entry = scrub.queue.quarantine(base_file, 'x', NOW, drain_at=NOW)
    scrub.set_entry(entry.id, state=scrub_entries.PARKED)
    assert scrub.queue.drain(NOW + 10, 0, 5).drained == 0


def test_files_in_quarantine_without_an_entry_are_queued(scrub):
    known = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    orphan = os.path.join(scrub.host_dir(), '99-' + scrubtree.image_name(2))
    with open(orphan, 'wb') as f:
        f.write(b'x' * 100)
    assert scrub.queue.adopt_orphans(NOW) == 1
    assert scrub.queue.adopt_orphans(NOW) == 0
    adopted = [e for e in scrub.queue.entries() if e.id != known.id]
    assert [(scrubtree.image_name(2), scrub_entries.QUEUED, orphan)] == (
        [(e.name, e.state, e.quarantine_path)
         for e in adopted])
    # Adopted, then drained like any other entry: never on the spot.
    assert os.path.exists(orphan)
    scrub.queue.drain(NOW + DELAY, DELAY, 5)
    assert not os.path.exists(orphan)


def test_reclaimed_bytes_survive_the_queue_forgetting_entries(scrub):
    for number in range(3):
        scrub.quarantine(scrub.make_file(scrubtree.image_name(number),
                                         content=b'x' * 8192))
    scrub.queue.drain(NOW, 0, 5)
    reclaimed = scrub.queue.totals()[totals.RECLAIMED_BYTES]
    assert reclaimed >= 3 * 8192
    later = NOW + scrub_entries.HISTORY_RETENTION + 1
    scrub.queue.drain(later, 0, 5)
    assert scrub.queue.entries() == []
    assert reclaimed == scrub.queue.totals()[totals.RECLAIMED_BYTES]


def test_totals_add_up_and_outlive_the_connection(scrub):
    totals.increase(scrub.queue.state_db, errors=2, comebacks=1)
    totals.increase(scrub.queue.state_db, errors=3, reclaimed_bytes=10)
    reopened = scrub.make_queue()
    assert reopened.totals() == {totals.RECLAIMED_BYTES: 10, totals.ERRORS: 5,
                                 totals.COMEBACKS: 1}
