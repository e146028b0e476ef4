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

import contextlib
import os
import sqlite3
import stat
import tempfile

import pytest

from cachekeeper.state import db

NOBODY = 65534


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class StateDir:
    """A state_path; open_state() opens it, closed after the test."""

    def __init__(self, state_path):
        self.state_path = state_path
        self.db_path = os.path.join(self.state_path, db.DATABASE_FILE)
        self.opened = []

    def open_state(self):
        state_db = db.open_state(self.state_path)
        self.opened.append(state_db)
        return state_db

    def close(self):
        for state_db in reversed(self.opened):
            state_db.close()


@pytest.fixture
def state():
    # Not in tmp_path: another user must reach it (its parent is private).
    with tempfile.TemporaryDirectory() as state_path:
        state = StateDir(state_path)
        yield state
        state.close()


def test_creates_a_private_database_in_wal_mode(state):
    state_db = state.open_state()
    with state_db.transaction() as connection:
        connection.execute(
            "INSERT INTO ledger (name, last_seen_in_use) VALUES ('a', 1)")
    assert mode(state.db_path) == 0o600
    # SQLite gives its side files the database's mode.
    assert mode(state.db_path + '-wal') == 0o600
    assert mode(state.db_path + '-shm') == 0o600
    assert state_db.query('PRAGMA journal_mode')[0][0] == 'wal'
    # 2 is FULL.
    assert state_db.query('PRAGMA synchronous')[0][0] == 2
    assert db.schema_version() == state_db.query('PRAGMA user_version')[0][0]


def test_an_existing_database_is_made_private(state):
    state.open_state().close()
    os.chmod(state.db_path, 0o644)
    state.open_state()
    assert mode(state.db_path) == 0o600


def test_writes_are_visible_to_another_connection(state):
    first = state.open_state()
    second = state.open_state()
    with first.transaction() as connection:
        connection.execute(
            "INSERT INTO ledger (name, last_seen_in_use) VALUES ('a', 1)")
    assert [tuple(row) for row in second.query(
        'SELECT name FROM ledger')] == [('a',)]


def test_failed_transaction_is_rolled_back(state):
    state_db = state.open_state()
    with pytest.raises(ZeroDivisionError):
        with state_db.transaction() as connection:
            connection.execute("INSERT INTO ledger (name) VALUES ('a')")
            1 / 0
    assert state_db.query('SELECT name FROM ledger') == []


def test_sql_errors_become_state_errors(state):
    state_db = state.open_state()
    with pytest.raises(db.StateError, match='no such table'):
        with state_db.transaction() as connection:
            connection.execute('INSERT INTO missing_table VALUES (1)')
    # The connection is usable afterwards.
    with state_db.transaction() as connection:
        connection.execute("INSERT INTO ledger (name) VALUES ('a')")


def test_newer_schema_is_refused(state):
    state.open_state().close()
    connection = sqlite3.connect(state.db_path)
    connection.execute('PRAGMA user_version = %d'
                       % (db.schema_version() + 1))
    connection.close()
    with pytest.raises(db.StateError) as caught:
        db.open_state(state.state_path)
    message = str(caught.value)
    assert 'schema version %d' % (db.schema_version() + 1) in message
    assert 'newer release' in message
    assert '\n' not in message


def test_migrations_run_forward_and_keep_the_data(state, monkeypatch):
    state_db = state.open_state()
    with state_db.transaction() as connection:
        connection.execute(
            "INSERT INTO ledger (name, last_seen_in_use) VALUES ('a', 7)")
    state_db.close()
    newer = db.MIGRATIONS + (
        ('ALTER TABLE ledger ADD COLUMN note TEXT',
         "UPDATE ledger SET note = 'migrated'"),)
    monkeypatch.setattr(db, 'MIGRATIONS', newer)
    state_db = state.open_state()
    assert len(newer) == state_db.query('PRAGMA user_version')[0][0]
    assert [
        tuple(row) for row in state_db.query(
            'SELECT name, last_seen_in_use, note FROM ledger')] == (
        [('a', 7.0, 'migrated')])
    # Opening again migrates nothing.
    state.open_state()


def test_failed_migration_changes_nothing(state, monkeypatch):
    state.open_state().close()
    version = db.schema_version()
    monkeypatch.setattr(db, 'MIGRATIONS', db.MIGRATIONS + (
        ('ALTER TABLE ledger ADD COLUMN note TEXT', 'THIS IS NOT SQL'),))
    with pytest.raises(db.StateError):
        db.open_state(state.state_path)
    with contextlib.closing(sqlite3.connect(state.db_path)) as connection:
        assert connection.execute(
            'PRAGMA user_version').fetchone()[0] == version
        columns = [row[1] for row in connection.execute(
            'PRAGMA table_info(ledger)')]
    assert 'note' not in columns


def test_missing_state_path(state):
    missing = os.path.join(state.state_path, 'missing')
    with pytest.raises(db.StateError,
                       match='^state_path .*missing does not exist$'):
        db.open_state(missing)


def test_state_path_that_is_a_file(state):
    path = os.path.join(state.state_path, 'file')
    open(path, 'w').close()
    with pytest.raises(db.StateError, match='is not a directory'):
        db.open_state(path)


def test_database_that_is_not_sqlite(state):
    with open(state.db_path, 'w') as f:
        f.write('not a database, ' * 100)
    with pytest.raises(db.StateError, match='cannot use state database'):
        db.open_state(state.state_path)


def test_database_that_is_a_symlink_is_refused(state):
    target = os.path.join(state.state_path, 'elsewhere')
    os.symlink(target, state.db_path)
    with pytest.raises(db.StateError, match='cannot open state database'):
        db.open_state(state.state_path)
    assert not os.path.exists(target)


@pytest.mark.skipif(os.geteuid() != 0,
                    reason='needs root to run the check as another user')
def test_unwritable_state_path(state):
    os.chmod(state.state_path, 0o755)
    state_path = os.path.join(state.state_path, 'state')
    os.mkdir(state_path, 0o755)
    assert open_state_as_nobody(state_path) == (
        'state_path %s is not writable by this user' % state_path)
    assert not os.path.exists(os.path.join(state_path, db.DATABASE_FILE))


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
