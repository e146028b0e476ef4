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

"""Faults injected into a running daemon, one at a time.

The daemon runs as a subprocess with a pass every second, on a host with
one instance using base X (old, so only its use keeps it) and an old
unused base U. A fake qemu-img, alone on the daemon's PATH with prlimit,
does what a mode file says, and file system tricks do the rest. For each
fault: the daemon keeps running; while the fault lasts, nothing that could
be in use goes (X always stays, and U too when the fault hides what the
instances use); the fault is told in one log line, not once per pass;
once the fault is gone the next pass removes U; the daemon stops cleanly
and its log has no traceback.
"""

import dataclasses
import os
import shutil
import time

import pytest

from tests.lib import daemon as system_daemon
from tests.lib import hosttree
from tests.lib import qemu
from tests.stress import soak

PASS_LINE = r'INFO cachekeeper.service .* Pass done'
WAIT = 30
# The daemon needs about 80 MiB.
MAX_RSS = 256 * 1024 * 1024
UUID_A = '6f1c4a52-2d0e-4c36-9a51-00000000000a'
UUID_B = '6f1c4a52-2d0e-4c36-9a51-00000000000b'
X = hosttree.image('image-x')
Y = hosttree.image('image-y')
U = hosttree.image('unused-image')
OLD = 2 * hosttree.DAY

FAKE_QEMU_IMG = '''#!/bin/sh
# qemu-img for fault injection: the mode file says what it does.
PATH=/usr/bin:/bin
for disk; do :; done
directory=$(dirname "$disk")
case "$(cat '{mode_file}' 2>/dev/null)" in
hang) sleep 3600; exit 0;;
fail) echo "qemu-img: injected failure" >&2; exit 1;;
garbage) printf 'garbage \\377\\376 {{{{ not json'; exit 0;;
endless) exec yes 'qemu-img output without end';;
vanish)
    case "$directory" in
    *_resize) ;;
    *) mv "$directory" "${{directory}}_resize";;
    esac;;
flip)
    case "$directory" in
    *_resize) mv "$directory" "${{directory%_resize}}";;
    *) mv "$directory" "${{directory}}_resize";;
    esac;;
symlink)
    if [ ! -L '{unused}' ]; then
        mv '{unused}' '{moved}' && ln -s '{moved}' '{unused}'
    fi;;
esac
exec '{qemu_img}' "$@"
'''


class FaultHost(hosttree.HostTree):
    """A host with X in use, U unused, and a fake qemu-img to control."""

    def __init__(self, root, backend):
        self.backend = backend
        super().__init__(root)
        self.bin_dir = os.path.join(self.root, 'bin')
        self.mode_file = os.path.join(self.root, 'qemu-img-mode')
        self.outside = os.path.join(self.root, 'outside')
        self.moved = os.path.join(self.outside, U)
        os.chmod(self.state_path, 0o700)
        os.mkdir(self.bin_dir)
        os.mkdir(self.outside)
        os.symlink(shutil.which('prlimit'),
                   os.path.join(self.bin_dir, 'prlimit'))
        self.fake_qemu_img = os.path.join(self.bin_dir, 'qemu-img')
        with open(self.fake_qemu_img, 'w') as f:
            f.write(FAKE_QEMU_IMG.format(
                mode_file=self.mode_file, unused=self.cache_path(U),
                moved=self.moved, qemu_img=qemu.QEMU_IMG))
        os.chmod(self.fake_qemu_img, 0o755)
        self.instance(UUID_A, {'disk': self.base(X, OLD)})
        self.base(U, OLD)
        self.set_mode('ok')

    def write_config(self, **image_cache):
        system_daemon.write_config(
            self.config_file,
            DEFAULT={'instances_path': self.instances_path,
                     'state_path': self.state_path, 'host': 'compute-test',
                     'service_backend': self.backend},
            image_cache=dict({
                'manager_interval': 1, 'inspect_timeout': 1,
                # Every disk goes to qemu-img, however it may be read.
                'inspect_method': 'qemu-img',
                'remove_unused_original_minimum_age_seconds': hosttree.DAY},
                **image_cache),
            scrubber={'scrub_delay': 0})

    def set_mode(self, mode):
        with open(self.mode_file, 'w') as f:
            f.write(mode)

    def start(self, wrapper=()):
        env = dict(os.environ, PATH=self.bin_dir)
        return system_daemon.Daemon(self.root, self.config_file,
                                    wrapper=wrapper, env=env)


