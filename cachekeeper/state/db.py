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

"""The state database: one SQLite file in ``[DEFAULT] state_path``.

It holds the scrub queue (whose statements are in
cachekeeper.scrub.entries), the aging ledger, running totals, what
inspections of disks found (the inspection cache) and an operator's pins;
the other modules of this package hold the statements of the last four.
The package imports nothing of the modules that keep state in it, so that
the schema and its migrations are in one place below all of them.

Writes are short transactions, durable when they return (write-ahead log,
synchronous=FULL), so a caller can commit what it is about to do before
doing it. The daemon and cachekeeper-manage use the database at the same
time: SQLite's locking serialises their writes, and a writer waits up to
BUSY_TIMEOUT for another.

The schema version is SQLite's user_version. Migrations only go forward; a
database written by a newer cachekeeper is refused, never downgraded.
"""

import contextlib
import os
import sqlite3
import stat
import threading

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

DATABASE_FILE = 'cachekeeper.sqlite'
# Seconds a write waits for another process's write to finish.
BUSY_TIMEOUT = 30

_FILE_MODE = 0o600
_PRIVATE_DIR_BITS = 0o077

# MIGRATIONS[n] takes the schema from version n to version n + 1.
MIGRATIONS = (
    (
        # The scrub queue (see cachekeeper.scrub.entries for the states).
        '''CREATE TABLE scrub_entry (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               name TEXT NOT NULL,
               path TEXT NOT NULL,
               quarantine_path TEXT NOT NULL,
               kind TEXT NOT NULL,
               ino INTEGER NOT NULL,
               size INTEGER NOT NULL,
               allocated INTEGER NOT NULL,
               mtime_ns INTEGER NOT NULL,
               reason TEXT NOT NULL,
               state TEXT NOT NULL,
               queued_at REAL NOT NULL,
               updated_at REAL NOT NULL,
               attempts INTEGER NOT NULL DEFAULT 0,
               next_attempt_at REAL,
               last_error TEXT,
               bytes_reclaimed INTEGER)''',
        'CREATE INDEX scrub_entry_state ON scrub_entry (state, id)',
        # The aging ledger (see cachekeeper.state.ledger).
        '''CREATE TABLE ledger (
               name TEXT PRIMARY KEY,
               first_seen_unused REAL,
               last_seen_in_use REAL)''',
    ),
    (
        # A scrub queue entry due at drain_at, whatever scrub_delay says
        # (evicted over budget); returned_at: when its file came back.
        'ALTER TABLE scrub_entry ADD COLUMN drain_at REAL',
        'ALTER TABLE scrub_entry ADD COLUMN returned_at REAL',
        # Running totals (see cachekeeper.state.totals).
        '''CREATE TABLE counter (
               name TEXT PRIMARY KEY,
               value INTEGER NOT NULL)''',
    ),
    (
        # The inspection cache (see cachekeeper.state.inspections).
        '''CREATE TABLE inspection (
               dev INTEGER NOT NULL,
               ino INTEGER NOT NULL,
               format TEXT NOT NULL,
               size INTEGER NOT NULL,
               mtime_ns INTEGER NOT NULL,
               ctime_ns INTEGER NOT NULL,
               method TEXT NOT NULL,
               backing_file TEXT,
               backing_format TEXT,
               data_file TEXT,
               PRIMARY KEY (dev, ino, format))''',
    ),
    (
        # The formats detected in disks nobody recorded a format for (see
        # cachekeeper.state.inspections). A table of its own, not rows of
        # inspection under a reserved format: a detection has another key
        # (one per disk, not one per format it is read as) and other
        # columns (the detector, not a method and backing files), and no
        # lookup of an inspection can be answered with one.
        '''CREATE TABLE detection (
               dev INTEGER NOT NULL,
               ino INTEGER NOT NULL,
               size INTEGER NOT NULL,
               mtime_ns INTEGER NOT NULL,
               ctime_ns INTEGER NOT NULL,
               detector TEXT NOT NULL,
               format TEXT NOT NULL,
               PRIMARY KEY (dev, ino))''',
    ),
    (
        # What the eviction policy weighs (see cachekeeper.state.ledger):
        # when a pass first saw each file in use, how many instances were
        # seen starting to use it (users: how many used it at the last
        # pass, to tell the new ones), and how often it came back after a
        # removal.
        'ALTER TABLE ledger ADD COLUMN first_seen_in_use REAL',
        'ALTER TABLE ledger ADD COLUMN uses INTEGER NOT NULL DEFAULT 0',
        'ALTER TABLE ledger ADD COLUMN users INTEGER NOT NULL DEFAULT 0',
        'ALTER TABLE ledger ADD COLUMN comebacks INTEGER NOT NULL DEFAULT 0',
    ),
    (
        # The Glance image a file caches, as nova's metadata named it:
        # still known once the instances that named it are gone.
        'ALTER TABLE ledger ADD COLUMN image_id TEXT',
        # An operator's pins on cache files (see cachekeeper.state.pins).
        '''CREATE TABLE pin (
               name TEXT PRIMARY KEY,
               image_id TEXT,
               pinned_at REAL NOT NULL,
               expires_at REAL,
               reason TEXT NOT NULL)''',
    ),
)


