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

"""The parsers of nova's metadata files: disk.info and libvirt.xml."""

import json

import pytest

from cachekeeper.cache import metadata
from tests.lib import nova

IMAGE_ID = nova.IMAGE_ID


def test_disk_info_by_current_path():
    data = json.dumps({'/i/u/disk': 'qcow2', '/i/u/disk.local': 'raw'})
    assert metadata.parse_disk_info(data, '/i/u') == {
        'disk': 'qcow2', 'disk.local': 'raw'}


def test_disk_info_with_stale_paths_matches_by_name():
    data = json.dumps({'/old/u/disk': 'qcow2', '/older/u/disk': 'qcow2',
                       '/old/u/disk.local': 'raw',
                       '/older/u/disk.local': 'qcow2'})
    assert metadata.parse_disk_info(data, '/i/u_resize') == {
        'disk': 'qcow2', 'disk.local': None}


def test_disk_info_current_path_wins():
    data = json.dumps({'/old/u/disk': 'raw', '/i/u/disk': 'qcow2'})
    assert metadata.parse_disk_info(data, '/i/u') == {'disk': 'qcow2'}


@pytest.mark.parametrize('data', ['', b'', '\n', b' \n\t'])
def test_empty_disk_info_records_nothing(data):
    # As nova's reader: it creates the file empty before writing it.
    assert metadata.parse_disk_info(data, '/i/u') == {}


@pytest.mark.parametrize('data', [
    '{', '[]', '"disk"', '{"/i/u/disk": 1}', b'{"\xff": "raw"}',
])
def test_disk_info_that_is_not_nova_s(data):
    with pytest.raises(ValueError):
        metadata.parse_disk_info(data, '/i/u')


@pytest.mark.parametrize('version', ['1.0', '1.1', '2.0'])
def test_libvirt_xml_nova_metadata(version):
    data = nova.xml(
        version,
        flavor=('<nova:flavor name="m1"><nova:memory>512</nova:memory>'
                '<nova:swap> 1024 </nova:swap><nova:ephemeral>20'
                '</nova:ephemeral></nova:flavor>'),
        root='<nova:root type="image" uuid="%s"/>' % IMAGE_ID)
    assert metadata.parse_libvirt_xml(data.encode()) == (
        metadata.NovaMetadata(root_image=IMAGE_ID, swap_mb=1024,
                              ephemeral_gb=20))


def test_libvirt_xml_boot_from_volume_and_no_flavor_sizes():
    data = nova.xml(root='<nova:root type="volume" uuid="x"/>',
                    flavor='<nova:flavor><nova:swap/></nova:flavor>')
    assert metadata.parse_libvirt_xml(data) == metadata.NovaMetadata()


@pytest.mark.parametrize('data', [
    '<domain/>',
    '<domain><metadata><instance/></metadata></domain>',
    '<domain><metadata><x:instance xmlns:x="http://openstack.org/xmlns/'
    'libvirt/other/1.0"/></metadata></domain>',
    # nova metadata is only read where libvirt keeps it.
    '<domain><nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/'
    'nova/1.1"><nova:root type="image" uuid="u"/></nova:instance></domain>',
])
def test_libvirt_xml_without_nova_metadata(data):
    assert metadata.parse_libvirt_xml(data) is None


@pytest.mark.parametrize('data', [
    '',
    '<domain>',
    '<?xml version="1.0"?><!DOCTYPE domain><domain/>',
    # Billion laughs in UTF-16, where a byte search would not see it.
    ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE l [<!ENTITY a "aa">'
     '<!ENTITY b "&a;&a;&a;&a;">]><l>&b;</l>').encode('utf-16'),
    nova.xml(flavor='<nova:flavor><nova:swap>-1</nova:swap></nova:flavor>'),
    nova.xml(flavor='<nova:flavor><nova:ephemeral>1.5</nova:ephemeral>'
                    '</nova:flavor>'),
])
def test_libvirt_xml_refused(data):
    with pytest.raises(ValueError):
        metadata.parse_libvirt_xml(data)
