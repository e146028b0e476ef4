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

"""Nova's external locks on image cache files.

Nova takes ``$instances_path/locks/nova-<name>`` before it creates, copies
from or removes ``_base/<name>``: an oslo.concurrency external lock, that is
a POSIX record lock (``fcntl.lockf``) on the file opened in append mode.
cachekeeper takes the very same lock through the same library.

Lock files are never unlinked: a process may hold or wait for the lock on
the inode, and a new file under the same name would let a third process in.
"""

import contextlib
import ctypes
import dataclasses
import fcntl
import os
import stat
import tempfile

from oslo_concurrency import lockutils
from oslo_log import log as logging

LOG = logging.getLogger(__name__)

LOCKS_DIR = 'locks'
LOCK_FILE_PREFIX = 'nova-'
# The temporary files a new lock file is made under (see ensure_lock_file).
TEMPORARY_PREFIX = '.cachekeeper-'

_LOCKS_DIR_MODE = 0o755
_LOCK_FILE_MODE = 0o644


@dataclasses.dataclass(frozen=True)
class LockHolder:
    """A process that holds a lock file, as the kernel reports it."""

    pid: int
    exclusive: bool


class Flock(ctypes.Structure):
    """struct flock of fcntl(2), for F_GETLK and F_OFD_GETLK."""

    _fields_ = [
        ('l_type', ctypes.c_short),
        ('l_whence', ctypes.c_short),
        ('l_start', ctypes.c_int64),
        ('l_len', ctypes.c_int64),
        ('l_pid', ctypes.c_int),
    ]


def locks_dir(instances_path):
    return os.path.join(instances_path, LOCKS_DIR)


def lock_file_path(instances_path, name):
    """Return the path of nova's lock file for cache file ``name``."""
    # The same path oslo.concurrency derives from the lock name.
    return os.path.join(locks_dir(instances_path),
                        LOCK_FILE_PREFIX + name.replace(os.sep, '_'))


@contextlib.contextmanager
def nova_lock(instances_path, name, blocking=True):
    """Hold nova's lock for the cache file ``name``; blocks until it is free.

    A missing lock file (and ``locks`` directory) is created first, with
    the owner and group of its parent directory, so that nova, which opens
    the file for writing, can still take the lock afterwards. Not
    ``blocking``, it raises lockutils.AcquireLockFailedException when
    another process or thread holds the lock.
    """
    ensure_locks_dir(instances_path)
    ensure_lock_file(lock_file_path(instances_path, name))
    with lockutils.lock(name, lock_file_prefix=LOCK_FILE_PREFIX,
                        external=True, lock_path=locks_dir(instances_path),
                        blocking=blocking):
        yield


def ensure_locks_dir(instances_path):
    """Create nova's lock directory if missing, owned like instances_path."""
    ensure_directory(locks_dir(instances_path))


def lock_holder(instances_path, name):
    """Return who holds nova's lock for ``name``, or None if nobody does.

    Read-only: the lock file is neither created nor locked. When a thread
    of this process holds or waits for the lock, the answer is this
    process: the kernel does not report a process's own locks, and closing
    the probe's descriptor would drop them.
    """
    try:
        with lockutils.internal_lock(name, blocking=False):
            return _probe(lock_file_path(instances_path, name))
    except lockutils.AcquireLockFailedException:
        return LockHolder(pid=os.getpid(), exclusive=True)


def _probe(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        query = Flock(l_type=fcntl.F_WRLCK, l_whence=os.SEEK_SET)
        answer = Flock.from_buffer_copy(
            fcntl.fcntl(fd, fcntl.F_GETLK, bytes(query)))
    finally:
        os.close(fd)
    if answer.l_type == fcntl.F_UNLCK:
        return None
    return LockHolder(pid=answer.l_pid,
                      exclusive=answer.l_type == fcntl.F_WRLCK)


def ensure_directory(directory):
    """Create ``directory`` if missing, with the owner and group of its parent.

    Its parent must exist. Whoever runs cachekeeper (root, say), what it
    makes among nova's locks stays nova's to use.
    """
    if os.path.isdir(directory):
        return
    try:
        os.mkdir(directory, _LOCKS_DIR_MODE)
    except FileExistsError:
        return
    owner = os.stat(os.path.dirname(directory))
    fd = os.open(directory,
                 os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(fd, owner.st_uid, owner.st_gid)
        os.fchmod(fd, _LOCKS_DIR_MODE)
    finally:
        os.close(fd)
    LOG.info('Created lock directory %s owned by %d:%d',
             directory, owner.st_uid, owner.st_gid)


def ensure_lock_file(path):
    """Create the lock file ``path`` if missing, owned like its directory."""
    if os.path.lexists(path):
        return
    directory = os.path.dirname(path)
    owner = os.stat(directory)
    # The file gets its owner and mode under a temporary name and is then
    # linked into place, which fails if it exists already: nova never sees
    # a lock file it cannot open, and an existing one is left as it is.
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=TEMPORARY_PREFIX)
    try:
        created = os.fstat(fd)
        if (created.st_uid, created.st_gid) != (owner.st_uid, owner.st_gid):
            os.fchown(fd, owner.st_uid, owner.st_gid)
        os.fchmod(fd, _LOCK_FILE_MODE)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return
        LOG.debug('Created lock file %s owned by %d:%d',
                  path, owner.st_uid, owner.st_gid)
    finally:
        os.close(fd)
        os.unlink(temporary)
