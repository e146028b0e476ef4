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

"""What earlier passes found in disks that have not changed since.

Two kinds of answer are kept in the state database (in the tables of
cachekeeper.state.inspections), each keyed by the disk's identity and the
size and times that change whenever it is written: (st_dev, st_ino) and
(st_size, st_mtime_ns, st_ctime_ns).

- An inspection: for a disk read as a given format, the backing and data
  files its header names (found by qemu-img or the qcow2 header reader).
- A detection: the format of a disk nobody recorded a format for (found
  by oslo.utils' format inspector, and kept with that inspector's version,
  since another version may tell formats apart differently).

A later pass that finds the same key uses the stored answer: it spawns no
qemu-img and reads no disk.

Only regular files are kept: writing to a block device changes none of its
times. A file changed within evidence.RACY_SECONDS of the stat is not kept
either: a second change within the file system's timestamp granularity
would leave the same key behind (git calls such a file "racily clean").

The cache is a help, never a source of truth: when the database cannot be
read or written, passes go on without it.
"""

import stat
import threading
import time

from oslo_log import log as logging

from cachekeeper.cache import evidence
from cachekeeper.state import db
from cachekeeper.state import inspections

LOG = logging.getLogger(__name__)

# How the answer was found; a pass configured for qemu-img trusts only
# qemu-img's answers.
QEMU_IMG = 'qemu-img'
HEADER = 'header'


def _key(st, rest):
    """The key of an answer about the file of stat ``st``."""
    return (st.st_dev, st.st_ino) + rest


def _version(st):
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class InspectionCache:
    """Answers, read from the database once and written back in bulk.

    The lookups and stores work in memory (and may be called from the
    inspector's worker threads); ``save`` writes what changed. One object
    may serve pass after pass: what it holds stays true while the files
    keep their keys, and what another process adds to the database is
    only missed, never contradicted.
    """

    def __init__(self, state_db, clock=time.time_ns):
        self.state_db = state_db
        self._clock = clock
        self._lock = threading.Lock()
        # {(table, key): (version, answer)}; keys start with (dev, ino).
        self._entries = None
        self._used = set()
        self._kept_inodes = set()
        self._pending = {}

    def _load(self):
        entries = {}
        for table in inspections.TABLES:
            try:
                rows = inspections.read(self.state_db, table)
            except db.StateError as e:
                LOG.warning('Cannot read the inspection cache (%s); what it '
                            'held is found again: %s', table.name, e)
                continue
            for key, entry in rows.items():
                entries[(table, key)] = entry
        return entries

    def _use(self, table, key):
        """Return the entry of ``key`` (or None); the caller holds _lock."""
        if self._entries is None:
            self._entries = self._load()
        self._used.add((table, key))
        return self._entries.get((table, key))

    def _get(self, table, st, rest):
        """Return the answer kept about ``st`` that is still true, or None.

        ``rest`` is the rest of its key in ``table``, after (dev, ino).
        """
        with self._lock:
            entry = self._use(table, _key(st, rest))
        if entry is None or entry[0] != _version(st):
            return None
        return entry[1]

    def _put(self, table, st, rest, answer):
        if not stat.S_ISREG(st.st_mode):
            return
        horizon = self._clock() - evidence.RACY_SECONDS * 10 ** 9
        if max(st.st_mtime_ns, st.st_ctime_ns) > horizon:
            return
        key = _key(st, rest)
        entry = (_version(st), answer)
        with self._lock:
            if self._use(table, key) != entry:
                self._entries[(table, key)] = entry
                self._pending[(table, key)] = entry

    def lookup(self, st, fmt, methods):
        """Return (backing_file, backing_format, data_file) or None.

        ``st`` is the disk's stat, ``fmt`` the format it is read as;
        only answers found by one of ``methods`` count.
        """
        answer = self._get(inspections.INSPECTION, st, (fmt,))
        if answer is None or answer[0] not in methods:
            return None
        return answer[1:]

    def store(self, st, fmt, method, backing_file, backing_format,
              data_file):
        """Keep what ``method`` found in the disk whose stat is ``st``."""
        self._put(inspections.INSPECTION, st, (fmt,),
                  (method, backing_file, backing_format, data_file))

    def lookup_format(self, st, detector):
        """Return the format ``detector`` found in the disk, or None.

        ``st`` is the disk's stat; what another detector found does not
        count.
        """
        answer = self._get(inspections.DETECTION, st, ())
        if answer is None or answer[0] != detector:
            return None
        return answer[1]

    def store_format(self, st, detector, fmt):
        """Keep the format ``detector`` found in the disk of stat ``st``."""
        self._put(inspections.DETECTION, st, (), (detector, fmt))

    def keep(self, inodes):
        """Keep the answers about inodes a pass relies on unread.

        ``inodes`` are (st_dev, st_ino) pairs. An instance directory
        carried over from the last pass is not read again, but its disks'
        answers still serve the next process.
        """
        kept = {(st_dev, st_ino) for st_dev, st_ino in inodes}
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
                stale = [(table, key) for table, key in self._entries
                         if (table, key) not in self._used and
                         key[:2] not in self._kept_inodes]
                self._used = set()
                self._kept_inodes = set()
            for entry_key in stale:
                del self._entries[entry_key]
        if not pending and not stale:
            return
        try:
            inspections.write(self.state_db, stale, pending)
        except db.StateError as e:
            LOG.warning('Cannot write the inspection cache: %s', e)
