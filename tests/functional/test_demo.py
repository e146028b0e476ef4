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

"""cachekeeper-manage demo create, run as a newcomer runs it."""

import collections
import configparser
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from xml.etree import ElementTree

import pytest

from cachekeeper.cache import facts
from cachekeeper.cache import scan

MANAGE = os.path.join(os.path.dirname(sys.executable), 'cachekeeper-manage')
NOVA_NS = {'nova': 'http://openstack.org/xmlns/libvirt/nova/1.1'}
HOUR = 3600
DAY = 24 * HOUR


def manage(state_dir, *argv, env=None):
    """Run cachekeeper-manage with a configuration of its own.

    cachekeeper-manage checks its configuration before any command, and the
    default state_path need not exist on a test machine.
    """
    bootstrap = os.path.join(state_dir, 'bootstrap.conf')
    with open(bootstrap, 'w') as f:
        f.write('[DEFAULT]\nstate_path = %s\n' % state_dir)
    return subprocess.run([MANAGE, '--config-file', bootstrap, *argv],
                          capture_output=True, text=True, env=env,
                          timeout=60)


def qemu_img_info(path, fmt=None):
    command = ['qemu-img', 'info', '--output=json', '-U']
    if fmt:
        command += ['-f', fmt]
    result = subprocess.run(command + [path], capture_output=True,
                            text=True, check=True, timeout=30)
    return json.loads(result.stdout)


def instance_dirs(instances_path):
    return sorted(entry.path for entry in os.scandir(instances_path)
                  if entry.is_dir() and entry.name not in ('_base', 'locks'))


def disk_files(directory):
    return sorted(os.path.join(directory, name)
                  for name in os.listdir(directory)
                  if name.startswith('disk') and name != 'disk.info')


class DemoHost:
    """One demo host, built once, inspected from every side."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.root = os.path.join(self.workdir, 'demo')
        started = time.monotonic()
        self.result = manage(self.workdir, 'demo', 'create', self.root)
        self.seconds = time.monotonic() - started
        self.instances_path = os.path.join(self.root, 'instances')
        self.cache_dir = os.path.join(self.instances_path, '_base')
        self.config_file = os.path.join(self.root, 'cachekeeper.conf')

    def cache_kinds(self):
        kinds = collections.Counter()
        for entry in os.scandir(self.cache_dir):
            st = entry.stat(follow_symlinks=False)
            kinds[scan.classify(entry.name, st.st_mode)] += 1
        return kinds

    def overlays(self):
        """(disk path, qemu-img info) of every qcow2 disk of every dir."""
        found = []
        for directory in instance_dirs(self.instances_path):
            for path in disk_files(directory):
                info = qemu_img_info(path)
                if info['format'] == 'qcow2':
                    found.append((path, info))
        return found


@pytest.fixture(scope='module')
def built_demo():
    workdir = tempfile.mkdtemp(prefix='cachekeeper-test-demo-')
    yield DemoHost(workdir)
    shutil.rmtree(workdir)


@pytest.fixture
def demo(built_demo):
    """The demo host of this module, which demo create built."""
    assert built_demo.result.returncode == 0, built_demo.result.stderr
    return built_demo


def test_cache_holds_every_kind(demo):
    assert dict(demo.cache_kinds()) == {facts.ORIGINAL: 6, facts.RESIZED: 2,
                                        facts.LEGACY_SM: 1, facts.SWAP: 2,
                                        facts.EPHEMERAL: 2, facts.RESIDUE: 1,
                                        facts.FOREIGN: 1}
    names = os.listdir(demo.cache_dir)
    # Names nova gives: swap in MiB, ephemeral in GiB plus md5 of the
    # file system (vfat and ext4).
    for name in ('swap_512', 'swap_1024', 'ephemeral_1_0706d66',
                 'ephemeral_2_40d1d2c'):
        assert name in names
    links = [name for name in names
             if os.path.islink(os.path.join(demo.cache_dir, name))]
    assert len(links) == 1
    assert os.path.isfile(os.path.join(demo.cache_dir, links[0]))


def test_every_overlay_backs_onto_the_cache(demo):
    overlays = demo.overlays()
    names = [os.path.basename(path) for path, _ in overlays]
    assert set(names) == {'disk', 'disk.swap', 'disk.local'}
    assert names.count('disk') >= 5
    for path, info in overlays:
        backing = info['backing-filename']
        # Absolute, as nova writes it, and a regular file in _base.
        assert os.path.join(demo.cache_dir,
                            os.path.basename(backing)) == backing, path
        assert stat.S_ISREG(os.lstat(backing).st_mode), path
        assert info['backing-filename-format'] == 'raw'


def test_disk_info_names_every_disk_with_its_format(demo):
    dirs = instance_dirs(demo.instances_path)
    assert len(dirs) == 6
    resize_dirs = [d for d in dirs if d.endswith('_resize')]
    assert len(resize_dirs) == 1
    for directory in dirs:
        with open(os.path.join(directory, 'disk.info')) as f:
            lines = f.read().splitlines()
        assert len(lines) == 1, directory
        formats = json.loads(lines[0])
        # nova renames the resize source directory and leaves its
        # disk.info naming the disks of <uuid>/.
        named_dir = directory.rsplit('_resize', 1)[0]
        disks = disk_files(directory)
        assert {os.path.join(named_dir, os.path.basename(disk))
                for disk in disks} == set(formats), directory
        for disk in disks:
            named = os.path.join(named_dir, os.path.basename(disk))
            assert qemu_img_info(disk)['format'] == formats[named], disk


def test_ages_are_mixed_and_some_old_files_are_in_use(demo):
    now = time.time()
    ages = {entry.name: now - entry.stat(follow_symlinks=False).st_mtime
            for entry in os.scandir(demo.cache_dir)
            if not entry.is_symlink()}
    assert any(age > DAY for age in ages.values()), ages
    assert any(HOUR < age < DAY for age in ages.values()), ages
    assert any(age < HOUR for age in ages.values()), ages
    in_use = {os.path.basename(info['backing-filename'])
              for _, info in demo.overlays()}
    assert any(ages[name] > DAY for name in in_use)
    assert any(age > DAY for name, age in ages.items()
               if name not in in_use)
    assert any(HOUR < ages[name] < DAY for name in in_use)


def test_flat_instance_names_its_image_in_libvirt_xml(demo):
    xml_files = [os.path.join(d, 'libvirt.xml')
                 for d in instance_dirs(demo.instances_path)
                 if os.path.exists(os.path.join(d, 'libvirt.xml'))]
    assert len(xml_files) == 1
    domain = ElementTree.parse(xml_files[0]).getroot()
    root = domain.find('metadata/nova:instance/nova:root', NOVA_NS)
    assert root.get('type') == 'image'
    image_file = hashlib.sha1(root.get('uuid').encode()).hexdigest()
    assert os.path.isfile(os.path.join(demo.cache_dir, image_file))
    flavor = domain.find('metadata/nova:instance/nova:flavor', NOVA_NS)
    for tag in ('swap', 'ephemeral'):
        assert flavor.find('nova:' + tag, NOVA_NS) is not None
    source = domain.find('devices/disk/source').get('file')
    assert os.path.join(os.path.dirname(xml_files[0]), 'disk') == source
    info = qemu_img_info(source, 'raw')
    assert 'backing-filename' not in info


def test_locks_and_state_directories(demo):
    assert os.path.isdir(os.path.join(demo.instances_path, 'locks'))
    state = os.stat(os.path.join(demo.root, 'state'))
    assert 0o700 == stat.S_IMODE(state.st_mode)


def test_config_is_valid_and_points_at_the_demo(demo):
    check = subprocess.run(
        [MANAGE, '--config-file', demo.config_file, 'config', 'check'],
        capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(demo.config_file)
    assert demo.instances_path == parser['DEFAULT']['instances_path']
    assert os.path.join(demo.root, 'state') == parser['DEFAULT']['state_path']
    assert int(parser['image_cache']['manager_interval']) <= 10


def test_small_fast_and_tells_what_to_run(demo):
    allocated = sum(os.lstat(os.path.join(top, name)).st_blocks * 512
                    for top, dirs, files in os.walk(demo.root)
                    for name in files)
    assert allocated < 5 * 1024 * 1024
    assert demo.seconds < 10
    assert 'cachekeeper --config-file %s' % demo.config_file in (
        demo.result.stdout)
    assert os.path.isfile(os.path.join(demo.root,
                                       '.cachekeeper-demo'))


class DemoTarget:
    """Where demo create agrees to build, and where it refuses."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.target = os.path.join(self.workdir, 'target')


