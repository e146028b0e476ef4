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

"""The QEMU image lock probe against a real qemu-io holding a real chain."""

import errno
import json
import os
import shutil
import subprocess
import sys
import time
import unittest

import fixtures

from cachekeeper.cache import facts
from cachekeeper.cache import locks
from cachekeeper.cache import qemu_locks
from cachekeeper.cache import scan
from tests.functional.cache import test_locks

QEMU_IO = shutil.which('qemu-io')
QEMU_IMG = shutil.which('qemu-img')
MANAGE = os.path.join(os.path.dirname(sys.executable), 'cachekeeper-manage')

NAME = 'a9993e364706816aba3e25717850c26c9cd0d89d'
DAY = 86400

# Another process holding a POSIX read lock on QEMU's first lock byte, as
# a QEMU without OFD locks would.
_HOLD_POSIX_LOCK = '''
import fcntl, sys
image = open(sys.argv[1], 'rb')
fcntl.lockf(image, fcntl.LOCK_SH, 1, 100)
print('locked', flush=True)
sys.stdin.readline()
'''


def qemu_img(*args):
    subprocess.run([QEMU_IMG] + list(args), check=True, capture_output=True,
                   timeout=30)


def make_chain(base, overlay):
    """A raw base of 1 MiB and a qcow2 overlay on it, as nova makes them."""
    with open(base, 'wb') as f:
        f.truncate(1024 * 1024)
    qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base, overlay)


def locks_on(path):
    """The lines of /proc/locks about ``path``'s inode, without their ids."""
    st = os.stat(path)
    suffix = ':%d' % st.st_ino
    found = []
    with open('/proc/locks') as f:
        for line in f:
            fields = line.split()
            # "1: OFDLCK ADVISORY READ -1 fe:00:2154562 100 100"; a blocked
            # request adds "->" after the id.
            if fields[1] == '->':
                fields = fields[1:]
            if fields[5].endswith(suffix):
                found.append(' '.join(fields[1:]))
    return sorted(found)


