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

"""disk.info and libvirt.xml in real instance directories, as a pass reads
them: the formats they record, the cache files nova metadata points to,
and what an unreadable one holds back.
"""

import json

import pytest

from cachekeeper.cache import metadata
from tests.lib import instances
from tests.lib import nova
from tests.lib import qemu


def test_disk_info_raw_disk_is_never_inspected(host):
    host.base('A')
    inst = host.instance('inst')
    # A raw disk whose guest wrote a qcow2 header naming a cache file:
    # disk.info says raw, so nobody reads that header.
    host.overlay(inst / 'disk', host.cache / 'A')
    host.disk_info(inst, {'disk': 'raw'})

    usage = host.collect()

    assert usage.references == {}
    assert usage.doubts == []
    assert host.inspector.qemu_img_calls == 0


def test_disk_info_with_stale_paths_and_extra_disks(host):
    host.base('A')
    host.base('B')
    inst = host.instance_over('inst', 'A')
    host.overlay(inst / 'extra-volume', host.cache / 'B')
    (inst / 'disk.info').write_text(json.dumps({
        '/old/instances/inst/disk': 'raw',
        '/old/instances/inst/extra-volume': 'qcow2',
        '/old/instances/inst/not-there': 'qcow2',
    }))

    usage = host.collect()

    # disk is raw by its stale entry; extra-volume is a disk because
    # disk.info lists it.
    assert instances.sources(usage) == {'B': [str(inst / 'extra-volume')]}
    assert usage.doubts == []
    assert host.inspector.qemu_img_calls == 1


@pytest.mark.parametrize('version', ['1.0', '1.1'])
def test_libvirt_xml_protects_flat_disks(host, version):
    for name in (nova.IMAGE_SHA1, nova.IMAGE_SHA1 + '_sm',
                 nova.IMAGE_SHA1 + '_10737418240',
                 'swap_512', 'ephemeral_1_0706d66', 'ephemeral_1_40d1d2c',
                 'ephemeral_10_0706d66', 'swap_1024',
                 '1' * 40):
        (host.cache / name).write_bytes(b'')
    inst = host.instance('inst')
    qemu.qemu_img('create', '-q', '-f', 'raw', inst / 'disk', '1M')
    host.disk_info(inst, {'disk': 'raw'})
    xml = inst / 'libvirt.xml'
    xml.write_text(
        nova.libvirt_xml(nova.IMAGE_ID, swap_mb=512, ephemeral_gb=1,
                         version=version))

    usage = host.collect()

    assert instances.sources(usage) == {
        name: [str(xml)] for name in (
            nova.IMAGE_SHA1, nova.IMAGE_SHA1 + '_sm',
            nova.IMAGE_SHA1 + '_10737418240',
            'swap_512', 'ephemeral_1_0706d66', 'ephemeral_1_40d1d2c')}
    assert usage.references_to(nova.IMAGE_SHA1)[0].reason == (
        'root image %s in %s' % (nova.IMAGE_ID, xml))
    assert usage.doubts == []
    assert host.inspector.qemu_img_calls == 0


def test_libvirt_xml_without_image_evidence(host):
    (host.cache / nova.IMAGE_SHA1).write_bytes(b'')
    boot_from_volume = host.instance('bfv')
    (boot_from_volume / 'libvirt.xml').write_text(
        nova.libvirt_xml(nova.IMAGE_ID, root_type='volume'))
    foreign = host.instance('foreign')
    (foreign / 'libvirt.xml').write_text(
        '<domain><metadata><other:instance xmlns:other="http://example.com/'
        '"><other:root type="image" uuid="%s"/></other:instance></metadata>'
        '</domain>' % nova.IMAGE_ID)

    usage = host.collect()

    assert usage.references == {} and usage.doubts == []


@pytest.mark.parametrize('content', [
    '<domain><metadata>',
    '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY e "x">]><domain>&e;</domain>',
    nova.libvirt_xml(nova.IMAGE_ID).replace('<nova:swap>0',
                                            '<nova:swap>lots0'),
    'x' * (metadata.MAX_METADATA_BYTES + 1),
])
def test_unreadable_libvirt_xml_is_a_doubt(host, content):
    inst = host.instance('inst')
    (inst / 'libvirt.xml').write_text(content)

    usage = host.collect()

    assert [(d.source, d.names) for d in usage.doubts] == [
        (str(inst / 'libvirt.xml'), None)]


@pytest.mark.parametrize('content', ['', '\n', '  \n\n'],
                         ids=['empty', 'newline', 'white space'])
def test_empty_disk_info_records_nothing(host, content):
    # nova creates disk.info empty, then renames the written one over it,
    # and reads an empty one as {} (Image.resolve_driver_format).
    host.base('A')
    inst = host.instance_over('inst', 'A')
    (inst / 'disk.info').write_text(content)

    usage = host.collect()

    assert usage.doubts == []
    assert instances.sources(usage) == {'A': [str(inst / 'disk')]}


def test_unparseable_disk_info_holds_back_only_what_its_directory_uses(host):
    host.base('A')
    host.base('B')
    host.base('C')
    host.base('unused')
    inst = host.instance_over('inst', 'A')
    # A disk under a name nova does not use, which only disk.info (the one
    # that cannot be read) could name: it is read too.
    host.overlay(inst / 'disk.other', host.cache / 'B')
    (inst / 'disk.info').write_text('{"/x/disk": ')
    other = host.instance_over('other', 'C')

    usage = host.collect()

    [doubt] = usage.doubts
    assert doubt.source == str(inst / 'disk.info')
    assert doubt.names == {'A', 'B'}
    assert 'read by their headers' in doubt.message
    assert instances.sources(usage) == {'A': [str(inst / 'disk')],
                                        'B': [str(inst / 'disk.other')],
                                        'C': [str(other / 'disk')]}
    assert usage.doubts_about('unused') == []
    assert usage.doubts_about('C') == []
    assert usage.doubts_about('A') == [doubt]


def test_conflicting_disk_info_is_a_doubt(host):
    inst = host.instance('inst')
    host.overlay(inst / 'disk', host.base('A'))
    (inst / 'disk.info').write_text(json.dumps(
        {'/a/inst/disk': 'raw', '/b/inst/disk': 'qcow2'}))

    usage = host.collect()

    assert [d.source for d in usage.doubts] == [str(inst / 'disk')]
    assert host.inspector.qemu_img_calls == 0
