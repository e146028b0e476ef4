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

"""nova's storage registry on real files, with writers in other processes."""

import json
import os
import stat
import subprocess
import sys
import threading

import pytest

from cachekeeper.cache import locks
from cachekeeper.cache import registry
from tests.lib import locks as held_locks

NOVA_UID = held_locks.NOVA_UID
NOVA_GID = held_locks.NOVA_GID

# nova/virt/storage_users.py register_storage_use, as nova runs it: an
# external lock with nova's prefix, the file rewritten in place.
NOVA_WRITER = '''
import json, os, sys, time
from oslo_concurrency import lockutils
instances_path, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])

@lockutils.synchronized('storage-registry-lock', 'nova-', external=True,
                        lock_path=os.path.join(instances_path, 'locks'))
def register_storage_use(hostname):
    d = {}
    id_path = os.path.join(instances_path, 'compute_nodes')
    if os.path.exists(id_path):
        with open(id_path) as f:
            try:
                d = json.loads(f.read())
            except ValueError:
                print('Cannot decode JSON from %s' % id_path, file=sys.stderr)
    d[hostname] = time.time()
    with open(id_path, 'w') as f:
        f.write(json.dumps(d))

for i in range(count):
    register_storage_use('%s-%d' % (prefix, i))
'''

CACHEKEEPER_WRITER = '''
import sys, time
from cachekeeper.cache import registry
instances_path, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(count):
    result = registry.register(instances_path, '%s-%d' % (prefix, i),
                               time.time())
    if result.problem:
        print(result.problem, file=sys.stderr)
'''


class ComputeNodes:
    """nova's storage registry in an instances_path."""

    def __init__(self, instances_path):
        self.instances_path = instances_path
        self.path = registry.registry_path(self.instances_path)

    def write(self, content):
        with open(self.path, 'w') as f:
            f.write(content)

    def content(self):
        with open(self.path) as f:
            return json.load(f)


@pytest.fixture
def compute_nodes(tmp_path):
    return ComputeNodes(str(tmp_path))


def test_register_creates_the_registry(compute_nodes):
    result = registry.register(compute_nodes.instances_path, 'host-a', 1000.5)
    assert result.hosts == {'host-a': 1000.5}
    assert result.problem is None
    assert compute_nodes.content() == {'host-a': 1000.5}
    assert 0o644 == stat.S_IMODE(os.stat(compute_nodes.path).st_mode)
    assert os.path.exists(locks.lock_file_path(
compute_nodes.instances_path, 'storage-registry-lock'))
    assert os.path.basename(locks.lock_file_path(compute_nodes.instances_path,
                                                 registry.LOCK_NAME)) == (
        'nova-storage-registry-lock')


def test_register_keeps_every_other_host(compute_nodes):
    compute_nodes.write('{"host-b": 900.0, "host-c": 10}')
    result = registry.register(compute_nodes.instances_path, 'host-a', 1000.0)
    expected = {'host-a': 1000.0, 'host-b': 900.0, 'host-c': 10.0}
    assert expected == result.hosts
    assert expected == compute_nodes.content()
    registry.register(compute_nodes.instances_path, 'host-a', 1100.0)
    assert dict(expected, **{'host-a': 1100.0}) == compute_nodes.content()


def test_register_replaces_the_file_atomically(compute_nodes):
    compute_nodes.write('{"host-b": 900.0}')
    before = os.stat(compute_nodes.path).st_ino
    registry.register(compute_nodes.instances_path, 'host-a', 1000.0)
    # Renamed into place: a reader never sees it half written.
    assert before != os.stat(compute_nodes.path).st_ino
    assert [n for n in os.listdir(compute_nodes.instances_path)
            if 'compute_nodes' in n] == ['compute_nodes']


def test_register_keeps_owner_and_mode_for_nova(compute_nodes):
    compute_nodes.write('{"host-b": 900.0}')
    os.chown(compute_nodes.path, NOVA_UID, NOVA_GID)
    os.chmod(compute_nodes.path, 0o664)
    registry.register(compute_nodes.instances_path, 'host-a', 1000.0)
    st = os.stat(compute_nodes.path)
    assert (NOVA_UID, NOVA_GID, 0o664) == (
        st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))


