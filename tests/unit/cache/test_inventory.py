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

"""The parsers of the inventory: disk.info and libvirt.xml."""

import json

import pytest

from cachekeeper.cache import inventory

IMAGE_ID = 'fd0cb2f1-8375-44c9-b1f4-3e1f4c4a8ef0'
IMAGE_SHA1 = '0d5e6b61602d758984b3bf038267614d6016eb2a'


def nova_xml(namespace_version='1.1', flavor='', root=''):
    return ('<domain type="kvm"><name>instance-00000001</name><metadata>'
            '<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/'
            'nova/%s"><nova:name>vm</nova:name>%s%s</nova:instance>'
            '</metadata></domain>' % (namespace_version, flavor, root))


def test_disk_info_by_current_path():
    data = json.dumps({'/i/u/disk': 'qcow2', '/i/u/disk.local': 'raw'})
    assert inventory.parse_disk_info(data, '/i/u') == {
        'disk': 'qcow2', 'disk.local': 'raw'}


def test_disk_info_with_stale_paths_matches_by_name():
    data = json.dumps({'/old/u/disk': 'qcow2', '/older/u/disk': 'qcow2',
                       '/old/u/disk.local': 'raw',
                       '/older/u/disk.local': 'qcow2'})
    assert inventory.parse_disk_info(data, '/i/u_resize') == {
        'disk': 'qcow2', 'disk.local': None}


def test_disk_info_current_path_wins():
    data = json.dumps({'/old/u/disk': 'raw', '/i/u/disk': 'qcow2'})
    assert inventory.parse_disk_info(data, '/i/u') == {'disk': 'qcow2'}


@pytest.mark.parametrize('data', ['', b'', '\n', b' \n\t'])
def test_empty_disk_info_records_nothing(data):
    # As nova's reader: it creates the file empty before writing it.
    assert inventory.parse_disk_info(data, '/i/u') == {}


@pytest.mark.parametrize('data', [
    '{', '[]', '"disk"', '{"/i/u/disk": 1}', b'{"\xff": "raw"}',
])
def test_disk_info_that_is_not_nova_s(data):
    with pytest.raises(ValueError):
        inventory.parse_disk_info(data, '/i/u')


@pytest.mark.parametrize('version', ['1.0', '1.1', '2.0'])
def test_libvirt_xml_nova_metadata(version):
    data = nova_xml(
        version,
        flavor=('<nova:flavor name="m1"><nova:memory>512</nova:memory>'
                '<nova:swap> 1024 </nova:swap><nova:ephemeral>20'
                '</nova:ephemeral></nova:flavor>'),
        root='<nova:root type="image" uuid="%s"/>' % IMAGE_ID)
    assert inventory.parse_libvirt_xml(data.encode()) == (
        inventory.NovaMetadata(root_image=IMAGE_ID, swap_mb=1024,
                               ephemeral_gb=20))


def test_libvirt_xml_boot_from_volume_and_no_flavor_sizes():
    data = nova_xml(root='<nova:root type="volume" uuid="x"/>',
                    flavor='<nova:flavor><nova:swap/></nova:flavor>')
    assert inventory.parse_libvirt_xml(data) == inventory.NovaMetadata()


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
    assert inventory.parse_libvirt_xml(data) is None


@pytest.mark.parametrize('data', [
    '',
    '<domain>',
    '<?xml version="1.0"?><!DOCTYPE domain><domain/>',
    # Billion laughs in UTF-16, where a byte search would not see it.
    ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE l [<!ENTITY a "aa">'
     '<!ENTITY b "&a;&a;&a;&a;">]><l>&b;</l>').encode('utf-16'),
    nova_xml(flavor='<nova:flavor><nova:swap>-1</nova:swap></nova:flavor>'),
    nova_xml(flavor='<nova:flavor><nova:ephemeral>1.5</nova:ephemeral>'
                    '</nova:flavor>'),
])
def test_libvirt_xml_refused(data):
    with pytest.raises(ValueError):
        inventory.parse_libvirt_xml(data)


def test_cache_names_for_root_image_and_variants():
    names = {IMAGE_SHA1, IMAGE_SHA1 + '_sm', IMAGE_SHA1 + '_5368709120',
             IMAGE_SHA1 + '_x', IMAGE_SHA1 + '.part', '1' * 40}
    metadata = inventory.NovaMetadata(root_image=IMAGE_ID)
    assert list(inventory.cache_names_for(metadata, names)) == [
        (IMAGE_SHA1, 'root image ' + IMAGE_ID),
        (IMAGE_SHA1 + '_5368709120', 'root image ' + IMAGE_ID),
        (IMAGE_SHA1 + '_sm', 'root image ' + IMAGE_ID),
    ]


def test_cache_names_for_original_even_when_not_cached():
    metadata = inventory.NovaMetadata(root_image=IMAGE_ID)
    assert [name for name, _reason in
            inventory.cache_names_for(metadata, set())] == [IMAGE_SHA1]


