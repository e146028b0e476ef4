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

"""This host's quarantine directory: cache files moved into it and out.

Removed cache files wait in ``<quarantine_dir>/<host>/<entry id>-<name>``.
The directory is on the image cache's file system, so that moving a file
in or out is a rename: atomic, nothing copied, and the inode kept, which is
how the queue recognises its file. Each host has its own directory because
its queue lives in its own state database: hosts that share instances_path
never touch each other's quarantined files.

This module does the file system half of the scrub queue and none of its
bookkeeping (cachekeeper.scrub.entries; cachekeeper.scrub.queue puts the
two in order). What an entry records is not trusted as such: a file is
unlinked or moved back only when its path is directly in this host's
directory and it is the recorded inode, and only directly into the image
cache, by descriptors of the directories opened once.
"""

import contextlib
import errno
import os
import re
import stat

from oslo_log import log as logging

from cachekeeper import fmt
from cachekeeper.scrub import entries

LOG = logging.getLogger(__name__)

# Where an entry's file is (see Quarantine.locate).
IN_QUARANTINE = 'quarantine'
IN_CACHE = 'cache'

_DIR_MODE = 0o700
_QUARANTINE_NAME = re.compile(r'[0-9]+-(.+)', re.DOTALL)


class QuarantineError(Exception):
    """This host's quarantine directory cannot be used; one line."""


def _is_file_name(name):
    return (bool(name) and name not in ('.', '..') and os.sep not in name and
            '\0' not in name)


@contextlib.contextmanager
def _open_dir(path, nofollow=False):
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    if nofollow:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        yield fd
    finally:
        os.close(fd)


def _lstat_at(name, dir_fd):
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def _is_file(st, ino):
    return st is not None and stat.S_ISREG(st.st_mode) and st.st_ino == ino


def _make_private_dir(path):
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        return
    # mkdir's mode went through the umask.
    os.chmod(path, _DIR_MODE)
    LOG.info('Created quarantine directory %s', path)


def _set_mtime_back(entry, cache_fd):
    """Give a file moved back into the cache its recorded mtime.

    Returns None, or what went wrong (the file stays where it is).
    """
    try:
        atime_ns = os.lstat(entry.name, dir_fd=cache_fd).st_atime_ns
        os.utime(entry.name, ns=(atime_ns, entry.mtime_ns),
                 dir_fd=cache_fd, follow_symlinks=False)
        # An operator asked for this: a power failure that keeps the
        # database must not lose the rename.
        os.fsync(cache_fd)
    except OSError as e:
        problem = 'restored, but its mtime was not set back: %s' % (
            fmt.errno_text(e))
        LOG.warning('%s (scrub queue entry %d) %s', entry.path, entry.id,
                    problem)
        return problem
    return None


def original_name(quarantine_name):
    """The cache file name in a quarantine name (``<entry id>-<name>``)."""
    match = _QUARANTINE_NAME.fullmatch(quarantine_name)
    return match.group(1) if match else quarantine_name