class QemuIo(fixtures.Fixture):
    """A qemu-io that has ``overlay`` (and so its chain) open until cleanup.

    It reads commands from its standard input, so it keeps the image open
    as long as that stays open; closing it ends qemu-io.
    """

    def __init__(self, overlay, held_file):
        super().__init__()
        self.overlay = overlay
        self.held_file = held_file

    def _setUp(self):
        self.process = subprocess.Popen(
            [QEMU_IO, '-f', 'qcow2', self.overlay],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        self.addCleanup(self.stop)
        deadline = time.monotonic() + 10
        while qemu_locks.probe(self.held_file) is None:
            if self.process.poll() is not None:
                raise AssertionError('qemu-io exited: %s' %
                                     self.process.stderr.read())
            if time.monotonic() > deadline:
                raise AssertionError('qemu-io took no lock on %s' %
                                     self.held_file)
            time.sleep(0.01)

    def stop(self):
        if self.process.returncode is not None:
            return
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stderr.close()


class ProbeTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path
        self.base = os.path.join(self.root, NAME)
        self.overlay = os.path.join(self.root, 'disk')
        make_chain(self.base, self.overlay)

    def test_finds_the_lock_of_a_running_qemu_on_the_backing_file(self):
        self.useFixture(QemuIo(self.overlay, self.base))
        image_lock = qemu_locks.probe(self.base)
        # QEMU opens a backing file read-only and shares its consistent
        # read: a shared OFD lock on byte 100, owned by no process.
        self.assertEqual(
            qemu_locks.ImageLock(start=100, length=1, exclusive=False,
                                 pid=None),
            image_lock)
        self.assertEqual('holds consistent read', image_lock.meaning())
        self.assertEqual('open by a running QEMU', image_lock.reason())

    def test_finds_the_write_permission_on_the_active_image(self):
        self.useFixture(QemuIo(self.overlay, self.base))
        self.assertIn('write', qemu_locks.probe(self.overlay).meaning())

    def test_a_file_nobody_holds_has_no_lock(self):
        self.assertIsNone(qemu_locks.probe(self.base))
        self.assertIsNone(qemu_locks.probe(self.overlay))

    def test_no_lock_once_qemu_exits(self):
        qemu_io = self.useFixture(QemuIo(self.overlay, self.base))
        qemu_io.stop()
        self.assertIsNone(qemu_locks.probe(self.base))

    def test_probing_takes_and_drops_no_lock(self):
        self.assertEqual([], locks_on(self.base))
        qemu_locks.probe(self.base)
        self.assertEqual([], locks_on(self.base))
        self.useFixture(QemuIo(self.overlay, self.base))
        held = locks_on(self.base)
        self.assertNotEqual([], held)
        for _attempt in range(3):
            qemu_locks.probe(self.base)
        self.assertEqual(held, locks_on(self.base))

    def test_the_nova_lock_stays_held_while_probing(self):
        instances_path = self.root
        cache_dir = os.path.join(instances_path, '_base')
        os.mkdir(cache_dir)
        base = os.path.join(cache_dir, NAME)
        os.rename(self.base, base)
        lock_path = locks.lock_file_path(instances_path, NAME)
        with locks.nova_lock(instances_path, NAME):
            qemu_locks.probe(base)
            # Closing a descriptor on the lock file itself would drop it.
            self.assertTrue(test_locks.lock_is_busy(lock_path))
        self.assertFalse(test_locks.lock_is_busy(lock_path))

    def test_reports_the_pid_of_a_posix_lock(self):
        holder = subprocess.Popen(
            [sys.executable, '-c', _HOLD_POSIX_LOCK, self.base],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(holder.wait)
        self.addCleanup(holder.stdin.close)
        self.addCleanup(holder.stdout.close)
        self.assertEqual('locked', holder.stdout.readline().strip())
        image_lock = qemu_locks.probe(self.base)
        self.assertEqual(holder.pid, image_lock.pid)
        self.assertEqual('open by a running QEMU (pid %d)' % holder.pid,
                         image_lock.reason())

    def test_a_lock_outside_qemus_bytes_is_not_seen(self):
        holder = subprocess.Popen(
            [sys.executable, '-c',
             _HOLD_POSIX_LOCK.replace('1, 100', '1, 99'), self.base],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(holder.wait)
        self.addCleanup(holder.stdin.close)
        self.addCleanup(holder.stdout.close)
        self.assertEqual('locked', holder.stdout.readline().strip())
        self.assertEqual(['POSIX ADVISORY READ %d' % holder.pid],
                         [' '.join(line.split()[:4])
                          for line in locks_on(self.base)])
        self.assertIsNone(qemu_locks.probe(self.base))

    def test_never_follows_a_symlink(self):
        link = os.path.join(self.root, 'link')
        os.symlink(self.base, link)
        self.useFixture(QemuIo(self.overlay, self.base))
        with self.assertRaises(OSError) as raised:
            qemu_locks.probe(link)
        self.assertEqual(errno.ELOOP, raised.exception.errno)

    def test_a_fifo_is_not_waited_on_and_has_no_image_lock(self):
        fifo = os.path.join(self.root, 'fifo')
        os.mkfifo(fifo)
        self.assertIsNone(qemu_locks.probe(fifo))


class PassTestCase(fixtures.TestWithFixtures, unittest.TestCase):
    """cachekeeper-manage cache pass, end to end, with qemu-io running."""

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        self.instances_path = os.path.join(root, 'instances')
        self.cache_dir = os.path.join(self.instances_path, '_base')
        state_path = os.path.join(root, 'state')
        os.makedirs(self.cache_dir)
        os.makedirs(state_path, mode=0o700)
        self.config_file = os.path.join(root, 'cachekeeper.conf')
        with open(self.config_file, 'w') as f:
            f.write('[DEFAULT]\ninstances_path = %s\nstate_path = %s\n'
                    'host = compute-test\n' % (self.instances_path,
                                               state_path))
        self.base = os.path.join(self.cache_dir, NAME)
        # The guest's disk lives outside instances_path, so no instance
        # directory names the base file.
        self.overlay = os.path.join(root, 'volumes', 'disk')
        os.makedirs(os.path.dirname(self.overlay))
        make_chain(self.base, self.overlay)
        self.age_base()

    def age_base(self):
        when = time.time() - 2 * DAY
        os.utime(self.base, (when, when))

    def run_pass(self):
        process = subprocess.run(
            [MANAGE, '--config-file', self.config_file, 'cache', 'pass',
             '--json'], capture_output=True, text=True, timeout=60)
        self.assertEqual(0, process.returncode, process.stderr)
        return {os.path.basename(entry['path']): entry
                for entry in json.loads(process.stdout)['files']}

    def test_held_base_file_is_in_use_until_qemu_exits(self):
        old_mtime = os.stat(self.base).st_mtime
        qemu_io = self.useFixture(QemuIo(self.overlay, self.base))
        entry = self.run_pass()[NAME]
        self.assertEqual((facts.IN_USE, 'open by a running QEMU'),
                         (entry['verdict'], entry['reason']))
        self.assertEqual([NAME], [b.name for b in scan.scan(self.cache_dir)])
        # In use, so touched, as nova touches what it uses.
        self.assertGreater(os.stat(self.base).st_mtime, old_mtime)

        qemu_io.stop()
        self.age_base()
        entry = self.run_pass()[NAME]
        # Removed, or moved into the scrub queue once a pass queues.
        self.assertIn(entry['verdict'], (facts.REMOVED, facts.QUEUED))
        self.assertFalse(os.path.lexists(self.base))

    def test_explain_shows_the_probe(self):
        explain = [MANAGE, '--config-file', self.config_file, 'cache',
                   'explain', NAME]
        process = subprocess.run(explain, capture_output=True, text=True,
                                 timeout=60)
        self.assertEqual(0, process.returncode, process.stderr)
        self.assertIn('QEMU lock probe: not open\n', process.stdout)

        self.useFixture(QemuIo(self.overlay, self.base))
        process = subprocess.run(explain, capture_output=True, text=True,
                                 timeout=60)
        self.assertEqual(0, process.returncode, process.stderr)
        self.assertIn('QEMU lock probe: open by a running QEMU (holds '
                      'consistent read)\n', process.stdout)
