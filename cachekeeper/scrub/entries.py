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

"""The scrub queue's entries: their states, and every statement on them.

An entry is what the queue knows of one file it took from the image cache:
where it was, where it waits in quarantine, which inode it is and how far
its removal got. The entries are the scrub_entry table of the state
database (cachekeeper.state.db); this module alone reads and writes it, so
that the columns and the states are in one place, and it moves no files
(cachekeeper.scrub.quarantine does).

Each function that writes is one transaction, committed when it returns:
the queue commits each intent before the file system step it describes
(see cachekeeper.scrub.queue). A transition happens only from the states
its caller expects, so that of two processes racing for an entry one wins
and the other finds out.

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
"""

import dataclasses

from cachekeeper.state import totals

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

# How long entries in a final state stay in the database (and scrub list).
HISTORY_RETENTION = 30 * 86400

_COLUMNS = ('id', 'name', 'path', 'quarantine_path', 'kind', 'ino', 'size',
            'allocated', 'mtime_ns', 'reason', 'state', 'queued_at',
            'updated_at', 'attempts', 'next_attempt_at', 'last_error',
            'bytes_reclaimed', 'drain_at', 'returned_at')
_SELECT = 'SELECT %s FROM scrub_entry' % ', '.join(_COLUMNS)
_INSERT = ('INSERT INTO scrub_entry (name, path, quarantine_path, kind, ino, '
           'size, allocated, mtime_ns, reason, state, queued_at, updated_at, '
           'drain_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)')


class ScrubError(Exception):
    """An operation on the queue was refused or failed; one line."""


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


def _in(states):
    return 'state IN (%s)' % ', '.join('?' * len(states))


def _entries(rows):
    return [Entry(**dict(row)) for row in rows]


def _insert(connection, name, path, quarantine_path, kind, st, reason, state,
            now, drain_at=None):
    return connection.execute(_INSERT, (
        name, path, quarantine_path, kind, st.st_ino, st.st_size,
        st.st_blocks * 512, st.st_mtime_ns, reason, state, now, now,
        drain_at)).lastrowid


def get(state_db, entry_id):
    """Return the Entry with ``entry_id``; ScrubError if unknown."""
    rows = state_db.query(_SELECT + ' WHERE id = ?', (entry_id,))
    if not rows:
        raise ScrubError('no scrub queue entry with ID %s' % entry_id)
    return Entry(**dict(rows[0]))


def find(state_db, states=None):
    """Return the entries (in ``states`` if given), oldest first."""
    if states is None:
        return _entries(state_db.query(_SELECT + ' ORDER BY id'))
    return _entries(state_db.query(
        _SELECT + ' WHERE %s ORDER BY id' % _in(states), tuple(states)))


def queued(state_db):
    """Return (id, allocated, queued_at) of the queued entries by ID."""
    rows = state_db.query(
        'SELECT id, allocated, queued_at FROM scrub_entry WHERE state = ? '
        'ORDER BY id', (QUEUED,))
    return [tuple(row) for row in rows]


def counts(state_db):
    """Return {state: number of entries} for every state present."""
    rows = state_db.query(
        'SELECT state, COUNT(*) AS count FROM scrub_entry GROUP BY state')
    return {row['state']: row['count'] for row in rows}


def due(state_db, now, scrub_delay, ignore_delay, after_id, limit):
    """Return up to ``limit`` queued entries due now, after ``after_id``.

    Due are entries at least ``scrub_delay`` seconds old (or past their
    drain_at) whose retry backoff is over; ``ignore_delay`` makes every
    queued entry due.
    """
    return _entries(state_db.query(
        _SELECT + ' WHERE state = ? AND id > ? AND (? OR ('
        'COALESCE(drain_at, queued_at + ?) <= ? AND '
        '(next_attempt_at IS NULL OR next_attempt_at <= ?))) '
        'ORDER BY id LIMIT ?',
        (QUEUED, after_id, ignore_delay, scrub_delay, now, now, limit)))


