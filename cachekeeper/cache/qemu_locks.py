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

"""Whether a running QEMU has a disk image open: its image locks.

Since 2.10, QEMU locks one byte of every image of a guest's chain for each
block permission it holds (byte 100 + n) and for each one it does not
share with others (byte 200 + n), as open file description (OFD) locks
(``block/file-posix.c``; POSIX locks where OFD locks are missing). A lock
at those bytes is proof that a process has the image open right now. The
absence of one proves nothing: a shut-off guest holds no lock, and QEMU
started with ``locking=off`` takes none. So it only ever keeps a file.
"""

import dataclasses
import fcntl
import os
import stat

from cachekeeper.cache import locks

PERMISSION_LOCK_BASE = 100
SHARED_LOCK_BASE = 200

# QEMU's BLK_PERM_* bits, in order; the lock byte of bit n is base + n.
PERMISSIONS = ('consistent read', 'write', 'write unchanged', 'resize',
               'graph modification')

# Every byte either base can lock, with room for permissions QEMU may add.
_PROBED_START = PERMISSION_LOCK_BASE
_PROBED_LENGTH = 2 * (SHARED_LOCK_BASE - PERMISSION_LOCK_BASE)


@dataclasses.dataclass(frozen=True)
class ImageLock:
    """The first lock the kernel reports on the probed bytes of an image.

    ``pid`` is None for an OFD lock: it belongs to an open file, not to a
    process, and the kernel does not say whose it is.
    """

    start: int
    length: int
    exclusive: bool
    pid: int = None

    def meaning(self):
        """Say what the locked bytes mean to QEMU, e.g. 'holds write'."""
        end = self.start + self.length
        if (self.length <= 0 or self.start < _PROBED_START or
                end > _PROBED_START + _PROBED_LENGTH):
            # Not one of QEMU's byte locks: a whole-file lock, say.
            return 'a lock from byte %d to %s' % (
                self.start, end - 1 if self.length > 0 else 'the end')
        held = []
        unshared = []
        for byte in range(self.start, end):
            if byte >= SHARED_LOCK_BASE:
                unshared.append(_permission(byte - SHARED_LOCK_BASE))
            elif byte >= PERMISSION_LOCK_BASE:
                held.append(_permission(byte - PERMISSION_LOCK_BASE))
        parts = []
        if held:
            parts.append('holds %s' % ', '.join(held))
        if unshared:
            parts.append('does not share %s' % ', '.join(unshared))
        return '; '.join(parts)

    def reason(self):
        """Say why the image counts as in use, for a verdict."""
        if self.pid is None:
            return 'open by a running QEMU'
        return 'open by a running QEMU (pid %d)' % self.pid


def _permission(bit):
    if bit < len(PERMISSIONS):
        return PERMISSIONS[bit]
    return 'permission %d' % bit


def probe(path):
    """Return the ImageLock a process holds on image ``path``, or None.

    Asks the kernel which lock would conflict with a write lock on all of
    QEMU's lock bytes (F_OFD_GETLK), which conflicts with QEMU's read and
    write locks alike. F_OFD_GETLK only asks: it takes no lock that QEMU
    could notice. Anything but a regular file has no image lock; a symlink
    is never followed (OSError ELOOP), nor is a FIFO waited on. Raises
    OSError if the file cannot be opened or probed.
    """
    # Closing a descriptor drops every POSIX lock this process holds on the
    # same file. The nova lock this may run under is a POSIX lock on the
    # lock file (locks/nova-<name>), not on the image, so it stays held;
    # OFD locks belong to open files, so others' locks are never dropped.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW |
                 os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        # l_pid must be 0 for the OFD commands.
        query = locks.Flock(l_type=fcntl.F_WRLCK, l_whence=os.SEEK_SET,
                            l_start=_PROBED_START, l_len=_PROBED_LENGTH,
                            l_pid=0)
        answer = locks.Flock.from_buffer_copy(
            fcntl.fcntl(fd, fcntl.F_OFD_GETLK, bytes(query)))
    finally:
        os.close(fd)
    if answer.l_type == fcntl.F_UNLCK:
        return None
    return ImageLock(start=answer.l_start, length=answer.l_len,
                     exclusive=answer.l_type == fcntl.F_WRLCK,
                     pid=answer.l_pid if answer.l_pid > 0 else None)
