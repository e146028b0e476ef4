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

"""An operator's pins on cache files, in this host's state database.

A pin keeps a cache file (an original with its copies) whatever its age,
until it expires (cachekeeper-manage cache pin --for). Expired pins are
harmless, since plan only counts a pin until its end; they are deleted
when a pin is next written.
"""

COLUMNS = ('name', 'image_id', 'pinned_at', 'expires_at', 'reason')


def put(state_db, pin):
    """Add ``pin`` (a dict of COLUMNS), or replace the pin of its file."""
    with state_db.transaction() as db:
        db.execute('DELETE FROM pin WHERE expires_at <= ?',
                   (pin['pinned_at'],))
        db.execute('INSERT OR REPLACE INTO pin (%s) VALUES (?, ?, ?, ?, ?)'
                   % ', '.join(COLUMNS),
                   tuple(pin[column] for column in COLUMNS))


def delete(state_db, name):
    """Remove the pin of cache file ``name``; whether there was one."""
    with state_db.transaction() as db:
        return db.execute('DELETE FROM pin WHERE name = ?',
                          (name,)).rowcount > 0


def pins(state_db, now):
    """The pins that hold at ``now`` (dicts of COLUMNS), by name."""
    rows = state_db.query(
        'SELECT %s FROM pin WHERE expires_at IS NULL OR expires_at > ? '
        'ORDER BY name' % ', '.join(COLUMNS), (now,))
    return [dict(row) for row in rows]
