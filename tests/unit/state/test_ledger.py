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

import unittest

import fixtures

from cachekeeper.state import db
from cachekeeper.state import ledger

Entry = ledger.LedgerEntry


class LedgerTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.state_path = self.useFixture(fixtures.TempDir()).path
        self.state_db = self.open_state()

    def open_state(self):
        state_db = db.open_state(self.state_path)
        self.addCleanup(state_db.close)
        return state_db

    def lookup(self, name):
        return ledger.lookup(self.state_db, name)

    def test_unknown_name(self):
        self.assertIsNone(self.lookup('a'))

    def test_name_that_is_not_utf8_is_unknown(self):
        # As os.listdir gives a name with the byte 0xff.
        self.assertIsNone(self.lookup('a\udcff'))

    def test_first_seen_unused_is_kept_across_passes(self):
        ledger.record_usage(self.state_db, [], ['a'], 100.0)
        ledger.record_usage(self.state_db, [], ['a'], 200.0)
        self.assertEqual(Entry('a', first_seen_unused=100.0),
                         self.lookup('a'))

    def test_use_clears_first_seen_unused_and_records_last_use(self):
        ledger.record_usage(self.state_db, [], ['a'], 100.0)
        ledger.record_usage(self.state_db, ['a'], [], 200.0)
        self.assertEqual(Entry('a', last_seen_in_use=200.0),
                         self.lookup('a'))
        ledger.record_usage(self.state_db, [], ['a'], 300.0)
        ledger.record_usage(self.state_db, [], ['a'], 400.0)
        self.assertEqual(Entry('a', first_seen_unused=300.0,
                               last_seen_in_use=200.0), self.lookup('a'))

    def test_a_name_in_both_lists_counts_as_in_use(self):
        ledger.record_usage(self.state_db, ['a'], ['a'], 100.0)
        self.assertEqual(Entry('a', last_seen_in_use=100.0),
                         self.lookup('a'))

    def test_undecided_names_keep_their_record(self):
        ledger.record_usage(self.state_db, ['a'], ['b'], 100.0)
        ledger.record_usage(self.state_db, [], [], 200.0,
                            present_names=['a', 'b'])
        self.assertEqual(Entry('a', last_seen_in_use=100.0),
                         self.lookup('a'))
        self.assertEqual(Entry('b', first_seen_unused=100.0),
                         self.lookup('b'))

    def test_files_no_longer_present_are_forgotten(self):
        ledger.record_usage(self.state_db, ['a'], ['b', 'c'], 100.0)
        ledger.record_usage(self.state_db, [], ['c'], 200.0,
                            present_names=['c'])
        self.assertIsNone(self.lookup('a'))
        self.assertIsNone(self.lookup('b'))
        self.assertEqual(Entry('c', first_seen_unused=100.0),
                         self.lookup('c'))
        # A file that comes back ages from scratch.
        ledger.record_usage(self.state_db, [], ['b'], 300.0)
        self.assertEqual(Entry('b', first_seen_unused=300.0),
                         self.lookup('b'))

    def test_without_present_names_nothing_is_forgotten(self):
        ledger.record_usage(self.state_db, ['a'], [], 100.0)
        ledger.record_usage(self.state_db, [], ['b'], 200.0)
        self.assertEqual(Entry('a', last_seen_in_use=100.0),
                         self.lookup('a'))

    def test_survives_a_restart(self):
        ledger.record_usage(self.state_db, ['a'], ['b'], 100.0)
        self.state_db.close()
        reopened = self.open_state()
        self.assertEqual(Entry('b', first_seen_unused=100.0),
                         ledger.lookup(reopened, 'b'))
