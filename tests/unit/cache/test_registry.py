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

from cachekeeper.cache import registry

NOW = 1800000000.0
PATH = '/instances/compute_nodes'


def test_nova_content():
    assert registry.parse(b'{"host-a": 1700000000.5, '
                          b'"host-b": 1700000001}') == (
        {'host-a': 1700000000.5, 'host-b': 1700000001.0})


def test_empty_file_is_an_empty_registry():
    # nova bug 1252659: an empty file crashed nova's pass.
    assert registry.parse(b'') == {}
    assert registry.parse(b'  \n') == {}


@pytest.mark.parametrize('data, expected', [
    (b'{"host-a": 17', 'not valid JSON'),
    (b'\xff\xfe', 'not valid JSON'),
    (b'["host-a"]', 'not a JSON object'),
    (b'{"host-a": "yesterday"}', "host 'host-a'"),
    (b'{"host-a": null}', "host 'host-a'"),
    (b'{"host-a": true}', "host 'host-a'"),
    (b'{"host-a": NaN}', "host 'host-a'"),
    (b'{"host-a": Infinity}', "host 'host-a'")])
def test_refused_content(data, expected):
    with pytest.raises(registry.RegistryError, match=expected):
        registry.parse(data)


def test_alone():
    alone = registry.Registry(PATH, {'host-a': NOW})
    assert alone.other_hosts('host-a') == []
    assert not alone.is_shared('host-a')
    assert alone.doubts() == []


def test_other_hosts_share_whatever_their_age():
    shared = registry.Registry(PATH, {'host-a': NOW,
                                      'host-c': NOW - 3 * 86400,
                                      'host-b': NOW - 60})
    assert shared.other_hosts('host-a') == ['host-b', 'host-c']
    assert shared.is_shared('host-a')
    assert shared.stale_hosts(NOW) == ['host-c']
    # A stale host is unknown, not gone: its instances still protect
    # their files, so nothing is held back for it.
    assert shared.doubts() == []


def test_not_registered_yet_is_shared_with_the_registered():
    assert registry.Registry(PATH, {'host-b': NOW}).is_shared('host-a')


def test_unreadable_registry_doubts_every_file():
    unknown = registry.Registry(PATH, problem='not valid JSON (x)')
    assert unknown.is_shared('host-a')
    [doubt] = unknown.doubts()
    assert doubt.source == PATH
    assert doubt.names is None
    assert 'not valid JSON (x)' in doubt.message
    assert 'hosts that share this image cache are unknown' in doubt.message


def test_to_dict():
    document = registry.Registry(
        PATH, {'host-a': NOW - 10, 'host-b': NOW - 2 * 86400}).to_dict(
            NOW)
    assert document == (
        {'path': PATH, 'problem': None,
         'hosts': {'host-a': {'registered_at': NOW - 10, 'age_s': 10.0,
                              'stale': False},
                   'host-b': {'registered_at': NOW - 2 * 86400,
                              'age_s': 172800.0, 'stale': True}}})
