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

import os
import threading

import pytest

from cachekeeper.cache import facts
from cachekeeper.cache import locks
from cachekeeper.cache import scan
from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.scrub import queue
from cachekeeper.scrub import reconcile
from tests.lib import scrubtree

NOW = scrubtree.NOW
HOUR = 3600
DELAY = 1800


class QueueTree(scrubtree.ScrubTree):
    """A ScrubTree that drains with the scrub delay of these tests."""

    def drain(self, now, **kwargs):
        kwargs.setdefault('max_attempts', 3)
        return self.queue.drain(now, DELAY, **kwargs)

    def rescan(self, path):
        return scan.base_file(path, os.lstat(path))


scrub = scrubtree.tree_fixture(QueueTree)


def test_file_moves_into_quarantine_with_an_entry(scrub):
    base_file = scrub.make_file(scrubtree.image_name(1), b'data' * 1000)
    entry = scrub.quarantine(base_file)
    assert scrub.cache_names() == []
    assert scrub.quarantined_names() == ['%d-%s' % (entry.id, base_file.name)]
    with open(entry.quarantine_path, 'rb') as f:
        assert f.read() == b'data' * 1000
    st = os.lstat(entry.quarantine_path)
    assert (scrub_entries.QUEUED, base_file.name, base_file.path,
            facts.ORIGINAL, st.st_ino, 4000, st.st_blocks * 512,
            scrubtree.OLD_MTIME_NS, 'unused for 10d', NOW, 0) == (
        entry.state, entry.name, entry.path, entry.kind, entry.ino,
        entry.size, entry.allocated, entry.mtime_ns, entry.reason,
        entry.queued_at, entry.attempts)
    assert entry == scrub.queue.entry(entry.id)


def test_same_name_twice_does_not_collide(scrub):
    name = scrubtree.image_name(1)
    first = scrub.quarantine(scrub.make_file(name, b'first'))
    second = scrub.quarantine(scrub.make_file(name, b'second'))
    assert first.quarantine_path != second.quarantine_path
    with open(first.quarantine_path, 'rb') as f:
        assert f.read() == b'first'
    with open(second.quarantine_path, 'rb') as f:
        assert f.read() == b'second'


def test_file_replaced_since_the_scan_is_refused(scrub):
    base_file = scrub.make_file(scrubtree.image_name(1), b'old')
    # Made while the old one exists, so it cannot reuse its inode.
    replacement = scrub.make_file(scrubtree.image_name(2), b'new')
    os.rename(replacement.path, base_file.path)
    with pytest.raises(scrub_entries.ScrubError,
                       match='replaced since the scan'):
        scrub.quarantine(base_file)
    assert [base_file.name] == scrub.cache_names()
    assert scrub.queue.entries() == []


def test_file_touched_after_the_scan_goes_back(scrub):
    # nova's touch after the caller's last check, before the rename.
    base_file = scrub.make_file(scrubtree.image_name(1), b'in use')
    os.utime(base_file.path)
    with pytest.raises(queue.TouchedMeanwhile, match='put back'):
        scrub.quarantine(base_file)
    assert [base_file.name] == scrub.cache_names()
    assert scrub.quarantined_names() == []
    [entry] = scrub.queue.entries()
    assert entry.state == scrub_entries.ROLLED_BACK


def test_existing_quarantine_name_is_never_overwritten(scrub):
    base_file = scrub.make_file(scrubtree.image_name(1))
    # What a database restored from a backup would run into: the next
    # entry's quarantine name is taken.
    taken = os.path.join(scrub.host_dir(), '1-' + base_file.name)
    with open(taken, 'wb') as f:
        f.write(b'older quarantined file')
    with pytest.raises(scrub_entries.ScrubError, match='EEXIST'):
        scrub.quarantine(base_file)
    assert [base_file.name] == scrub.cache_names()
    with open(taken, 'rb') as f:
        assert f.read() == b'older quarantined file'
    [entry] = scrub.queue.entries()
    assert entry.state == scrub_entries.ROLLED_BACK
    assert 'EEXIST' in entry.last_error


