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

"""The aging ledger: what the passes saw of each image cache file.

mtime says when a file was last asserted in use, but anybody can change
it. The ledger keeps, in the state database, when a pass first saw a file
unused (kept until a pass sees it in use again) and when a pass last saw it
in use, so that aging survives restarts and can be explained; and when a
pass first saw it in use, how many instances the passes saw starting to
use it and how often it came back
after a removal (cachekeeper.thrash records it), which the eviction policy
weighs (cachekeeper.cache.eviction).

A file's uses and comebacks outlive the file: an evicted image that comes
back is weighed with the history it had, for HISTORY_RETENTION after a pass
last saw it in use. A file no pass saw in use leaves no history.
"""

import dataclasses

# How long the history of a file that left the cache is kept after a pass
# last saw it in use: as long as the scrub queue remembers removals.
HISTORY_RETENTION = 30 * 86400

_SELECT = ('SELECT name, first_seen_unused, last_seen_in_use, '
           'first_seen_in_use, uses, comebacks, image_id FROM ledger')


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    name: str
    first_seen_unused: float = None
    last_seen_in_use: float = None
    first_seen_in_use: float = None
    uses: int = 0
    comebacks: int = 0
    # The Glance image nova's metadata last said the file caches.
    image_id: str = None


def record_usage(state_db, users, unused_names, now, present_names=None):
    """Record what one pass saw, in one transaction.

    ``users`` maps the cache files some instance uses to how many
    instances use each; ``unused_names`` are those none uses (a name in
    both counts as in use). A file's uses grow by the instances using it
    beyond those of the pass before, so an instance counts once however
    many passes see it (one that starts and ends between two passes, or
    replaces another, is not seen). Files the pass could not decide about
    belong in neither: their records stay as they are. When
    ``present_names`` (every file in the cache) is given, a file no longer
    there loses its aging, so that it ages from scratch if it comes back;
    its history is kept until HISTORY_RETENTION after its last use.
    """
    unused = set(unused_names) - set(users)
    with state_db.transaction() as db:
        db.executemany(
            'INSERT INTO ledger (name, last_seen_in_use, first_seen_in_use, '
            'uses, users) VALUES (?, ?, ?, ?, ?) '
            'ON CONFLICT (name) DO UPDATE SET '
            'last_seen_in_use = excluded.last_seen_in_use, '
            'first_seen_in_use = COALESCE(first_seen_in_use, '
            'excluded.first_seen_in_use), '
            'first_seen_unused = NULL, '
            'uses = uses + MAX(excluded.users - users, 0), '
            'users = excluded.users',
            [(name, now, now, count, count)
             for name, count in sorted(users.items())])
        db.executemany(
            'INSERT INTO ledger (name, first_seen_unused) VALUES (?, ?) '
            'ON CONFLICT (name) DO UPDATE SET first_seen_unused = '
            'COALESCE(first_seen_unused, excluded.first_seen_unused), '
            'users = 0',
            [(name, now) for name in sorted(unused)])
        if present_names is not None:
            _forget_absent(db, set(present_names), now)


def _forget_absent(db, present, now):
    """Drop the aging of files no longer in the cache, and old records."""
    cutoff = now - HISTORY_RETENTION
    gone = [(row['name'], row['last_seen_in_use'])
            for row in db.execute('SELECT name, last_seen_in_use FROM ledger')
            if row['name'] not in present]
    db.executemany('DELETE FROM ledger WHERE name = ?',
                   [(name,) for name, last in sorted(gone)
                    if last is None or last < cutoff])
    db.executemany(
        'UPDATE ledger SET first_seen_unused = NULL, users = 0 '
        'WHERE name = ? AND (first_seen_unused IS NOT NULL OR users != 0)',
        [(name,) for name, last in sorted(gone)
         if last is not None and last >= cutoff])


def record_images(state_db, image_ids):
    """Remember the Glance image of cache files: {name: image id}.

    Kept as long as the rest of a file's history, so that the image of a
    file is known after the instances that named it are gone.
    """
    with state_db.transaction() as db:
        db.executemany(
            'INSERT INTO ledger (name, image_id) VALUES (?, ?) '
            'ON CONFLICT (name) DO UPDATE SET image_id = excluded.image_id',
            sorted(image_ids.items()))


def add_comebacks(connection, names):
    """Count one comeback of each of ``names`` (caller's transaction)."""
    connection.executemany(
        'INSERT INTO ledger (name, comebacks) VALUES (?, 1) '
        'ON CONFLICT (name) DO UPDATE SET comebacks = comebacks + 1',
        [(name,) for name in sorted(names)])


def lookup(state_db, name):
    """Return the LedgerEntry of cache file ``name``, or None."""
    try:
        name.encode('utf-8')
    except UnicodeEncodeError:
        # A name with bytes that are not UTF-8 is no name of nova's, and
        # SQLite cannot hold it: never recorded.
        return None
    rows = state_db.query(_SELECT + ' WHERE name = ?', (name,))
    return LedgerEntry(**dict(rows[0])) if rows else None


def entries(state_db):
    """Return {name: LedgerEntry} for every file the ledger knows."""
    rows = state_db.query(_SELECT)
    return {row['name']: LedgerEntry(**dict(row)) for row in rows}