class Quarantine:
    """This host's quarantine directory, beside the image cache.

    ``cache_dir`` is the image cache (``$instances_path/_base``); files go
    into ``<quarantine_dir>/<host>``.
    """

    def __init__(self, instances_path, cache_dir, quarantine_dir, host):
        self.instances_path = instances_path
        self.cache_dir = cache_dir
        self.quarantine_dir = quarantine_dir
        self.host = host
        self.host_dir = os.path.join(quarantine_dir, host)

    def check(self):
        """Create this host's quarantine directory and check it is usable.

        Raises QuarantineError when it cannot be created or is not on the
        image cache's file system (quarantining must be a rename).
        """
        if not _is_file_name(self.host):
            raise QuarantineError('[DEFAULT] host %r cannot name a '
                                  'quarantine directory' % self.host)
        try:
            # A cache nova has not created yet will be made here.
            cache_root = (self.cache_dir if os.path.isdir(self.cache_dir)
                          else self.instances_path)
            # Checked before anything is created on the wrong file system.
            existing = (self.quarantine_dir
                        if os.path.isdir(self.quarantine_dir)
                        else os.path.dirname(self.quarantine_dir))
            if os.stat(existing).st_dev != os.stat(cache_root).st_dev:
                raise QuarantineError(
                    '[scrubber] quarantine_dir %s is not on the file system '
                    'of the image cache %s: files are quarantined by '
                    'renaming them' % (self.quarantine_dir, cache_root))
            if existing == self.quarantine_dir:
                self._check_is_its_own()
            _make_private_dir(self.quarantine_dir)
            _make_private_dir(self.host_dir)
            if os.path.islink(self.host_dir):
                raise QuarantineError('quarantine directory %s is a symlink'
                                      % self.host_dir)
            with _open_dir(self.host_dir, nofollow=True) as fd:
                if stat.S_IMODE(os.fstat(fd).st_mode) != _DIR_MODE:
                    os.fchmod(fd, _DIR_MODE)
        except OSError as e:
            raise QuarantineError('[scrubber] quarantine_dir: cannot use '
                                  '%s: %s' % (e.filename, e.strerror))

    def _check_is_its_own(self):
        # A pass does not read the quarantine directory for instances: an
        # instance directory given as quarantine_dir would hide the disks
        # it holds, and their bases would go. The quarantine directory
        # holds the directories of hosts and nothing else.
        if os.path.samefile(self.quarantine_dir, self.instances_path):
            raise QuarantineError('[scrubber] quarantine_dir %s is '
                                  'instances_path' % self.quarantine_dir)
        with os.scandir(self.quarantine_dir) as listing:
            for dirent in listing:
                if not dirent.is_dir():
                    raise QuarantineError(
                        '[scrubber] quarantine_dir %s holds %s, which no '
                        'quarantine directory does: it must be a directory '
                        'of its own' % (self.quarantine_dir, dirent.name))

    def path_for(self, entry_id, name):
        """Where cache file ``name`` waits as entry ``entry_id``."""
        return os.path.join(self.host_dir, '%d-%s' % (entry_id, name))

    def scanned_file(self, base_file):
        """Return the lstat of ``base_file``, checked to be the one scanned.

        Raises entries.ScrubError when it is not directly in the image
        cache, cannot be read, or is another file than the scan's.
        """
        if os.path.join(self.cache_dir, base_file.name) != base_file.path:
            raise entries.ScrubError('%s is not in the image cache %s'
                                     % (base_file.path, self.cache_dir))
        try:
            st = os.lstat(base_file.path)
        except OSError as e:
            raise entries.ScrubError('cannot quarantine %s: %s' % (
                base_file.path, fmt.errno_text(e))) from e
        if not _is_file(st, base_file.ino):
            raise entries.ScrubError('cannot quarantine %s: it was replaced '
                                     'since the scan' % base_file.path)
        return st

    def move_in(self, path, quarantine_path):
        """Rename cache file ``path`` to ``quarantine_path``; OSError."""
        # Names carry unique entry IDs; this only guards against a
        # database restored from a backup overwriting a quarantined file.
        if os.path.lexists(quarantine_path):
            raise FileExistsError(errno.EEXIST, 'File exists',
                                  quarantine_path)
        os.rename(path, quarantine_path)

    def mtime(self, quarantine_path):
        """The mtime of a quarantined file, as a scan reads it."""
        return os.lstat(quarantine_path).st_mtime

    def put_back(self, quarantine_path, path):
        """Rename a file just moved in back to ``path``; OSError."""
        os.rename(quarantine_path, path)

    def name_of(self, entry):
        """Return the name of the entry's file in this host's directory.

        Raises entries.ScrubError when the entry's quarantine_path is not
        directly in it.
        """
        name = os.path.basename(entry.quarantine_path)
        if (not _is_file_name(name) or entry.quarantine_path !=
                os.path.join(self.host_dir, name)):
            raise entries.ScrubError(
                'entry %d: %s is not in this host\'s quarantine directory %s'
                % (entry.id, entry.quarantine_path, self.host_dir))
        return name

    def _in_cache_dir(self, entry):
        """Whether the entry's path is a file name directly in the cache."""
        return (_is_file_name(entry.name) and
                entry.path == os.path.join(self.cache_dir, entry.name))

    def check_cache_path(self, entry):
        """Refuse (entries.ScrubError) a path not directly in the cache."""
        # The path comes from the database: never let it lead a restore
        # anywhere but directly into the image cache.
        if not self._in_cache_dir(entry):
            raise entries.ScrubError(
                'refusing to restore entry %d: %s is not a file directly in '
                'the image cache %s' % (entry.id, entry.path, self.cache_dir))

    @contextlib.contextmanager
    def opened(self):
        """The image cache and this host's directory, opened for a restore.

        Yields a Directories; raises OSError when one cannot be opened.
        """
        with _open_dir(self.cache_dir) as cache_fd, \
                _open_dir(self.host_dir, nofollow=True) as quarantine_fd:
            yield Directories(cache_fd, quarantine_fd)

    def unlink(self, entry):
        """Unlink the entry's quarantined file.

        Returns the bytes this reclaimed (its allocation, if that was its
        last link) or None if the file is not in quarantine. Raises
        entries.ScrubError, leaving the file, when it is not the recorded
        inode or not in this host's directory, and OSError when unlinking
        fails.
        """
        name = self.name_of(entry)
        with _open_dir(self.host_dir, nofollow=True) as dir_fd:
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=dir_fd)
            except FileNotFoundError:
                return None
            try:
                if not _is_file(os.fstat(fd), entry.ino):
                    raise entries.ScrubError(
                        'quarantined %s is not the file queued as entry %d '
                        '(inode %d); left alone'
                        % (entry.quarantine_path, entry.id, entry.ino))
                os.unlink(name, dir_fd=dir_fd)
                after = os.fstat(fd)
            finally:
                os.close(fd)
        return after.st_blocks * 512 if after.st_nlink == 0 else 0

    def locate(self, entry):
        """Return where the entry's inode is: IN_QUARANTINE, IN_CACHE, None."""
        with _open_dir(self.host_dir, nofollow=True) as quarantine_fd:
            found = _lstat_at(self.name_of(entry), quarantine_fd)
        if _is_file(found, entry.ino):
            return IN_QUARANTINE
        if self._in_cache_dir(entry):
            try:
                found = os.lstat(entry.path)
            except FileNotFoundError:
                found = None
            if _is_file(found, entry.ino):
                return IN_CACHE
        return None

    def set_mtime_back(self, entry):
        """Give the entry's file, back in the cache, its recorded mtime.

        Returns None, or what went wrong.
        """
        with _open_dir(self.cache_dir) as cache_fd:
            return _set_mtime_back(entry, cache_fd)

    def names(self):
        """Return the names in this host's directory, sorted; OSError."""
        with os.scandir(self.host_dir) as listing:
            return sorted(dirent.name for dirent in listing)

    def lstat(self, quarantine_name):
        """Return the lstat of a name in this host's directory, or None."""
        try:
            return os.lstat(os.path.join(self.host_dir, quarantine_name))
        except FileNotFoundError:
            return None


class Directories:
    """The image cache and this host's quarantine directory, opened.

    A restore works through these descriptors, so that what it checked
    is where it moves the file.
    """

    def __init__(self, cache_fd, quarantine_fd):
        self._cache_fd = cache_fd
        self._quarantine_fd = quarantine_fd

    def cache_has(self, name):
        """Whether anything (even a dangling symlink) is called ``name``."""
        return _lstat_at(name, self._cache_fd) is not None

    def holds(self, quarantine_name, ino):
        """Whether ``quarantine_name`` is the regular file ``ino``."""
        return _is_file(_lstat_at(quarantine_name, self._quarantine_fd), ino)

    def move_back(self, quarantine_name, name):
        """Rename a quarantined file back into the cache; OSError."""
        os.rename(quarantine_name, name, src_dir_fd=self._quarantine_fd,
                  dst_dir_fd=self._cache_fd)

    def set_mtime_back(self, entry):
        """See Quarantine.set_mtime_back."""
        return _set_mtime_back(entry, self._cache_fd)