def test_entries_wait_for_the_scrub_delay(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    result = scrub.drain(NOW + DELAY - 1)
    assert result.drained == 0
    assert os.path.exists(entry.quarantine_path)
    result = scrub.drain(NOW + DELAY)
    assert (1, entry.allocated) == (result.drained,
                                    result.bytes_reclaimed)
    assert not os.path.exists(entry.quarantine_path)
    drained = scrub.queue.entry(entry.id)
    assert (scrub_entries.DRAINED, entry.allocated) == (
        drained.state, drained.bytes_reclaimed)


def test_queued_lists_only_what_waits(scrub):
    entries = [scrub.quarantine(scrub.make_file(scrubtree.image_name(number)),
                                now=NOW + number)
               for number in range(3)]
    scrub.queue.drain(NOW + 3, 0, 3)
    scrub.quarantine(scrub.make_file(scrubtree.image_name(9)), now=NOW + 9)
    waiting = scrub.queue.queued()
    assert len(waiting) == 1
    entry_id, allocated, queued_at = waiting[0]
    assert entry_id not in [e.id for e in entries]
    assert (scrub.queue.entry(entry_id).allocated, NOW + 9) == (
        allocated, queued_at)


def test_zero_delay_drains_in_the_same_pass(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    result = scrub.queue.drain(NOW, 0, 3)
    assert result.drained == 1
    assert scrub.queue.entry(entry.id).state == scrub_entries.DRAINED


def test_ignore_delay_drains_everything_queued(scrub):
    for number in range(3):
        scrub.quarantine(scrub.make_file(scrubtree.image_name(number)))
    result = scrub.drain(NOW, ignore_delay=True)
    assert result.drained == 3
    assert scrub.quarantined_names() == []


def test_bytes_reclaimed_count_allocated_blocks(scrub):
    path = scrub.make_file(scrubtree.image_name(1), b'').path
    # Sparse: 64 MiB long, 8 KiB allocated.
    with open(path, 'r+b') as f:
        f.truncate(64 * 1024 * 1024)
        f.write(b'x' * 8192)
    st = os.lstat(path)
    entry = scrub.quarantine(scrub.rescan(path))
    assert 64 * 1024 * 1024 == entry.size
    result = scrub.drain(NOW, ignore_delay=True)
    assert st.st_blocks * 512 == result.bytes_reclaimed
    assert result.bytes_reclaimed < entry.size


def test_a_file_with_another_link_reclaims_nothing(scrub):
    base_file = scrub.make_file(scrubtree.image_name(1))
    other_link = os.path.join(scrub.instances_path, 'other-link')
    os.link(base_file.path, other_link)
    entry = scrub.quarantine(scrub.rescan(base_file.path))
    result = scrub.drain(NOW, ignore_delay=True)
    assert (result.drained, result.bytes_reclaimed) == (1, 0)
    assert scrub.queue.entry(entry.id).bytes_reclaimed == 0
    assert os.path.exists(other_link)


def test_undeletable_file_is_retried_with_backoff_then_parked(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    scrub.make_immutable(entry.quarantine_path)
    result = scrub.queue.drain(NOW + DELAY, DELAY, 3)
    assert (result.drained, result.failed,
            result.parked) == (0, 1, 0)
    assert 'EPERM' in result.errors[0]['message']
    failed = scrub.queue.entry(entry.id)
    assert (failed.state, failed.attempts) == (scrub_entries.QUEUED,
                                              1)
    assert NOW + DELAY + queue.RETRY_BACKOFF_BASE == failed.next_attempt_at
    # Nothing happens before the backoff is over.
    result = scrub.queue.drain(NOW + DELAY + 59, DELAY, 3)
    assert (result.failed, result.errors) == (0, [])
    # The second wait is twice as long.
    second_at = NOW + DELAY + queue.RETRY_BACKOFF_BASE
    result = scrub.queue.drain(second_at, DELAY, 3)
    assert result.failed == 1
    assert second_at + 2 * queue.RETRY_BACKOFF_BASE == (
        scrub.queue.entry(entry.id).next_attempt_at)
    result = scrub.queue.drain(second_at + 2 * queue.RETRY_BACKOFF_BASE,
                               DELAY, 3)
    assert (result.failed, result.parked) == (0, 1)
    assert len(result.errors) == 1
    parked = scrub.queue.entry(entry.id)
    assert (parked.state, parked.attempts) == (scrub_entries.PARKED,
                                              3)
    assert 'EPERM' in parked.last_error
    assert os.path.exists(entry.quarantine_path)
    # Parked entries wait for an operator, even for scrub drain.
    result = scrub.queue.drain(NOW + 100 * DELAY, DELAY, 3,
                               ignore_delay=True)
    assert (result.failed, result.errors,
            result.parked) == (0, [], 1)
    scrub.make_mutable(entry.quarantine_path)
    retried = scrub.queue.retry(entry.id, NOW + 100 * DELAY)
    assert (retried.state, retried.attempts) == (scrub_entries.QUEUED,
                                                0)
    result = scrub.queue.drain(NOW + 100 * DELAY, DELAY, 3)
    assert (result.drained, result.parked) == (1, 0)


def test_retry_of_an_entry_that_is_not_parked_is_refused(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    with pytest.raises(scrub_entries.ScrubError,
                       match='is queued, not parked'):
        scrub.queue.retry(entry.id, NOW)
    with pytest.raises(scrub_entries.ScrubError, match='no scrub queue entry'):
        scrub.queue.retry(entry.id + 1, NOW)


def test_a_replaced_quarantine_file_is_parked_not_deleted(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    other = os.path.join(scrub.root, 'other')
    with open(other, 'wb') as f:
        f.write(b'not what was queued')
    os.rename(other, entry.quarantine_path)
    result = scrub.drain(NOW, ignore_delay=True)
    assert (result.drained, result.parked) == (0, 1)
    assert 'not the file queued' in result.errors[0]['message']
    assert os.path.exists(entry.quarantine_path)


def test_a_tampered_quarantine_path_is_never_deleted(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    victim = os.path.join(scrub.root, 'victim')
    os.link(entry.quarantine_path, victim)
    scrub.set_entry(entry.id, quarantine_path=victim)
    result = scrub.drain(NOW, ignore_delay=True)
    assert (result.drained, result.parked) == (0, 1)
    assert "not in this host's quarantine directory" in (
        result.errors[0]['message'])
    assert os.path.exists(victim)


def test_a_file_gone_from_quarantine_is_drained(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    os.unlink(entry.quarantine_path)
    result = scrub.drain(NOW, ignore_delay=True)
    assert result.errors == []
    assert scrub.queue.entry(entry.id).state == scrub_entries.DRAINED


def test_a_file_moved_back_by_hand_is_rolled_back(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    os.rename(entry.quarantine_path, entry.path)
    scrub.drain(NOW, ignore_delay=True)
    assert scrub.queue.entry(entry.id).state == scrub_entries.ROLLED_BACK
    assert [entry.name] == scrub.cache_names()


def test_stop_event_ends_the_drain_between_files(scrub):
    for number in range(3):
        scrub.quarantine(scrub.make_file(scrubtree.image_name(number)))
    stop = threading.Event()
    stop.set()
    result = scrub.drain(NOW, ignore_delay=True, stop_event=stop)
    assert (result.interrupted, result.drained) == (True, 0)
    assert len(scrub.quarantined_names()) == 3


def test_finished_entries_are_forgotten_after_the_retention(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    scrub.drain(NOW, ignore_delay=True)
    scrub.drain(NOW + scrub_entries.HISTORY_RETENTION)
    assert scrub.queue.entry(entry.id).state == scrub_entries.DRAINED
    scrub.drain(NOW + scrub_entries.HISTORY_RETENTION + 1)
    assert scrub.queue.entries() == []


def test_round_trip_keeps_content_and_mtime(scrub):
    content = os.urandom(100000)
    base_file = scrub.make_file(scrubtree.image_name(1), content)
    entry = scrub.quarantine(base_file)
    # Touched in quarantine; the restore brings back the recorded time.
    os.utime(entry.quarantine_path)
    restored = scrub.queue.restore(entry.id, NOW + HOUR)
    assert (restored.state, restored.last_error) == (
        scrub_entries.RESTORED, None)
    assert scrub.quarantined_names() == []
    with open(base_file.path, 'rb') as f:
        assert content == f.read()
    st = os.lstat(base_file.path)
    assert (scrubtree.OLD_MTIME_NS, base_file.ino) == (
        st.st_mtime_ns, st.st_ino)


def test_parked_entry_can_be_restored(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    scrub.set_entry(entry.id, state=scrub_entries.PARKED,
                    last_error='EPERM')
    assert scrub.queue.restore(entry.id, NOW).state == scrub_entries.RESTORED
    assert [entry.name] == scrub.cache_names()


def test_refused_when_the_path_exists_again(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1), b'old'))
    scrub.make_file(scrubtree.image_name(1), b'downloaded again')
    with pytest.raises(scrub_entries.ScrubError,
                       match='exists again; nothing changed'):
        scrub.queue.restore(entry.id, NOW)
    assert entry == scrub.queue.entry(entry.id)
    with open(entry.path, 'rb') as f:
        assert f.read() == b'downloaded again'
    with open(entry.quarantine_path, 'rb') as f:
        assert f.read() == b'old'


def test_refused_when_a_symlink_took_the_path(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    os.symlink(os.path.join(scrub.root, 'target'), entry.path)
    with pytest.raises(scrub_entries.ScrubError, match='exists again'):
        scrub.queue.restore(entry.id, NOW)
    assert not os.path.lexists(os.path.join(scrub.root, 'target'))


def test_failed_rename_changes_nothing(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    scrub.make_immutable(scrub.cache_dir)
    with pytest.raises(scrub_entries.ScrubError,
                       match='cannot restore entry 1: EPERM .*; '
                             'nothing changed'):
        scrub.queue.restore(entry.id, NOW + HOUR)
    assert scrub.queue.entry(entry.id).state == scrub_entries.QUEUED
    assert os.path.exists(entry.quarantine_path)


def test_missing_cache_directory_is_a_clear_error(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    os.rmdir(scrub.cache_dir)
    with pytest.raises(scrub_entries.ScrubError,
                       match='cannot restore entry 1: ENOENT .*; '
                             'nothing changed'):
        scrub.queue.restore(entry.id, NOW)
    assert entry == scrub.queue.entry(entry.id)


def test_drained_entry_cannot_be_restored(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    scrub.queue.drain(NOW, 0, 3)
    with pytest.raises(scrub_entries.ScrubError,
                       match='was drained: .* is deleted'):
        scrub.queue.restore(entry.id, NOW)


def test_restored_entry_cannot_be_restored_again(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    scrub.queue.restore(entry.id, NOW)
    with pytest.raises(scrub_entries.ScrubError,
                       match='is restored: .* not in quarantine'):
        scrub.queue.restore(entry.id, NOW)


def test_unknown_entry(scrub):
    with pytest.raises(scrub_entries.ScrubError,
                       match='^no scrub queue entry with ID 42$'):
        scrub.queue.restore(42, NOW)


def test_entry_being_drained_is_refused(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    scrub.set_entry(entry.id, state=scrub_entries.DRAINING)
    with pytest.raises(scrub_entries.ScrubError,
                       match='is draining right now'):
        scrub.queue.restore(entry.id, NOW)


# Paths relative to the tree's root; the cache is instances/_base in it,
# and instances/_base/linked a symlink to the root.
@pytest.mark.parametrize('name, path', [
    ('..', 'instances/_base/..'),
    ('x', 'instances/_base/../x'),
    ('x', 'x'),
    ('x', 'instances/_base/linked/x'),
    ('linked/x', 'instances/_base/linked/x')])
def test_path_outside_the_cache_is_refused(scrub, name, path):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    os.symlink(scrub.root, os.path.join(scrub.cache_dir, 'linked'))
    scrub.set_entry(entry.id, name=name, path=os.path.join(scrub.root, path))
    with pytest.raises(scrub_entries.ScrubError,
                       match='not a file directly in the image cache'):
        scrub.queue.restore(entry.id, NOW)
    assert scrub.queue.entry(entry.id).state == scrub_entries.QUEUED
    assert not os.path.exists(os.path.join(scrub.root, 'x'))
    assert os.path.exists(entry.quarantine_path)


def test_waits_for_nova_lock(scrub):
    entry = scrub.quarantine(scrub.make_file(scrubtree.image_name(1)))
    done = threading.Event()

    def restore():
        scrub.queue.restore(entry.id, NOW)
        done.set()

    with locks.nova_lock(scrub.instances_path, entry.name):
        thread = threading.Thread(target=restore)
        thread.start()
        assert not done.wait(0.3)
        assert scrub.cache_names() == []
    thread.join(10)
    assert done.is_set()
    assert [entry.name] == scrub.cache_names()


class HostsTree(scrubtree.ScrubTree):
    """Two hosts share instances_path; each has its own state database."""

    def __init__(self, root):
        super().__init__(root)
        other_state = os.path.join(self.root, 'state-b')
        os.mkdir(other_state, 0o700)
        self.other = self.make_queue('host-b', other_state)


hosts = scrubtree.tree_fixture(HostsTree, name='hosts')


def test_hosts_never_touch_each_others_files(hosts):
    mine = hosts.quarantine(hosts.make_file(scrubtree.image_name(1)))
    theirs = hosts.quarantine(hosts.make_file(scrubtree.image_name(2)),
                              scrub_queue=hosts.other)
    assert hosts.other.reconcile(NOW) == reconcile.ReconcileResult()
    assert hosts.queue.reconcile(NOW) == reconcile.ReconcileResult()
    result = hosts.other.drain(NOW, 0, 3, ignore_delay=True)
    assert result.drained == 1
    assert os.path.exists(mine.quarantine_path)
    assert not os.path.exists(theirs.quarantine_path)
    assert [mine] == hosts.queue.entries()