def test_cache_names_for_swap_and_ephemeral():
    names = {'swap_512', 'swap_1024', 'ephemeral_1_0706d66',
             'ephemeral_1_40d1d2c', 'ephemeral_10_0706d66'}
    metadata = inventory.NovaMetadata(swap_mb=512, ephemeral_gb=1)
    assert list(inventory.cache_names_for(metadata, names)) == [
        ('swap_512', 'flavor swap of 512 MiB'),
        ('ephemeral_1_0706d66', 'flavor ephemeral disk of 1 GiB'),
        ('ephemeral_1_40d1d2c', 'flavor ephemeral disk of 1 GiB'),
    ]
    assert list(inventory.cache_names_for(inventory.NovaMetadata(),
                                          names)) == []


def test_cache_names_index_matches_nova_patterns_only():
    names = inventory.CacheNames([
        IMAGE_SHA1, IMAGE_SHA1 + '_sm', IMAGE_SHA1 + '_10', IMAGE_SHA1 + '_',
        IMAGE_SHA1 + '_1a', IMAGE_SHA1 + '_\u0661', 'x' + IMAGE_SHA1 + '_2',
        'ephemeral_1_0706d66', 'ephemeral_1_', 'ephemeral_1',
        'ephemeral_01_0706d66', 'ephemeral_10_0706d66', 'ephemeral__x'])
    assert names.variants == {IMAGE_SHA1: [IMAGE_SHA1 + '_10',
                                           IMAGE_SHA1 + '_sm']}
    metadata = inventory.NovaMetadata(ephemeral_gb=1)
    assert [name for name, _reason in inventory.cache_names_for(
        metadata, names)] == ['ephemeral_1_', 'ephemeral_1_0706d66']
    assert IMAGE_SHA1 in names and 'swap_1' not in names


LIVE_DOMAIN_XML = '''<domain type='kvm' id='7'>
  <name>instance-00000007</name>
  <uuid>8e5c3f5e-5d2a-4a53-9bb0-6a7d3b0c1f11</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:root type="image" uuid="%s"/>
    </nova:instance>
  </metadata>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>/i/u/kernel</kernel>
    <initrd> relative/ramdisk </initrd>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/i/u/disk' index='2'/>
      <backingStore type='file' index='3'>
        <format type='raw'/>
        <source file='/i/_base/%s'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/mapper/vg-vol'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/vol'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='volume' device='disk'>
      <source pool='default' volume='vm.qcow2'/>
      <target dev='vdd' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='hda' bus='ide'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/i/u/disk.config'/>
      <target dev='hdb' bus='ide'/>
    </disk>
  </devices>
</domain>
''' % (IMAGE_ID, IMAGE_SHA1)


def test_domain_xml_files_and_metadata():
    domain = inventory.parse_domain_xml(LIVE_DOMAIN_XML)
    assert domain == inventory.Domain(
        name='instance-00000007',
        uuid='8e5c3f5e-5d2a-4a53-9bb0-6a7d3b0c1f11',
        disks=(
            inventory.DomainDisk('disk vda', '/i/u/disk', 'qcow2'),
            inventory.DomainDisk('backing file of disk vda',
                                 '/i/_base/' + IMAGE_SHA1, 'raw'),
            inventory.DomainDisk('disk vdb', '/dev/mapper/vg-vol', 'raw'),
            inventory.DomainDisk('cdrom hdb', '/i/u/disk.config', None),
            inventory.DomainDisk('kernel', '/i/u/kernel', 'raw'),
        ),
        unknown_disks=(
            'disk vdd is the storage pool volume default/vm.qcow2',
            "initrd has the relative path 'relative/ramdisk'",
        ),
        metadata=inventory.NovaMetadata(root_image=IMAGE_ID))
    assert domain.label == 'libvirt domain instance-00000007'


def test_domain_xml_without_disks_or_metadata():
    assert inventory.parse_domain_xml('<domain><name>d</name></domain>') == (
        inventory.Domain(name='d', uuid=''))


@pytest.mark.parametrize('data', [
    '<domain>',
    '<?xml version="1.0"?><!DOCTYPE domain><domain/>',
    nova_xml(flavor='<nova:flavor><nova:swap>-1</nova:swap></nova:flavor>'),
])
def test_domain_xml_that_cannot_be_read(data):
    with pytest.raises(ValueError):
        inventory.parse_domain_xml(data)


A = (10, 100, 100)


@pytest.mark.parametrize('before, after, moved', [
    ({'a': A}, {'a': A}, False),
    ({'a': A}, {}, False),
    ({'a': A}, {'a': (10, 200, 200)}, False),
    ({'a': A}, {'a_resize': (10, 100, 200)}, True),
    ({'a': A}, {'a': (10, 100, 200)}, True),
    ({'a': A}, {'a': (12, 100, 200), 'a_del': (10, 100, 200)}, True),
    # Made meanwhile, or renamed while ``before`` was listed: its name
    # was listed before its stat, which found nothing there or the
    # directory made in its place.
    ({'a': A}, {'a': A, 'b': (11, 100, 100)}, True),
    ({'a': None}, {'a_resize': A}, True),
    ({'a': (12, 300, 300)}, {'a': (12, 300, 300), 'a_resize': A}, True),
], ids=['still', 'deleted', 'written', 'renamed', 'renamed back',
        'replaced', 'made', 'renamed while listed',
        'resized while listed'])
def test_moved(before, after, moved):
    # Listings map names to (inode, mtime, ctime).
    assert inventory._moved(before, after) is moved
