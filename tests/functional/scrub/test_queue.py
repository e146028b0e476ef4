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

from cachekeeper.cache import facts
from cachekeeper.cache import locks
from cachekeeper.cache import scan
from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.scrub import queue
from cachekeeper.scrub import reconcile
from tests.functional.scrub import base

NOW = base.NOW
HOUR = 3600
DELAY = 1800


class QuarantineTestCase(base.ScrubTestCase):

    def test_file_moves_into_quarantine_with_an_entry(self):
        base_file = self.make_file(base.image_name(1), b'data' * 1000)
        entry = self.quarantine(base_file)
        self.assertEqual([], self.cache_names())
        self.assertEqual(['%d-%s' % (entry.id, base_file.name)],
                         self.quarantined_names())
        with open(entry.quarantine_path, 'rb') as f:
            self.assertEqual(b'data' * 1000, f.read())
        st = os.lstat(entry.quarantine_path)
        self.assertEqual(
            (scrub_entries.QUEUED, base_file.name, base_file.path,
             facts.ORIGINAL, st.st_ino, 4000, st.st_blocks * 512,
             base.OLD_MTIME_NS, 'unused for 10d', NOW, 0),
            (entry.state, entry.name, entry.path, entry.kind, entry.ino,
             entry.size, entry.allocated, entry.mtime_ns, entry.reason,
             entry.queued_at, entry.attempts))
        self.assertEqual(entry, self.queue.entry(entry.id))

    def test_same_name_twice_does_not_collide(self):
        name = base.image_name(1)
        first = self.quarantine(self.make_file(name, b'first'))
        second = self.quarantine(self.make_file(name, b'second'))
        self.assertNotEqual(first.quarantine_path, second.quarantine_path)
        with open(first.quarantine_path, 'rb') as f:
            self.assertEqual(b'first', f.read())
        with open(second.quarantine_path, 'rb') as f:
            self.assertEqual(b'second', f.read())

    def test_file_replaced_since_the_scan_is_refused(self):
        base_file = self.make_file(base.image_name(1), b'old')
        # Made while the old one exists, so it cannot reuse its inode.
        replacement = self.make_file(base.image_name(2), b'new')
        os.rename(replacement.path, base_file.path)
        with self.assertRaisesRegex(scrub_entries.ScrubError,
                                    'replaced since the scan'):
            self.quarantine(base_file)
        self.assertEqual([base_file.name], self.cache_names())
        self.assertEqual([], self.queue.entries())

    def test_file_touched_after_the_scan_goes_back(self):
        # nova's touch after the caller's last check, before the rename.
        base_file = self.make_file(base.image_name(1), b'in use')
        os.utime(base_file.path)
        with self.assertRaisesRegex(queue.TouchedMeanwhile, 'put back'):
            self.quarantine(base_file)
        self.assertEqual([base_file.name], self.cache_names())
        self.assertEqual([], self.quarantined_names())
        [entry] = self.queue.entries()
        self.assertEqual(scrub_entries.ROLLED_BACK, entry.state)

    def test_existing_quarantine_name_is_never_overwritten(self):
        base_file = self.make_file(base.image_name(1))
        # What a database restored from a backup would run into: the next
        # entry's quarantine name is taken.
        taken = os.path.join(self.host_dir(), '1-' + base_file.name)
        with open(taken, 'wb') as f:
            f.write(b'older quarantined file')
        with self.assertRaisesRegex(scrub_entries.ScrubError, 'EEXIST'):
            self.quarantine(base_file)
        self.assertEqual([base_file.name], self.cache_names())
        with open(taken, 'rb') as f:
            self.assertEqual(b'older quarantined file', f.read())
        [entry] = self.queue.entries()
        self.assertEqual(scrub_entries.ROLLED_BACK, entry.state)
        self.assertIn('EEXIST', entry.last_error)


