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

"""What earlier passes found inside disks that have not changed since.

An inspection (the format a disk was read as, and the backing and data
files its header names) is kept in the state database, keyed by the disk's
identity and the times and size that change whenever it is written:
(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns). A later pass that
finds the same key uses the stored answer and spawns no qemu-img.

Only regular files are kept: writing to a block device changes none of its
times. A file changed within RACY_SECONDS of the stat is not kept either:
a second change within the file system's timestamp granularity would leave
the same key behind (git calls such a file "racily clean").

The cache is a help, never a source of truth: when the database cannot be
read or written, passes go on without it.
"""

import stat
import threading
import time

from oslo_log import log as logging

from cachekeeper.scrub import db

LOG = logging.getLogger(__name__)

# How the answer was found; a pass configured for qemu-img trusts only
# qemu-img's answers.
QEMU_IMG = 'qemu-img'
HEADER = 'header'

RACY_SECONDS = 2

_COLUMNS = ('dev', 'ino', 'format', 'size', 'mtime_ns', 'ctime_ns', 'method',
            'backing_file', 'backing_format', 'data_file')
_SELECT = 'SELECT %s FROM inspection' % ', '.join(_COLUMNS)
_UPSERT = 'INSERT OR REPLACE INTO inspection (%s) VALUES (%s)' % (
    ', '.join(_COLUMNS), ', '.join('?' * len(_COLUMNS)))
_DELETE = 'DELETE FROM inspection WHERE dev = ? AND ino = ? AND format = ?'

_INT64_RANGE = 2 ** 64
_INT64_MAX = 2 ** 63 - 1


def _signed(value):
    # SQLite integers are signed 64-bit; st_ino and st_dev are unsigned.
    return value - _INT64_RANGE if value > _INT64_MAX else value


class InspectionCache:
    """Inspections, read from the database once and written back in bulk.

    ``lookup`` and ``store`` work in memory (and may be called from the
    inspector's worker threads); ``save`` writes what changed. One object
    may serve pass after pass: what it holds stays true while the files
    keep their keys, and what another process adds to the database is
    only missed, never contradicted.
    """

    def __init__(self, state_db, clock=time.time_ns):
        self.state_db = state_db
        self._clock = clock
        self._lock = threading.Lock()
        self._entries = None
        self._used = set()
        self._kept_inodes = set()
        self._pending = {}

    def _load(self):
        entries = {}
        try:
            rows = self.state_db.query(_SELECT)
        except db.StateError as e:
            LOG.warning('Cannot read the inspection cache; every disk is '
                        'inspected again: %s', e)
            rows = ()
        for row in rows:
            (dev, ino, fmt, size, mtime_ns, ctime_ns, method, backing_file,
             backing_format, data_file) = tuple(row)
            entries[(dev, ino, fmt)] = ((size, mtime_ns, ctime_ns), method,
                                        (backing_file, backing_format,
                                         data_file))
        return entries

    @staticmethod
    def _key(st, fmt):
        return (_signed(st.st_dev), _signed(st.st_ino), fmt), (
            st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def lookup(self, st, fmt, methods):
        """Return (backing_file, backing_format, data_file) or None.

        ``st`` is the disk's stat, ``fmt`` the format it is read as;
        only answers found by one of ``methods`` count.
        """
        key, version = self._key(st, fmt)
        with self._lock:
            if self._entries is None:
                self._entries = self._load()
            self._used.add(key)
            entry = self._entries.get(key)
        if entry is None or entry[0] != version or entry[1] not in methods:
            return None
        return entry[2]

    def store(self, st, fmt, method, backing_file, backing_format,
              data_file):
        """Keep what ``method`` found in the disk whose stat is ``st``."""
        if not stat.S_ISREG(st.st_mode):
            return
        horizon = self._clock() - RACY_SECONDS * 10 ** 9
        if max(st.st_mtime_ns, st.st_ctime_ns) > horizon:
            return
        key, version = self._key(st, fmt)
        entry = (version, method, (backing_file, backing_format, data_file))
        with self._lock:
            if self._entries is None:
                self._entries = self._load()
            self._used.add(key)
            if self._entries.get(key) != entry:
                self._entries[key] = entry
                self._pending[key] = entry

    def keep(self, inodes):
        """Keep the answers about inodes a pass relies on unread.

        ``inodes`` are (st_dev, st_ino) pairs. An instance directory
        carried over from the last pass is not read again, but its disks'
        answers still serve the next process.
        """
        kept = {(_signed(st_dev), _signed(st_ino))
                for st_dev, st_ino in inodes}
        with self._lock:
            self._kept_inodes |= kept

    def save(self, prune=False):
        """Write the new answers; with ``prune``, forget the unused ones.

        Prune after a pass has looked at every disk: an entry neither used
        nor kept since the last prune belongs to a disk that is gone or
        was not read.
        """
        with self._lock:
            if self._entries is None:
                return
            pending, self._pending = self._pending, {}
            stale = []
            if prune:
                stale = [key for key in self._entries
                         if key not in self._used
                         and key[:2] not in self._kept_inodes]
                self._used = set()
                self._kept_inodes = set()
            for key in stale:
                del self._entries[key]
        if not pending and not stale:
            return
        rows = [key + version + (method,) + found
                for key, (version, method, found) in pending.items()]
        try:
            with self.state_db.transaction() as connection:
                connection.executemany(_DELETE, stale)
                connection.executemany(_UPSERT, rows)
        except db.StateError as e:
            LOG.warning('Cannot write the inspection cache: %s', e)
