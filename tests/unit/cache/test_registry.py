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

from cachekeeper.cache import registry

NOW = 1800000000.0
PATH = '/instances/compute_nodes'


class ParseTestCase(unittest.TestCase):

    def test_nova_content(self):
        self.assertEqual({'host-a': 1700000000.5, 'host-b': 1700000001.0},
                         registry.parse(b'{"host-a": 1700000000.5, '
                                        b'"host-b": 1700000001}'))

    def test_empty_file_is_an_empty_registry(self):
        # nova bug 1252659: an empty file crashed nova's pass.
        self.assertEqual({}, registry.parse(b''))
        self.assertEqual({}, registry.parse(b'  \n'))

    def test_refused_content(self):
        for data, expected in [
                (b'{"host-a": 17', 'not valid JSON'),
                (b'\xff\xfe', 'not valid JSON'),
                (b'["host-a"]', 'not a JSON object'),
                (b'{"host-a": "yesterday"}', "host 'host-a'"),
                (b'{"host-a": null}', "host 'host-a'"),
                (b'{"host-a": true}', "host 'host-a'"),
                (b'{"host-a": NaN}', "host 'host-a'"),
                (b'{"host-a": Infinity}', "host 'host-a'")]:
            with self.subTest(data=data):
                with self.assertRaisesRegex(registry.RegistryError,
                                            expected):
                    registry.parse(data)


class RegistryTestCase(unittest.TestCase):

    def test_alone(self):
        alone = registry.Registry(PATH, {'host-a': NOW})
        self.assertEqual([], alone.other_hosts('host-a'))
        self.assertFalse(alone.is_shared('host-a'))
        self.assertEqual([], alone.doubts())

    def test_other_hosts_share_whatever_their_age(self):
        shared = registry.Registry(PATH, {'host-a': NOW,
                                          'host-c': NOW - 3 * 86400,
                                          'host-b': NOW - 60})
        self.assertEqual(['host-b', 'host-c'], shared.other_hosts('host-a'))
        self.assertTrue(shared.is_shared('host-a'))
        self.assertEqual(['host-c'], shared.stale_hosts(NOW))
        # A stale host is unknown, not gone: its instances still protect
        # their files, so nothing is held back for it.
        self.assertEqual([], shared.doubts())

    def test_not_registered_yet_is_shared_with_the_registered(self):
        self.assertTrue(registry.Registry(PATH, {'host-b': NOW})
                        .is_shared('host-a'))

    def test_unreadable_registry_doubts_every_file(self):
        unknown = registry.Registry(PATH, problem='not valid JSON (x)')
        self.assertTrue(unknown.is_shared('host-a'))
        [doubt] = unknown.doubts()
        self.assertEqual(PATH, doubt.source)
        self.assertIsNone(doubt.names)
        self.assertIn('not valid JSON (x)', doubt.message)
        self.assertIn('hosts that share this image cache are unknown',
                      doubt.message)

    def test_to_dict(self):
        document = registry.Registry(
            PATH, {'host-a': NOW - 10, 'host-b': NOW - 2 * 86400}).to_dict(
                NOW)
        self.assertEqual(
            {'path': PATH, 'problem': None,
             'hosts': {'host-a': {'registered_at': NOW - 10, 'age_s': 10.0,
                                  'stale': False},
                       'host-b': {'registered_at': NOW - 2 * 86400,
                                  'age_s': 172800.0, 'stale': True}}},
            document)
