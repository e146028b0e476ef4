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

"""nova_lock against real locks taken by other processes, as nova takes them.

Owner tests chown files and so need root; they say so when skipped.
"""

import os
import stat
import subprocess
import sys
import threading
import unittest

import fixtures

from cachekeeper.cache import locks

NAME = 'a9993e364706816aba3e25717850c26c9cd0d89d'
NOVA_UID = 12345
NOVA_GID = 12346

# What nova does through fasteners: open in append mode, fcntl.lockf.
_HOLD_LOCK = '''
import fcntl, os, sys
lock_file = open(sys.argv[1], 'a')
fcntl.lockf(lock_file, fcntl.LOCK_EX)
print('locked', flush=True)
sys.stdin.readline()
for path in sys.argv[2:]:
    os.utime(path)
'''

_TRY_LOCK = '''
import fcntl, sys
lock_file = open(sys.argv[1], 'a')
try:
    fcntl.lockf(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    print('busy')
else:
    print('free')
'''


class HeldLock(fixtures.Fixture):
    """Another process holding a lock file the way nova does.

    On release it first touches ``touch_on_release`` paths, then exits,
    which drops the lock.
    """

    def __init__(self, lock_path, touch_on_release=()):
        super().__init__()
        self.lock_path = lock_path
        self.touch_on_release = list(touch_on_release)

    def _setUp(self):
        os.makedirs(os.path.dirname(self.lock_path), exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, '-c', _HOLD_LOCK, self.lock_path]
            + self.touch_on_release,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(self._stop)
        if self.process.stdout.readline().strip() != 'locked':
            raise RuntimeError('lock holder did not start')

    @property
    def pid(self):
        return self.process.pid

    def release(self):
        self.process.stdin.write('\n')
        self.process.stdin.flush()
        if self.process.wait(timeout=10) != 0:
            raise RuntimeError('lock holder failed')

    def _stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()


def lock_is_busy(lock_path):
    """Ask another process whether it could take the lock right now."""
    answer = subprocess.run([sys.executable, '-c', _TRY_LOCK, lock_path],
                            capture_output=True, text=True, check=True)
    return answer.stdout.strip() == 'busy'


class LocksTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.instances_path = self.useFixture(fixtures.TempDir()).path
        self.lock_path = os.path.join(self.instances_path, 'locks',
                                      'nova-' + NAME)

    def require_root(self):
        if os.geteuid() != 0:
            self.skipTest('changing file owners needs root')

    def test_lock_file_path_is_novas(self):
        self.assertEqual(self.lock_path,
                         locks.lock_file_path(self.instances_path, NAME))

    def test_other_processes_see_the_lock(self):
        with locks.nova_lock(self.instances_path, NAME):
            self.assertTrue(lock_is_busy(self.lock_path))
        self.assertFalse(lock_is_busy(self.lock_path))

    def test_waits_while_another_process_holds_the_lock(self):
        holder = self.useFixture(HeldLock(self.lock_path))
        acquired = threading.Event()

        def take_lock():
            with locks.nova_lock(self.instances_path, NAME):
                acquired.set()

        waiter = threading.Thread(target=take_lock)
        waiter.start()
        self.addCleanup(waiter.join, 10)
        self.assertFalse(acquired.wait(0.5))
        holder.release()
        self.assertTrue(acquired.wait(10))

    def test_lock_file_survives_and_keeps_its_inode(self):
        with locks.nova_lock(self.instances_path, NAME):
            inode = os.stat(self.lock_path).st_ino
        with locks.nova_lock(self.instances_path, NAME):
            pass
        self.assertEqual(inode, os.stat(self.lock_path).st_ino)

    def test_new_lock_file_gets_the_owner_of_the_locks_dir(self):
        self.require_root()
        locks_dir = os.path.dirname(self.lock_path)
        os.mkdir(locks_dir)
        os.chown(locks_dir, NOVA_UID, NOVA_GID)
        self.addCleanup(os.umask, os.umask(0o077))
        with locks.nova_lock(self.instances_path, NAME):
            pass
        st = os.stat(self.lock_path)
        self.assertEqual((NOVA_UID, NOVA_GID, 0o644),
                         (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)))
        self.assertEqual(['nova-' + NAME], os.listdir(locks_dir))

    def test_missing_locks_dir_gets_the_owner_of_instances_path(self):
        self.require_root()
        os.chown(self.instances_path, NOVA_UID, NOVA_GID)
        self.addCleanup(os.umask, os.umask(0o077))
        with locks.nova_lock(self.instances_path, NAME):
            pass
        for path, mode in ((os.path.dirname(self.lock_path), 0o755),
                           (self.lock_path, 0o644)):
            st = os.stat(path)
            self.assertEqual((NOVA_UID, NOVA_GID, mode),
                             (st.st_uid, st.st_gid,
                              stat.S_IMODE(st.st_mode)), path)

    def test_existing_lock_file_is_left_as_it_is(self):
        os.mkdir(os.path.dirname(self.lock_path))
        with open(self.lock_path, 'w') as f:
            f.write('kept')
        os.chmod(self.lock_path, 0o600)
        before = os.stat(self.lock_path)
        with locks.nova_lock(self.instances_path, NAME):
            pass
        after = os.stat(self.lock_path)
        self.assertEqual(
            (before.st_ino, before.st_uid, before.st_gid, before.st_mode),
            (after.st_ino, after.st_uid, after.st_gid, after.st_mode))
        with open(self.lock_path) as f:
            self.assertEqual('kept', f.read())

    def test_holder_without_lock_file_creates_nothing(self):
        self.assertIsNone(locks.lock_holder(self.instances_path, NAME))
        self.assertEqual([], os.listdir(self.instances_path))

    def test_holder_of_a_free_lock(self):
        with locks.nova_lock(self.instances_path, NAME):
            pass
        self.assertIsNone(locks.lock_holder(self.instances_path, NAME))

    def test_holder_is_the_other_process(self):
        holder = self.useFixture(HeldLock(self.lock_path))
        self.assertEqual(locks.LockHolder(pid=holder.pid, exclusive=True),
                         locks.lock_holder(self.instances_path, NAME))
        holder.release()
        self.assertIsNone(locks.lock_holder(self.instances_path, NAME))

    def test_holder_is_this_process_and_probing_keeps_the_lock(self):
        with locks.nova_lock(self.instances_path, NAME):
            self.assertEqual(locks.LockHolder(pid=os.getpid(),
                                              exclusive=True),
                             locks.lock_holder(self.instances_path, NAME))
            self.assertTrue(lock_is_busy(self.lock_path))
