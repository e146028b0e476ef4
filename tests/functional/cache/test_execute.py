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

import pytest

from cachekeeper.cache import execute
from cachekeeper.cache import facts
from cachekeeper.cache import locks
from cachekeeper.cache import plan
from cachekeeper.cache import scan
from cachekeeper import manager
from cachekeeper.scrub import queue
from cachekeeper.state import db
from tests.lib import locks as held_locks

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


class Cache:
    """An image cache with a scrub queue, and an inventory the test sets."""

    def __init__(self, root):
        self.instances_path = str(root / 'instances')
        self.cache_dir = os.path.join(self.instances_path, '_base')
        os.makedirs(self.cache_dir)
        self.inventory = StandInInventory()
        state_path = root / 'state'
        state_path.mkdir()
        self.scrub_queue = queue.ScrubQueue(
            db.open_state(str(state_path)), self.instances_path,
            self.cache_dir, os.path.join(self.instances_path, '.quarantine'),
            'host-1')
        self.scrub_queue.check_quarantine_dir()
        self.workers = []

    def close(self):
        for worker in self.workers:
            worker.join(10)
        self.scrub_queue.close()

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
        # The quarantine step a pass gives execute: into the real queue.
        quarantine = manager.quarantine_into(self.scrub_queue)
        return execute.execute(decisions, self.inventory, self.instances_path,
                               POLICY, quarantine, **kwargs)

    def verdicts(self, result):
        return {os.path.basename(f.path): (f.verdict, f.reason)
                for f in result.files}

    def execute_in_thread(self, decisions):
        outcome = {}
        worker = threading.Thread(
            target=lambda: outcome.setdefault(
                'result', self.execute(decisions)))
        worker.start()
        self.workers.append(worker)
        return worker, outcome


@pytest.fixture
def cache(tmp_path):
    cache = Cache(tmp_path)
    yield cache
    cache.close()


def test_removes_unused_file_and_leaves_the_lock_file(cache):
    cache.make_file(UNUSED)
    allocated = os.lstat(cache.path(UNUSED)).st_blocks * 512
    result = cache.execute(cache.plan())
    assert cache.verdicts(result) == {UNUSED: (facts.QUEUED,
                                               'unused for 2d (minimum 1d)')}
    assert not os.path.lexists(cache.path(UNUSED))
    assert os.path.isfile(cache.lock_path(UNUSED))
    assert cache.inventory.rechecked == [UNUSED]
    assert allocated == result.bytes_queued
    assert result.bytes_queued > 0
    assert result.errors == []
    assert not result.interrupted


@held_locks.requires_root
def test_lock_file_left_behind_belongs_to_nova(cache):
    locks_dir = locks.locks_dir(cache.instances_path)
    os.mkdir(locks_dir)
    os.chown(locks_dir, held_locks.NOVA_UID, held_locks.NOVA_GID)
    cache.make_file(UNUSED)
    cache.execute(cache.plan())
    st = os.stat(cache.lock_path(UNUSED))
    assert (held_locks.NOVA_UID, held_locks.NOVA_GID, 0o644) == (
        st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))


def test_other_verdicts_leave_files_alone(cache):
    cache.make_file(YOUNG, age=3600)
    young_mtime = cache.mtime(cache.path(YOUNG))
    os.symlink(cache.make_file(UNUSED, directory=cache.instances_path),
               cache.path(UNUSED))
    result = cache.execute(cache.plan())
    assert cache.verdicts(result) == (
        {UNUSED: (facts.IGNORED, 'symlink; never removed'),
         YOUNG: (facts.TOO_YOUNG, 'unused, 1h of 1d')})
    assert young_mtime == cache.mtime(cache.path(YOUNG))
    assert os.path.islink(cache.path(UNUSED))
    assert not os.path.exists(locks.locks_dir(cache.instances_path))
    assert cache.inventory.rechecked == []


