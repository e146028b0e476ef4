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
import unittest

import fixtures

from cachekeeper.cache import locks
from cachekeeper.cache import registry

NOVA_UID = 12345
NOVA_GID = 12346

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

# Holds nova's registry lock until its standard input closes.
HOLD_LOCK = '''
import fcntl, sys
lock_file = open(sys.argv[1], 'a')
fcntl.lockf(lock_file, fcntl.LOCK_EX)
print('locked', flush=True)
sys.stdin.readline()
'''


class RegistryTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.instances_path = self.useFixture(fixtures.TempDir()).path
        self.path = registry.registry_path(self.instances_path)

    def _write(self, content):
        with open(self.path, 'w') as f:
            f.write(content)

    def _content(self):
        with open(self.path) as f:
            return json.load(f)

    def test_register_creates_the_registry(self):
        result = registry.register(self.instances_path, 'host-a', 1000.5)
        self.assertEqual({'host-a': 1000.5}, result.hosts)
        self.assertIsNone(result.problem)
        self.assertEqual({'host-a': 1000.5}, self._content())
        self.assertEqual(0o644, stat.S_IMODE(os.stat(self.path).st_mode))
        self.assertTrue(os.path.exists(locks.lock_file_path(
            self.instances_path, 'storage-registry-lock')))
        self.assertEqual(
            'nova-storage-registry-lock',
            os.path.basename(locks.lock_file_path(self.instances_path,
                                                  registry.LOCK_NAME)))

    def test_register_keeps_every_other_host(self):
        self._write('{"host-b": 900.0, "host-c": 10}')
        result = registry.register(self.instances_path, 'host-a', 1000.0)
        expected = {'host-a': 1000.0, 'host-b': 900.0, 'host-c': 10.0}
        self.assertEqual(expected, result.hosts)
        self.assertEqual(expected, self._content())
        registry.register(self.instances_path, 'host-a', 1100.0)
        self.assertEqual(dict(expected, **{'host-a': 1100.0}),
                         self._content())

    def test_register_replaces_the_file_atomically(self):
        self._write('{"host-b": 900.0}')
        before = os.stat(self.path).st_ino
        registry.register(self.instances_path, 'host-a', 1000.0)
        # Renamed into place: a reader never sees it half written.
        self.assertNotEqual(before, os.stat(self.path).st_ino)
        self.assertEqual(['compute_nodes'],
                         [n for n in os.listdir(self.instances_path)
                          if 'compute_nodes' in n])

    def test_register_keeps_owner_and_mode_for_nova(self):
        self._write('{"host-b": 900.0}')
        os.chown(self.path, NOVA_UID, NOVA_GID)
        os.chmod(self.path, 0o664)
        registry.register(self.instances_path, 'host-a', 1000.0)
        st = os.stat(self.path)
        self.assertEqual((NOVA_UID, NOVA_GID, 0o664),
                         (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)))

    def test_new_registry_gets_the_owner_of_instances_path(self):
        os.chown(self.instances_path, NOVA_UID, NOVA_GID)
        registry.register(self.instances_path, 'host-a', 1000.0)
        st = os.stat(self.path)
        self.assertEqual((NOVA_UID, NOVA_GID), (st.st_uid, st.st_gid))

    def test_corrupt_registry_is_never_rewritten(self):
        for content in ('{"host-b": 900.0, "host-c', '["host-b"]',
                        '{"host-b": "now"}'):
            with self.subTest(content=content):
                self._write(content)
                inode = os.stat(self.path).st_ino
                result = registry.register(self.instances_path, 'host-a',
                                           1000.0)
                self.assertIsNotNone(result.problem)
                self.assertEqual({}, result.hosts)
                self.assertEqual(1, len(result.doubts()))
                with open(self.path) as f:
                    self.assertEqual(content, f.read())
                self.assertEqual(inode, os.stat(self.path).st_ino)

    def test_empty_registry_is_written(self):
        self._write('')
        registry.register(self.instances_path, 'host-a', 1000.0)
        self.assertEqual({'host-a': 1000.0}, self._content())

    def test_residue_of_a_crashed_writer_goes(self):
        residue = os.path.join(self.instances_path,
                               registry.TEMP_PREFIX + 'abc123')
        self._write('{"host-b": 900.0}')
        with open(residue, 'w') as f:
            f.write('{"host-b": 9')
        registry.register(self.instances_path, 'host-a', 1000.0)
        self.assertFalse(os.path.exists(residue))

    def test_dry_read_creates_no_lock_file(self):
        self._write('{"host-b": 900.0}')
        result = registry.read(self.instances_path, create_lock=False)
        self.assertEqual({'host-b': 900.0}, result.hosts)
        self.assertFalse(os.path.exists(locks.locks_dir(self.instances_path)))

    def test_missing_registry_lists_no_host(self):
        result = registry.read(self.instances_path)
        self.assertEqual({}, result.hosts)
        self.assertIsNone(result.problem)

    def test_unreadable_registry(self):
        os.mkdir(self.path)
        result = registry.read(self.instances_path)
        self.assertIn('cannot be read', result.problem)
        self.assertEqual(1, len(result.doubts()))

    def test_register_waits_for_nova_lock(self):
        locks.ensure_locks_dir(self.instances_path)
        lock_file = locks.lock_file_path(self.instances_path,
                                         registry.LOCK_NAME)
        holder = subprocess.Popen(
            [sys.executable, '-c', HOLD_LOCK, lock_file],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(holder.wait)
        self.addCleanup(holder.stdin.close)
        self.assertEqual('locked\n', holder.stdout.readline())
        done = threading.Event()

        def register():
            registry.register(self.instances_path, 'host-a', 1000.0)
            done.set()

        thread = threading.Thread(target=register)
        thread.start()
        self.assertFalse(done.wait(0.5))
        self.assertFalse(os.path.exists(self.path))
        holder.stdin.close()
        thread.join(5)
        self.assertTrue(done.is_set())
        self.assertEqual({'host-a': 1000.0}, self._content())

    def test_concurrent_writers_lose_no_host(self):
        count = 40
        writers = [(NOVA_WRITER, 'nova-%d' % i) for i in range(3)] + [
            (CACHEKEEPER_WRITER, 'cachekeeper-%d' % i) for i in range(3)]
        processes = [subprocess.Popen(
            [sys.executable, '-c', script, self.instances_path, prefix,
             str(count)], stderr=subprocess.PIPE, text=True)
            for script, prefix in writers]
        for process in processes:
            _, stderr = process.communicate(timeout=60)
            # A writer that read a torn or corrupt file says so.
            self.assertEqual('', stderr)
            self.assertEqual(0, process.returncode)
        content = self._content()
        self.assertEqual(
            {'%s-%d' % (prefix, i) for _, prefix in writers
             for i in range(count)},
            set(content))
        self.assertEqual([], [n for n in os.listdir(self.instances_path)
                              if n.startswith(registry.TEMP_PREFIX)])
