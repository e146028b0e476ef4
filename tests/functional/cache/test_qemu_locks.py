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
import subprocess
import sys
import time

import pytest

from cachekeeper.cache import facts
from cachekeeper.cache import locks
from cachekeeper.cache import qemu_locks
from cachekeeper.cache import scan
from tests.lib import locks as held_locks
from tests.lib import qemu

MANAGE = os.path.join(os.path.dirname(sys.executable), 'cachekeeper-manage')

NAME = 'a9993e364706816aba3e25717850c26c9cd0d89d'
DAY = 86400

# Another process holding a POSIX read lock on one byte (QEMU's first
# lock byte is 100), as a QEMU without OFD locks would.
_HOLD_POSIX_LOCK = '''
import fcntl, sys
image = open(sys.argv[1], 'rb')
fcntl.lockf(image, fcntl.LOCK_SH, 1, int(sys.argv[2]))
print('locked', flush=True)
sys.stdin.readline()
'''


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


class QemuIo:
    """A qemu-io that has ``overlay`` (and so its chain) open until stop().

    It reads commands from its standard input, so it keeps the image open
    as long as that stays open; closing it ends qemu-io.
    """

    def __init__(self, overlay, held_file):
        self.overlay = overlay
        self.held_file = held_file
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [qemu.QEMU_IO, '-f', 'qcow2', self.overlay],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        try:
            self._wait_for_the_lock()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_the_lock(self):
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
        if self.process is None or self.process.returncode is not None:
            return
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stderr.close()


