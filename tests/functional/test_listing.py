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

"""cachekeeper-manage cache list, on the demo host demo create builds."""

import json
import os
import subprocess

from cachekeeper import demo as demo_host
from cachekeeper import report
from tests.lib import hosttree


def _manage(demo_root, *argv):
    return subprocess.run(
        [hosttree.MANAGE, '--config-file',
         os.path.join(demo_root, 'cachekeeper.conf'), *argv],
        capture_output=True, text=True, timeout=hosttree.PASS_TIMEOUT)


def _list(demo_root, *flags):
    process = _manage(demo_root, 'cache', 'list', '--json', *flags)
    assert process.returncode == 0, process.stderr
    return {row['name']: row for row in json.loads(process.stdout)}


def test_names_the_image_and_users_of_every_original_libvirt_xml_names(
        tmp_path):
    root = str(tmp_path / 'demo')
    # demo create writes the configuration the other commands read.
    bootstrap = tmp_path / 'bootstrap.conf'
    bootstrap.write_text('[DEFAULT]\nstate_path = %s\n' % tmp_path)
    created = subprocess.run(
        [hosttree.MANAGE, '--config-file', str(bootstrap), 'demo', 'create',
         root], capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr

    rows = _list(root)

    named = [i for i in demo_host.INSTANCES if i.root_image]
    assert named
    for instance in named:
        row = rows[demo_host.original_name(instance.root_image)]
        assert row['kind'] == 'original'
        assert row['image_id'] == demo_host.image_id(instance.root_image)
        assert instance.uuid in row['users']
    for row in rows.values():
        assert row['schema_version'] == report.SCHEMA_VERSION
        assert set(row) >= {'name', 'kind', 'image_id', 'image_name',
                            'apparent_bytes', 'allocated_bytes', 'users',
                            'last_used', 'verdict', 'removable_at'}
    assert set(_list(root, '--unused')) == {
        name for name, row in rows.items() if not row['users']}
    assert {row['kind'] for row in _list(root, '--kind', 'swap').values()
            } == {'swap'}


def test_the_image_is_still_known_after_its_instances_are_gone(tmp_path):
    host = hosttree.HostTree(tmp_path)
    image_id = '0b4c4d43-3b0e-4e0e-9a51-00000000000b'
    name = hosttree.image(image_id)
    host.base(name, 2 * hosttree.DAY)
    directory = host.instance('6f1c4a52-2d0e-4c36-9a51-00000000000c',
                              {'disk': None},
                              libvirt_xml={'image_id': image_id})
    host.run_pass()
    os.unlink(os.path.join(directory, 'libvirt.xml'))

    process = host.manage('cache', 'list', '--json', '--image', image_id)

    assert process.returncode == 0, process.stderr
    [row] = json.loads(process.stdout)
    assert (row['name'], row['users'], row['verdict']) == (
        name, [], 'in_use')
    assert row['last_used'] is not None
    assert row['removable_at'] is not None
