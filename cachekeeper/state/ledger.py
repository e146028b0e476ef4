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
in use, so that aging survives restarts and can be explained.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    name: str
    first_seen_unused: float = None
    last_seen_in_use: float = None


def record_usage(state_db, in_use_names, unused_names, now,
                 present_names=None):
    """Record what one pass saw, in one transaction.

    ``in_use_names`` are cache files some instance uses, ``unused_names``
    those none uses (a name in both counts as in use). Files the pass could
    not decide about belong in neither: their records stay as they are.
    When ``present_names`` (every file in the cache) is given, the records
    of files no longer there are dropped, so that a file that comes back
    ages from scratch.
    """
    in_use = set(in_use_names)
    unused = set(unused_names) - in_use
    with state_db.transaction() as db:
        db.executemany(
            'INSERT INTO ledger (name, last_seen_in_use) VALUES (?, ?) '
            'ON CONFLICT (name) DO UPDATE SET '
            'last_seen_in_use = excluded.last_seen_in_use, '
            'first_seen_unused = NULL',
            [(name, now) for name in sorted(in_use)])
        db.executemany(
            'INSERT INTO ledger (name, first_seen_unused) VALUES (?, ?) '
            'ON CONFLICT (name) DO UPDATE SET first_seen_unused = '
            'COALESCE(first_seen_unused, excluded.first_seen_unused)',
            [(name, now) for name in sorted(unused)])
        if present_names is not None:
            recorded = {row['name']
                        for row in db.execute('SELECT name FROM ledger')}
            db.executemany(
                'DELETE FROM ledger WHERE name = ?',
                [(name,) for name in sorted(recorded - set(present_names))])


def lookup(state_db, name):
    """Return the LedgerEntry of cache file ``name``, or None."""
    try:
        name.encode('utf-8')
    except UnicodeEncodeError:
        # A name with bytes that are not UTF-8 is no name of nova's, and
        # SQLite cannot hold it: never recorded.
        return None
    rows = state_db.query(
        'SELECT name, first_seen_unused, last_seen_in_use FROM ledger '
        'WHERE name = ?', (name,))
    return LedgerEntry(**dict(rows[0])) if rows else None


def last_uses(state_db):
    """Return {name: when a pass last saw it in use} for every such file."""
    rows = state_db.query('SELECT name, last_seen_in_use FROM ledger '
                          'WHERE last_seen_in_use IS NOT NULL')
    return {row['name']: row['last_seen_in_use'] for row in rows}
