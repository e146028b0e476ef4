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

"""The backing chains of instance disks, on real images and real qemu-img.

Which files a disk reads through, how its format is trusted or detected,
and what becomes a doubt: what cannot be inspected could use anything,
what vanished meanwhile uses nothing, a missing backing file keeps its
name in use.
"""

import os

import pytest

from cachekeeper.cache import chains
from tests.lib import instances
from tests.lib import qemu


BACKING_FORMAT_EXTENSION = b'\xe2\x79\x2a\xca'


def test_every_disk_name_is_inspected(host):
    for name in ('A', 'B', 'C', 'D', 'E', 'F', 'unused'):
        host.base(name)
    inst = host.instance('6f2c2e3a-0000-4000-8000-000000000001')
    disks = {'disk': 'A', 'disk.local': 'B', 'disk.eph0': 'C',
             'disk.eph1': 'D', 'disk.swap': 'E', 'disk.rescue': 'F'}
    for disk, base in disks.items():
        host.overlay(inst / disk, host.cache / base)
    qemu.qemu_img('create', '-q', '-f', 'raw', inst / 'disk.config', '1M')
    # Not a disk name and not in disk.info: never looked at.
    host.overlay(inst / 'console.log', host.cache / 'unused')

    usage = host.collect()

    assert instances.sources(usage) == {
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
    qemu.qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
                  '../_base/A', inst / 'disk')
    host.overlay(inst / 'disk.local',
                 '%s/../_base/B' % (host.instances / 'inst'))

    usage = host.collect()

    assert instances.sources(usage) == {'A': [str(inst / 'disk')],
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
    assert instances.sources(usage) == {'Q': [disk], 'R': [disk]}
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

    assert set(instances.sources(host.collect())) == {'Q', 'R'}


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

    assert instances.sources(usage) == {'A': [str(inst / 'disk')],
                                        'B': [str(inst / 'disk.local')]}
    # The symlink to the cache directory is not an instance directory.
    assert usage.doubts == []


def test_unrecorded_raw_disk_needs_no_qemu_img(host):
    inst = host.instance('inst')
    qemu.qemu_img('create', '-q', '-f', 'raw', inst / 'disk', '1M')

    usage = host.collect()

    assert usage.references == {} and usage.doubts == []
    assert host.inspector.qemu_img_calls == 0


def test_corrupt_disk_is_a_doubt_and_others_are_read(host):
    host.base('A')
    bad = host.instance('bad')
    (bad / 'disk').write_bytes(b'QFI\xfb' + b'\xff' * 508)
    host.disk_info(bad, {'disk': 'qcow2'})
    good = host.instance_over('good', 'A')

    usage = host.collect()

    assert instances.sources(usage) == {'A': [str(good / 'disk')]}
    [doubt] = usage.doubts
    assert doubt.source == str(bad / 'disk') and doubt.names is None
    assert 'cannot inspect' in doubt.message
    assert usage.doubts_about('A') == [doubt]


def test_failing_qemu_img_is_a_doubt(host, fake_bin):
    instances.install_fake_qemu_img(fake_bin,
                                    'echo "qemu-img: failed" >&2; exit 1')
    host.overlay(host.instance('inst') / 'disk', host.base('A'))

    usage = host.collect()

    assert usage.references == {}
    [doubt] = usage.doubts
    assert 'qemu-img: failed' in doubt.message


def test_hung_qemu_img_is_killed_and_a_doubt(host, fake_bin, tmp_path):
    pid_file = tmp_path / 'pid'
    instances.install_fake_qemu_img(
        fake_bin, 'echo $$ > %s; exec sleep 60' % pid_file)
    host.overlay(host.instance('inst') / 'disk', host.base('A'))
    host.inspector.timeout = 1

    usage = host.collect()

    [doubt] = usage.doubts
    assert 'did not finish within 1 s' in doubt.message
    assert not os.path.exists('/proc/%s' % pid_file.read_text().strip())


def test_vanished_disk_is_not_a_doubt(host, fake_bin):
    # qemu-img finds the disk deleted under it, as when an instance is
    # deleted during the pass.
    instances.install_fake_qemu_img(fake_bin, '''
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
    instances.install_fake_qemu_img(fake_bin, '''
        for last; do :; done
        case "$last" in */_base/Q) rm -f "$last"; exit 1;; esac
        exec %s "$@"
    ''' % qemu.QEMU_IMG)

    usage = host.collect()

    assert instances.sources(usage) == {
        'Q': [str(host.instances / 'inst' / 'disk')]}
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

    assert instances.sources(usage) == {'A': [str(inst / 'disk')]}


def test_chain_loop_and_too_long_chain_are_doubts(host, tmp_path):
    loop = host.instance('loop')
    host.overlay(loop / 'disk', 'other.qcow2', 'qcow2', unsafe=True)
    host.overlay(loop / 'other.qcow2', 'disk', 'qcow2', unsafe=True)
    deep = host.instance('deep')
    chain = tmp_path / 'chain'
    chain.mkdir()
    previous = host.base('A')
    fmt = 'raw'
    for i in range(chains.MAX_CHAIN_LENGTH):
        previous = host.overlay(chain / str(i), previous, fmt)
        fmt = 'qcow2'
    host.overlay(deep / 'disk', previous, 'qcow2')

    usage = host.collect()

    messages = {d.source: d.message for d in usage.doubts}
    assert messages == {
        str(loop / 'disk'): 'backing chain loops at %s' % (loop / 'disk'),
        str(deep / 'disk'): 'backing chain longer than %d files' % (
            chains.MAX_CHAIN_LENGTH),
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