class StateError(Exception):
    """The state database cannot be used; the message is one line."""


class StateDB:
    """A connection to the state database; open_state() makes one.

    The threads of a process may share it: it serialises their use.
    """

    def __init__(self, path, connection):
        self.path = path
        self._connection = connection
        self._lock = threading.Lock()

    @property
    def directory(self):
        return os.path.dirname(self.path)

    @contextlib.contextmanager
    def transaction(self):
        """A write transaction, committed when the block ends normally.

        It takes SQLite's write lock at once (BEGIN IMMEDIATE), so what the
        block reads stays true until the commit.
        """
        with self._lock, self._errors_as_state_error():
            self._connection.execute('BEGIN IMMEDIATE')
            try:
                yield self._connection
            except BaseException:
                self._connection.execute('ROLLBACK')
                raise
            self._connection.execute('COMMIT')

    def query(self, sql, parameters=()):
        """Run one read-only statement; return all its rows."""
        with self._lock, self._errors_as_state_error():
            return self._connection.execute(sql, parameters).fetchall()

    def close(self):
        with self._lock:
            self._connection.close()

    @contextlib.contextmanager
    def _errors_as_state_error(self):
        try:
            yield
        except sqlite3.Error as e:
            if self._connection.in_transaction:
                self._connection.rollback()
            raise StateError('state database %s: %s' % (self.path, e)) from e


def schema_version():
    """The schema version this code writes."""
    return len(MIGRATIONS)


def open_state(state_path):
    """Open (and create or migrate) the state database in ``state_path``.

    Raises StateError when the directory is missing or not writable, the
    file is not a usable SQLite database, or its schema is newer than this
    code knows.
    """
    _check_directory(state_path)
    path = os.path.join(state_path, DATABASE_FILE)
    _create_private_file(path)
    try:
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT,
                                     isolation_level=None,
                                     check_same_thread=False)
    except sqlite3.Error as e:
        raise StateError('cannot open state database %s: %s' % (path, e))
    try:
        connection.row_factory = sqlite3.Row
        journal_mode = connection.execute(
            'PRAGMA journal_mode = WAL').fetchone()[0]
        if journal_mode != 'wal':
            raise StateError('state database %s cannot use a write-ahead '
                             'log (journal mode %s)' % (path, journal_mode))
        connection.execute('PRAGMA synchronous = FULL')
        _migrate(connection, path)
    except sqlite3.Error as e:
        connection.close()
        raise StateError('cannot use state database %s: %s' % (path, e))
    except BaseException:
        connection.close()
        raise
    return StateDB(path, connection)


def _check_directory(state_path):
    try:
        st = os.stat(state_path)
    except FileNotFoundError:
        raise StateError('state_path %s does not exist' % state_path)
    except OSError as e:
        raise StateError('state_path %s: %s' % (state_path, e.strerror))
    if not stat.S_ISDIR(st.st_mode):
        raise StateError('state_path %s is not a directory' % state_path)
    if not os.access(state_path, os.W_OK | os.X_OK):
        raise StateError('state_path %s is not writable by this user'
                         % state_path)
    if st.st_mode & _PRIVATE_DIR_BITS:
        LOG.warning('state_path %s is accessible to other users (mode %04o); '
                    'it holds the scrub queue and should be 0700',
                    state_path, stat.S_IMODE(st.st_mode))


def _create_private_file(path):
    """Create the database file 0600 (or make an existing one 0600)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW |
                     os.O_CLOEXEC, _FILE_MODE)
    except OSError as e:
        raise StateError('cannot open state database %s: %s'
                         % (path, e.strerror))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateError('state database %s is not a regular file'
                             % path)
        # SQLite gives the -wal and -shm files the mode of the database.
        if stat.S_IMODE(st.st_mode) != _FILE_MODE:
            os.fchmod(fd, _FILE_MODE)
    finally:
        os.close(fd)


def _user_version(connection):
    return connection.execute('PRAGMA user_version').fetchone()[0]


def _migrate(connection, path):
    if _user_version(connection) == schema_version():
        return
    # Another process may be migrating too: decide inside the write lock.
    connection.execute('BEGIN IMMEDIATE')
    try:
        found = _user_version(connection)
        if found > schema_version():
            raise StateError(
                'state database %s has schema version %d, but this '
                'cachekeeper knows only up to %d: it was written by a newer '
                'release; run that release or move the database away'
                % (path, found, schema_version()))
        for statements in MIGRATIONS[found:]:
            for statement in statements:
                connection.execute(statement)
        # PRAGMA takes no parameters; the value is our own integer.
        connection.execute('PRAGMA user_version = %d' % schema_version())
        connection.execute('COMMIT')
    except BaseException:
        connection.execute('ROLLBACK')
        raise
    if found:
        LOG.info('Migrated state database %s from schema version %d to %d',
                 path, found, schema_version())
    else:
        LOG.info('Created state database %s (schema version %d)',
                 path, schema_version())