class DrainTestCase(base.ScrubTestCase):

    def drain(self, now, **kwargs):
        kwargs.setdefault('max_attempts', 3)
        return self.queue.drain(now, DELAY, **kwargs)

    def test_entries_wait_for_the_scrub_delay(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        result = self.drain(NOW + DELAY - 1)
        self.assertEqual(0, result.drained)
        self.assertTrue(os.path.exists(entry.quarantine_path))
        result = self.drain(NOW + DELAY)
        self.assertEqual((1, entry.allocated), (result.drained,
                                                result.bytes_reclaimed))
        self.assertFalse(os.path.exists(entry.quarantine_path))
        drained = self.queue.entry(entry.id)
        self.assertEqual((scrub_entries.DRAINED, entry.allocated),
                         (drained.state, drained.bytes_reclaimed))

    def test_queued_lists_only_what_waits(self):
        entries = [self.quarantine(self.make_file(base.image_name(number)),
                                   now=NOW + number)
                   for number in range(3)]
        self.queue.drain(NOW + 3, 0, 3)
        self.quarantine(self.make_file(base.image_name(9)), now=NOW + 9)
        waiting = self.queue.queued()
        self.assertEqual(1, len(waiting))
        entry_id, allocated, queued_at = waiting[0]
        self.assertNotIn(entry_id, [e.id for e in entries])
        self.assertEqual((self.queue.entry(entry_id).allocated, NOW + 9),
                         (allocated, queued_at))

    def test_zero_delay_drains_in_the_same_pass(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        result = self.queue.drain(NOW, 0, 3)
        self.assertEqual(1, result.drained)
        self.assertEqual(scrub_entries.DRAINED,
                         self.queue.entry(entry.id).state)

    def test_ignore_delay_drains_everything_queued(self):
        for number in range(3):
            self.quarantine(self.make_file(base.image_name(number)))
        result = self.drain(NOW, ignore_delay=True)
        self.assertEqual(3, result.drained)
        self.assertEqual([], self.quarantined_names())

    def test_bytes_reclaimed_count_allocated_blocks(self):
        path = self.make_file(base.image_name(1), b'').path
        # Sparse: 64 MiB long, 8 KiB allocated.
        with open(path, 'r+b') as f:
            f.truncate(64 * 1024 * 1024)
            f.write(b'x' * 8192)
        st = os.lstat(path)
        entry = self.quarantine(self.rescan(path))
        self.assertEqual(64 * 1024 * 1024, entry.size)
        result = self.drain(NOW, ignore_delay=True)
        self.assertEqual(st.st_blocks * 512, result.bytes_reclaimed)
        self.assertLess(result.bytes_reclaimed, entry.size)

    def test_a_file_with_another_link_reclaims_nothing(self):
        base_file = self.make_file(base.image_name(1))
        other_link = os.path.join(self.instances_path, 'other-link')
        os.link(base_file.path, other_link)
        entry = self.quarantine(self.rescan(base_file.path))
        result = self.drain(NOW, ignore_delay=True)
        self.assertEqual((1, 0), (result.drained, result.bytes_reclaimed))
        self.assertEqual(0, self.queue.entry(entry.id).bytes_reclaimed)
        self.assertTrue(os.path.exists(other_link))

    def test_undeletable_file_is_retried_with_backoff_then_parked(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        self.make_immutable(entry.quarantine_path)
        result = self.queue.drain(NOW + DELAY, DELAY, 3)
        self.assertEqual((0, 1, 0), (result.drained, result.failed,
                                     result.parked))
        self.assertIn('EPERM', result.errors[0]['message'])
        failed = self.queue.entry(entry.id)
        self.assertEqual((scrub_entries.QUEUED,
                         1), (failed.state, failed.attempts))
        self.assertEqual(NOW + DELAY + queue.RETRY_BACKOFF_BASE,
                         failed.next_attempt_at)
        # Nothing happens before the backoff is over.
        result = self.queue.drain(NOW + DELAY + 59, DELAY, 3)
        self.assertEqual((0, []), (result.failed, result.errors))
        # The second wait is twice as long.
        second_at = NOW + DELAY + queue.RETRY_BACKOFF_BASE
        result = self.queue.drain(second_at, DELAY, 3)
        self.assertEqual(1, result.failed)
        self.assertEqual(second_at + 2 * queue.RETRY_BACKOFF_BASE,
                         self.queue.entry(entry.id).next_attempt_at)
        result = self.queue.drain(second_at + 2 * queue.RETRY_BACKOFF_BASE,
                                  DELAY, 3)
        self.assertEqual((0, 1), (result.failed, result.parked))
        self.assertEqual(1, len(result.errors))
        parked = self.queue.entry(entry.id)
        self.assertEqual((scrub_entries.PARKED,
                         3), (parked.state, parked.attempts))
        self.assertIn('EPERM', parked.last_error)
        self.assertTrue(os.path.exists(entry.quarantine_path))
        # Parked entries wait for an operator, even for scrub drain.
        result = self.queue.drain(NOW + 100 * DELAY, DELAY, 3,
                                  ignore_delay=True)
        self.assertEqual((0, [], 1), (result.failed, result.errors,
                                      result.parked))
        self.make_mutable(entry.quarantine_path)
        retried = self.queue.retry(entry.id, NOW + 100 * DELAY)
        self.assertEqual((scrub_entries.QUEUED,
                         0), (retried.state, retried.attempts))
        result = self.queue.drain(NOW + 100 * DELAY, DELAY, 3)
        self.assertEqual((1, 0), (result.drained, result.parked))

    def test_retry_of_an_entry_that_is_not_parked_is_refused(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        with self.assertRaisesRegex(scrub_entries.ScrubError,
                                    'is queued, not parked'):
            self.queue.retry(entry.id, NOW)
        with self.assertRaisesRegex(scrub_entries.ScrubError,
                                    'no scrub queue entry'):
            self.queue.retry(entry.id + 1, NOW)

    def test_a_replaced_quarantine_file_is_parked_not_deleted(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        other = os.path.join(self.root, 'other')
        with open(other, 'wb') as f:
            f.write(b'not what was queued')
        os.rename(other, entry.quarantine_path)
        result = self.drain(NOW, ignore_delay=True)
        self.assertEqual((0, 1), (result.drained, result.parked))
        self.assertIn('not the file queued', result.errors[0]['message'])
        self.assertTrue(os.path.exists(entry.quarantine_path))

    def test_a_tampered_quarantine_path_is_never_deleted(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        victim = os.path.join(self.root, 'victim')
        os.link(entry.quarantine_path, victim)
        self.set_entry(entry.id, quarantine_path=victim)
        result = self.drain(NOW, ignore_delay=True)
        self.assertEqual((0, 1), (result.drained, result.parked))
        self.assertIn("not in this host's quarantine directory",
                      result.errors[0]['message'])
        self.assertTrue(os.path.exists(victim))

    def test_a_file_gone_from_quarantine_is_drained(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        os.unlink(entry.quarantine_path)
        result = self.drain(NOW, ignore_delay=True)
        self.assertEqual([], result.errors)
        self.assertEqual(scrub_entries.DRAINED,
                         self.queue.entry(entry.id).state)

    def test_a_file_moved_back_by_hand_is_rolled_back(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        os.rename(entry.quarantine_path, entry.path)
        self.drain(NOW, ignore_delay=True)
        self.assertEqual(scrub_entries.ROLLED_BACK,
                         self.queue.entry(entry.id).state)
        self.assertEqual([entry.name], self.cache_names())

    def test_stop_event_ends_the_drain_between_files(self):
        for number in range(3):
            self.quarantine(self.make_file(base.image_name(number)))
        stop = threading.Event()
        stop.set()
        result = self.drain(NOW, ignore_delay=True, stop_event=stop)
        self.assertEqual((True, 0), (result.interrupted, result.drained))
        self.assertEqual(3, len(self.quarantined_names()))

    def test_finished_entries_are_forgotten_after_the_retention(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        self.drain(NOW, ignore_delay=True)
        self.drain(NOW + scrub_entries.HISTORY_RETENTION)
        self.assertEqual(scrub_entries.DRAINED,
                         self.queue.entry(entry.id).state)
        self.drain(NOW + scrub_entries.HISTORY_RETENTION + 1)
        self.assertEqual([], self.queue.entries())

    def rescan(self, path):
        return scan.base_file(path, os.lstat(path))


class RestoreTestCase(base.ScrubTestCase):

    def test_round_trip_keeps_content_and_mtime(self):
        content = os.urandom(100000)
        base_file = self.make_file(base.image_name(1), content)
        entry = self.quarantine(base_file)
        # Touched in quarantine; the restore brings back the recorded time.
        os.utime(entry.quarantine_path)
        restored = self.queue.restore(entry.id, NOW + HOUR)
        self.assertEqual((scrub_entries.RESTORED, None),
                         (restored.state, restored.last_error))
        self.assertEqual([], self.quarantined_names())
        with open(base_file.path, 'rb') as f:
            self.assertEqual(content, f.read())
        st = os.lstat(base_file.path)
        self.assertEqual((base.OLD_MTIME_NS, base_file.ino),
                         (st.st_mtime_ns, st.st_ino))

    def test_parked_entry_can_be_restored(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        self.set_entry(entry.id, state=scrub_entries.PARKED,
                       last_error='EPERM')
        self.assertEqual(scrub_entries.RESTORED,
                         self.queue.restore(entry.id, NOW).state)
        self.assertEqual([entry.name], self.cache_names())

    def test_refused_when_the_path_exists_again(self):
        entry = self.quarantine(self.make_file(base.image_name(1), b'old'))
        self.make_file(base.image_name(1), b'downloaded again')
        with self.assertRaisesRegex(scrub_entries.ScrubError,
                                    'exists again; nothing changed'):
            self.queue.restore(entry.id, NOW)
        self.assertEqual(entry, self.queue.entry(entry.id))
        with open(entry.path, 'rb') as f:
            self.assertEqual(b'downloaded again', f.read())
        with open(entry.quarantine_path, 'rb') as f:
            self.assertEqual(b'old', f.read())

    def test_refused_when_a_symlink_took_the_path(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        os.symlink(os.path.join(self.root, 'target'), entry.path)
        with self.assertRaisesRegex(scrub_entries.ScrubError, 'exists again'):
            self.queue.restore(entry.id, NOW)
        self.assertFalse(os.path.lexists(os.path.join(self.root, 'target')))

    def test_failed_rename_changes_nothing(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        self.make_immutable(self.cache_dir)
        with self.assertRaisesRegex(scrub_entries.ScrubError,
                                    'cannot restore entry 1: EPERM .*; '
                                    'nothing changed'):
            self.queue.restore(entry.id, NOW + HOUR)
        self.assertEqual(scrub_entries.QUEUED,
                         self.queue.entry(entry.id).state)
        self.assertTrue(os.path.exists(entry.quarantine_path))

    def test_missing_cache_directory_is_a_clear_error(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        os.rmdir(self.cache_dir)
        with self.assertRaisesRegex(scrub_entries.ScrubError,
                                    'cannot restore entry 1: ENOENT .*; '
                                    'nothing changed'):
            self.queue.restore(entry.id, NOW)
        self.assertEqual(entry, self.queue.entry(entry.id))

    def test_drained_entry_cannot_be_restored(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        self.queue.drain(NOW, 0, 3)
        with self.assertRaisesRegex(scrub_entries.ScrubError,
                                    'was drained: .* is deleted'):
            self.queue.restore(entry.id, NOW)

    def test_restored_entry_cannot_be_restored_again(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        self.queue.restore(entry.id, NOW)
        with self.assertRaisesRegex(scrub_entries.ScrubError,
                                    'is restored: .* not in quarantine'):
            self.queue.restore(entry.id, NOW)

    def test_unknown_entry(self):
        with self.assertRaisesRegex(scrub_entries.ScrubError,
                                    '^no scrub queue entry with ID 42$'):
            self.queue.restore(42, NOW)

    def test_entry_being_drained_is_refused(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        self.set_entry(entry.id, state=scrub_entries.DRAINING)
        with self.assertRaisesRegex(scrub_entries.ScrubError,
                                    'is draining right now'):
            self.queue.restore(entry.id, NOW)

    def test_path_outside_the_cache_is_refused(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        linked_dir = os.path.join(self.cache_dir, 'linked')
        os.symlink(self.root, linked_dir)
        for name, path in [
                ('..', os.path.join(self.cache_dir, '..')),
                ('x', os.path.join(self.cache_dir, '..', 'x')),
                ('x', os.path.join(self.root, 'x')),
                ('x', os.path.join(linked_dir, 'x')),
                ('linked/x', os.path.join(linked_dir, 'x'))]:
            with self.subTest(path=path):
                self.set_entry(entry.id, name=name, path=path)
                with self.assertRaisesRegex(scrub_entries.ScrubError,
                                            'not a file directly in the '
                                            'image cache'):
                    self.queue.restore(entry.id, NOW)
                self.assertEqual(scrub_entries.QUEUED,
                                 self.queue.entry(entry.id).state)
        self.assertFalse(os.path.exists(os.path.join(self.root, 'x')))
        self.assertTrue(os.path.exists(entry.quarantine_path))

    def test_waits_for_nova_lock(self):
        entry = self.quarantine(self.make_file(base.image_name(1)))
        done = threading.Event()

        def restore():
            self.queue.restore(entry.id, NOW)
            done.set()

        with locks.nova_lock(self.instances_path, entry.name):
            thread = threading.Thread(target=restore)
            thread.start()
            self.assertFalse(done.wait(0.3))
            self.assertEqual([], self.cache_names())
        thread.join(10)
        self.assertTrue(done.is_set())
        self.assertEqual([entry.name], self.cache_names())


class HostsTestCase(base.ScrubTestCase):
    """Two hosts share instances_path; each has its own state database."""

    def setUp(self):
        super().setUp()
        other_state = os.path.join(self.root, 'state-b')
        os.mkdir(other_state, 0o700)
        self.other = self.make_queue('host-b', other_state)

    def test_hosts_never_touch_each_others_files(self):
        mine = self.quarantine(self.make_file(base.image_name(1)))
        theirs = self.quarantine(self.make_file(base.image_name(2)),
                                 scrub_queue=self.other)
        self.assertEqual(reconcile.ReconcileResult(),
                         self.other.reconcile(NOW))
        self.assertEqual(reconcile.ReconcileResult(),
                         self.queue.reconcile(NOW))
        result = self.other.drain(NOW, 0, 3, ignore_delay=True)
        self.assertEqual(1, result.drained)
        self.assertTrue(os.path.exists(mine.quarantine_path))
        self.assertFalse(os.path.exists(theirs.quarantine_path))
        self.assertEqual([mine], self.queue.entries())