def test_files_in_use_are_touched(cache):
    cache.make_file(IN_USE)
    cache.use(IN_USE)
    before = time.time()
    result = cache.execute(cache.plan())
    assert cache.verdicts(result) == (
        {IN_USE: (facts.IN_USE,
                  'backing file of /instances/uuid-1/disk')})
    assert cache.mtime(cache.path(IN_USE)) >= before - 1
    assert result.errors == []


def test_touch_failure_is_an_error_and_the_file_stays_in_use(cache):
    cache.make_file(IN_USE)
    cache.make_file(UNUSED)
    cache.use(IN_USE)
    decisions = cache.plan()
    os.unlink(cache.path(IN_USE))
    result = cache.execute(decisions)
    verdict, reason = cache.verdicts(result)[IN_USE]
    assert verdict == facts.IN_USE
    assert 'ENOENT' in reason
    assert len(result.errors) == 1
    assert cache.path(IN_USE) == result.errors[0]['path']
    assert cache.path(IN_USE) in result.errors[0]['message']
    assert 'ENOENT' in result.errors[0]['message']
    assert cache.verdicts(result)[UNUSED][0] == facts.QUEUED


def test_file_in_use_replaced_by_symlink_is_not_followed(cache):
    target = cache.make_file('target', directory=cache.instances_path)
    target_mtime = cache.mtime(target)
    cache.make_file(IN_USE)
    cache.use(IN_USE)
    decisions = cache.plan()
    os.unlink(cache.path(IN_USE))
    os.symlink(target, cache.path(IN_USE))
    result = cache.execute(decisions)
    assert cache.verdicts(result)[IN_USE] == (
        facts.IN_USE, 'backing file of /instances/uuid-1/disk; not '
                      'touched: replaced by a non-regular file since '
                      'scan')
    assert target_mtime == cache.mtime(target)


def test_file_touched_after_plan_is_kept(cache):
    cache.make_file(UNUSED)
    decisions = cache.plan()
    os.utime(cache.path(UNUSED))
    result = cache.execute(decisions)
    assert cache.verdicts(result) == (
        {UNUSED: (facts.KEPT, 're-touched since scan')})
    assert os.path.isfile(cache.path(UNUSED))


def test_file_replaced_by_another_inode_is_kept(cache):
    cache.make_file(UNUSED)
    decisions = cache.plan()
    replacement = cache.make_file('new.tmp')
    os.rename(replacement, cache.path(UNUSED))
    result = cache.execute(decisions)
    assert cache.verdicts(result) == (
        {UNUSED: (facts.KEPT, 'replaced by another file since scan')})
    assert os.stat(cache.path(UNUSED)).st_ino == (
        os.lstat(cache.path(UNUSED)).st_ino)
    assert cache.inventory.rechecked == []


def test_file_replaced_by_symlink_is_kept_and_target_untouched(cache):
    target = cache.make_file('target', directory=cache.instances_path)
    target_mtime = cache.mtime(target)
    cache.make_file(UNUSED)
    decisions = cache.plan()
    os.unlink(cache.path(UNUSED))
    os.symlink(target, cache.path(UNUSED))
    result = cache.execute(decisions)
    assert cache.verdicts(result) == (
        {UNUSED: (facts.KEPT,
                  'replaced by a non-regular file since scan')})
    assert os.path.islink(cache.path(UNUSED))
    assert target_mtime == cache.mtime(target)


def test_file_gone_before_the_lock_is_kept(cache):
    cache.make_file(UNUSED)
    decisions = cache.plan()
    os.unlink(cache.path(UNUSED))
    result = cache.execute(decisions)
    assert cache.verdicts(result) == {UNUSED: (facts.KEPT, 'no longer exists')}
    assert result.errors == []


def test_reference_found_by_recheck_keeps_and_touches_the_file(cache):
    cache.make_file(UNUSED)
    decisions = cache.plan()
    cache.use(UNUSED)
    before = time.time()
    result = cache.execute(decisions)
    assert cache.verdicts(result) == (
        {UNUSED: (facts.IN_USE,
                  'backing file of /instances/uuid-1/disk')})
    assert cache.mtime(cache.path(UNUSED)) >= before - 1


