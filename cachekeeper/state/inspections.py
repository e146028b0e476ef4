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

"""The rows of the inspection cache: inspections and detections.

cachekeeper.cache.inspect_cache decides, in memory, which answers about
disks still hold and which are stale; this module is how they are kept in
the state database between processes. Each table has a key that starts
with the disk's (st_dev, st_ino), a version that changes whenever the disk
is written, (st_size, st_mtime_ns, st_ctime_ns), and an answer:

- ``inspection``: key (dev, ino, format), answer (method, backing_file,
  backing_format, data_file).
- ``detection``: key (dev, ino), answer (detector, format).

st_dev and st_ino are unsigned 64-bit numbers and SQLite's integers are
signed: they are stored shifted into the signed range and read back as
the stat gave them, so that callers never see the difference.
"""

_VERSION = ('size', 'mtime_ns', 'ctime_ns')

_INT64_RANGE = 2 ** 64
_INT64_MAX = 2 ** 63 - 1


def _signed(value):
    return value - _INT64_RANGE if value > _INT64_MAX else value


def _unsigned(value):
    return value + _INT64_RANGE if value < 0 else value


class _Table:
    """The statements of a table of answers: key, version, answer."""

    def __init__(self, name, key, answer):
        columns = key + _VERSION + answer
        self.name = name
        self.key_length = len(key)
        self.select = 'SELECT %s FROM %s' % (', '.join(columns), name)
        self.upsert = 'INSERT OR REPLACE INTO %s (%s) VALUES (%s)' % (
            name, ', '.join(columns), ', '.join('?' * len(columns)))
        self.delete = 'DELETE FROM %s WHERE %s' % (
            name, ' AND '.join('%s = ?' % column for column in key))

    def entry(self, row):
        """Return (key, (version, answer)) from a row of ``select``."""
        row = tuple(row)
        end = self.key_length + len(_VERSION)
        key = (_unsigned(row[0]), _unsigned(row[1])) + row[2:self.key_length]
        return key, (row[self.key_length:end], row[end:])


INSPECTION = _Table('inspection', ('dev', 'ino', 'format'),
                    ('method', 'backing_file', 'backing_format', 'data_file'))
DETECTION = _Table('detection', ('dev', 'ino'), ('detector', 'format'))
TABLES = (INSPECTION, DETECTION)


def _stored(key):
    return (_signed(key[0]), _signed(key[1])) + key[2:]


def read(state_db, table):
    """Return {key: (version, answer)} for every row of ``table``.

    Raises db.StateError when the table cannot be read.
    """
    return dict(table.entry(row) for row in state_db.query(table.select))


def write(state_db, stale, pending):
    """Delete and store answers, in one transaction.

    ``stale`` are the (table, key) pairs to forget, ``pending`` maps
    (table, key) to the (version, answer) to keep. Raises db.StateError
    when the database cannot be written.
    """
    with state_db.transaction() as connection:
        for table in TABLES:
            connection.executemany(table.delete, [
                _stored(key) for entry_table, key in stale
                if entry_table is table])
            connection.executemany(table.upsert, [
                _stored(key) + version + answer
                for (entry_table, key), (version, answer)
                in pending.items() if entry_table is table])