def running_processes_with(text):
    """Pids of the processes whose command line contains ``text``."""
    pids = []
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


class ToldMoreThanOnce(AssertionError):
    """The same warning or error was logged more than once."""


def repeated_lines(log):
    """WARNING and ERROR lines logged more than once (times left out)."""
    seen = set()
    repeated = []
    for line in log.splitlines():
        fields = line.split(' ', 4)
        if len(fields) == 5 and fields[3] in ('WARNING', 'ERROR'):
            if fields[4] in seen:
                repeated.append(line)
            seen.add(fields[4])
    return repeated


def peak_rss(pid):
    """Peak resident memory in bytes of the daemon's processes."""
    peak = 0
    for process in soak.daemon_processes(pid):
        try:
            with open('/proc/%d/status' % process) as f:
                for line in f:
                    if line.startswith('VmHWM:'):
                        peak = max(peak, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return peak


@dataclasses.dataclass
class Fault:
    """One fault: how to cause it, what it must keep, how to end it.

    ``kept`` are the cache files that must stay while it lasts; ``log``
    the text of the one line that tells about it.
    """

    name: str
    log: str = None
    kept: tuple = (X, U)
    mode: str = None
    removes_u_after: bool = True
    backend: str = 'eventlet'

    def inject(self, host):
        if self.mode:
            host.set_mode(self.mode)

    def wrapper(self, host):
        return ()

    def started(self, host, daemon):
        """Called once the daemon has started."""

    def clear(self, host, daemon):
        host.set_mode('ok')

    def check_after(self, host):
        """A last look at the host once the fault is gone."""


class MissingQemuImg(Fault):

    def inject(self, host):
        os.unlink(host.fake_qemu_img)

    def clear(self, host, daemon):
        os.symlink(qemu.QEMU_IMG, host.fake_qemu_img)


class UnreadableInstance(Fault):
    """EACCES on a second instance's directory, which uses Y."""

    def inject(self, host):
        self.directory = host.instance(UUID_B, {'disk': host.base(Y, OLD)})
        os.chmod(self.directory, 0)

    def wrapper(self, host):
        if os.geteuid() != 0:
            return ()
        # root reads any directory; without these capabilities it cannot.
        return (shutil.which('setpriv'),
                '--bounding-set=-dac_override,-dac_read_search')

    def clear(self, host, daemon):
        os.chmod(self.directory, 0o755)

    def check_after(self, host):
        assert os.path.isfile(host.cache_path(Y))


class FullStateDatabase(Fault):
    """ENOSPC: state_path on a small tmpfs, filled up after start-up."""

    def wrapper(self, host):
        command = [shutil.which('unshare'), '--mount', '--propagation',
                   'private']
        if os.geteuid() != 0:
            command.append('--map-root-user')
        return tuple(command) + (
            '/bin/sh', '-c',
            '"$0" -t tmpfs -o size=2m,mode=0700 tmpfs "$1" && shift && '
            'exec "$@"', shutil.which('mount'), host.state_path)

    def _filler(self, host, daemon):
        # The daemon's own view of state_path, the tmpfs in its namespace.
        return '/proc/%d/root%s/filler' % (daemon.process.pid,
                                            host.state_path)

    def started(self, host, daemon):
        daemon.wait_for(PASS_LINE)
        try:
            with open(self._filler(host, daemon), 'wb') as f:
                while True:
                    f.write(b'\0' * 65536)
                    f.flush()
        except OSError as e:
            assert e.errno == 28, e
        # U is there only now that nothing can be written.
        host.base(U, OLD)

    def inject(self, host):
        os.unlink(host.cache_path(U))

    def clear(self, host, daemon):
        os.unlink(self._filler(host, daemon))


class SymlinkSwap(Fault):
    """U becomes a symlink to itself elsewhere between scan and removal."""

    def check_after(self, host):
        # Not followed: the file it points to is neither removed nor
        # touched, and the link stays, never removed.
        assert os.path.islink(host.cache_path(U))
        assert os.stat(host.moved).st_mtime < time.time() - hosttree.DAY


FAULTS = [
    Fault('qemu-img hangs', mode='hang',
          log='did not finish within 1 s and was killed'),
    Fault('qemu-img exits 1', mode='fail',
          log='failed with exit code 1: qemu-img: injected failure'),
    Fault('qemu-img prints garbage', mode='garbage',
          log='printed no valid JSON'),
    Fault('qemu-img prints without end', mode='endless', log='printed'),
    MissingQemuImg('qemu-img missing', log='qemu-img'),
    # The instance is resized while the pass inspects its disk: its
    # directory is renamed, not deleted, and X is still in use; U may go.
    Fault('disk vanishes between scan and inspection', mode='vanish',
          kept=(X,)),
    # ... and renamed back and forth at every look.
    Fault('instance directory renamed at every look', mode='flip',
          kept=(X,)),
    UnreadableInstance('EACCES on an instance directory',
                       log='Permission denied', kept=(X, Y, U)),
    # What could not be recorded is told once each (the removal, the file
    # usage, the totals); the removal waits for the disk.
    FullStateDatabase('ENOSPC writing the state database',
                      log='could not queue'),
    SymlinkSwap('base replaced by a symlink between scan and removal',
                mode='symlink', log='replaced by a non-regular file',
                kept=(X, U), removes_u_after=False),
]


def _path_of(host, name):
    if name == U and os.path.islink(host.cache_path(U)):
        # Moved away by the symlink fault: its new place counts.
        return host.moved
    return host.cache_path(name)


# Where qemu-img is killed, the backends differ (green or real
# subprocesses): these faults run on both.
FAULTS.extend(dataclasses.replace(fault, backend='threading')
              for fault in FAULTS[:4])


@pytest.mark.parametrize('fault', FAULTS,
                         ids=lambda f: '%s, %s' % (f.name, f.backend))
def test_fault(fault, tmp_path):
    host = FaultHost(tmp_path / 'host', fault.backend)
    fault.inject(host)
    daemon = host.start(wrapper=fault.wrapper(host))
    try:
        fault.started(host, daemon)
        passes = len(daemon.lines(PASS_LINE))
        daemon.wait_for(PASS_LINE, count=passes + 2, timeout=WAIT)
        assert daemon.process.poll() is None, daemon.log()
        for name in fault.kept:
            assert os.path.isfile(_path_of(host, name)), (
                '%s was removed: %s' % (name, daemon.log()))
        if fault.log:
            told = daemon.lines(fault.log)
            assert len(told) == 1, '\n'.join(told) or daemon.log()

        fault.clear(host, daemon)
        passes = len(daemon.lines(PASS_LINE))
        daemon.wait_for(PASS_LINE, count=passes + 2, timeout=WAIT)
        if fault.removes_u_after:
            deadline = time.monotonic() + WAIT
            while os.path.lexists(host.cache_path(U)):
                assert time.monotonic() < deadline, (
                    'U not removed after the fault: %s' % daemon.log())
                time.sleep(0.2)
        assert daemon.process.poll() is None, daemon.log()
        assert os.path.isfile(host.cache_path(X)), daemon.log()
        fault.check_after(host)
        # Whatever qemu-img prints, it is not held in memory.
        assert peak_rss(daemon.process.pid) < MAX_RSS
        log = daemon.stop_cleanly()
    finally:
        daemon.kill()
    assert 'Logging error' not in log, log
    # Nothing it started outlives it.
    assert running_processes_with(host.bin_dir) == []
    assert running_processes_with('qemu-img output without end') == []
    repeated = repeated_lines(log)
    if repeated:
        raise ToldMoreThanOnce('\n'.join(repeated))