def record(state_db, name, path, kind, st, reason, now, drain_at,
           quarantine_path_of):
    """Record a file about to be quarantined; return (id, quarantine path).

    ``st`` is the file's lstat; ``quarantine_path_of(entry_id)`` names the
    place in quarantine, which carries the new entry's ID. The entry is
    ``quarantining`` until the caller moves the file.
    """
    with state_db.transaction() as connection:
        entry_id = _insert(connection, name, path, '', kind, st, reason,
                           QUARANTINING, now, drain_at)
        quarantine_path = quarantine_path_of(entry_id)
        connection.execute(
            'UPDATE scrub_entry SET quarantine_path = ? WHERE id = ?',
            (quarantine_path, entry_id))
    return entry_id, quarantine_path


def adopt(state_db, name, path, quarantine_path, kind, st, reason, now):
    """Queue a file found in quarantine without an entry; return its ID."""
    with state_db.transaction() as connection:
        return _insert(connection, name, path, quarantine_path, kind, st,
                       reason, QUEUED, now)


def transition(state_db, entry_id, from_states, to_state, now, **changes):
    """Move an entry to ``to_state`` if it is in one of ``from_states``.

    ``changes`` sets other columns too. Returns whether it did.
    """
    assignments = ['state = ?', 'updated_at = ?']
    assignments.extend('%s = ?' % column for column in changes)
    sql = 'UPDATE scrub_entry SET %s WHERE id = ? AND %s' % (
        ', '.join(assignments), _in(from_states))
    parameters = ((to_state, now) + tuple(changes.values()) +
                  (entry_id,) + tuple(from_states))
    with state_db.transaction() as connection:
        return connection.execute(sql, parameters).rowcount == 1


def expedite(state_db, entry_ids, now):
    """Make queued entries due now; return how many were made due."""
    with state_db.transaction() as connection:
        return sum(connection.execute(
            'UPDATE scrub_entry SET drain_at = ?, updated_at = ? '
            'WHERE id = ? AND state = ? '
            'AND (drain_at IS NULL OR drain_at > ?)',
            (now, now, entry_id, QUEUED, now)).rowcount
            for entry_id in entry_ids)


def forget_old(state_db, now):
    """Delete the entries final for longer than HISTORY_RETENTION.

    The bytes the drained ones reclaimed go to the running totals in the
    same transaction, so that the queue's total stays exact.
    """
    cutoff = now - HISTORY_RETENTION
    with state_db.transaction() as connection:
        forgotten = connection.execute(
            'SELECT COALESCE(SUM(bytes_reclaimed), 0) FROM scrub_entry '
            'WHERE state = ? AND updated_at < ?',
            (DRAINED, cutoff)).fetchone()[0]
        totals.add(connection, totals.RECLAIMED_BYTES, forgotten)
        connection.execute(
            'DELETE FROM scrub_entry WHERE %s AND updated_at < ?'
            % _in(FINAL_STATES), FINAL_STATES + (cutoff,))


def reclaimed_bytes(state_db):
    """Return the bytes reclaimed by the drained entries still kept."""
    rows = state_db.query(
        'SELECT COALESCE(SUM(bytes_reclaimed), 0) AS reclaimed '
        'FROM scrub_entry WHERE state = ?', (DRAINED,))
    return rows[0]['reclaimed']


def quarantined_files(state_db):
    """Return (quarantine_path, ino) of every active entry."""
    rows = state_db.query(
        'SELECT quarantine_path, ino FROM scrub_entry WHERE %s'
        % _in(ACTIVE_STATES), ACTIVE_STATES)
    return [tuple(row) for row in rows]


def not_returned(connection, states):
    """Return the entries in ``states`` whose file has not come back.

    Newest first; inside the caller's transaction ``connection``.
    """
    return _entries(connection.execute(
        _SELECT + ' WHERE returned_at IS NULL AND %s ORDER BY id DESC'
        % _in(states), tuple(states)).fetchall())


def set_returned(connection, entry_id, returned_at):
    """Record when the entry's file came back (caller's transaction)."""
    connection.execute('UPDATE scrub_entry SET returned_at = ? WHERE id = ?',
                       (returned_at, entry_id))
