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

"""The scrub queue: removed cache files wait in quarantine, then go.

A pass never unlinks a cache file. Under nova's lock for it, the file is
recorded in the queue and renamed into this host's quarantine directory,
``<quarantine_dir>/<host>/<entry id>-<name>`` on the image cache's file
system. A drain deletes the files that have waited ``scrub_delay``; until
then ``restore`` puts a file back where it was. Each host has its own
directory because its queue lives in its own state database: hosts that
share instances_path never touch each other's quarantined files.

Crash safety: each step commits its intent to the state database before
the file system step it describes, and every step can be replayed.
``reconcile`` (at start-up) settles what a crash interrupted by looking
for the recorded inode in quarantine and in the image cache.

Entry states:

- ``quarantining``: recorded; the rename into quarantine may have happened.
- ``queued``: in quarantine, waiting for scrub_delay or a retry's backoff.
- ``draining``: claimed by a drain; the unlink may have happened.
- ``parked``: deleting failed max_attempts times, or the quarantined file
  is not the one recorded; waits for an operator (``scrub retry``).
- ``restoring``: claimed by a restore; the rename back may have happened.
- ``drained`` (final): the file is deleted.
- ``restored`` (final): a restore moved the file back into the cache.
- ``rolled_back`` (final): the file never left the cache (a crash or an
  error before the rename) or came back without a restore.

Crash steps, for the crash tests: when the environment variable
CACHEKEEPER_CRASH_AT names one, the process kills itself with SIGKILL
there.

- ``quarantine-recorded``: entry committed, file not renamed yet.
- ``quarantine-renamed``: file in quarantine, entry not queued yet.
- ``drain-claimed``: claim committed, file not unlinked yet.
- ``drain-unlinked``: file unlinked, entry not drained yet.
- ``restore-recorded``: claim committed, file not renamed back yet.
- ``restore-renamed``: file back in the cache, mtime and entry not yet
  restored.
"""

import contextlib
import dataclasses
import errno
import os
import re
import signal
import stat

from oslo_concurrency import lockutils
from oslo_log import log as logging

from cachekeeper.cache import locks
from cachekeeper.cache import scan
from cachekeeper import printable
from cachekeeper.scrub import db
from cachekeeper.scrub import totals

LOG = logging.getLogger(__name__)

QUARANTINING = 'quarantining'
QUEUED = 'queued'
DRAINING = 'draining'
PARKED = 'parked'
RESTORING = 'restoring'
DRAINED = 'drained'
RESTORED = 'restored'
ROLLED_BACK = 'rolled_back'
ACTIVE_STATES = (QUARANTINING, QUEUED, DRAINING, PARKED, RESTORING)
FINAL_STATES = (DRAINED, RESTORED, ROLLED_BACK)

CRASH_AT_ENV = 'CACHEKEEPER_CRASH_AT'
CRASH_STEPS = ('quarantine-recorded', 'quarantine-renamed', 'drain-claimed',
               'drain-unlinked', 'restore-recorded', 'restore-renamed')

# A failed deletion is retried after 1, 2, 4... minutes, at most 6 hours.
RETRY_BACKOFF_BASE = 60
RETRY_BACKOFF_MAX = 6 * 3600
# How long entries in a final state stay in the database (and scrub list).
HISTORY_RETENTION = 30 * 86400

_DIR_MODE = 0o700
_DRAIN_BATCH = 100
# Serialises drains and reconcile across processes (a lock file in
# state_path).
_DRAIN_LOCK = 'cachekeeper-scrub-drain'
_QUARANTINE_NAME = re.compile(r'[0-9]+-(.+)', re.DOTALL)

_COLUMNS = ('id', 'name', 'path', 'quarantine_path', 'kind', 'ino', 'size',
            'allocated', 'mtime_ns', 'reason', 'state', 'queued_at',
            'updated_at', 'attempts', 'next_attempt_at', 'last_error',
            'bytes_reclaimed', 'drain_at', 'returned_at')
