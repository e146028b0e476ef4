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


def test_first_seen_unused_is_kept_across_passes(state_db):
    ledger.record_usage(state_db, [], ['a'], 100.0)
    ledger.record_usage(state_db, [], ['a'], 200.0)
    assert ledger.lookup(state_db, 'a') == Entry('a', first_seen_unused=100.0)


def test_use_clears_first_seen_unused_and_records_last_use(state_db):
    ledger.record_usage(state_db, [], ['a'], 100.0)
    ledger.record_usage(state_db, ['a'], [], 200.0)
    assert ledger.lookup(state_db, 'a') == Entry('a', last_seen_in_use=200.0)
    ledger.record_usage(state_db, [], ['a'], 300.0)
    ledger.record_usage(state_db, [], ['a'], 400.0)
    assert ledger.lookup(state_db, 'a') == Entry(
        'a', first_seen_unused=300.0, last_seen_in_use=200.0)


def test_a_name_in_both_lists_counts_as_in_use(state_db):
    ledger.record_usage(state_db, ['a'], ['a'], 100.0)
    assert ledger.lookup(state_db, 'a') == Entry('a', last_seen_in_use=100.0)


def test_undecided_names_keep_their_record(state_db):
    ledger.record_usage(state_db, ['a'], ['b'], 100.0)
    ledger.record_usage(state_db, [], [], 200.0,
                        present_names=['a', 'b'])
    assert ledger.lookup(state_db, 'a') == Entry('a', last_seen_in_use=100.0)
    assert ledger.lookup(state_db, 'b') == Entry('b', first_seen_unused=100.0)


def test_files_no_longer_present_are_forgotten(state_db):
    ledger.record_usage(state_db, ['a'], ['b', 'c'], 100.0)
    ledger.record_usage(state_db, [], ['c'], 200.0,
                        present_names=['c'])
    assert ledger.lookup(state_db, 'a') is None
    assert ledger.lookup(state_db, 'b') is None
    assert ledger.lookup(state_db, 'c') == Entry('c', first_seen_unused=100.0)
    # A file that comes back ages from scratch.
    ledger.record_usage(state_db, [], ['b'], 300.0)
    assert ledger.lookup(state_db, 'b') == Entry('b', first_seen_unused=300.0)


def test_without_present_names_nothing_is_forgotten(state_db):
    ledger.record_usage(state_db, ['a'], [], 100.0)
    ledger.record_usage(state_db, [], ['b'], 200.0)
    assert ledger.lookup(state_db, 'a') == Entry('a', last_seen_in_use=100.0)


def test_survives_a_restart(state_db, tmp_path):
    ledger.record_usage(state_db, ['a'], ['b'], 100.0)
    state_db.close()
    reopened = db.open_state(str(tmp_path))
    try:
        assert ledger.lookup(reopened, 'b') == Entry('b',
                                                     first_seen_unused=100.0)
    finally:
        reopened.close()