@pytest.fixture
def demo_target():
    workdir = tempfile.mkdtemp(prefix='cachekeeper-test-demo-')
    yield DemoTarget(workdir)
    shutil.rmtree(workdir)


def test_rebuild_replaces_the_previous_demo(demo_target):
    os.mkdir(demo_target.target)
    first = manage(demo_target.workdir, 'demo', 'create', demo_target.target)
    assert first.returncode == 0, first.stderr
    cache_dir = os.path.join(demo_target.target, 'instances', '_base')
    stray = os.path.join(cache_dir, 'stray')
    with open(stray, 'w'):
        pass
    os.unlink(os.path.join(cache_dir, 'swap_512'))
    with open(os.path.join(demo_target.target, 'state', 'last_pass.json'),
              'w'):
        pass

    second = manage(demo_target.workdir, 'demo', 'create', demo_target.target)

    assert second.returncode == 0, second.stderr
    assert 'Rebuilt' in second.stdout
    assert not os.path.lexists(stray)
    assert os.path.isfile(os.path.join(cache_dir, 'swap_512'))
    assert os.listdir(os.path.join(demo_target.target, 'state')) == []


def test_refuses_a_directory_it_did_not_make(demo_target):
    os.mkdir(demo_target.target)
    precious = os.path.join(demo_target.target, 'precious')
    with open(precious, 'w') as f:
        f.write('keep me')

    result = manage(demo_target.workdir, 'demo', 'create', demo_target.target)

    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert demo_target.target in result.stderr
    assert os.listdir(demo_target.target) == ['precious']


def test_refuses_a_file(demo_target):
    with open(demo_target.target, 'w'):
        pass

    result = manage(demo_target.workdir, 'demo', 'create', demo_target.target)

    assert result.returncode == 2
    assert 'not a directory' in result.stderr


def test_without_qemu_img_says_what_to_install(demo_target):
    empty_bin = os.path.join(demo_target.workdir, 'bin')
    os.mkdir(empty_bin)

    result = manage(demo_target.workdir, 'demo', 'create', demo_target.target,
                    env=dict(os.environ, PATH=empty_bin))

    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert 'qemu-utils' in result.stderr
    assert not os.path.lexists(demo_target.target)