_SELECT = 'SELECT %s FROM scrub_entry' % ', '.join(_COLUMNS)
_INSERT = ('INSERT INTO scrub_entry (name, path, quarantine_path, kind, ino, '
           'size, allocated, mtime_ns, reason, state, queued_at, updated_at, '
           'drain_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)')

# Where reconcile finds an entry's file.
_IN_QUARANTINE = 'quarantine'
_IN_CACHE = 'cache'


class ScrubError(Exception):
    """An operation on the queue was refused or failed; one line."""


class TouchedMeanwhile(ScrubError):
    """A file touched while being quarantined; it is back in the cache."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One file the queue knows about (see the module for the states)."""

    id: int
    name: str
    path: str
    quarantine_path: str
    kind: str
    ino: int
    size: int
    allocated: int
    mtime_ns: int
    reason: str
    state: str
    queued_at: float
    updated_at: float
    attempts: int = 0
    next_attempt_at: float = None
    last_error: str = None
    bytes_reclaimed: int = None
    # Due at this time whatever scrub_delay says (None: after the delay).
    drain_at: float = None
    # When a file of the same name came back into the cache.
    returned_at: float = None

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DrainResult:
    """What one drain did.

    ``failed`` counts deletions that failed and will be retried, ``parked``
    the entries parked after the drain (all of them, not only new ones);
    ``errors`` are {'path', 'message'} like a pass report's.
    """

    drained: int = 0
    bytes_reclaimed: int = 0
    failed: int = 0
    parked: int = 0
    errors: list = dataclasses.field(default_factory=list)
    interrupted: bool = False

    def add_error(self, path, message):
        self.errors.append({'path': path, 'message': message})


@dataclasses.dataclass
class ReconcileResult:
    """What reconcile changed: entry counts by outcome, and errors."""

    queued: int = 0
    parked: int = 0
    drained: int = 0
    restored: int = 0
    rolled_back: int = 0
    adopted: int = 0
    errors: list = dataclasses.field(default_factory=list)


def from_conf(conf):
    """Open this host's scrub queue as ``conf`` describes it.

    Raises db.StateError when the state database cannot be used.
    """
    return ScrubQueue(
        db.open_state(conf.state_path),
        conf.instances_path,
        os.path.join(conf.instances_path, conf.image_cache.subdirectory_name),
        conf.scrubber.quarantine_dir,
        conf.host)


