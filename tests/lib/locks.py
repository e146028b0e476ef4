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

"""nova's locks as another process takes them, and a probe of them."""

import os
import subprocess
import sys

import pytest

# Owners of nova's files in the tests that chown (as root).
NOVA_UID = 12345
NOVA_GID = 12346

requires_root = pytest.mark.skipif(os.geteuid() != 0,
                                   reason='changing file owners needs root')

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


class HeldLock:
    """Another process holding a lock file the way nova does.

    A context manager; or start() and stop(). On release it first touches
    ``touch_on_release`` paths, then exits, which drops the lock.
    """

    def __init__(self, lock_path, touch_on_release=()):
        self.lock_path = lock_path
        self.touch_on_release = list(touch_on_release)
        self.process = None

    def start(self):
        os.makedirs(os.path.dirname(self.lock_path), exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, '-c', _HOLD_LOCK, self.lock_path] +
            self.touch_on_release,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.process.stdout.readline().strip() != 'locked':
            self.stop()
            raise RuntimeError('lock holder did not start')
        return self

    @property
    def pid(self):
        return self.process.pid

    def release(self):
        self.process.stdin.write('\n')
        self.process.stdin.flush()
        if self.process.wait(timeout=10) != 0:
            raise RuntimeError('lock holder failed')

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def lock_is_busy(lock_path):
    """Ask another process whether it could take the lock right now."""
    answer = subprocess.run([sys.executable, '-c', _TRY_LOCK, lock_path],
                            capture_output=True, text=True, check=True)
    return answer.stdout.strip() == 'busy'