@pytest.fixture
def qemu_io():
    """qemu_io(overlay, held_file): a started QemuIo, stopped after it."""
    started = []

    def start(overlay, held_file):
        started.append(QemuIo(overlay, held_file).start())
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def posix_lock():
    """posix_lock(path, start=100): another process holds a byte of path.

    Returns its Popen; it lets go after the test.
    """
    holders = []

    def hold(path, start=100):
        holder = subprocess.Popen(
            [sys.executable, '-c', _HOLD_POSIX_LOCK, path, str(start)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout.readline().strip() == 'locked'
        return holder

    yield hold
    for holder in holders:
        holder.stdout.close()
        holder.stdin.close()
        holder.wait()


class Chain:
    """A raw base and a qcow2 overlay on it, in ``root``."""

    def __init__(self, root):
        self.root = root
        self.base = os.path.join(self.root, NAME)
        self.overlay = os.path.join(self.root, 'disk')
        qemu.make_chain(self.base, self.overlay)


@pytest.fixture
def chain(tmp_path):
    return Chain(str(tmp_path))


def test_finds_the_lock_of_a_running_qemu_on_the_backing_file(chain, qemu_io):
    qemu_io(chain.overlay, chain.base)
    image_lock = qemu_locks.probe(chain.base)
    # QEMU opens a backing file read-only and shares its consistent
    # read: a shared OFD lock on byte 100, owned by no process.
    assert image_lock == (
        qemu_locks.ImageLock(start=100, length=1, exclusive=False,
                             pid=None))
    assert image_lock.meaning() == 'holds consistent read'
    assert image_lock.reason() == 'open by a running QEMU'


def test_finds_the_write_permission_on_the_active_image(chain, qemu_io):
    qemu_io(chain.overlay, chain.base)
    assert 'write' in qemu_locks.probe(chain.overlay).meaning()


def test_a_file_nobody_holds_has_no_lock(chain):
    assert qemu_locks.probe(chain.base) is None
    assert qemu_locks.probe(chain.overlay) is None


def test_no_lock_once_qemu_exits(chain, qemu_io):
    process = qemu_io(chain.overlay, chain.base)
    process.stop()
    assert qemu_locks.probe(chain.base) is None


def test_probing_takes_and_drops_no_lock(chain, qemu_io):
    assert locks_on(chain.base) == []
    qemu_locks.probe(chain.base)
    assert locks_on(chain.base) == []
    qemu_io(chain.overlay, chain.base)
    held = locks_on(chain.base)
    assert held != []
    for _attempt in range(3):
        qemu_locks.probe(chain.base)
    assert held == locks_on(chain.base)


def test_the_nova_lock_stays_held_while_probing(chain):
    instances_path = chain.root
    cache_dir = os.path.join(instances_path, '_base')
    os.mkdir(cache_dir)
    base = os.path.join(cache_dir, NAME)
    os.rename(chain.base, base)
    lock_path = locks.lock_file_path(instances_path, NAME)
    with locks.nova_lock(instances_path, NAME):
        qemu_locks.probe(base)
        # Closing a descriptor on the lock file itself would drop it.
        assert held_locks.lock_is_busy(lock_path)
    assert not held_locks.lock_is_busy(lock_path)


def test_reports_the_pid_of_a_posix_lock(chain, posix_lock):
    holder = posix_lock(chain.base)
    image_lock = qemu_locks.probe(chain.base)
    assert holder.pid == image_lock.pid
    assert image_lock.reason() == (
        'open by a running QEMU (pid %d)' % holder.pid)


def test_a_lock_outside_qemus_bytes_is_not_seen(chain, posix_lock):
    holder = posix_lock(chain.base, start=99)
    assert [' '.join(line.split()[:4])
            for line in locks_on(chain.base)] == (
        ['POSIX ADVISORY READ %d' % holder.pid])
    assert qemu_locks.probe(chain.base) is None


def test_never_follows_a_symlink(chain, qemu_io):
    link = os.path.join(chain.root, 'link')
    os.symlink(chain.base, link)
    qemu_io(chain.overlay, chain.base)
    with pytest.raises(OSError) as raised:
        qemu_locks.probe(link)
    assert raised.value.errno == errno.ELOOP


def test_a_fifo_is_not_waited_on_and_has_no_image_lock(chain):
    fifo = os.path.join(chain.root, 'fifo')
    os.mkfifo(fifo)
    assert qemu_locks.probe(fifo) is None


class QemuPass:
    """cachekeeper-manage cache pass, end to end, with qemu-io running."""

    def __init__(self, root):
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
        qemu.make_chain(self.base, self.overlay)
        self.age_base()

    def age_base(self):
        when = time.time() - 2 * DAY
        os.utime(self.base, (when, when))

    def run_pass(self):
        process = subprocess.run(
            [MANAGE, '--config-file', self.config_file, 'cache', 'pass',
             '--json'], capture_output=True, text=True, timeout=60)
        assert process.returncode == 0, process.stderr
        return {os.path.basename(entry['path']): entry
                for entry in json.loads(process.stdout)['files']}


@pytest.fixture
def qemu_pass(tmp_path):
    return QemuPass(str(tmp_path))


def test_held_base_file_is_in_use_until_qemu_exits(qemu_pass, qemu_io):
    old_mtime = os.stat(qemu_pass.base).st_mtime
    process = qemu_io(qemu_pass.overlay, qemu_pass.base)
    entry = qemu_pass.run_pass()[NAME]
    assert (facts.IN_USE, 'open by a running QEMU') == (
        entry['verdict'], entry['reason'])
    assert [b.name for b in scan.scan(qemu_pass.cache_dir)] == [NAME]
    # In use, so touched, as nova touches what it uses.
    assert os.stat(qemu_pass.base).st_mtime > old_mtime

    process.stop()
    qemu_pass.age_base()
    entry = qemu_pass.run_pass()[NAME]
    # Removed, or moved into the scrub queue once a pass queues.
    assert entry['verdict'] in (facts.REMOVED, facts.QUEUED)
    assert not os.path.lexists(qemu_pass.base)


def test_explain_shows_the_probe(qemu_pass, qemu_io):
    explain = [MANAGE, '--config-file', qemu_pass.config_file, 'cache',
               'explain', NAME]
    process = subprocess.run(explain, capture_output=True, text=True,
                             timeout=60)
    assert process.returncode == 0, process.stderr
    assert 'QEMU lock probe: not open\n' in process.stdout

    qemu_io(qemu_pass.overlay, qemu_pass.base)
    process = subprocess.run(explain, capture_output=True, text=True,
                             timeout=60)
    assert process.returncode == 0, process.stderr
    assert ('QEMU lock probe: open by a running QEMU (holds '
            'consistent read)\n') in process.stdout