def _crash_point(step):
    """Kill this process here if the crash tests ask for it."""
    if os.environ.get(CRASH_AT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _is_file_name(name):
    return (bool(name) and name not in ('.', '..') and os.sep not in name
            and '\0' not in name)


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


def _backoff(attempts):
    return min(RETRY_BACKOFF_BASE * 2 ** min(attempts - 1, 30),
               RETRY_BACKOFF_MAX)


class ScrubQueue:
    """This host's scrub queue and quarantine directory.

    ``cache_dir`` is the image cache (``$instances_path/_base``); files go
    into ``<quarantine_dir>/<host>``. The queue owns ``state_db`` and closes
    it in close().
    """

    def __init__(self, state_db, instances_path, cache_dir, quarantine_dir,
                 host):
        self.state_db = state_db
        self.instances_path = instances_path
        self.cache_dir = cache_dir
        self.quarantine_dir = quarantine_dir
        self.host = host
        self.host_dir = os.path.join(quarantine_dir, host)

    def close(self):
        self.state_db.close()

    def check_quarantine_dir(self):
        """Create this host's quarantine directory and check it is usable.

        Raises db.StateError when it cannot be created or is not on the
        image cache's file system (quarantining must be a rename).
        """
        if not _is_file_name(self.host):
            raise db.StateError('[DEFAULT] host %r cannot name a quarantine '
                                'directory' % self.host)
        try:
            # A cache nova has not created yet will be made here.
            cache_root = (self.cache_dir if os.path.isdir(self.cache_dir)
                          else self.instances_path)
            # Checked before anything is created on the wrong file system.
            existing = (self.quarantine_dir
                        if os.path.isdir(self.quarantine_dir)
                        else os.path.dirname(self.quarantine_dir))
            if os.stat(existing).st_dev != os.stat(cache_root).st_dev:
                raise db.StateError(
                    '[scrubber] quarantine_dir %s is not on the file system '
                    'of the image cache %s: files are quarantined by '
                    'renaming them' % (self.quarantine_dir, cache_root))
            if existing == self.quarantine_dir:
                self._check_quarantine_dir_is_its_own()
            _make_private_dir(self.quarantine_dir)
            _make_private_dir(self.host_dir)
            if os.path.islink(self.host_dir):
                raise db.StateError('quarantine directory %s is a symlink'
                                    % self.host_dir)
            with _open_dir(self.host_dir, nofollow=True) as fd:
                if stat.S_IMODE(os.fstat(fd).st_mode) != _DIR_MODE:
                    os.fchmod(fd, _DIR_MODE)
        except OSError as e:
            raise db.StateError('[scrubber] quarantine_dir: cannot use %s: '
                                '%s' % (e.filename, e.strerror))

    def _check_quarantine_dir_is_its_own(self):
        # A pass does not read the quarantine directory for instances: an
        # instance directory given as quarantine_dir would hide the disks
        # it holds, and their bases would go. The quarantine directory
        # holds the directories of hosts and nothing else.
        if os.path.samefile(self.quarantine_dir, self.instances_path):
            raise db.StateError('[scrubber] quarantine_dir %s is '
                                'instances_path' % self.quarantine_dir)
        with os.scandir(self.quarantine_dir) as listing:
            for dirent in listing:
                if not dirent.is_dir():
                    raise db.StateError(
                        '[scrubber] quarantine_dir %s holds %s, which no '
                        'quarantine directory does: it must be a directory '
                        'of its own' % (self.quarantine_dir, dirent.name))

    def entry(self, entry_id):
        """Return the Entry with ``entry_id``; ScrubError if unknown."""
        rows = self.state_db.query(_SELECT + ' WHERE id = ?', (entry_id,))
        if not rows:
            raise ScrubError('no scrub queue entry with ID %s' % entry_id)
        return Entry(**dict(rows[0]))

    def entries(self, states=None):
        """Return the entries (in ``states`` if given), oldest first."""
        if states is None:
            rows = self.state_db.query(_SELECT + ' ORDER BY id')
        else:
            rows = self.state_db.query(
                _SELECT + ' WHERE state IN (%s) ORDER BY id'
                % ', '.join('?' * len(states)), tuple(states))
        return [Entry(**dict(row)) for row in rows]

    def queued(self):
        """Return (id, allocated, queued_at) of each queued entry, oldest
        first: what the disk-space budget needs of them at every pass."""
        rows = self.state_db.query(
            'SELECT id, allocated, queued_at FROM scrub_entry WHERE state = ? '
            'ORDER BY id', (QUEUED,))
        return [tuple(row) for row in rows]

    def counts(self):
        """Return {state: number of entries} for every state present."""
        rows = self.state_db.query(
            'SELECT state, COUNT(*) AS count FROM scrub_entry GROUP BY state')
        return {row['state']: row['count'] for row in rows}

    def quarantine(self, base_file, reason, now, drain_at=None):
        """Move cache file ``base_file`` into quarantine; return its Entry.

        The caller holds nova's lock for the file and has checked that it
        may go. ``drain_at`` makes the entry due then rather than after
        scrub_delay. Raises ScrubError, with the file left in the cache,
        when the file changed since the scan or cannot be moved, and
        TouchedMeanwhile when its mtime is no longer the scan's.
        """
        if os.path.join(self.cache_dir, base_file.name) != base_file.path:
            raise ScrubError('%s is not in the image cache %s'
                             % (base_file.path, self.cache_dir))
        try:
            st = os.lstat(base_file.path)
        except OSError as e:
            raise ScrubError('cannot quarantine %s: %s' % (
                base_file.path, printable.errno_text(e))) from e
        if not _is_file(st, base_file.ino):
            raise ScrubError('cannot quarantine %s: it was replaced since '
                             'the scan' % base_file.path)
        with self.state_db.transaction() as connection:
            entry_id = connection.execute(_INSERT, (
                base_file.name, base_file.path, '', base_file.kind,
                st.st_ino, st.st_size, st.st_blocks * 512, st.st_mtime_ns,
                reason, QUARANTINING, now, now, drain_at)).lastrowid
            quarantine_path = os.path.join(
                self.host_dir, '%d-%s' % (entry_id, base_file.name))
            connection.execute(
                'UPDATE scrub_entry SET quarantine_path = ? WHERE id = ?',
                (quarantine_path, entry_id))
        _crash_point('quarantine-recorded')
        try:
            # Names carry unique entry IDs; this only guards against a
            # database restored from a backup overwriting a quarantined file.
            if os.path.lexists(quarantine_path):
                raise FileExistsError(errno.EEXIST, 'File exists',
                                      quarantine_path)
            os.rename(base_file.path, quarantine_path)
        except OSError as e:
            message = 'cannot move %s into quarantine: %s' % (
                base_file.path, printable.errno_text(e))
            self._transition(entry_id, (QUARANTINING,), ROLLED_BACK, now,
                             last_error=message)
            raise ScrubError(message) from e
        _crash_point('quarantine-renamed')
        # nova touches a base outside its lock just before it uses it. A
        # touch that landed after the caller's checks shows on the moved
        # inode: the file goes back while the caller still holds nova's
        # lock, so nova finds it when it takes the lock to use it.
        if os.lstat(quarantine_path).st_mtime != base_file.mtime:
            self._put_back(entry_id, quarantine_path, base_file.path, now)
            raise TouchedMeanwhile('%s was touched while it was being '
                                   'quarantined; put back' % base_file.path)
        self._transition(entry_id, (QUARANTINING,), QUEUED, now)
        LOG.info('Quarantined %s as %s (scrub queue entry %d): %s',
                 base_file.path, quarantine_path, entry_id, reason)
        return self.entry(entry_id)

    def _put_back(self, entry_id, quarantine_path, path, now):
        try:
            os.rename(quarantine_path, path)
        except OSError as e:
            # Left to reconcile, which finds where the file is.
            raise ScrubError('%s was touched while it was being quarantined '
                             'and cannot be put back: %s'
                             % (path, printable.errno_text(e))) from e
        self._transition(entry_id, (QUARANTINING,), ROLLED_BACK, now,
                         last_error='touched while being quarantined')

    def drain(self, now, scrub_delay, max_attempts, ignore_delay=False,
              stop_event=None):
        """Delete the quarantined files that are due; return a DrainResult.

        Due are queued entries at least ``scrub_delay`` seconds old (or
        past their drain_at) whose retry backoff is over; ``ignore_delay``
        makes every queued entry due. After ``max_attempts`` failed
        deletions an entry is parked. ``stop_event`` (a threading.Event)
        ends the drain between two files. Concurrent drains (other threads
        or processes) wait for each other.
        """
        result = DrainResult()
        with self._drain_lock():
            last_id = 0
            while not result.interrupted:
                batch = self._due_entries(now, scrub_delay, ignore_delay,
                                          last_id)
                if not batch:
                    break
                for entry in batch:
                    if stop_event is not None and stop_event.is_set():
                        result.interrupted = True
                        break
                    last_id = entry.id
                    self._drain_entry(entry, now, max_attempts, result)
            self._forget_old_entries(now)
        result.parked = self.counts().get(PARKED, 0)
        return result

    def _drain_lock(self):
        return lockutils.lock(_DRAIN_LOCK, external=True,
                              lock_path=self.state_db.directory)

    def _due_entries(self, now, scrub_delay, ignore_delay, after_id):
        rows = self.state_db.query(
            _SELECT + ' WHERE state = ? AND id > ? AND (? OR ('
            'COALESCE(drain_at, queued_at + ?) <= ? AND '
            '(next_attempt_at IS NULL OR next_attempt_at <= ?))) '
            'ORDER BY id LIMIT ?',
            (QUEUED, after_id, ignore_delay, scrub_delay, now, now,
             _DRAIN_BATCH))
        return [Entry(**dict(row)) for row in rows]

    def _drain_entry(self, entry, now, max_attempts, result):
        if not self._transition(entry.id, (QUEUED,), DRAINING, now):
            # A restore or another drain got it first.
            return
        _crash_point('drain-claimed')
        try:
            reclaimed = self._unlink(entry)
        except ScrubError as e:
            # Not the file we queued: never delete what we do not know.
            result.add_error(entry.path, str(e))
            self._park(entry, now, str(e), entry.attempts)
            return
        except OSError as e:
            message = 'cannot delete quarantined %s: %s' % (
                entry.quarantine_path, printable.errno_text(e))
            result.add_error(entry.path, message)
            attempts = entry.attempts + 1
            if attempts >= max_attempts:
                self._park(entry, now, message, attempts)
            else:
                result.failed += 1
                self._retry_later(entry, now, message, attempts,
                                  max_attempts)
            return
        if reclaimed is None:
            LOG.warning('Quarantined %s (scrub queue entry %d) vanished '
                        'before the drain deleted it', entry.quarantine_path,
                        entry.id)
            self._settle(self.entry(entry.id), now, ReconcileResult())
            return
        self._transition(entry.id, (DRAINING,), DRAINED, now,
                         bytes_reclaimed=reclaimed)
        result.drained += 1
        result.bytes_reclaimed += reclaimed
        LOG.info('Deleted quarantined %s (scrub queue entry %d), %d bytes '
                 'reclaimed', entry.quarantine_path, entry.id, reclaimed)

    def _unlink(self, entry):
        """Unlink the entry's quarantined file.

        Returns the bytes this reclaimed (its allocation, if that was its
        last link) or None if the file is not in quarantine.
        """
        name = self._quarantine_name(entry)
        with _open_dir(self.host_dir, nofollow=True) as dir_fd:
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=dir_fd)
            except FileNotFoundError:
                return None
            try:
                if not _is_file(os.fstat(fd), entry.ino):
                    raise ScrubError(
                        'quarantined %s is not the file queued as entry %d '
                        '(inode %d); left alone'
                        % (entry.quarantine_path, entry.id, entry.ino))
                os.unlink(name, dir_fd=dir_fd)
                _crash_point('drain-unlinked')
                after = os.fstat(fd)
            finally:
                os.close(fd)
        return after.st_blocks * 512 if after.st_nlink == 0 else 0

    def _retry_later(self, entry, now, message, attempts, max_attempts):
        retry_at = now + _backoff(attempts)
        self._transition(entry.id, (DRAINING,), QUEUED, now,
                         attempts=attempts, next_attempt_at=retry_at,
                         last_error=message)
        # Warn when an entry starts failing, not at every retry.
        log = LOG.warning if attempts == 1 else LOG.info
        log('%s; attempt %d of %d, next one in %d s', message, attempts,
            max_attempts, retry_at - now)

    def _park(self, entry, now, message, attempts):
        self._transition(entry.id, (DRAINING,), PARKED, now,
                         attempts=attempts, next_attempt_at=None,
                         last_error=message)
        LOG.warning('Parked scrub queue entry %d (%s): %s; see '
                    'cachekeeper-manage scrub list, then scrub retry or '
                    'scrub restore', entry.id, entry.path, message)

    def _forget_old_entries(self, now):
        cutoff = now - HISTORY_RETENTION
        with self.state_db.transaction() as connection:
            forgotten = connection.execute(
                'SELECT COALESCE(SUM(bytes_reclaimed), 0) FROM scrub_entry '
                'WHERE state = ? AND updated_at < ?',
                (DRAINED, cutoff)).fetchone()[0]
            totals.add(connection, totals.RECLAIMED_BYTES, forgotten)
            connection.execute(
                'DELETE FROM scrub_entry WHERE state IN (?, ?, ?) '
                'AND updated_at < ?', FINAL_STATES + (cutoff,))

    def expedite(self, entry_ids, now):
        """Make queued entries due now; return how many were made due."""
        with self.state_db.transaction() as connection:
            return sum(connection.execute(
                'UPDATE scrub_entry SET drain_at = ?, updated_at = ? '
                'WHERE id = ? AND state = ? '
                'AND (drain_at IS NULL OR drain_at > ?)',
                (now, now, entry_id, QUEUED, now)).rowcount
                for entry_id in entry_ids)

    def totals(self):
        """Return the running totals (scrub.totals.NAMES).

        The reclaimed bytes include those of the drained entries the queue
        still keeps.
        """
        result = totals.read(self.state_db)
        rows = self.state_db.query(
            'SELECT COALESCE(SUM(bytes_reclaimed), 0) AS reclaimed '
            'FROM scrub_entry WHERE state = ?', (DRAINED,))
        result[totals.RECLAIMED_BYTES] += rows[0]['reclaimed']
        return result

    def restore(self, entry_id, now):
        """Move a quarantined file back into the cache; return its Entry.

        Takes nova's lock for the file. The file gets back its recorded
        mtime. Raises ScrubError, with nothing changed, when the entry is
        not in quarantine, something exists at its original path, or the
        quarantined file is not the one recorded.
        """
        entry = self.entry(entry_id)
        if entry.state == DRAINED:
            raise ScrubError('entry %d was drained: %s is deleted and cannot '
                             'be restored' % (entry.id, entry.path))
        if entry.state in (RESTORED, ROLLED_BACK):
            raise ScrubError('entry %d is %s: %s is not in quarantine'
                             % (entry.id, entry.state, entry.path))
        if entry.state not in (QUEUED, PARKED):
            raise ScrubError('entry %d is %s right now; try again later'
                             % (entry.id, entry.state))
        self._check_cache_path(entry)
        quarantine_name = self._quarantine_name(entry)
        try:
            with locks.nova_lock(self.instances_path, entry.name), \
                    _open_dir(self.cache_dir) as cache_fd, \
                    _open_dir(self.host_dir, nofollow=True) as quarantine_fd:
                self._move_back(entry, quarantine_name, cache_fd,
                                quarantine_fd, now)
        except OSError as e:
            raise ScrubError('cannot restore entry %d: %s; nothing changed'
                             % (entry.id, printable.errno_text(e))) from e
        return self.entry(entry_id)

    def _move_back(self, entry, quarantine_name, cache_fd, quarantine_fd,
                   now):
        """Restore ``entry``; the caller holds nova's lock for the file."""
        if _lstat_at(entry.name, cache_fd) is not None:
            raise ScrubError('refusing to restore entry %d: %s exists '
                             'again; nothing changed' % (entry.id, entry.path))
        if not _is_file(_lstat_at(quarantine_name, quarantine_fd),
                        entry.ino):
            raise ScrubError('cannot restore entry %d: %s is missing or not '
                             'the file queued; nothing changed'
                             % (entry.id, entry.quarantine_path))
        if not self._transition(entry.id, (entry.state,), RESTORING, now):
            raise ScrubError('entry %d changed while restoring it; nothing '
                             'changed, try again' % entry.id)
        _crash_point('restore-recorded')
        try:
            os.rename(quarantine_name, entry.name, src_dir_fd=quarantine_fd,
                      dst_dir_fd=cache_fd)
        except OSError:
            self._transition(entry.id, (RESTORING,), entry.state, now)
            raise
        _crash_point('restore-renamed')
        self._finish_restore(entry, cache_fd, now)

    def retry(self, entry_id, now):
        """Queue a parked entry again, with a fresh count of attempts."""
        entry = self.entry(entry_id)
        if entry.state != PARKED:
            raise ScrubError('entry %d is %s, not parked: only parked '
                             'entries can be retried' % (entry.id,
                                                         entry.state))
        if not self._transition(entry.id, (PARKED,), QUEUED, now,
                                attempts=0, next_attempt_at=None):
            raise ScrubError('entry %d changed meanwhile; try again'
                             % entry.id)
        LOG.info('Queued parked scrub queue entry %d (%s) again',
                 entry.id, entry.path)
        return self.entry(entry_id)

    def _finish_restore(self, entry, cache_fd, now):
        """Give a file moved back into the cache its recorded mtime."""
        problem = None
        try:
            atime_ns = os.lstat(entry.name, dir_fd=cache_fd).st_atime_ns
            os.utime(entry.name, ns=(atime_ns, entry.mtime_ns),
                     dir_fd=cache_fd, follow_symlinks=False)
            # An operator asked for this: a power failure that keeps the
            # database must not lose the rename.
            os.fsync(cache_fd)
        except OSError as e:
            problem = 'restored, but its mtime was not set back: %s' % (
                printable.errno_text(e))
            LOG.warning('%s (scrub queue entry %d) %s', entry.path, entry.id,
                        problem)
        self._transition(entry.id, (RESTORING,), RESTORED, now,
                         last_error=problem)
        LOG.info('Restored %s from quarantine (scrub queue entry %d)',
                 entry.path, entry.id)

    def _check_cache_path(self, entry):
        # The path comes from the database: never let it lead a restore
        # anywhere but directly into the image cache.
        if (not _is_file_name(entry.name)
                or entry.path != os.path.join(self.cache_dir, entry.name)):
            raise ScrubError('refusing to restore entry %d: %s is not a file '
                             'directly in the image cache %s'
                             % (entry.id, entry.path, self.cache_dir))

    def _quarantine_name(self, entry):
        name = os.path.basename(entry.quarantine_path)
        if (not _is_file_name(name) or entry.quarantine_path
                != os.path.join(self.host_dir, name)):
            raise ScrubError('entry %d: %s is not in this host\'s quarantine '
                             'directory %s' % (entry.id, entry.quarantine_path,
                                               self.host_dir))
        return name

    def reconcile(self, now):
        """Bring the queue and the disk back into agreement after a crash.

        Each entry in a transitional state is settled from where its inode
        is now: still (or back) in the cache, in quarantine, or nowhere
        (then it is drained). Files in quarantine without an entry are
        adopted as queued entries, never deleted on the spot. Returns a
        ReconcileResult.
        """
        result = ReconcileResult()
        with self._drain_lock():
            for entry in self.entries(ACTIVE_STATES):
                try:
                    self._reconcile_entry(entry, now, result)
                except (OSError, ScrubError) as e:
                    message = 'cannot reconcile scrub queue entry %d: %s' % (
                        entry.id, e)
                    LOG.error('%s', message)
                    result.errors.append({'path': entry.path,
                                          'message': message})
            self._adopt_orphans(now, result)
        return result

    def _reconcile_entry(self, entry, now, result):
        if entry.state in (QUARANTINING, RESTORING):
            # The process that was moving the file may still be at it.
            with locks.nova_lock(self.instances_path, entry.name):
                self._settle(self.entry(entry.id), now, result)
        else:
            self._settle(entry, now, result)

    def _settle(self, entry, now, result):
        """Settle ``entry`` from where its inode is now."""
        place = self._locate(entry)
        if place == _IN_QUARANTINE:
            if entry.state in (QUARANTINING, DRAINING):
                if self._transition(entry.id, (entry.state,), QUEUED, now):
                    result.queued += 1
                    LOG.info('Scrub queue entry %d (%s) was %s when it was '
                             'interrupted; queued again', entry.id,
                             entry.path, entry.state)
            elif entry.state == RESTORING:
                if self._transition(
                        entry.id, (RESTORING,), PARKED, now,
                        last_error='restore interrupted; run scrub '
                                   'restore again'):
                    result.parked += 1
                    LOG.warning('Restore of scrub queue entry %d (%s) was '
                                'interrupted; parked', entry.id, entry.path)
        elif place == _IN_CACHE:
            if entry.state == RESTORING:
                with _open_dir(self.cache_dir) as cache_fd:
                    self._finish_restore(entry, cache_fd, now)
                result.restored += 1
            elif self._transition(entry.id, (entry.state,), ROLLED_BACK,
                                  now):
                result.rolled_back += 1
                LOG.info('Scrub queue entry %d rolled back: %s is in the '
                         'image cache', entry.id, entry.path)
        else:
            # After an interrupted drain the unlink may have happened just
            # before the crash: how much it reclaimed is unknown.
            if self._transition(entry.id, (entry.state,), DRAINED, now):
                result.drained += 1
                log = LOG.info if entry.state == DRAINING else LOG.warning
                log('Quarantined %s (scrub queue entry %d) is neither in '
                    'quarantine nor in the image cache; marked drained',
                    entry.quarantine_path, entry.id)

    def _locate(self, entry):
        """Return where the entry's inode is: quarantine, cache or None."""
        with _open_dir(self.host_dir, nofollow=True) as quarantine_fd:
            found = _lstat_at(self._quarantine_name(entry), quarantine_fd)
        if _is_file(found, entry.ino):
            return _IN_QUARANTINE
        if (_is_file_name(entry.name)
                and entry.path == os.path.join(self.cache_dir, entry.name)):
            try:
                found = os.lstat(entry.path)
            except FileNotFoundError:
                found = None
            if _is_file(found, entry.ino):
                return _IN_CACHE
        return None

    def adopt_orphans(self, now):
        """Queue the files in quarantine that have no entry.

        What reconcile does for them at start-up, for a process that runs
        on: returns how many were adopted. Raises ScrubError when the
        quarantine directory cannot be listed.
        """
        result = ReconcileResult()
        with self._drain_lock():
            self._adopt_orphans(now, result)
        if result.errors:
            raise ScrubError(result.errors[0]['message'])
        return result.adopted

    def _adopt_orphans(self, now, result):
        # List first, read the entries second: a file renamed into
        # quarantine meanwhile had its entry committed before the rename.
        try:
            with os.scandir(self.host_dir) as listing:
                names = sorted(dirent.name for dirent in listing)
        except OSError as e:
            message = 'cannot list quarantine directory %s: %s' % (
                self.host_dir, printable.errno_text(e))
            result.errors.append({'path': self.host_dir, 'message': message})
            return
        rows = self.state_db.query(
            'SELECT quarantine_path, ino FROM scrub_entry WHERE state IN '
            '(%s)' % ', '.join('?' * len(ACTIVE_STATES)), ACTIVE_STATES)
        known = {(os.path.basename(quarantine_path), ino)
                 for quarantine_path, ino in rows}
        for quarantine_name in names:
            try:
                st = os.lstat(os.path.join(self.host_dir, quarantine_name))
            except FileNotFoundError:
                continue
            if (quarantine_name, st.st_ino) in known:
                continue
            if not stat.S_ISREG(st.st_mode):
                LOG.warning('Left alone %s in quarantine: it is a %s, not a '
                            'file', os.path.join(self.host_dir,
                                                 quarantine_name),
                            scan.file_type(st.st_mode))
                continue
            self._adopt(quarantine_name, st, now)
            result.adopted += 1

    def _adopt(self, quarantine_name, st, now):
        match = _QUARANTINE_NAME.fullmatch(quarantine_name)
        name = match.group(1) if match else quarantine_name
        quarantine_path = os.path.join(self.host_dir, quarantine_name)
        with self.state_db.transaction() as connection:
            entry_id = connection.execute(_INSERT, (
                name, os.path.join(self.cache_dir, name), quarantine_path,
                scan.classify(name, st.st_mode), st.st_ino, st.st_size,
                st.st_blocks * 512, st.st_mtime_ns,
                'adopted: found in quarantine without a queue entry',
                QUEUED, now, now, None)).lastrowid
        LOG.warning('Adopted %s into the scrub queue as entry %d: it was in '
                    'quarantine without an entry', quarantine_path, entry_id)

    def _transition(self, entry_id, from_states, to_state, now, **changes):
        """Move an entry to ``to_state`` if it is in one of ``from_states``.

        Returns whether it did; committed when it returns.
        """
        assignments = ['state = ?', 'updated_at = ?']
        assignments.extend('%s = ?' % column for column in changes)
        sql = 'UPDATE scrub_entry SET %s WHERE id = ? AND state IN (%s)' % (
            ', '.join(assignments), ', '.join('?' * len(from_states)))
        parameters = ((to_state, now) + tuple(changes.values())
                      + (entry_id,) + tuple(from_states))
        with self.state_db.transaction() as connection:
            return connection.execute(sql, parameters).rowcount == 1


def _make_private_dir(path):
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        return
    # mkdir's mode went through the umask.
    os.chmod(path, _DIR_MODE)
    LOG.info('Created quarantine directory %s', path)