def test_doubt_found_by_recheck_keeps_the_file(cache):
    cache.make_file(UNUSED)
    decisions = cache.plan()
    cache.inventory.usage.add_doubt(facts.Doubt(
        '/instances/uuid-2/disk', 'qemu-img timed out',
        frozenset([UNUSED])))
    result = cache.execute(decisions)
    assert cache.verdicts(result) == (
        {UNUSED: (facts.KEPT, 'not removed: /instances/uuid-2/disk could '
                              'not be read: qemu-img timed out')})
    assert os.path.isfile(cache.path(UNUSED))


def test_clock_behind_the_plan_keeps_the_file(cache):
    cache.make_file(UNUSED)
    decisions = cache.plan()
    result = cache.execute(decisions,
                          now_fn=lambda: time.time() - 1.5 * DAY)
    verdict, reason = cache.verdicts(result)[UNUSED]
    assert verdict == facts.KEPT
    assert 'at re-check' in reason
    assert os.path.isfile(cache.path(UNUSED))


def test_dry_run_changes_nothing(cache):
    cache.make_file(UNUSED)
    cache.make_file(IN_USE)
    cache.use(IN_USE)
    mtimes = {n: cache.mtime(cache.path(n)) for n in (UNUSED, IN_USE)}
    result = cache.execute(cache.plan(), dry_run=True)
    assert cache.verdicts(result) == (
        {UNUSED: (facts.QUEUED,
                  'dry run: would queue for removal: unused for 2d '
                  '(minimum 1d)'),
         IN_USE: (facts.IN_USE,
                  'backing file of /instances/uuid-1/disk')})
    assert mtimes == {n: cache.mtime(cache.path(n)) for n in mtimes}
    assert not os.path.exists(locks.locks_dir(cache.instances_path))
    assert cache.inventory.rechecked == []
    assert result.bytes_queued == 0


def test_lock_held_by_another_process_delays_removal(cache, held_lock):
    cache.make_file(UNUSED)
    decisions = cache.plan()
    holder = held_lock(cache.lock_path(UNUSED))
    worker, outcome = cache.execute_in_thread(decisions)
    worker.join(0.5)
    assert worker.is_alive()
    assert os.path.isfile(cache.path(UNUSED))
    holder.release()
    worker.join(10)
    assert cache.verdicts(outcome['result'])[UNUSED][0] == facts.QUEUED
    assert not os.path.lexists(cache.path(UNUSED))


def test_removals_are_rechecked_in_batches_under_all_their_locks(cache):
    names = ['%02x' % i * 20 for i in range(5)]
    for name in names:
        cache.make_file(name)
    held = []
    cache.inventory.on_recheck = lambda name: held.append(
        held_locks.lock_is_busy(cache.lock_path(name)))
    result = cache.execute(cache.plan())
    assert cache.inventory.batches == [names]
    assert [True] * 5 == held
    assert {f.verdict for f in result.files} == {facts.QUEUED}
    assert os.listdir(cache.cache_dir) == []
    assert not any(held_locks.lock_is_busy(cache.lock_path(n))
                   for n in names)


def test_batch_ends_before_a_busy_lock_which_is_waited_for_alone(cache,
                                                                held_lock):
    first, busy, last = ('%02x' % i * 20 for i in range(3))
    for name in (first, busy, last):
        cache.make_file(name)
    decisions = cache.plan()
    holder = held_lock(cache.lock_path(busy))
    worker, outcome = cache.execute_in_thread(decisions)
    worker.join(0.5)
    assert worker.is_alive()
    # Removed already; the pass now waits for the busy lock holding
    # no other lock.
    assert not os.path.lexists(cache.path(first))
    assert not held_locks.lock_is_busy(cache.lock_path(last))
    holder.release()
    worker.join(10)
    assert {v for v, _r in
            cache.verdicts(outcome['result']).values()} == {facts.QUEUED}
    assert cache.inventory.batches == [[first], [last]]
    assert cache.inventory.rechecked == [first, busy, last]


