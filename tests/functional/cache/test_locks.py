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
import threading

import pytest

from cachekeeper.cache import locks
from tests.lib import locks as held_locks

NAME = 'a9993e364706816aba3e25717850c26c9cd0d89d'
NOVA_UID = held_locks.NOVA_UID
NOVA_GID = held_locks.NOVA_GID


@pytest.fixture
def instances_path(tmp_path):
    return str(tmp_path)


@pytest.fixture
def lock_path(instances_path):
    return os.path.join(instances_path, 'locks', 'nova-' + NAME)


@pytest.fixture
def set_umask():
    """os.umask, for the test: the umask it had is back after it."""
    before = os.umask(0o022)
    os.umask(before)
    yield os.umask
    os.umask(before)


def test_lock_file_path_is_novas(instances_path, lock_path):
    assert locks.lock_file_path(instances_path, NAME) == lock_path


def test_other_processes_see_the_lock(instances_path, lock_path):
    with locks.nova_lock(instances_path, NAME):
        assert held_locks.lock_is_busy(lock_path)
    assert not held_locks.lock_is_busy(lock_path)


def test_waits_while_another_process_holds_the_lock(instances_path,
                                                    lock_path):
    acquired = threading.Event()

    def take_lock():
        with locks.nova_lock(instances_path, NAME):
            acquired.set()

    with held_locks.HeldLock(lock_path) as holder:
        waiter = threading.Thread(target=take_lock)
        waiter.start()
        try:
            assert not acquired.wait(0.5)
            holder.release()
            assert acquired.wait(10)
        finally:
            waiter.join(10)


def test_lock_file_survives_and_keeps_its_inode(instances_path, lock_path):
    with locks.nova_lock(instances_path, NAME):
        inode = os.stat(lock_path).st_ino
    with locks.nova_lock(instances_path, NAME):
        pass
    assert os.stat(lock_path).st_ino == inode


@held_locks.requires_root
def test_new_lock_file_gets_the_owner_of_the_locks_dir(instances_path,
                                                       lock_path, set_umask):
    locks_dir = os.path.dirname(lock_path)
    os.mkdir(locks_dir)
    os.chown(locks_dir, NOVA_UID, NOVA_GID)
    set_umask(0o077)
    with locks.nova_lock(instances_path, NAME):
        pass
    st = os.stat(lock_path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
        NOVA_UID, NOVA_GID, 0o644)
    assert os.listdir(locks_dir) == ['nova-' + NAME]


@held_locks.requires_root
def test_missing_locks_dir_gets_the_owner_of_instances_path(instances_path,
                                                            lock_path,
                                                            set_umask):
    os.chown(instances_path, NOVA_UID, NOVA_GID)
    set_umask(0o077)
    with locks.nova_lock(instances_path, NAME):
        pass
    for path, mode in ((os.path.dirname(lock_path), 0o755),
                       (lock_path, 0o644)):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
            NOVA_UID, NOVA_GID, mode), path


def test_existing_lock_file_is_left_as_it_is(instances_path, lock_path):
    os.mkdir(os.path.dirname(lock_path))
    with open(lock_path, 'w') as f:
        f.write('kept')
    os.chmod(lock_path, 0o600)
    before = os.stat(lock_path)
    with locks.nova_lock(instances_path, NAME):
        pass
    after = os.stat(lock_path)
    assert (after.st_ino, after.st_uid, after.st_gid, after.st_mode) == (
        before.st_ino, before.st_uid, before.st_gid, before.st_mode)
    with open(lock_path) as f:
        assert f.read() == 'kept'


def test_holder_without_lock_file_creates_nothing(instances_path):
    assert locks.lock_holder(instances_path, NAME) is None
    assert os.listdir(instances_path) == []


def test_holder_of_a_free_lock(instances_path):
    with locks.nova_lock(instances_path, NAME):
        pass
    assert locks.lock_holder(instances_path, NAME) is None


def test_holder_is_the_other_process(instances_path, lock_path):
    with held_locks.HeldLock(lock_path) as holder:
        assert locks.lock_holder(instances_path, NAME) == locks.LockHolder(
            pid=holder.pid, exclusive=True)
        holder.release()
        assert locks.lock_holder(instances_path, NAME) is None


def test_holder_is_this_process_and_probing_keeps_the_lock(instances_path,
                                                           lock_path):
    with locks.nova_lock(instances_path, NAME):
        assert locks.lock_holder(instances_path, NAME) == locks.LockHolder(
            pid=os.getpid(), exclusive=True)
        assert held_locks.lock_is_busy(lock_path)
