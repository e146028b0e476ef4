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

"""The definition of a libvirt domain, as the inventory reads it."""

import pytest

from cachekeeper.cache import domains
from cachekeeper.cache import metadata
from tests.lib import nova

IMAGE_ID = nova.IMAGE_ID
IMAGE_SHA1 = nova.IMAGE_SHA1


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
    domain = domains.parse_domain_xml(LIVE_DOMAIN_XML)
    assert domain == domains.Domain(
        name='instance-00000007',
        uuid='8e5c3f5e-5d2a-4a53-9bb0-6a7d3b0c1f11',
        disks=(
            domains.DomainDisk('disk vda', '/i/u/disk', 'qcow2'),
            domains.DomainDisk('backing file of disk vda',
                               '/i/_base/' + IMAGE_SHA1, 'raw'),
            domains.DomainDisk('disk vdb', '/dev/mapper/vg-vol', 'raw'),
            domains.DomainDisk('cdrom hdb', '/i/u/disk.config', None),
            domains.DomainDisk('kernel', '/i/u/kernel', 'raw'),
        ),
        unknown_disks=(
            'disk vdd is the storage pool volume default/vm.qcow2',
            "initrd has the relative path 'relative/ramdisk'",
        ),
        metadata=metadata.NovaMetadata(root_image=IMAGE_ID))
    assert domain.label == 'libvirt domain instance-00000007'


def test_domain_xml_without_disks_or_metadata():
    assert domains.parse_domain_xml('<domain><name>d</name></domain>') == (
        domains.Domain(name='d', uuid=''))


@pytest.mark.parametrize('data', [
    '<domain>',
    '<?xml version="1.0"?><!DOCTYPE domain><domain/>',
    nova.xml(flavor='<nova:flavor><nova:swap>-1</nova:swap></nova:flavor>'),
])
def test_domain_xml_that_cannot_be_read(data):
    with pytest.raises(ValueError):
        domains.parse_domain_xml(data)