def test_file_touched_by_the_lock_holder_is_kept(cache, held_lock):
    cache.make_file(UNUSED)
    decisions = cache.plan()
    holder = held_lock(cache.lock_path(UNUSED),
                       touch_on_release=[cache.path(UNUSED)])
    worker, outcome = cache.execute_in_thread(decisions)
    worker.join(0.5)
    assert worker.is_alive()
    holder.release()
    worker.join(10)
    assert cache.verdicts(outcome['result']) == (
        {UNUSED: (facts.KEPT, 're-touched since scan')})
    assert os.path.isfile(cache.path(UNUSED))


def test_stop_before_the_pass(cache):
    cache.make_file(UNUSED)
    cache.make_file(IN_USE)
    cache.make_file(YOUNG, age=60)
    cache.use(IN_USE)
    mtime = cache.mtime(cache.path(IN_USE))
    stop = threading.Event()
    stop.set()
    result = cache.execute(cache.plan(), stop_event=stop)
    assert result.interrupted
    assert cache.verdicts(result) == (
        {UNUSED: (facts.KEPT, 'pass interrupted'),
         IN_USE: (facts.IN_USE,
                  'backing file of /instances/uuid-1/disk'),
         YOUNG: (facts.TOO_YOUNG, 'unused, 1m of 1d')})
    assert os.path.isfile(cache.path(UNUSED))
    assert mtime == cache.mtime(cache.path(IN_USE))


def test_stop_during_a_removal_finishes_that_file_only(cache):
    cache.make_file(UNUSED)
    cache.make_file(UNUSED_TOO)
    stop = threading.Event()
    cache.inventory.on_recheck = lambda name: stop.set()
    result = cache.execute(cache.plan(), stop_event=stop)
    assert result.interrupted
    assert cache.verdicts(result) == (
        {UNUSED: (facts.QUEUED, 'unused for 2d (minimum 1d)'),
         UNUSED_TOO: (facts.KEPT, 'pass interrupted')})
    assert not os.path.lexists(cache.path(UNUSED))
    assert os.path.isfile(cache.path(UNUSED_TOO))


def test_failed_removal_is_an_error_and_the_pass_goes_on(cache):
    cache.make_file(UNUSED)
    allocated = os.lstat(cache.make_file(UNUSED_TOO)).st_blocks * 512

    def replace_by_directory(name):
        if name == UNUSED:
            os.unlink(cache.path(name))
            os.mkdir(cache.path(name))

    cache.inventory.on_recheck = replace_by_directory
    result = cache.execute(cache.plan())
    message = ('could not queue %s for removal: cannot quarantine %s: '
               'it was replaced since the scan' % (cache.path(UNUSED),
                                                   cache.path(UNUSED)))
    assert cache.verdicts(result) == (
        {UNUSED: (facts.ERROR, message),
         UNUSED_TOO: (facts.QUEUED, 'unused for 2d (minimum 1d)')})
    assert result.errors == [{'path': cache.path(UNUSED), 'message': message}]
    assert allocated == result.bytes_queued


def test_unusable_lock_file_is_an_error_for_that_file_only(cache):
    cache.make_file(UNUSED)
    cache.make_file(UNUSED_TOO)
    os.makedirs(cache.lock_path(UNUSED))
    result = cache.execute(cache.plan())
    verdict, reason = cache.verdicts(result)[UNUSED]
    assert verdict == facts.ERROR
    assert cache.lock_path(UNUSED) in reason
    assert [e['path'] for e in result.errors] == [cache.path(UNUSED)]
    assert os.path.isfile(cache.path(UNUSED))
    assert cache.verdicts(result)[UNUSED_TOO][0] == facts.QUEUED


def test_failing_recheck_is_an_error_and_keeps_the_file(cache):
    cache.make_file(UNUSED)

    def fail(name):
        raise ValueError('inventory broke')

    cache.inventory.on_recheck = fail
    result = cache.execute(cache.plan())
    assert cache.verdicts(result) == (
        {UNUSED: (facts.ERROR, 'unexpected error on %s: inventory broke'
                  % cache.path(UNUSED))})
    assert os.path.isfile(cache.path(UNUSED))
    assert len(result.errors) == 1
