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

"""The inventory on real instance directories, with real qemu-img."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from cachekeeper.cache import inspect
from cachekeeper.cache import inventory

# The real one, for building images while a fake one is first on PATH.
QEMU_IMG = shutil.which('qemu-img')
BACKING_FORMAT_EXTENSION = b'\xe2\x79\x2a\xca'
IMAGE_ID = 'fd0cb2f1-8375-44c9-b1f4-3e1f4c4a8ef0'
IMAGE_SHA1 = '0d5e6b61602d758984b3bf038267614d6016eb2a'

LIBVIRT_XML = '''<domain type="kvm">
  <name>instance-00000001</name>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/%s">
      <nova:package version="31.0.0"/>
      <nova:name>vm</nova:name>
      <nova:flavor name="m1.small">
        <nova:memory>2048</nova:memory>
        <nova:disk>20</nova:disk>
        <nova:swap>%d</nova:swap>
        <nova:ephemeral>%d</nova:ephemeral>
        <nova:vcpus>1</nova:vcpus>
      </nova:flavor>
      <nova:root type="%s" uuid="%s"/>
    </nova:instance>
  </metadata>
  <devices>
    <disk type="file" device="disk">
      <driver name="qemu" type="raw"/>
      <source file="/var/lib/nova/instances/x/disk"/>
    </disk>
  </devices>
</domain>
'''


def qemu_img(*args):
    subprocess.run([QEMU_IMG] + [str(a) for a in args], check=True,
                   capture_output=True, timeout=30)


class Host:
    """An instances_path with its cache directory, made of real images."""

    def __init__(self, root):
        self.root = root
        self.instances = root / 'instances'
        self.cache = self.instances / '_base'
        self.cache.mkdir(parents=True)
        (self.instances / 'locks').mkdir()
        self.inspector = inspect.Inspector(timeout=5, workers=4)
        self.inventory = inventory.Inventory(
            str(self.instances), str(self.cache), self.inspector)

    def base(self, name, fmt='raw', backing=None, backing_fmt='raw'):
        path = self.cache / name
        if backing is None:
            qemu_img('create', '-q', '-f', fmt, path, '1M')
        else:
            qemu_img('create', '-q', '-f', fmt, '-F', backing_fmt, '-b',
                     backing, path)
        return path

    def instance(self, name):
        path = self.instances / name
        path.mkdir(exist_ok=True)
        return path

    @staticmethod
    def overlay(path, backing, backing_fmt='raw', unsafe=False):
        """Make a qcow2 over ``backing``; unsafe: without opening it."""
        args = ['create', '-q', '-f', 'qcow2', '-F', backing_fmt,
                '-b', backing]
        if unsafe:
            args += ['-u', path, '1M']
        else:
            args.append(path)
        qemu_img(*args)
        return path

    def disk_info(self, directory, formats):
        (directory / 'disk.info').write_text(json.dumps(
            {str(directory / name): fmt for name, fmt in formats.items()}))

    def cache_names(self):
        return set(os.listdir(self.cache))

    def collect(self):
        return self.inventory.collect(self.cache_names())

    def backdate(self):
        """Age every directory and metadata file past the racy window."""
        past = time.time() - 3600
        for dirpath, dirnames, filenames in os.walk(self.instances):
            os.utime(dirpath, (past, past))
            for name in filenames:
                if name in ('disk.info', 'libvirt.xml'):
                    os.utime(os.path.join(dirpath, name), (past, past))


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    d = tmp_path / 'bin'
    d.mkdir()
    monkeypatch.setenv('PATH', '%s:%s' % (d, os.environ['PATH']))
    return d


def install_fake_qemu_img(bin_dir, body):
    script = bin_dir / 'qemu-img'
    script.write_text('#!/bin/sh\n' + textwrap.dedent(body))
    script.chmod(0o755)


def sources(usage):
    """{name: sorted sources} of a Usage."""
    return {name: sorted(r.source for r in refs)
            for name, refs in usage.references.items()}


def test_every_disk_name_is_inspected(host):
    for name in ('A', 'B', 'C', 'D', 'E', 'F', 'unused'):
        host.base(name)
    inst = host.instance('6f2c2e3a-0000-4000-8000-000000000001')
    disks = {'disk': 'A', 'disk.local': 'B', 'disk.eph0': 'C',
             'disk.eph1': 'D', 'disk.swap': 'E', 'disk.rescue': 'F'}
    for disk, base in disks.items():
        host.overlay(inst / disk, host.cache / base)
    qemu_img('create', '-q', '-f', 'raw', inst / 'disk.config', '1M')
    # Not a disk name and not in disk.info: never looked at.
    host.overlay(inst / 'console.log', host.cache / 'unused')

    usage = host.collect()

    assert sources(usage) == {
        base: [str(inst / disk)] for disk, base in disks.items()}
    assert usage.doubts == []
    ref = usage.references_to('A')[0]
    assert ref.chain == (str(inst / 'disk'), str(host.cache / 'A'))
    assert ref.reason == 'backing chain of %s' % (inst / 'disk')
    # Six overlays; the raw bases and disk.config need no qemu-img.
    assert host.inspector.qemu_img_calls == 6


def test_relative_and_dotted_backing_names(host):
    host.base('A')
    host.base('B')
    inst = host.instance('inst')
    qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', '../_base/A',
             inst / 'disk')
    host.overlay(inst / 'disk.local',
                 '%s/../_base/B' % (host.instances / 'inst'))

    usage = host.collect()

    assert sources(usage) == {'A': [str(inst / 'disk')],
                              'B': [str(inst / 'disk.local')]}
    assert usage.references_to('A')[0].chain[-1] == str(host.cache / 'A')


def test_chain_of_depth_three_through_another_directory(host, tmp_path):
    original = host.base('R')
    resized = host.base('Q', fmt='qcow2', backing=original)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    middle = host.overlay(elsewhere / 'mid.qcow2', resized, 'qcow2')
    inst = host.instance('inst')
    host.overlay(inst / 'disk', middle, 'qcow2')

    usage = host.collect()

    disk = str(inst / 'disk')
    assert sources(usage) == {'Q': [disk], 'R': [disk]}
    assert usage.references_to('R')[0].chain == (
        disk, str(middle), str(resized), str(original))
    assert usage.references_to('Q')[0].chain == (
        disk, str(middle), str(resized))
    assert host.inspector.qemu_img_calls == 3


def test_backing_without_recorded_format_is_detected(host):
    host.base('Q', fmt='qcow2', backing=host.base('R'))
    disk = host.overlay(host.instance('inst') / 'disk', host.cache / 'Q',
                        'qcow2')
    # Older qemu wrote no backing format; hide it as an unknown (ignored)
    # header extension so that the inventory has to detect it.
    with open(disk, 'r+b') as f:
        header = f.read(4096)
        f.seek(header.index(BACKING_FORMAT_EXTENSION))
        f.write(b'\x12\x34\x56\x78')
    assert host.inspector.inspect(str(disk), 'qcow2').backing_format is None

    assert set(sources(host.collect())) == {'Q', 'R'}


def test_shared_bases_are_inspected_once(host):
    host.base('Q', fmt='qcow2', backing=host.base('R'))
    for i in range(3):
        host.overlay(host.instance('inst%d' % i) / 'disk', host.cache / 'Q',
                     'qcow2')

    usage = host.collect()

    assert len(usage.references_to('Q')) == 3
    assert len(usage.references_to('R')) == 3
    assert host.inspector.qemu_img_calls == 4


def test_backing_through_symlinked_directory(host):
    host.base('A')
    host.base('B')
    os.symlink(host.cache, host.instances / 'cache-link')
    inst = host.instance('inst')
    host.overlay(inst / 'disk', host.instances / 'cache-link' / 'A')
    host.overlay(inst / 'disk.local', host.root / 'instances/../instances'
                 '/cache-link/B')

    usage = host.collect()

    assert sources(usage) == {'A': [str(inst / 'disk')],
                              'B': [str(inst / 'disk.local')]}
    # The symlink to the cache directory is not an instance directory.
    assert usage.doubts == []


def test_cache_directory_is_a_symlink(tmp_path):
    real_cache = tmp_path / 'storage' / 'cache'
    real_cache.mkdir(parents=True)
    instances = tmp_path / 'instances'
    instances.mkdir()
    os.symlink(real_cache, instances / '_base')
    qemu_img('create', '-q', '-f', 'raw', real_cache / 'A', '1M')
    qemu_img('create', '-q', '-f', 'raw', real_cache / 'B', '1M')
    (instances / 'inst').mkdir()
    Host.overlay(instances / 'inst' / 'disk', instances / '_base' / 'A')
    Host.overlay(instances / 'inst' / 'disk.local', real_cache / 'B')
    inv = inventory.Inventory(str(instances), str(instances / '_base'),
                              inspect.Inspector())

    usage = inv.collect({'A', 'B'})

    assert set(usage.references) == {'A', 'B'}
    assert usage.doubts == []


def test_all_kinds_of_instance_directories(host, tmp_path):
    for name in ('A', 'B', 'C', 'D', 'E', 'F'):
        host.base(name)
    dirs = {'0b1e7a0e-5f6a-4c1e-9d2a-3b4c5d6e7f80': 'A',
            '0b1e7a0e-5f6a-4c1e-9d2a-3b4c5d6e7f80_resize': 'B',
            '1c2e7a0e-5f6a-4c1e-9d2a-3b4c5d6e7f81_del': 'C',
            'instance-0000002a': 'D',
            'whatever-an-operator-made': 'E'}
    for dirname, base in dirs.items():
        host.overlay(host.instance(dirname) / 'disk', host.cache / base)
    # A symlink to a directory elsewhere counts as an instance directory.
    linked = tmp_path / 'linked-instance'
    linked.mkdir()
    host.overlay(linked / 'disk', host.cache / 'F')
    os.symlink(linked, host.instances / 'linked')
    # Not instance directories: locks, an excluded quarantine, a dangling
    # symlink, a plain file.
    quarantine = host.instance('_quarantine')
    host.overlay(quarantine / 'disk', host.cache / 'A')
    host.overlay(host.instances / 'locks' / 'disk', host.cache / 'A')
    os.symlink(host.root / 'nowhere', host.instances / 'dangling')
    (host.instances / 'compute_nodes').write_text('{}')
    inv = inventory.Inventory(str(host.instances), str(host.cache),
                              host.inspector, excluded=[str(quarantine)])

    usage = inv.collect(host.cache_names())

    expected = {base: [str(host.instances / d / 'disk')]
                for d, base in dirs.items()}
    expected['F'] = [str(host.instances / 'linked' / 'disk')]
    assert sources(usage) == expected
    assert usage.doubts == []


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
    inst = host.instance('inst')
    host.overlay(inst / 'disk', host.cache / 'A')
    host.overlay(inst / 'extra-volume', host.cache / 'B')
    (inst / 'disk.info').write_text(json.dumps({
        '/old/instances/inst/disk': 'raw',
        '/old/instances/inst/extra-volume': 'qcow2',
        '/old/instances/inst/not-there': 'qcow2',
    }))

    usage = host.collect()

    # disk is raw by its stale entry; extra-volume is a disk because
    # disk.info lists it.
    assert sources(usage) == {'B': [str(inst / 'extra-volume')]}
    assert usage.doubts == []
    assert host.inspector.qemu_img_calls == 1


def test_unrecorded_raw_disk_needs_no_qemu_img(host):
    inst = host.instance('inst')
    qemu_img('create', '-q', '-f', 'raw', inst / 'disk', '1M')

    usage = host.collect()

    assert usage.references == {} and usage.doubts == []
    assert host.inspector.qemu_img_calls == 0


@pytest.mark.parametrize('version', ['1.0', '1.1'])
def test_libvirt_xml_protects_flat_disks(host, version):
    for name in (IMAGE_SHA1, IMAGE_SHA1 + '_sm', IMAGE_SHA1 + '_10737418240',
                 'swap_512', 'ephemeral_1_0706d66', 'ephemeral_1_40d1d2c',
                 'ephemeral_10_0706d66', 'swap_1024',
                 '1' * 40):
        (host.cache / name).write_bytes(b'')
    inst = host.instance('inst')
    qemu_img('create', '-q', '-f', 'raw', inst / 'disk', '1M')
    host.disk_info(inst, {'disk': 'raw'})
    xml = inst / 'libvirt.xml'
    xml.write_text(LIBVIRT_XML % (version, 512, 1, 'image', IMAGE_ID))

    usage = host.collect()

    assert sources(usage) == {
        name: [str(xml)] for name in (
            IMAGE_SHA1, IMAGE_SHA1 + '_sm', IMAGE_SHA1 + '_10737418240',
            'swap_512', 'ephemeral_1_0706d66', 'ephemeral_1_40d1d2c')}
    assert usage.references_to(IMAGE_SHA1)[0].reason == (
        'root image %s in %s' % (IMAGE_ID, xml))
    assert usage.doubts == []
    assert host.inspector.qemu_img_calls == 0


def test_libvirt_xml_without_image_evidence(host):
    (host.cache / IMAGE_SHA1).write_bytes(b'')
    boot_from_volume = host.instance('bfv')
    (boot_from_volume / 'libvirt.xml').write_text(
        LIBVIRT_XML % ('1.1', 0, 0, 'volume', IMAGE_ID))
    foreign = host.instance('foreign')
    (foreign / 'libvirt.xml').write_text(
        '<domain><metadata><other:instance xmlns:other="http://example.com/'
        '"><other:root type="image" uuid="%s"/></other:instance></metadata>'
        '</domain>' % IMAGE_ID)

    usage = host.collect()

    assert usage.references == {} and usage.doubts == []


@pytest.mark.parametrize('content', [
    '<domain><metadata>',
    '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY e "x">]><domain>&e;</domain>',
    LIBVIRT_XML.replace('<nova:swap>%d', '<nova:swap>lots%d') % (
        '1.1', 0, 0, 'image', IMAGE_ID),
    'x' * (inventory.MAX_METADATA_BYTES + 1),
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
    inst = host.instance('inst')
    host.overlay(inst / 'disk', host.cache / 'A')
    (inst / 'disk.info').write_text(content)

    usage = host.collect()

    assert usage.doubts == []
    assert sources(usage) == {'A': [str(inst / 'disk')]}


def test_unparseable_disk_info_holds_back_only_what_its_directory_uses(host):
    host.base('A')
    host.base('B')
    host.base('C')
    host.base('unused')
    inst = host.instance('inst')
    host.overlay(inst / 'disk', host.cache / 'A')
    # A disk under a name nova does not use, which only disk.info (the one
    # that cannot be read) could name: it is read too.
    host.overlay(inst / 'disk.other', host.cache / 'B')
    (inst / 'disk.info').write_text('{"/x/disk": ')
    other = host.instance('other')
    host.overlay(other / 'disk', host.cache / 'C')

    usage = host.collect()

    [doubt] = usage.doubts
    assert doubt.source == str(inst / 'disk.info')
    assert doubt.names == {'A', 'B'}
    assert 'read by their headers' in doubt.message
    assert sources(usage) == {'A': [str(inst / 'disk')],
                              'B': [str(inst / 'disk.other')],
                              'C': [str(other / 'disk')]}
    assert usage.doubts_about('unused') == []
    assert usage.doubts_about('C') == []
    assert usage.doubts_about('A') == [doubt]


def test_directory_with_unparseable_disk_info_is_read_again(host):
    host.base('A')
    inst = host.instance('inst')
    (inst / 'disk.info').write_text('not json')

    first = host.collect()
    host.overlay(inst / 'disk', host.cache / 'A')
    second = host.collect()

    assert [d.names for d in first.doubts] == [frozenset()]
    assert [d.names for d in second.doubts] == [{'A'}]
    assert sources(second) == {'A': [str(inst / 'disk')]}


def test_conflicting_disk_info_is_a_doubt(host):
    inst = host.instance('inst')
    host.overlay(inst / 'disk', host.base('A'))
    (inst / 'disk.info').write_text(json.dumps(
        {'/a/inst/disk': 'raw', '/b/inst/disk': 'qcow2'}))

    usage = host.collect()

    assert [d.source for d in usage.doubts] == [str(inst / 'disk')]
    assert host.inspector.qemu_img_calls == 0


def test_corrupt_disk_is_a_doubt_and_others_are_read(host):
    host.base('A')
    bad = host.instance('bad')
    (bad / 'disk').write_bytes(b'QFI\xfb' + b'\xff' * 508)
    host.disk_info(bad, {'disk': 'qcow2'})
    good = host.instance('good')
    host.overlay(good / 'disk', host.cache / 'A')

    usage = host.collect()

    assert sources(usage) == {'A': [str(good / 'disk')]}
    [doubt] = usage.doubts
    assert doubt.source == str(bad / 'disk') and doubt.names is None
    assert 'cannot inspect' in doubt.message
    assert usage.doubts_about('A') == [doubt]


def test_failing_qemu_img_is_a_doubt(host, fake_bin):
    install_fake_qemu_img(fake_bin, 'echo "qemu-img: failed" >&2; exit 1')
    host.overlay(host.instance('inst') / 'disk', host.base('A'))

    usage = host.collect()

    assert usage.references == {}
    [doubt] = usage.doubts
    assert 'qemu-img: failed' in doubt.message


def test_hung_qemu_img_is_killed_and_a_doubt(host, fake_bin, tmp_path):
    pid_file = tmp_path / 'pid'
    install_fake_qemu_img(fake_bin, 'echo $$ > %s; exec sleep 60' % pid_file)
    host.overlay(host.instance('inst') / 'disk', host.base('A'))
    host.inspector.timeout = 1

    usage = host.collect()

    [doubt] = usage.doubts
    assert 'did not finish within 1 s' in doubt.message
    assert not os.path.exists('/proc/%s' % pid_file.read_text().strip())


def test_vanished_disk_is_not_a_doubt(host, fake_bin):
    # qemu-img finds the disk deleted under it, as when an instance is
    # deleted during the pass.
    install_fake_qemu_img(fake_bin, '''
        for last; do :; done
        rm -f "$last"
        echo "qemu-img: Could not open '$last': No such file" >&2
        exit 1
    ''')
    host.overlay(host.instance('inst') / 'disk', host.base('A'))
    os.symlink('gone', host.instance('inst') / 'disk.local')

    usage = host.collect()

    assert usage.references == {} and usage.doubts == []
    assert not (host.instances / 'inst' / 'disk').exists()


def test_vanished_middle_of_chain_protects_by_name(host, fake_bin, tmp_path):
    # The cache file in the middle of the chain is deleted while it is
    # inspected: the disk still names it, so its name stays in use (and
    # the rest of the chain is unknown, but gone with it).
    host.base('Q', fmt='qcow2', backing=host.base('R'))
    host.overlay(host.instance('inst') / 'disk', host.cache / 'Q', 'qcow2')
    install_fake_qemu_img(fake_bin, '''
        for last; do :; done
        case "$last" in */_base/Q) rm -f "$last"; exit 1;; esac
        exec %s "$@"
    ''' % QEMU_IMG)

    usage = host.collect()

    assert sources(usage) == {'Q': [str(host.instances / 'inst' / 'disk')]}
    assert usage.doubts == []


def test_missing_backing_file_is_protected_by_name(host):
    host.base('A')
    inst = host.instance('inst')
    host.overlay(inst / 'disk', '/old/instances/_base/A', unsafe=True)
    host.overlay(inst / 'disk.local', '/old/instances/_base/B', unsafe=True)
    host.overlay(inst / 'disk.swap', '/old/instances/other/C', unsafe=True)

    usage = host.collect()

    [ref] = usage.references_to('A')
    assert ref.source == str(inst / 'disk')
    assert ref.reason == (
        'backing chain of %s (recorded backing file '
        '/old/instances/_base/A not found)' % (inst / 'disk'))
    assert set(usage.references) == {'A'}
    assert usage.doubts == []


def test_missing_cache_file_named_by_its_cache_path(host):
    # A cache file that is gone (e.g. quarantined) while a disk still
    # backs onto it: the name is reported in use.
    inst = host.instance('inst')
    host.overlay(inst / 'disk', host.cache / 'A', unsafe=True)

    usage = host.collect()

    assert sources(usage) == {'A': [str(inst / 'disk')]}


def test_chain_loop_and_too_long_chain_are_doubts(host, tmp_path):
    loop = host.instance('loop')
    host.overlay(loop / 'disk', 'other.qcow2', 'qcow2', unsafe=True)
    host.overlay(loop / 'other.qcow2', 'disk', 'qcow2', unsafe=True)
    deep = host.instance('deep')
    chain = tmp_path / 'chain'
    chain.mkdir()
    previous = host.base('A')
    fmt = 'raw'
    for i in range(inventory.MAX_CHAIN_LENGTH):
        previous = host.overlay(chain / str(i), previous, fmt)
        fmt = 'qcow2'
    host.overlay(deep / 'disk', previous, 'qcow2')

    usage = host.collect()

    messages = {d.source: d.message for d in usage.doubts}
    assert messages == {
        str(loop / 'disk'): 'backing chain loops at %s' % (loop / 'disk'),
        str(deep / 'disk'): 'backing chain longer than %d files' % (
            inventory.MAX_CHAIN_LENGTH),
    }
    assert all(d.names is None for d in usage.doubts)


def test_protocol_backing_is_a_doubt(host):
    inst = host.instance('inst')
    host.overlay(inst / 'disk', 'nbd://localhost/export', unsafe=True)

    usage = host.collect()

    [doubt] = usage.doubts
    assert 'not a local file' in doubt.message


@pytest.mark.timeout(20)
def test_fifos_are_never_opened(host):
    inst = host.instance('inst')
    os.mkfifo(inst / 'disk')
    os.mkfifo(inst / 'disk.local')
    host.disk_info(inst, {'disk.local': 'qcow2'})
    other = host.instance('other')
    os.mkfifo(other / 'libvirt.xml')

    usage = host.collect()

    assert [(d.source, d.names) for d in usage.doubts] == [
        (str(other / 'libvirt.xml'), None)]
    assert usage.references == {}
    assert host.inspector.qemu_img_calls == 0


def test_unreadable_paths_are_doubts(host, tmp_path):
    # root reads everything, so the inventory runs without the capabilities
    # that bypass file permissions.
    host.base('A')
    no_dir = host.instance('no-dir')
    host.overlay(no_dir / 'disk', host.cache / 'A')
    no_disk_info = host.instance('no-disk-info')
    host.overlay(no_disk_info / 'disk', host.cache / 'A')
    host.disk_info(no_disk_info, {'disk': 'qcow2'})
    no_disk = host.instance('no-disk')
    host.overlay(no_disk / 'disk', host.cache / 'A')
    good = host.instance('good')
    host.overlay(good / 'disk', host.cache / 'A')
    for path in (no_dir, no_disk_info / 'disk.info', no_disk / 'disk'):
        os.chmod(path, 0)
    closed = tmp_path / 'closed'
    closed.mkdir()
    os.chmod(closed, 0)
    script = textwrap.dedent('''
        import json, sys
        from cachekeeper.cache import inspect, inventory
        result = {}
        for instances in sys.argv[1:]:
            inv = inventory.Inventory(instances, instances + '/_base',
                                      inspect.Inspector())
            usage = inv.collect({'A'})
            result[instances] = {
                'doubts': sorted([d.source, d.names and sorted(d.names)]
                                 for d in usage.doubts),
                'refs': sorted(r.source for r in usage.references_to('A'))}
        print(json.dumps(result))
    ''')
    proc = subprocess.run(
        ['setpriv', '--bounding-set=-dac_override,-dac_read_search', '--',
         sys.executable, '-c', script, str(host.instances), str(closed)],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    # An unreadable disk.info holds back what the disks of its directory
    # use; the other doubts could hide anything.
    assert result[str(host.instances)] == {
        'doubts': sorted([[str(no_dir), None], [str(no_disk / 'disk'), None],
                          [str(no_disk_info / 'disk.info'), ['A']]]),
        'refs': [str(good / 'disk'), str(no_disk_info / 'disk')],
    }
    assert result[str(closed)] == {'doubts': [[str(closed), None]],
                                   'refs': []}


def test_recheck_costs_nothing_when_nothing_changed(host):
    host.base('A')
    host.base('B')
    inst = host.instance('inst')
    host.overlay(inst / 'disk', host.cache / 'A')
    (inst / 'libvirt.xml').write_text(
        LIBVIRT_XML % ('1.1', 0, 0, 'image', IMAGE_ID))
    host.backdate()
    host.collect()
    calls = host.inspector.qemu_img_calls

    references, doubts = host.inventory.recheck('A')
    assert [r.source for r in references] == [str(inst / 'disk')]
    assert doubts == []
    assert host.inventory.recheck('B') == ([], [])
    assert host.inspector.qemu_img_calls == calls


def backdate_disks(host):
    past = time.time() - 3600
    for path in host.instances.glob('*/disk*'):
        os.utime(path, (past, past))
    # Their change times are now: wait them past the racy window.
    time.sleep(inventory.RACY_SECONDS + 0.1)


def instance_on_a(host):
    """Instance directory 'inst' with a disk over cache file A, all past
    the racy window."""
    host.base('A')
    inst = host.instance('inst')
    host.overlay(inst / 'disk', host.cache / 'A')
    host.backdate()
    backdate_disks(host)
    return inst


class ListingRace:
    """os.scandir that lets nova act once on a directory, right after its
    names are read and before the pass stats them."""

    def __init__(self, monkeypatch):
        self.actions = {}
        self._scandir = os.scandir
        monkeypatch.setattr(os, 'scandir', self)

    def __call__(self, path):
        listing = self._scandir(path)
        action = self.actions.pop(os.fspath(path), None)
        if action is None:
            return listing
        names = list(listing)
        listing.close()
        action()
        return contextlib.nullcontext(iter(names))


@pytest.mark.parametrize('nova_does', ['rename', 'resize'])
def test_directory_renamed_while_listed_is_read(host, monkeypatch,
                                                 nova_does):
    inst = instance_on_a(host)
    memory = inventory.Memory()
    next_pass(host, memory)
    race = ListingRace(monkeypatch)

    def rename():
        os.rename(inst, str(inst) + '_resize')
        if nova_does == 'resize':
            inst.mkdir()

    def back():
        if nova_does == 'resize':
            inst.rmdir()
        os.rename(str(inst) + '_resize', inst)

    moved = [str(inst) + '_resize/disk']
    for check in (lambda: next_pass(host, memory).references_to('A'),
                  lambda: host.inventory.recheck('A')[0]):
        race.actions[str(host.instances)] = rename
        assert [r.source for r in check()] == moved
        back()


def test_recheck_sees_new_directory_and_new_disk(host):
    host.base('A')
    host.base('B')
    host.base('C')
    inst = host.instance('inst')
    host.overlay(inst / 'disk', host.cache / 'A')
    host.backdate()
    usage = host.collect()
    assert set(usage.references) == {'A'}

    new = host.instance('new-instance')
    host.overlay(new / 'disk', host.cache / 'B')
    host.overlay(inst / 'disk.eph0', host.cache / 'C')

    references, doubts = host.inventory.recheck('B')
    assert [r.source for r in references] == [str(new / 'disk')]
    assert doubts == []
    references, doubts = host.inventory.recheck('C')
    assert [r.source for r in references] == [str(inst / 'disk.eph0')]
    assert [r.source for r in host.inventory.recheck('A')[0]] == [
        str(inst / 'disk')]


def test_recheck_builds_on_the_last_recheck(host):
    host.base('A')
    inst = host.instance('inst')
    host.overlay(inst / 'disk', host.cache / 'A')
    host.backdate()
    host.collect()
    new = host.instance('new')
    host.overlay(new / 'disk', host.cache / 'A')
    assert len(host.inventory.recheck('A')[0]) == 2
    host.backdate()
    host.inventory.recheck('A')
    calls = host.inspector.qemu_img_calls

    assert len(host.inventory.recheck('A')[0]) == 2
    assert host.inspector.qemu_img_calls == calls


def test_recheck_rereads_recently_changed_directories(host):
    # Changed within the racy window at collect: its times cannot prove a
    # later change absent, so every recheck reads it again.
    inst = host.instance('inst')
    host.overlay(inst / 'disk', host.base('A'))
    host.collect()
    calls = host.inspector.qemu_img_calls

    assert len(host.inventory.recheck('A')[0]) == 1
    assert host.inspector.qemu_img_calls == calls + 1


def test_recheck_sees_deletions_and_new_doubts(host):
    host.base('A')
    gone = host.instance('gone')
    host.overlay(gone / 'disk', host.cache / 'A')
    host.backdate()
    host.collect()

    for name in os.listdir(gone):
        os.unlink(gone / name)
    os.rmdir(gone)
    assert host.inventory.recheck('A') == ([], [])

    broken = host.instance('broken')
    (broken / 'libvirt.xml').write_text('<domain>')
    references, doubts = host.inventory.recheck('A')
    assert references == []
    assert [(d.source, d.names) for d in doubts] == [
        (str(broken / 'libvirt.xml'), None)]


def test_recheck_sees_libvirt_xml_rewritten_in_place(host):
    (host.cache / IMAGE_SHA1).write_bytes(b'')
    inst = host.instance('inst')
    xml = inst / 'libvirt.xml'
    xml.write_text(LIBVIRT_XML % ('1.1', 0, 0, 'volume', IMAGE_ID))
    host.backdate()
    host.collect()

    with open(xml, 'r+') as f:
        f.write(LIBVIRT_XML % ('1.1', 0, 0, 'image', IMAGE_ID))

    references, _doubts = host.inventory.recheck(IMAGE_SHA1)
    assert [r.source for r in references] == [str(xml)]


def test_recheck_many_reads_once_for_all_names(host):
    for name in ('A', 'B', 'C'):
        host.base(name)
    inst = host.instance('inst')
    host.overlay(inst / 'disk', host.cache / 'A')
    host.backdate()
    host.collect()
    new = host.instance('new')
    host.overlay(new / 'disk', host.cache / 'B')
    broken = host.instance('broken')
    (broken / 'libvirt.xml').write_text('<domain>')
    calls = host.inspector.qemu_img_calls

    found = host.inventory.recheck_many(['A', 'B', 'C'])

    assert host.inspector.qemu_img_calls == calls + 1
    assert {name: [r.source for r in references]
            for name, (references, _doubts) in found.items()} == {
        'A': [str(inst / 'disk')], 'B': [str(new / 'disk')], 'C': []}
    assert {name: [d.source for d in doubts]
            for name, (_references, doubts) in found.items()} == {
        name: [str(broken / 'libvirt.xml')] for name in 'ABC'}


def parsed(files, path, calls):
    def parse(data):
        calls.append(data)
        if data == b'bad':
            raise ValueError('bad content')
        return data.upper()
    return files.read(str(path), os.stat(path), parse)


def test_parsed_files_parse_a_file_once_while_unchanged(tmp_path):
    path = tmp_path / 'libvirt.xml'
    path.write_bytes(b'one')
    files = inventory.ParsedFiles(
        clock=lambda: time.time_ns() + 10 * 10 ** 9)
    calls = []
    assert [parsed(files, path, calls) for _ in range(2)] == [b'ONE'] * 2
    assert calls == [b'one']

    with open(path, 'r+b') as f:
        f.write(b'two')
    assert [parsed(files, path, calls) for _ in range(2)] == [b'TWO'] * 2
    path.write_bytes(b'bad')
    for _ in range(2):
        with pytest.raises(ValueError, match='bad content'):
            parsed(files, path, calls)
    assert calls == [b'one', b'two', b'bad']

    # Used in the pass before the last: kept. Unused for a whole pass:
    # dropped.
    files.new_pass()
    with pytest.raises(ValueError):
        parsed(files, path, calls)
    files.new_pass()
    files.new_pass()
    with pytest.raises(ValueError):
        parsed(files, path, calls)
    assert calls == [b'one', b'two', b'bad', b'bad']


def test_parsed_files_read_recently_changed_files_again(tmp_path):
    path = tmp_path / 'disk.info'
    path.write_bytes(b'one')
    files = inventory.ParsedFiles()
    calls = []
    assert [parsed(files, path, calls) for _ in range(2)] == [b'ONE'] * 2
    assert calls == [b'one', b'one']


def next_pass(host, memory):
    """collect() as the next pass of a daemon: a new Inventory."""
    host.inventory = inventory.Inventory(
        str(host.instances), str(host.cache), host.inspector, memory=memory)
    return host.collect()


def test_next_pass_reads_only_what_changed(host):
    for name in ('A', 'B', 'C'):
        host.base(name)
    same = host.instance('same')
    host.overlay(same / 'disk', host.cache / 'A')
    rebased = host.instance('rebased')
    host.overlay(rebased / 'disk', host.cache / 'A')
    host.backdate()
    backdate_disks(host)
    memory = inventory.Memory()
    next_pass(host, memory)
    calls = host.inspector.qemu_img_calls

    assert sources(next_pass(host, memory)) == {
        'A': [str(rebased / 'disk'), str(same / 'disk')]}
    assert host.inspector.qemu_img_calls == calls

    # In place: the directory's times do not change, the disk's do.
    qemu_img('rebase', '-u', '-F', 'raw', '-b', host.cache / 'B',
             rebased / 'disk')
    host.overlay(host.instance('new') / 'disk', host.cache / 'C')
    assert sources(next_pass(host, memory)) == {
        'A': [str(same / 'disk')], 'B': [str(rebased / 'disk')],
        'C': [str(host.instances / 'new' / 'disk')]}
    assert host.inspector.qemu_img_calls == calls + 2




def test_next_pass_expands_metadata_for_new_cache_files(host):
    (host.cache / IMAGE_SHA1).write_bytes(b'')
    inst = host.instance('inst')
    (inst / 'libvirt.xml').write_text(
        LIBVIRT_XML % ('1.1', 0, 0, 'image', IMAGE_ID))
    host.backdate()
    memory = inventory.Memory()
    assert set(next_pass(host, memory).references) == {IMAGE_SHA1}

    (host.cache / (IMAGE_SHA1 + '_10737418240')).write_bytes(b'')
    assert set(next_pass(host, memory).references) == {
        IMAGE_SHA1, IMAGE_SHA1 + '_10737418240'}


def test_next_pass_reads_again_what_had_doubts(host, fake_bin, tmp_path):
    failing = tmp_path / 'failing'
    failing.write_text('')
    install_fake_qemu_img(fake_bin, """
        [ -e %s ] && exit 1
        exec %s "$@"
    """ % (failing, QEMU_IMG))
    inst = instance_on_a(host)
    memory = inventory.Memory()
    first = next_pass(host, memory)
    assert [d.source for d in first.doubts] == [str(inst / 'disk')]

    failing.unlink()
    second = next_pass(host, memory)
    assert second.doubts == []
    assert sources(second) == {'A': [str(inst / 'disk')]}


def test_next_pass_reads_again_a_chain_whose_backing_is_missing(
        host, tmp_path):
    # nova re-roots a missing backing file into the cache by its name.
    inst = host.instance('inst')
    host.overlay(inst / 'disk', tmp_path / 'gone' / 'B', unsafe=True)
    host.backdate()
    backdate_disks(host)
    memory = inventory.Memory()
    assert next_pass(host, memory).references == {}

    (host.cache / 'B').write_bytes(b'')
    assert sources(next_pass(host, memory)) == {'B': [str(inst / 'disk')]}
