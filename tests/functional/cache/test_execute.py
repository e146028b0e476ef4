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

"""execute on a real image cache, with real locks held by other processes."""

import os
import stat
import threading
import time
import unittest

import fixtures

from cachekeeper.cache import execute
from cachekeeper.cache import facts
from cachekeeper.cache import locks
from cachekeeper.cache import plan
from cachekeeper.cache import scan
from cachekeeper.scrub import queue
from cachekeeper.state import db
from tests.functional.cache import test_locks

DAY = 86400
OLD = 2 * DAY
UNUSED = 'a9993e364706816aba3e25717850c26c9cd0d89d'
UNUSED_TOO = 'f' * 40
IN_USE = 'b' * 40
YOUNG = 'c' * 40

POLICY = facts.Policy(remove_unused=True, original_min_age=DAY,
                      resized_min_age=3600, swap_min_age=DAY,
                      ephemeral_min_age=DAY)


class StandInInventory:
    """The Inventory interface over a Usage the test controls.

    ``on_recheck`` runs at the start of recheck, i.e. inside the nova lock.
    """

    def __init__(self):
        self.usage = facts.Usage()
        self.rechecked = []
        self.batches = []
        self.on_recheck = None

    def collect(self, cache_names):
        return self.usage

    def recheck(self, name):
        self.rechecked.append(name)
        if self.on_recheck is not None:
            self.on_recheck(name)
        return (tuple(self.usage.references_to(name)),
                self.usage.doubts_about(name))

    def recheck_many(self, names):
        self.batches.append(list(names))
        return {name: self.recheck(name) for name in names}


class ExecuteTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.instances_path = self.useFixture(fixtures.TempDir()).path
        self.cache_dir = os.path.join(self.instances_path, '_base')
        os.mkdir(self.cache_dir)
        self.inventory = StandInInventory()
        state_path = self.useFixture(fixtures.TempDir()).path
        self.scrub_queue = queue.ScrubQueue(
            db.open_state(state_path), self.instances_path, self.cache_dir,
            os.path.join(self.instances_path, '.quarantine'), 'host-1')
        self.scrub_queue.check_quarantine_dir()
        self.addCleanup(self.scrub_queue.close)

    def path(self, name):
        return os.path.join(self.cache_dir, name)

    def lock_path(self, name):
        return locks.lock_file_path(self.instances_path, name)

    def make_file(self, name, age=OLD, directory=None):
        path = os.path.join(directory or self.cache_dir, name)
        with open(path, 'wb') as f:
            f.write(b'\1' * 65536)
        self.set_age(path, age)
        return path

    def set_age(self, path, age):
        mtime = time.time() - age
        os.utime(path, (mtime, mtime))

    def mtime(self, path):
        return os.lstat(path).st_mtime

    def use(self, name):
        self.inventory.usage.add_reference(facts.Reference(
            name=name, source='/instances/uuid-1/disk',
            reason='backing file of /instances/uuid-1/disk'))

    def plan(self):
        base_files = scan.scan(self.cache_dir)
        usage = self.inventory.collect([b.name for b in base_files])
        return plan.plan(base_files, usage, POLICY, time.time())

    def execute(self, decisions, **kwargs):
        return execute.execute(decisions, self.inventory, self.instances_path,
                               POLICY, self.scrub_queue, **kwargs)

    def verdicts(self, result):
        return {os.path.basename(f.path): (f.verdict, f.reason)
                for f in result.files}

    def test_removes_unused_file_and_leaves_the_lock_file(self):
        self.make_file(UNUSED)
        allocated = os.lstat(self.path(UNUSED)).st_blocks * 512
        result = self.execute(self.plan())
        self.assertEqual({UNUSED: (facts.QUEUED,
                                   'unused for 2d (minimum 1d)')},
                         self.verdicts(result))
        self.assertFalse(os.path.lexists(self.path(UNUSED)))
        self.assertTrue(os.path.isfile(self.lock_path(UNUSED)))
        self.assertEqual([UNUSED], self.inventory.rechecked)
        self.assertEqual(allocated, result.bytes_queued)
        self.assertGreater(result.bytes_queued, 0)
        self.assertEqual([], result.errors)
        self.assertFalse(result.interrupted)

    def test_lock_file_left_behind_belongs_to_nova(self):
        if os.geteuid() != 0:
            self.skipTest('changing file owners needs root')
        locks_dir = locks.locks_dir(self.instances_path)
        os.mkdir(locks_dir)
        os.chown(locks_dir, test_locks.NOVA_UID, test_locks.NOVA_GID)
        self.make_file(UNUSED)
        self.execute(self.plan())
        st = os.stat(self.lock_path(UNUSED))
        self.assertEqual(
            (test_locks.NOVA_UID, test_locks.NOVA_GID, 0o644),
            (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)))

    def test_other_verdicts_leave_files_alone(self):
        self.make_file(YOUNG, age=3600)
        young_mtime = self.mtime(self.path(YOUNG))
        os.symlink(self.make_file(UNUSED, directory=self.instances_path),
                   self.path(UNUSED))
        result = self.execute(self.plan())
        self.assertEqual(
            {UNUSED: (facts.IGNORED, 'symlink; never removed'),
             YOUNG: (facts.TOO_YOUNG, 'unused, 1h of 1d')},
            self.verdicts(result))
        self.assertEqual(young_mtime, self.mtime(self.path(YOUNG)))
        self.assertTrue(os.path.islink(self.path(UNUSED)))
        self.assertFalse(os.path.exists(locks.locks_dir(self.instances_path)))
        self.assertEqual([], self.inventory.rechecked)

    def test_files_in_use_are_touched(self):
        self.make_file(IN_USE)
        self.use(IN_USE)
        before = time.time()
        result = self.execute(self.plan())
        self.assertEqual({IN_USE: (facts.IN_USE,
                                   'backing file of /instances/uuid-1/disk')},
                         self.verdicts(result))
        self.assertGreaterEqual(self.mtime(self.path(IN_USE)), before - 1)
        self.assertEqual([], result.errors)

    def test_touch_failure_is_an_error_and_the_file_stays_in_use(self):
        self.make_file(IN_USE)
        self.make_file(UNUSED)
        self.use(IN_USE)
        decisions = self.plan()
        os.unlink(self.path(IN_USE))
        result = self.execute(decisions)
        verdict, reason = self.verdicts(result)[IN_USE]
        self.assertEqual(facts.IN_USE, verdict)
        self.assertIn('ENOENT', reason)
        self.assertEqual(1, len(result.errors))
        self.assertEqual(self.path(IN_USE), result.errors[0]['path'])
        self.assertIn(self.path(IN_USE), result.errors[0]['message'])
        self.assertIn('ENOENT', result.errors[0]['message'])
        self.assertEqual(facts.QUEUED, self.verdicts(result)[UNUSED][0])

    def test_file_in_use_replaced_by_symlink_is_not_followed(self):
        target = self.make_file('target', directory=self.instances_path)
        target_mtime = self.mtime(target)
        self.make_file(IN_USE)
        self.use(IN_USE)
        decisions = self.plan()
        os.unlink(self.path(IN_USE))
        os.symlink(target, self.path(IN_USE))
        result = self.execute(decisions)
        self.assertEqual(
            (facts.IN_USE, 'backing file of /instances/uuid-1/disk; not '
                           'touched: replaced by a non-regular file since '
                           'scan'),
            self.verdicts(result)[IN_USE])
        self.assertEqual(target_mtime, self.mtime(target))

    def test_file_touched_after_plan_is_kept(self):
        self.make_file(UNUSED)
        decisions = self.plan()
        os.utime(self.path(UNUSED))
        result = self.execute(decisions)
        self.assertEqual({UNUSED: (facts.KEPT, 're-touched since scan')},
                         self.verdicts(result))
        self.assertTrue(os.path.isfile(self.path(UNUSED)))

    def test_file_replaced_by_another_inode_is_kept(self):
        self.make_file(UNUSED)
        decisions = self.plan()
        replacement = self.make_file('new.tmp')
        os.rename(replacement, self.path(UNUSED))
        result = self.execute(decisions)
        self.assertEqual(
            {UNUSED: (facts.KEPT, 'replaced by another file since scan')},
            self.verdicts(result))
        self.assertEqual(os.stat(self.path(UNUSED)).st_ino,
                         os.lstat(self.path(UNUSED)).st_ino)
        self.assertEqual([], self.inventory.rechecked)

    def test_file_replaced_by_symlink_is_kept_and_target_untouched(self):
        target = self.make_file('target', directory=self.instances_path)
        target_mtime = self.mtime(target)
        self.make_file(UNUSED)
        decisions = self.plan()
        os.unlink(self.path(UNUSED))
        os.symlink(target, self.path(UNUSED))
        result = self.execute(decisions)
        self.assertEqual(
            {UNUSED: (facts.KEPT,
                      'replaced by a non-regular file since scan')},
            self.verdicts(result))
        self.assertTrue(os.path.islink(self.path(UNUSED)))
        self.assertEqual(target_mtime, self.mtime(target))

    def test_file_gone_before_the_lock_is_kept(self):
        self.make_file(UNUSED)
        decisions = self.plan()
        os.unlink(self.path(UNUSED))
        result = self.execute(decisions)
        self.assertEqual({UNUSED: (facts.KEPT, 'no longer exists')},
                         self.verdicts(result))
        self.assertEqual([], result.errors)

    def test_reference_found_by_recheck_keeps_and_touches_the_file(self):
        self.make_file(UNUSED)
        decisions = self.plan()
        self.use(UNUSED)
        before = time.time()
        result = self.execute(decisions)
        self.assertEqual(
            {UNUSED: (facts.IN_USE,
                      'backing file of /instances/uuid-1/disk')},
            self.verdicts(result))
        self.assertGreaterEqual(self.mtime(self.path(UNUSED)), before - 1)

    def test_doubt_found_by_recheck_keeps_the_file(self):
        self.make_file(UNUSED)
        decisions = self.plan()
        self.inventory.usage.add_doubt(facts.Doubt(
            '/instances/uuid-2/disk', 'qemu-img timed out',
            frozenset([UNUSED])))
        result = self.execute(decisions)
        self.assertEqual(
            {UNUSED: (facts.KEPT, 'not removed: /instances/uuid-2/disk could '
                                  'not be read: qemu-img timed out')},
            self.verdicts(result))
        self.assertTrue(os.path.isfile(self.path(UNUSED)))

    def test_clock_behind_the_plan_keeps_the_file(self):
        self.make_file(UNUSED)
        decisions = self.plan()
        result = self.execute(decisions,
                              now_fn=lambda: time.time() - 1.5 * DAY)
        verdict, reason = self.verdicts(result)[UNUSED]
        self.assertEqual(facts.KEPT, verdict)
        self.assertIn('at re-check', reason)
        self.assertTrue(os.path.isfile(self.path(UNUSED)))

    def test_dry_run_changes_nothing(self):
        self.make_file(UNUSED)
        self.make_file(IN_USE)
        self.use(IN_USE)
        mtimes = {n: self.mtime(self.path(n)) for n in (UNUSED, IN_USE)}
        result = self.execute(self.plan(), dry_run=True)
        self.assertEqual(
            {UNUSED: (facts.QUEUED,
                      'dry run: would queue for removal: unused for 2d '
                      '(minimum 1d)'),
             IN_USE: (facts.IN_USE,
                      'backing file of /instances/uuid-1/disk')},
            self.verdicts(result))
        self.assertEqual(mtimes,
                         {n: self.mtime(self.path(n)) for n in mtimes})
        self.assertFalse(os.path.exists(locks.locks_dir(self.instances_path)))
        self.assertEqual([], self.inventory.rechecked)
        self.assertEqual(0, result.bytes_queued)

    def execute_in_thread(self, decisions):
        outcome = {}
        worker = threading.Thread(
            target=lambda: outcome.setdefault(
                'result', self.execute(decisions)))
        worker.start()
        self.addCleanup(worker.join, 10)
        return worker, outcome

    def test_lock_held_by_another_process_delays_removal(self):
        self.make_file(UNUSED)
        decisions = self.plan()
        holder = self.useFixture(test_locks.HeldLock(self.lock_path(UNUSED)))
        worker, outcome = self.execute_in_thread(decisions)
        worker.join(0.5)
        self.assertTrue(worker.is_alive())
        self.assertTrue(os.path.isfile(self.path(UNUSED)))
        holder.release()
        worker.join(10)
        self.assertEqual(facts.QUEUED,
                         self.verdicts(outcome['result'])[UNUSED][0])
        self.assertFalse(os.path.lexists(self.path(UNUSED)))

    def test_removals_are_rechecked_in_batches_under_all_their_locks(self):
        names = ['%02x' % i * 20 for i in range(5)]
        for name in names:
            self.make_file(name)
        held = []
        self.inventory.on_recheck = lambda name: held.append(
            test_locks.lock_is_busy(self.lock_path(name)))
        result = self.execute(self.plan())
        self.assertEqual([names], self.inventory.batches)
        self.assertEqual([True] * 5, held)
        self.assertEqual({facts.QUEUED},
                         {f.verdict for f in result.files})
        self.assertEqual([], os.listdir(self.cache_dir))
        self.assertFalse(any(test_locks.lock_is_busy(self.lock_path(n))
                             for n in names))

    def test_batch_ends_before_a_busy_lock_which_is_waited_for_alone(self):
        first, busy, last = ('%02x' % i * 20 for i in range(3))
        for name in (first, busy, last):
            self.make_file(name)
        decisions = self.plan()
        holder = self.useFixture(test_locks.HeldLock(self.lock_path(busy)))
        worker, outcome = self.execute_in_thread(decisions)
        worker.join(0.5)
        self.assertTrue(worker.is_alive())
        # Removed already; the pass now waits for the busy lock holding
        # no other lock.
        self.assertFalse(os.path.lexists(self.path(first)))
        self.assertFalse(test_locks.lock_is_busy(self.lock_path(last)))
        holder.release()
        worker.join(10)
        self.assertEqual({facts.QUEUED},
                         {v for v, _r in
                          self.verdicts(outcome['result']).values()})
        self.assertEqual([[first], [last]], self.inventory.batches)
        self.assertEqual([first, busy, last], self.inventory.rechecked)

    def test_file_touched_by_the_lock_holder_is_kept(self):
        self.make_file(UNUSED)
        decisions = self.plan()
        holder = self.useFixture(test_locks.HeldLock(
            self.lock_path(UNUSED), touch_on_release=[self.path(UNUSED)]))
        worker, outcome = self.execute_in_thread(decisions)
        worker.join(0.5)
        self.assertTrue(worker.is_alive())
        holder.release()
        worker.join(10)
        self.assertEqual({UNUSED: (facts.KEPT, 're-touched since scan')},
                         self.verdicts(outcome['result']))
        self.assertTrue(os.path.isfile(self.path(UNUSED)))

    def test_stop_before_the_pass(self):
        self.make_file(UNUSED)
        self.make_file(IN_USE)
        self.make_file(YOUNG, age=60)
        self.use(IN_USE)
        mtime = self.mtime(self.path(IN_USE))
        stop = threading.Event()
        stop.set()
        result = self.execute(self.plan(), stop_event=stop)
        self.assertTrue(result.interrupted)
        self.assertEqual(
            {UNUSED: (facts.KEPT, 'pass interrupted'),
             IN_USE: (facts.IN_USE,
                      'backing file of /instances/uuid-1/disk'),
             YOUNG: (facts.TOO_YOUNG, 'unused, 1m of 1d')},
            self.verdicts(result))
        self.assertTrue(os.path.isfile(self.path(UNUSED)))
        self.assertEqual(mtime, self.mtime(self.path(IN_USE)))

    def test_stop_during_a_removal_finishes_that_file_only(self):
        self.make_file(UNUSED)
        self.make_file(UNUSED_TOO)
        stop = threading.Event()
        self.inventory.on_recheck = lambda name: stop.set()
        result = self.execute(self.plan(), stop_event=stop)
        self.assertTrue(result.interrupted)
        self.assertEqual(
            {UNUSED: (facts.QUEUED, 'unused for 2d (minimum 1d)'),
             UNUSED_TOO: (facts.KEPT, 'pass interrupted')},
            self.verdicts(result))
        self.assertFalse(os.path.lexists(self.path(UNUSED)))
        self.assertTrue(os.path.isfile(self.path(UNUSED_TOO)))

    def test_failed_removal_is_an_error_and_the_pass_goes_on(self):
        self.make_file(UNUSED)
        allocated = os.lstat(self.make_file(UNUSED_TOO)).st_blocks * 512

        def replace_by_directory(name):
            if name == UNUSED:
                os.unlink(self.path(name))
                os.mkdir(self.path(name))

        self.inventory.on_recheck = replace_by_directory
        result = self.execute(self.plan())
        message = ('could not queue %s for removal: cannot quarantine %s: '
                   'it was replaced since the scan' % (self.path(UNUSED),
                                                       self.path(UNUSED)))
        self.assertEqual(
            {UNUSED: (facts.ERROR, message),
             UNUSED_TOO: (facts.QUEUED, 'unused for 2d (minimum 1d)')},
            self.verdicts(result))
        self.assertEqual([{'path': self.path(UNUSED), 'message': message}],
                         result.errors)
        self.assertEqual(allocated, result.bytes_queued)

    def test_unusable_lock_file_is_an_error_for_that_file_only(self):
        self.make_file(UNUSED)
        self.make_file(UNUSED_TOO)
        os.makedirs(self.lock_path(UNUSED))
        result = self.execute(self.plan())
        verdict, reason = self.verdicts(result)[UNUSED]
        self.assertEqual(facts.ERROR, verdict)
        self.assertIn(self.lock_path(UNUSED), reason)
        self.assertEqual([self.path(UNUSED)],
                         [e['path'] for e in result.errors])
        self.assertTrue(os.path.isfile(self.path(UNUSED)))
        self.assertEqual(facts.QUEUED,
                         self.verdicts(result)[UNUSED_TOO][0])

    def test_failing_recheck_is_an_error_and_keeps_the_file(self):
        self.make_file(UNUSED)

        def fail(name):
            raise ValueError('inventory broke')

        self.inventory.on_recheck = fail
        result = self.execute(self.plan())
        self.assertEqual(
            {UNUSED: (facts.ERROR, 'unexpected error on %s: inventory broke'
                      % self.path(UNUSED))},
            self.verdicts(result))
        self.assertTrue(os.path.isfile(self.path(UNUSED)))
        self.assertEqual(1, len(result.errors))
