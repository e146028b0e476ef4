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
import unittest
from xml.etree import ElementTree

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


class TestDemoHost(unittest.TestCase):
    """One demo host, built once, inspected from every side."""

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix='cachekeeper-test-demo-')
        cls.addClassCleanup(shutil.rmtree, cls.workdir)
        cls.root = os.path.join(cls.workdir, 'demo')
        started = time.monotonic()
        cls.result = manage(cls.workdir, 'demo', 'create', cls.root)
        cls.seconds = time.monotonic() - started
        cls.instances_path = os.path.join(cls.root, 'instances')
        cls.cache_dir = os.path.join(cls.instances_path, '_base')
        cls.config_file = os.path.join(cls.root, 'cachekeeper.conf')

    def setUp(self):
        self.assertEqual(0, self.result.returncode, self.result.stderr)

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

    def test_cache_holds_every_kind(self):
        self.assertEqual({facts.ORIGINAL: 6, facts.RESIZED: 2,
                          facts.LEGACY_SM: 1, facts.SWAP: 2,
                          facts.EPHEMERAL: 2, facts.RESIDUE: 1,
                          facts.FOREIGN: 1},
                         dict(self.cache_kinds()))
        names = os.listdir(self.cache_dir)
        # Names nova gives: swap in MiB, ephemeral in GiB plus md5 of the
        # file system (vfat and ext4).
        for name in ('swap_512', 'swap_1024', 'ephemeral_1_0706d66',
                     'ephemeral_2_40d1d2c'):
            self.assertIn(name, names)
        links = [name for name in names
                 if os.path.islink(os.path.join(self.cache_dir, name))]
        self.assertEqual(1, len(links))
        self.assertTrue(
            os.path.isfile(os.path.join(self.cache_dir, links[0])))

    def test_every_overlay_backs_onto_the_cache(self):
        overlays = self.overlays()
        names = [os.path.basename(path) for path, _ in overlays]
        self.assertEqual({'disk', 'disk.swap', 'disk.local'}, set(names))
        self.assertGreaterEqual(names.count('disk'), 5)
        for path, info in overlays:
            backing = info['backing-filename']
            # Absolute, as nova writes it, and a regular file in _base.
            self.assertEqual(os.path.join(self.cache_dir,
                                          os.path.basename(backing)),
                             backing, path)
            self.assertTrue(stat.S_ISREG(os.lstat(backing).st_mode), path)
            self.assertEqual('raw', info['backing-filename-format'])

    def test_disk_info_names_every_disk_with_its_format(self):
        dirs = instance_dirs(self.instances_path)
        self.assertEqual(6, len(dirs))
        resize_dirs = [d for d in dirs if d.endswith('_resize')]
        self.assertEqual(1, len(resize_dirs))
        for directory in dirs:
            with open(os.path.join(directory, 'disk.info')) as f:
                lines = f.read().splitlines()
            self.assertEqual(1, len(lines), directory)
            formats = json.loads(lines[0])
            # nova renames the resize source directory and leaves its
            # disk.info naming the disks of <uuid>/.
            named_dir = directory.rsplit('_resize', 1)[0]
            disks = disk_files(directory)
            self.assertEqual(
                {os.path.join(named_dir, os.path.basename(disk))
                 for disk in disks}, set(formats), directory)
            for disk in disks:
                named = os.path.join(named_dir, os.path.basename(disk))
                self.assertEqual(qemu_img_info(disk)['format'],
                                 formats[named], disk)

    def test_ages_are_mixed_and_some_old_files_are_in_use(self):
        now = time.time()
        ages = {entry.name: now - entry.stat(follow_symlinks=False).st_mtime
                for entry in os.scandir(self.cache_dir)
                if not entry.is_symlink()}
        self.assertTrue(any(age > DAY for age in ages.values()), ages)
        self.assertTrue(any(HOUR < age < DAY for age in ages.values()), ages)
        self.assertTrue(any(age < HOUR for age in ages.values()), ages)
        in_use = {os.path.basename(info['backing-filename'])
                  for _, info in self.overlays()}
        self.assertTrue(any(ages[name] > DAY for name in in_use))
        self.assertTrue(any(age > DAY for name, age in ages.items()
                            if name not in in_use))
        self.assertTrue(any(HOUR < ages[name] < DAY for name in in_use))

    def test_flat_instance_names_its_image_in_libvirt_xml(self):
        xml_files = [os.path.join(d, 'libvirt.xml')
                     for d in instance_dirs(self.instances_path)
                     if os.path.exists(os.path.join(d, 'libvirt.xml'))]
        self.assertEqual(1, len(xml_files))
        domain = ElementTree.parse(xml_files[0]).getroot()
        root = domain.find('metadata/nova:instance/nova:root', NOVA_NS)
        self.assertEqual('image', root.get('type'))
        image_file = hashlib.sha1(root.get('uuid').encode()).hexdigest()
        self.assertTrue(
            os.path.isfile(os.path.join(self.cache_dir, image_file)))
        flavor = domain.find('metadata/nova:instance/nova:flavor', NOVA_NS)
        for tag in ('swap', 'ephemeral'):
            self.assertIsNotNone(flavor.find('nova:' + tag, NOVA_NS))
        source = domain.find('devices/disk/source').get('file')
        self.assertEqual(os.path.join(os.path.dirname(xml_files[0]), 'disk'),
                         source)
        info = qemu_img_info(source, 'raw')
        self.assertNotIn('backing-filename', info)

    def test_locks_and_state_directories(self):
        self.assertTrue(
            os.path.isdir(os.path.join(self.instances_path, 'locks')))
        state = os.stat(os.path.join(self.root, 'state'))
        self.assertEqual(0o700, stat.S_IMODE(state.st_mode))

    def test_config_is_valid_and_points_at_the_demo(self):
        check = subprocess.run(
            [MANAGE, '--config-file', self.config_file, 'config', 'check'],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(0, check.returncode, check.stderr)
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(self.config_file)
        self.assertEqual(self.instances_path,
                         parser['DEFAULT']['instances_path'])
        self.assertEqual(os.path.join(self.root, 'state'),
                         parser['DEFAULT']['state_path'])
        self.assertLessEqual(int(parser['image_cache']['manager_interval']),
                             10)

    def test_small_fast_and_tells_what_to_run(self):
        allocated = sum(os.lstat(os.path.join(top, name)).st_blocks * 512
                        for top, dirs, files in os.walk(self.root)
                        for name in files)
        self.assertLess(allocated, 5 * 1024 * 1024)
        self.assertLess(self.seconds, 10)
        self.assertIn('cachekeeper --config-file %s' % self.config_file,
                      self.result.stdout)
        self.assertTrue(os.path.isfile(os.path.join(self.root,
                                                    '.cachekeeper-demo')))


class TestDemoTarget(unittest.TestCase):
    """Where demo create agrees to build, and where it refuses."""

    def setUp(self):
        super().setUp()
        self.workdir = tempfile.mkdtemp(prefix='cachekeeper-test-demo-')
        self.addCleanup(shutil.rmtree, self.workdir)
        self.target = os.path.join(self.workdir, 'target')

    def test_rebuild_replaces_the_previous_demo(self):
        os.mkdir(self.target)
        first = manage(self.workdir, 'demo', 'create', self.target)
        self.assertEqual(0, first.returncode, first.stderr)
        cache_dir = os.path.join(self.target, 'instances', '_base')
        stray = os.path.join(cache_dir, 'stray')
        with open(stray, 'w'):
            pass
        os.unlink(os.path.join(cache_dir, 'swap_512'))
        with open(os.path.join(self.target, 'state', 'last_pass.json'),
                  'w'):
            pass

        second = manage(self.workdir, 'demo', 'create', self.target)

        self.assertEqual(0, second.returncode, second.stderr)
        self.assertIn('Rebuilt', second.stdout)
        self.assertFalse(os.path.lexists(stray))
        self.assertTrue(os.path.isfile(os.path.join(cache_dir, 'swap_512')))
        self.assertEqual([], os.listdir(os.path.join(self.target, 'state')))

    def test_refuses_a_directory_it_did_not_make(self):
        os.mkdir(self.target)
        precious = os.path.join(self.target, 'precious')
        with open(precious, 'w') as f:
            f.write('keep me')

        result = manage(self.workdir, 'demo', 'create', self.target)

        self.assertEqual(2, result.returncode)
        self.assertEqual(1, len(result.stderr.splitlines()), result.stderr)
        self.assertIn(self.target, result.stderr)
        self.assertEqual(['precious'], os.listdir(self.target))

    def test_refuses_a_file(self):
        with open(self.target, 'w'):
            pass

        result = manage(self.workdir, 'demo', 'create', self.target)

        self.assertEqual(2, result.returncode)
        self.assertIn('not a directory', result.stderr)

    def test_without_qemu_img_says_what_to_install(self):
        empty_bin = os.path.join(self.workdir, 'bin')
        os.mkdir(empty_bin)

        result = manage(self.workdir, 'demo', 'create', self.target,
                        env=dict(os.environ, PATH=empty_bin))

        self.assertEqual(1, result.returncode)
        self.assertEqual(1, len(result.stderr.splitlines()), result.stderr)
        self.assertIn('qemu-utils', result.stderr)
        self.assertFalse(os.path.lexists(self.target))
