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

"""Running totals in the state database, for metrics that only grow.

Prometheus counters must not go back when the daemon restarts, so they are
kept here rather than in memory. The scrub queue counts the bytes it
reclaimed from its drained entries while it keeps them, and adds an entry's
bytes here in the transaction that forgets it, so that its total
(ScrubQueue.totals) is exact across crashes.
"""

# Bytes deleted for good: drained from the queue, or download residue.
RECLAIMED_BYTES = 'reclaimed_bytes'
# Per-file errors of the passes.
ERRORS = 'errors'
# Removed cache files that came back within the thrash window.
COMEBACKS = 'comebacks'
NAMES = (RECLAIMED_BYTES, ERRORS, COMEBACKS)


def add(connection, name, amount):
    """Add ``amount`` to total ``name`` inside a caller's transaction."""
    if amount:
        connection.execute(
            'INSERT INTO counter (name, value) VALUES (?, ?) '
            'ON CONFLICT (name) DO UPDATE SET value = value + excluded.value',
            (name, amount))


def increase(state_db, **amounts):
    """Add to several totals in one transaction (keyword: NAMES)."""
    with state_db.transaction() as connection:
        for name, amount in sorted(amounts.items()):
            add(connection, name, amount)


def read(state_db):
    """Return {name: total} for every name in NAMES."""
    totals = dict.fromkeys(NAMES, 0)
    for row in state_db.query('SELECT name, value FROM counter'):
        totals[row['name']] = row['value']
    return totals
