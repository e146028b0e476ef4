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

import pytest

from cachekeeper.state import db
from cachekeeper.state import ledger

Entry = ledger.LedgerEntry


@pytest.fixture
def state_db(tmp_path):
    state_db = db.open_state(str(tmp_path))
    yield state_db
    state_db.close()


def test_unknown_name(state_db):
    assert ledger.lookup(state_db, 'a') is None


def test_name_that_is_not_utf8_is_unknown(state_db):
    # As os.listdir gives a name with the byte 0xff.
    assert ledger.lookup(state_db, 'a\udcff') is None


def used(name, at, first=None, uses=1, **kwargs):
    """The Entry of a file a pass saw in use at ``at``."""
    return Entry(name, last_seen_in_use=at,
                 first_seen_in_use=at if first is None else first,
                 uses=uses, **kwargs)


def test_first_seen_unused_is_kept_across_passes(state_db):
    ledger.record_usage(state_db, {}, ['a'], 100.0)
    ledger.record_usage(state_db, {}, ['a'], 200.0)
    assert ledger.lookup(state_db, 'a') == Entry('a', first_seen_unused=100.0)


def test_use_clears_first_seen_unused_and_records_last_use(state_db):
    ledger.record_usage(state_db, {}, ['a'], 100.0)
    ledger.record_usage(state_db, {'a': 1}, [], 200.0)
    assert ledger.lookup(state_db, 'a') == used('a', 200.0)
    ledger.record_usage(state_db, {}, ['a'], 300.0)
    ledger.record_usage(state_db, {}, ['a'], 400.0)
    assert ledger.lookup(state_db, 'a') == used('a', 200.0,
                                                first_seen_unused=300.0)


def test_a_name_in_both_counts_as_in_use(state_db):
    ledger.record_usage(state_db, {'a': 1}, ['a'], 100.0)
    assert ledger.lookup(state_db, 'a') == used('a', 100.0)


def test_an_instance_counts_once_however_many_passes_see_it(state_db):
    ledger.record_usage(state_db, {'a': 2}, [], 100.0)
    ledger.record_usage(state_db, {'a': 2}, [], 200.0)
    assert ledger.lookup(state_db, 'a') == used('a', 200.0, 100.0, uses=2)
    # One more instance, then one of them gone: one new use.
    ledger.record_usage(state_db, {'a': 3}, [], 300.0)
    ledger.record_usage(state_db, {'a': 2}, [], 400.0)
    assert ledger.lookup(state_db, 'a').uses == 3


def test_an_instance_after_a_pause_is_a_new_use(state_db):
    ledger.record_usage(state_db, {'a': 1}, [], 100.0)
    ledger.record_usage(state_db, {}, ['a'], 200.0)
    ledger.record_usage(state_db, {'a': 1}, [], 300.0)
    assert ledger.lookup(state_db, 'a') == used('a', 300.0, 100.0, uses=2)


def test_comebacks_are_counted(state_db):
    with state_db.transaction() as connection:
        ledger.add_comebacks(connection, ['a', 'b'])
    with state_db.transaction() as connection:
        ledger.add_comebacks(connection, ['a'])
    assert ledger.lookup(state_db, 'a') == Entry('a', comebacks=2)
    ledger.record_usage(state_db, {'b': 1}, [], 100.0)
    assert ledger.lookup(state_db, 'b') == used('b', 100.0, comebacks=1)


def test_entries_are_every_file_the_ledger_knows(state_db):
    ledger.record_usage(state_db, {'a': 1}, ['b'], 100.0)
    assert ledger.entries(state_db) == {
        'a': used('a', 100.0), 'b': Entry('b', first_seen_unused=100.0)}


def test_undecided_names_keep_their_record(state_db):
    ledger.record_usage(state_db, {'a': 1}, ['b'], 100.0)
    ledger.record_usage(state_db, {}, [], 200.0,
                        present_names=['a', 'b'])
    assert ledger.lookup(state_db, 'a') == used('a', 100.0)
    assert ledger.lookup(state_db, 'b') == Entry('b', first_seen_unused=100.0)


def test_files_no_longer_present_lose_their_aging(state_db):
    ledger.record_usage(state_db, {'a': 2}, ['b', 'c'], 100.0)
    with state_db.transaction() as connection:
        ledger.add_comebacks(connection, ['a'])
    ledger.record_usage(state_db, {}, ['c'], 200.0,
                        present_names=['c'])
    # A file never seen in use leaves nothing; one seen keeps its history.
    assert ledger.lookup(state_db, 'b') is None
    assert ledger.lookup(state_db, 'a') == used('a', 100.0, uses=2,
                                                comebacks=1)
    assert ledger.lookup(state_db, 'c') == Entry('c', first_seen_unused=100.0)
    # A file that comes back ages from scratch.
    ledger.record_usage(state_db, {}, ['b'], 300.0)
    assert ledger.lookup(state_db, 'b') == Entry('b', first_seen_unused=300.0)
    # Its instances were counted; the next one is a new use.
    ledger.record_usage(state_db, {'a': 1}, [], 400.0)
    assert ledger.lookup(state_db, 'a') == used('a', 400.0, 100.0, uses=3,
                                                comebacks=1)


def test_the_history_of_an_absent_file_is_kept_for_a_while(state_db):
    ledger.record_usage(state_db, {'a': 1}, [], 100.0)
    kept = 100.0 + ledger.HISTORY_RETENTION
    ledger.record_usage(state_db, {}, [], kept, present_names=[])
    assert ledger.lookup(state_db, 'a') == used('a', 100.0)
    ledger.record_usage(state_db, {}, [], kept + 1, present_names=[])
    assert ledger.lookup(state_db, 'a') is None


def test_without_present_names_nothing_is_forgotten(state_db):
    ledger.record_usage(state_db, {'a': 1}, [], 100.0)
    ledger.record_usage(state_db, {}, ['b'], 200.0)
    assert ledger.lookup(state_db, 'a') == used('a', 100.0)


def test_survives_a_restart(state_db, tmp_path):
    ledger.record_usage(state_db, {'a': 1}, ['b'], 100.0)
    state_db.close()
    reopened = db.open_state(str(tmp_path))
    try:
        assert ledger.lookup(reopened, 'b') == Entry('b',
                                                     first_seen_unused=100.0)
    finally:
        reopened.close()


def test_an_older_ledger_gains_an_empty_history(tmp_path, monkeypatch):
    # The ledger as schema version 4 left it.
    monkeypatch.setattr(db, 'MIGRATIONS', db.MIGRATIONS[:4])
    older = db.open_state(str(tmp_path))
    with older.transaction() as connection:
        connection.execute("INSERT INTO ledger (name, last_seen_in_use) "
                           "VALUES ('a', 100.0)")
    older.close()
    monkeypatch.undo()
    state_db = db.open_state(str(tmp_path))
    try:
        assert ledger.lookup(state_db, 'a') == Entry('a',
                                                     last_seen_in_use=100.0)
        ledger.record_usage(state_db, {'a': 1}, [], 200.0)
        assert ledger.lookup(state_db, 'a') == used('a', 200.0)
    finally:
        state_db.close()
