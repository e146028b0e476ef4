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

"""cachekeeper-manage cache pin, unpin and pins, and what passes make of
them: on this host's state database, or beside nova's storage registry.
"""

import json
import os
import time

from cachekeeper.cache import registry
from cachekeeper import pins
from cachekeeper import report
from tests.lib import hosttree

IMAGE_ID = '0b4c4d43-3b0e-4e0e-9a51-0000000000a1'
OLD = hosttree.image(IMAGE_ID)


def _verdict(host, name):
    _process, found = host.run_pass()
    return {os.path.basename(f['path']): f['verdict']
            for f in found['files']}[name]


def test_a_pin_for_a_while_keeps_an_old_unused_file_until_it_ends(tmp_path):
    host = hosttree.HostTree(tmp_path)
    host.base(OLD, 2 * hosttree.DAY)

    pinned = host.manage('cache', 'pin', OLD, '--for', '2s')

    assert pinned.returncode == 0, pinned.stderr
    assert _verdict(host, OLD) == 'pinned'
    explained = host.manage('cache', 'explain', OLD).stdout
    assert 'pinned by cachekeeper-manage cache pin until' in explained
    time.sleep(2.1)
    assert _verdict(host, OLD) == 'queued'


def test_pins_by_image_id_are_listed_and_unpinned(tmp_path):
    host = hosttree.HostTree(tmp_path)
    host.base(OLD, 2 * hosttree.DAY)
    assert host.manage('cache', 'pin', IMAGE_ID, '--reason',
                       'golden image').returncode == 0

    [pin] = json.loads(host.manage('cache', 'pins', '--json').stdout)
    [row] = json.loads(host.manage('cache', 'list', '--json').stdout)
    status = json.loads(host.manage('cache', 'status', '--json').stdout)

    assert (pin['name'], pin['image_id'], pin['expires_at'],
            pin['reason'], pin['shared']) == (OLD, IMAGE_ID, None,
                                              'golden image', False)
    assert pin['schema_version'] == report.SCHEMA_VERSION
    assert (row['image_id'], row['pin_reason']) == (IMAGE_ID, 'golden image')
    assert [p['name'] for p in status['pins']] == [OLD]
    assert host.manage('cache', 'unpin', IMAGE_ID).returncode == 0
    assert host.manage('cache', 'unpin', IMAGE_ID).returncode == 1
    assert json.loads(host.manage('cache', 'pins', '--json').stdout) == []


def test_on_a_shared_cache_pins_are_kept_beside_the_registry(tmp_path):
    host = hosttree.HostTree(tmp_path)
    host.base(OLD, 2 * hosttree.DAY)
    registry.register(host.instances_path, 'compute-other', time.time())

    assert host.manage('cache', 'pin', OLD).returncode == 0

    with open(pins.pins_path(host.instances_path)) as f:
        assert [p['name'] for p in json.load(f)] == [OLD]
    [pin] = json.loads(host.manage('cache', 'pins', '--json').stdout)
    assert pin['shared'] is True
    # Another host's state database knows nothing of it: the file is what
    # a pass there reads.
    os.unlink(os.path.join(host.state_path, 'cachekeeper.sqlite'))
    assert _verdict(host, OLD) == 'pinned'


def test_shared_pins_that_cannot_be_read_hold_every_removal(tmp_path):
    host = hosttree.HostTree(tmp_path)
    host.base(OLD, 2 * hosttree.DAY)
    with open(pins.pins_path(host.instances_path), 'w') as f:
        f.write('{not json')

    assert _verdict(host, OLD) == 'kept'