def test_new_registry_gets_the_owner_of_instances_path(compute_nodes):
    os.chown(compute_nodes.instances_path, NOVA_UID, NOVA_GID)
    registry.register(compute_nodes.instances_path, 'host-a', 1000.0)
    st = os.stat(compute_nodes.path)
    assert (NOVA_UID, NOVA_GID) == (st.st_uid, st.st_gid)


@pytest.mark.parametrize('content', ['{"host-b": 900.0, "host-c',
                                     '["host-b"]', '{"host-b": "now"}'])
def test_corrupt_registry_is_never_rewritten(compute_nodes, content):
    compute_nodes.write(content)
    inode = os.stat(compute_nodes.path).st_ino
    result = registry.register(compute_nodes.instances_path, 'host-a',
                               1000.0)
    assert result.problem is not None
    assert result.hosts == {}
    assert len(result.doubts()) == 1
    with open(compute_nodes.path) as f:
        assert f.read() == content
    assert os.stat(compute_nodes.path).st_ino == inode


def test_empty_registry_is_written(compute_nodes):
    compute_nodes.write('')
    registry.register(compute_nodes.instances_path, 'host-a', 1000.0)
    assert compute_nodes.content() == {'host-a': 1000.0}


def test_residue_of_a_crashed_writer_goes(compute_nodes):
    residue = os.path.join(compute_nodes.instances_path,
                           registry.TEMP_PREFIX + 'abc123')
    compute_nodes.write('{"host-b": 900.0}')
    with open(residue, 'w') as f:
        f.write('{"host-b": 9')
    registry.register(compute_nodes.instances_path, 'host-a', 1000.0)
    assert not os.path.exists(residue)


def test_dry_read_creates_no_lock_file(compute_nodes):
    compute_nodes.write('{"host-b": 900.0}')
    result = registry.read(compute_nodes.instances_path, create_lock=False)
    assert result.hosts == {'host-b': 900.0}
    assert not os.path.exists(locks.locks_dir(compute_nodes.instances_path))


def test_missing_registry_lists_no_host(compute_nodes):
    result = registry.read(compute_nodes.instances_path)
    assert result.hosts == {}
    assert result.problem is None


def test_unreadable_registry(compute_nodes):
    os.mkdir(compute_nodes.path)
    result = registry.read(compute_nodes.instances_path)
    assert 'cannot be read' in result.problem
    assert len(result.doubts()) == 1


def test_register_waits_for_nova_lock(compute_nodes):
    locks.ensure_locks_dir(compute_nodes.instances_path)
    lock_file = locks.lock_file_path(compute_nodes.instances_path,
                                     registry.LOCK_NAME)
    done = threading.Event()

    def register():
        registry.register(compute_nodes.instances_path, 'host-a', 1000.0)
        done.set()

    with held_locks.HeldLock(lock_file) as holder:
        thread = threading.Thread(target=register)
        thread.start()
        assert not done.wait(0.5)
        assert not os.path.exists(compute_nodes.path)
        holder.release()
        thread.join(5)
    assert done.is_set()
    assert compute_nodes.content() == {'host-a': 1000.0}


def test_concurrent_writers_lose_no_host(compute_nodes):
    count = 40
    writers = [(NOVA_WRITER, 'nova-%d' % i) for i in range(3)] + [
        (CACHEKEEPER_WRITER, 'cachekeeper-%d' % i) for i in range(3)]
    processes = [subprocess.Popen(
        [sys.executable, '-c', script, compute_nodes.instances_path, prefix,
         str(count)], stderr=subprocess.PIPE, text=True)
        for script, prefix in writers]
    for process in processes:
        _, stderr = process.communicate(timeout=60)
        # A writer that read a torn or corrupt file says so.
        assert stderr == ''
        assert process.returncode == 0
    content = compute_nodes.content()
    assert {'%s-%d' % (prefix, i) for _, prefix in writers
            for i in range(count)} == set(content)
    assert [n for n in os.listdir(compute_nodes.instances_path)
            if n.startswith(registry.TEMP_PREFIX)] == []
