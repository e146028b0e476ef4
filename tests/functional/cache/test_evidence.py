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

"""What is carried from a pass (or a recheck) to the next, on real files.

Unchanged directories and disks are not read again, parsed metadata files
not parsed again; whatever changed, changed too recently to tell, or had
a doubt is read again.
"""

import os
import time

import pytest

from cachekeeper.cache import evidence
from tests.lib import instances
from tests.lib import nova
from tests.lib import qemu


def test_directory_with_unparseable_disk_info_is_read_again(host):
    host.base('A')
    inst = host.instance('inst')
    (inst / 'disk.info').write_text('not json')

    first = host.collect()
    host.overlay(inst / 'disk', host.cache / 'A')
    second = host.collect()

    assert [d.names for d in first.doubts] == [frozenset()]
    assert [d.names for d in second.doubts] == [{'A'}]
    assert instances.sources(second) == {'A': [str(inst / 'disk')]}


def test_recheck_costs_nothing_when_nothing_changed(host):
    host.base('A')
    host.base('B')
    inst = host.instance_over('inst', 'A')
    (inst / 'libvirt.xml').write_text(
        nova.libvirt_xml(nova.IMAGE_ID))
    host.backdate()
    host.collect()
    calls = host.inspector.qemu_img_calls

    references, doubts = host.inventory.recheck('A')
    assert [r.source for r in references] == [str(inst / 'disk')]
    assert doubts == []
    assert host.inventory.recheck('B') == ([], [])
    assert host.inspector.qemu_img_calls == calls


def test_recheck_builds_on_the_last_recheck(host):
    host.base('A')
    host.instance_over('inst', 'A')
    host.backdate()
    host.collect()
    host.instance_over('new', 'A')
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


def test_recheck_sees_libvirt_xml_rewritten_in_place(host):
    (host.cache / nova.IMAGE_SHA1).write_bytes(b'')
    inst = host.instance('inst')
    xml = inst / 'libvirt.xml'
    xml.write_text(nova.libvirt_xml(nova.IMAGE_ID, root_type='volume'))
    host.backdate()
    host.collect()

    with open(xml, 'r+') as f:
        f.write(nova.libvirt_xml(nova.IMAGE_ID))

    references, _doubts = host.inventory.recheck(nova.IMAGE_SHA1)
    assert [r.source for r in references] == [str(xml)]


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
    files = evidence.ParsedFiles(
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
    files = evidence.ParsedFiles()
    calls = []
    assert [parsed(files, path, calls) for _ in range(2)] == [b'ONE'] * 2
    assert calls == [b'one', b'one']


def test_next_pass_reads_only_what_changed(host):
    for name in ('A', 'B', 'C'):
        host.base(name)
    same = host.instance_over('same', 'A')
    rebased = host.instance_over('rebased', 'A')
    host.backdate()
    instances.backdate_disks(host)
    memory = evidence.Memory()
    instances.next_pass(host, memory)
    calls = host.inspector.qemu_img_calls

    assert instances.sources(instances.next_pass(host, memory)) == {
        'A': [str(rebased / 'disk'), str(same / 'disk')]}
    assert host.inspector.qemu_img_calls == calls

    # In place: the directory's times do not change, the disk's do.
    qemu.qemu_img('rebase', '-u', '-F', 'raw', '-b', host.cache / 'B',
                  rebased / 'disk')
    host.overlay(host.instance('new') / 'disk', host.cache / 'C')
    assert instances.sources(instances.next_pass(host, memory)) == {
        'A': [str(same / 'disk')], 'B': [str(rebased / 'disk')],
        'C': [str(host.instances / 'new' / 'disk')]}
    assert host.inspector.qemu_img_calls == calls + 2


def test_next_pass_expands_metadata_for_new_cache_files(host):
    (host.cache / nova.IMAGE_SHA1).write_bytes(b'')
    inst = host.instance('inst')
    (inst / 'libvirt.xml').write_text(
        nova.libvirt_xml(nova.IMAGE_ID))
    host.backdate()
    memory = evidence.Memory()
    assert set(instances.next_pass(host, memory).references) == {
        nova.IMAGE_SHA1}

    (host.cache / (nova.IMAGE_SHA1 + '_10737418240')).write_bytes(b'')
    assert set(instances.next_pass(host, memory).references) == {
        nova.IMAGE_SHA1, nova.IMAGE_SHA1 + '_10737418240'}


def test_next_pass_reads_again_what_had_doubts(host, fake_bin, tmp_path):
    failing = tmp_path / 'failing'
    failing.write_text('')
    instances.install_fake_qemu_img(fake_bin, """
        [ -e %s ] && exit 1
        exec %s "$@"
    """ % (failing, qemu.QEMU_IMG))
    inst = instances.instance_on_a(host)
    memory = evidence.Memory()
    first = instances.next_pass(host, memory)
    assert [d.source for d in first.doubts] == [str(inst / 'disk')]

    failing.unlink()
    second = instances.next_pass(host, memory)
    assert second.doubts == []
    assert instances.sources(second) == {'A': [str(inst / 'disk')]}


def test_next_pass_reads_again_a_chain_whose_backing_is_missing(
        host, tmp_path):
    # nova re-roots a missing backing file into the cache by its name.
    inst = host.instance('inst')
    host.overlay(inst / 'disk', tmp_path / 'gone' / 'B', unsafe=True)
    host.backdate()
    instances.backdate_disks(host)
    memory = evidence.Memory()
    assert instances.next_pass(host, memory).references == {}

    (host.cache / 'B').write_bytes(b'')
    assert instances.sources(instances.next_pass(host, memory)) == {
        'B': [str(inst / 'disk')]}
