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

"""The inventory on real instance directories, with real qemu-img.

Which directories are instance directories, what a pass cannot read, and
rechecks: directories nova makes, renames and deletes while a pass runs.
"""

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

from cachekeeper.cache import evidence
from cachekeeper.cache import inspect
from cachekeeper.cache import inventory
from tests.lib import instances
from tests.lib import qemu


def test_cache_directory_is_a_symlink(tmp_path):
    real_cache = tmp_path / 'storage' / 'cache'
    real_cache.mkdir(parents=True)
    instances_path = tmp_path / 'instances'
    instances_path.mkdir()
    os.symlink(real_cache, instances_path / '_base')
    qemu.qemu_img('create', '-q', '-f', 'raw', real_cache / 'A', '1M')
    qemu.qemu_img('create', '-q', '-f', 'raw', real_cache / 'B', '1M')
    (instances_path / 'inst').mkdir()
    instances.Host.overlay(instances_path / 'inst' / 'disk',
                           instances_path / '_base' / 'A')
    instances.Host.overlay(instances_path / 'inst' / 'disk.local',
                           real_cache / 'B')
    inv = inventory.Inventory(str(instances_path),
                              str(instances_path / '_base'),
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
    quarantine = host.instance_over('_quarantine', 'A')
    host.overlay(host.instances / 'locks' / 'disk', host.cache / 'A')
    os.symlink(host.root / 'nowhere', host.instances / 'dangling')
    (host.instances / 'compute_nodes').write_text('{}')
    inv = inventory.Inventory(str(host.instances), str(host.cache),
                              host.inspector, excluded=[str(quarantine)])

    usage = inv.collect(host.cache_names())

    expected = {base: [str(host.instances / d / 'disk')]
                for d, base in dirs.items()}
    expected['F'] = [str(host.instances / 'linked' / 'disk')]
    assert instances.sources(usage) == expected
    assert usage.doubts == []


def test_unreadable_paths_are_doubts(host, tmp_path):
    # root reads everything, so the inventory runs without the capabilities
    # that bypass file permissions.
    host.base('A')
    no_dir = host.instance_over('no-dir', 'A')
    no_disk_info = host.instance_over('no-disk-info', 'A')
    host.disk_info(no_disk_info, {'disk': 'qcow2'})
    no_disk = host.instance_over('no-disk', 'A')
    good = host.instance_over('good', 'A')
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


class ListingRace:
    """os.scandir that lets nova act once on a directory, right after its
    names are read and before the pass stats them.
    """

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
    inst = instances.instance_on_a(host)
    memory = evidence.Memory()
    instances.next_pass(host, memory)
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
    for check in (lambda: instances.next_pass(host, memory).references_to('A'),
                  lambda: host.inventory.recheck('A')[0]):
        race.actions[str(host.instances)] = rename
        assert [r.source for r in check()] == moved
        back()


def test_recheck_sees_new_directory_and_new_disk(host):
    host.base('A')
    host.base('B')
    host.base('C')
    inst = host.instance_over('inst', 'A')
    host.backdate()
    usage = host.collect()
    assert set(usage.references) == {'A'}

    new = host.instance_over('new-instance', 'B')
    host.overlay(inst / 'disk.eph0', host.cache / 'C')

    references, doubts = host.inventory.recheck('B')
    assert [r.source for r in references] == [str(new / 'disk')]
    assert doubts == []
    references, doubts = host.inventory.recheck('C')
    assert [r.source for r in references] == [str(inst / 'disk.eph0')]
    assert [r.source for r in host.inventory.recheck('A')[0]] == [
        str(inst / 'disk')]


def test_recheck_sees_deletions_and_new_doubts(host):
    host.base('A')
    gone = host.instance_over('gone', 'A')
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


def test_recheck_many_reads_once_for_all_names(host):
    for name in ('A', 'B', 'C'):
        host.base(name)
    inst = host.instance_over('inst', 'A')
    host.backdate()
    host.collect()
    new = host.instance_over('new', 'B')
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
