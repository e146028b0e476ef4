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

import os
import sqlite3
import stat
import unittest

import fixtures

from cachekeeper.state import db

NOBODY = 65534


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class OpenStateTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.state_path = self.useFixture(fixtures.TempDir()).path
        self.db_path = os.path.join(self.state_path, db.DATABASE_FILE)

    def open_state(self):
        state_db = db.open_state(self.state_path)
        self.addCleanup(state_db.close)
        return state_db

    def test_creates_a_private_database_in_wal_mode(self):
        state_db = self.open_state()
        with state_db.transaction() as connection:
            connection.execute(
                "INSERT INTO ledger (name, last_seen_in_use) VALUES ('a', 1)")
        self.assertEqual(0o600, mode(self.db_path))
        # SQLite gives its side files the database's mode.
        self.assertEqual(0o600, mode(self.db_path + '-wal'))
        self.assertEqual(0o600, mode(self.db_path + '-shm'))
        self.assertEqual('wal', state_db.query('PRAGMA journal_mode')[0][0])
        # 2 is FULL.
        self.assertEqual(2, state_db.query('PRAGMA synchronous')[0][0])
        self.assertEqual(db.schema_version(),
                         state_db.query('PRAGMA user_version')[0][0])

    def test_an_existing_database_is_made_private(self):
        self.open_state().close()
        os.chmod(self.db_path, 0o644)
        self.open_state()
        self.assertEqual(0o600, mode(self.db_path))

    def test_writes_are_visible_to_another_connection(self):
        first = self.open_state()
        second = self.open_state()
        with first.transaction() as connection:
            connection.execute(
                "INSERT INTO ledger (name, last_seen_in_use) VALUES ('a', 1)")
        self.assertEqual([('a',)], [tuple(row) for row in second.query(
            'SELECT name FROM ledger')])

    def test_failed_transaction_is_rolled_back(self):
        state_db = self.open_state()
        with self.assertRaises(ZeroDivisionError):
            with state_db.transaction() as connection:
                connection.execute("INSERT INTO ledger (name) VALUES ('a')")
                1 / 0
        self.assertEqual([], state_db.query('SELECT name FROM ledger'))

    def test_sql_errors_become_state_errors(self):
        state_db = self.open_state()
        with self.assertRaisesRegex(db.StateError, 'no such table'):
            with state_db.transaction() as connection:
                connection.execute('INSERT INTO missing_table VALUES (1)')
        # The connection is usable afterwards.
        with state_db.transaction() as connection:
            connection.execute("INSERT INTO ledger (name) VALUES ('a')")

    def test_newer_schema_is_refused(self):
        self.open_state().close()
        connection = sqlite3.connect(self.db_path)
        connection.execute('PRAGMA user_version = %d'
                           % (db.schema_version() + 1))
        connection.close()
        with self.assertRaises(db.StateError) as caught:
            db.open_state(self.state_path)
        message = str(caught.exception)
        self.assertIn('schema version %d' % (db.schema_version() + 1),
                      message)
        self.assertIn('newer release', message)
        self.assertNotIn('\n', message)

    def test_migrations_run_forward_and_keep_the_data(self):
        state_db = self.open_state()
        with state_db.transaction() as connection:
            connection.execute(
                "INSERT INTO ledger (name, last_seen_in_use) VALUES ('a', 7)")
        state_db.close()
        newer = db.MIGRATIONS + (
            ('ALTER TABLE ledger ADD COLUMN note TEXT',
             "UPDATE ledger SET note = 'migrated'"),)
        self.useFixture(fixtures.MonkeyPatch(
            'cachekeeper.state.db.MIGRATIONS', newer))
        state_db = self.open_state()
        self.assertEqual(len(newer),
                         state_db.query('PRAGMA user_version')[0][0])
        self.assertEqual([('a', 7.0, 'migrated')], [
            tuple(row) for row in state_db.query(
                'SELECT name, last_seen_in_use, note FROM ledger')])
        # Opening again migrates nothing.
        self.open_state()

    def test_failed_migration_changes_nothing(self):
        self.open_state().close()
        version = db.schema_version()
        self.useFixture(fixtures.MonkeyPatch(
            'cachekeeper.state.db.MIGRATIONS', db.MIGRATIONS + (
                ('ALTER TABLE ledger ADD COLUMN note TEXT',
                 'THIS IS NOT SQL'),)))
        with self.assertRaises(db.StateError):
            db.open_state(self.state_path)
        connection = sqlite3.connect(self.db_path)
        self.addCleanup(connection.close)
        self.assertEqual(version, connection.execute(
            'PRAGMA user_version').fetchone()[0])
        columns = [row[1] for row in connection.execute(
            'PRAGMA table_info(ledger)')]
        self.assertNotIn('note', columns)

    def test_missing_state_path(self):
        missing = os.path.join(self.state_path, 'missing')
        with self.assertRaisesRegex(db.StateError,
                                    '^state_path .*missing does not exist$'):
            db.open_state(missing)

    def test_state_path_that_is_a_file(self):
        path = os.path.join(self.state_path, 'file')
        open(path, 'w').close()
        with self.assertRaisesRegex(db.StateError, 'is not a directory'):
            db.open_state(path)

    def test_database_that_is_not_sqlite(self):
        with open(self.db_path, 'w') as f:
            f.write('not a database, ' * 100)
        with self.assertRaisesRegex(db.StateError,
                                    'cannot use state database'):
            db.open_state(self.state_path)

    def test_database_that_is_a_symlink_is_refused(self):
        target = os.path.join(self.state_path, 'elsewhere')
        os.symlink(target, self.db_path)
        with self.assertRaisesRegex(db.StateError,
                                    'cannot open state database'):
            db.open_state(self.state_path)
        self.assertFalse(os.path.exists(target))

    def test_unwritable_state_path(self):
        if os.geteuid() != 0:
            self.skipTest('needs root to run the check as another user')
        os.chmod(self.state_path, 0o755)
        state_path = os.path.join(self.state_path, 'state')
        os.mkdir(state_path, 0o755)
        self.assertEqual('state_path %s is not writable by this user'
                         % state_path, open_state_as_nobody(state_path))
        self.assertFalse(os.path.exists(os.path.join(state_path,
                                                     db.DATABASE_FILE)))


def open_state_as_nobody(state_path):
    """Return what open_state says when user nobody calls it."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                db.open_state(state_path).close()
                message = 'opened'
            except db.StateError as e:
                message = str(e)
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, 'rb') as reader:
        message = reader.read().decode()
    os.waitpid(pid, 0)
    return message
