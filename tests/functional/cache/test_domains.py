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

"""libvirt domains as evidence, with libvirt's test driver and real images.

``test:///default`` keeps its domains per process, shared by every
connection the process opens: the tests define domains on it and the code
under test opens its own read-only connection to the same URI. A
cachekeeper-manage subprocess reads a node XML file (``test:///PATH``)
instead.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import unittest
from unittest import mock
import uuid
from xml.sax import saxutils

import fixtures
import libvirt

from cachekeeper.cache import domains
from cachekeeper.cache import facts
from cachekeeper.cache import inspect
from cachekeeper.cache import inventory
from tests.functional.cache import test_qemu_locks

TEST_URI = 'test:///default'
MANAGE = os.path.join(os.path.dirname(sys.executable), 'cachekeeper-manage')
DAY = 86400

IMAGE_ID = '155d900f-4e14-4e4c-a73d-069cbf4541e6'
ROOT_IMAGE = hashlib.sha1(IMAGE_ID.encode('utf-8')).hexdigest()
BASE = 'a9993e364706816aba3e25717850c26c9cd0d89d'
OTHER = 'f' * 40

DOMAIN_XML = '''<domain type='test'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory>1024</memory>
  <os><type>hvm</type></os>
  {metadata}
  <devices>
    {disks}
  </devices>
</domain>
'''

FILE_DISK = '''<disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}'/>
      <source file={path}/>
      <target dev='{target}' bus='virtio'/>
    </disk>'''

NOVA_METADATA = '''<metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:root type="image" uuid="{image_id}"/>
    </nova:instance>
  </metadata>'''


_LIST_UNDER_EVENTLET = '''
import sys
import eventlet
eventlet.monkey_patch()
from cachekeeper.cache import domains
try:
    domains.LibvirtSource(sys.argv[1], timeout=0.5).domains()
except domains.DomainsUnavailable as e:
    print(e)
'''


def domain_xml(name, disks=(), image_id=None, domain_uuid=None):
    """A domain with ``disks``, each (path, format), as vda, vdb, ..."""
    return DOMAIN_XML.format(
        name=name, uuid=domain_uuid or uuid.uuid4(),
        metadata=(NOVA_METADATA.format(image_id=image_id) if image_id
                  else ''),
        disks='\n    '.join(
            FILE_DISK.format(fmt=fmt, path=saxutils.quoteattr(path),
                             target='vd' + chr(ord('a') + index))
            for index, (path, fmt) in enumerate(disks)))


class TestDriver(fixtures.Fixture):
    """Defines domains on this process's test:///default; undefines them."""

    def _setUp(self):
        self.connection = libvirt.open(TEST_URI)
        self.addCleanup(self.connection.close)

    def define(self, xml, start=False):
        domain = self.connection.defineXML(xml)
        self.addCleanup(self.undefine, domain)
        if start:
            domain.create()
        return domain

    @staticmethod
    def undefine(domain):
        try:
            if domain.isActive():
                domain.destroy()
            domain.undefine()
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise


class DomainsTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path
        self.instances_path = os.path.join(self.root, 'instances')
        self.cache_dir = os.path.join(self.instances_path, '_base')
        self.volumes = os.path.join(self.root, 'volumes')
        os.makedirs(self.cache_dir)
        os.makedirs(self.volumes)
        self.driver = self.useFixture(TestDriver())
        self.inventory = inventory.Inventory(
            self.instances_path, self.cache_dir, inspect.Inspector(),
            domain_source=domains.LibvirtSource(TEST_URI))
        self.name = 'cachekeeper-%s' % uuid.uuid4().hex[:12]

    def base(self, name):
        path = os.path.join(self.cache_dir, name)
        with open(path, 'wb') as f:
            f.truncate(1024 * 1024)
        return path

    def overlay(self, name, backing):
        path = os.path.join(self.volumes, name)
        test_qemu_locks.qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw',
                                 '-b', backing, path)
        return path

    def collect(self):
        return self.inventory.collect(os.listdir(self.cache_dir))

    def reasons(self, usage):
        return {name: sorted(r.reason for r in references)
                for name, references in usage.references.items()}

    def test_disks_of_a_defined_domain_protect_their_chains(self):
        disk = self.overlay('disk', self.base(BASE))
        self.base(OTHER)
        self.driver.define(domain_xml(self.name, [(disk, 'qcow2')]))
        usage = self.collect()
        self.assertEqual(
            {BASE: ['backing chain of %s (disk vda of libvirt domain %s)'
                    % (disk, self.name)]},
            self.reasons(usage))
        self.assertEqual((disk, os.path.join(self.cache_dir, BASE)),
                         usage.references_to(BASE)[0].chain)
        self.assertEqual([], usage.doubts)

    def test_an_undefined_domain_no_longer_protects(self):
        disk = self.overlay('disk', self.base(BASE))
        domain = self.driver.define(domain_xml(self.name, [(disk, 'qcow2')]))
        self.assertIn(BASE, self.collect().references)
        domain.undefine()
        self.assertEqual({}, self.collect().references)

    def test_a_running_domain_protects_its_chain(self):
        disk = self.overlay('disk', self.base(BASE))
        self.driver.define(domain_xml(self.name, [(disk, 'qcow2')]),
                           start=True)
        self.assertIn(BASE, self.collect().references)

    def test_the_whole_chain_is_followed(self):
        middle = os.path.join(self.cache_dir, OTHER)
        test_qemu_locks.qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw',
                                 '-b', self.base(BASE), middle)
        disk = os.path.join(self.volumes, 'disk')
        test_qemu_locks.qemu_img('create', '-q', '-f', 'qcow2', '-F',
                                 'qcow2', '-b', middle, disk)
        self.driver.define(domain_xml(self.name, [(disk, 'qcow2')]))
        usage = self.collect()
        self.assertEqual({BASE, OTHER}, set(usage.references))
        self.assertEqual(
            (disk, middle, os.path.join(self.cache_dir, BASE)),
            usage.references_to(BASE)[0].chain)

    def test_a_cache_file_used_as_a_disk_is_in_use_even_when_missing(self):
        raw = self.base(BASE)
        missing = os.path.join(self.cache_dir, OTHER)
        self.driver.define(domain_xml(self.name, [(raw, 'raw'),
                                                  (missing, 'raw')]))
        self.assertEqual(
            {BASE: ['disk vda of libvirt domain %s' % self.name],
             OTHER: ['disk vdb of libvirt domain %s' % self.name]},
            self.reasons(self.collect()))

    def test_a_disk_reached_through_a_symlink_is_compared_by_real_path(self):
        link = os.path.join(self.volumes, 'image')
        os.symlink(self.base(BASE), link)
        self.driver.define(domain_xml(self.name, [(link, 'raw')]))
        self.assertEqual([BASE], list(self.collect().references))

    def test_nova_metadata_protects_the_root_image(self):
        self.base(ROOT_IMAGE)
        self.base(ROOT_IMAGE + '_20')
        self.base(OTHER)
        self.driver.define(domain_xml(self.name, image_id=IMAGE_ID))
        reason = 'root image %s in libvirt domain %s' % (IMAGE_ID, self.name)
        self.assertEqual({ROOT_IMAGE: [reason], ROOT_IMAGE + '_20': [reason]},
                         self.reasons(self.collect()))

    def test_a_domain_defined_after_collect_is_found_by_recheck(self):
        disk = self.overlay('disk', self.base(BASE))
        self.assertEqual({}, self.collect().references)
        self.driver.define(domain_xml(self.name, [(disk, 'qcow2')]))
        references, doubts = self.inventory.recheck(BASE)
        self.assertEqual([disk], [r.source for r in references])
        self.assertEqual([], doubts)

    def test_an_unreadable_disk_is_a_doubt_about_its_chain(self):
        disk = os.path.join(self.volumes, 'disk')
        with open(disk, 'wb') as f:
            f.write(b'QFI\xfb' + b'\0' * 60)
        self.driver.define(domain_xml(self.name, [(disk, 'qcow2')]))
        usage = self.collect()
        self.assertEqual([disk], [d.source for d in usage.doubts])
        self.assertIsNone(usage.doubts[0].names)

    def test_a_storage_pool_volume_is_a_doubt(self):
        xml = domain_xml(self.name).replace(
            '<devices>',
            "<devices><disk type='volume' device='disk'>"
            "<driver name='qemu' type='qcow2'/>"
            "<source pool='default' volume='vm.qcow2'/>"
            "<target dev='vdb' bus='virtio'/></disk>")
        self.driver.define(xml)
        self.assertEqual(
            [('libvirt domain %s' % self.name,
              'disk vdb is the storage pool volume default/vm.qcow2', None)],
            [(d.source, d.message, d.names) for d in self.collect().doubts])

    def test_unreachable_libvirt_fails_closed(self):
        uri = 'qemu+unix:///system?socket=%s' % os.path.join(self.root,
                                                             'nothing')
        self.inventory.domain_source = domains.LibvirtSource(uri)
        self.base(BASE)
        usage = self.collect()
        self.assertEqual(1, len(usage.doubts))
        doubt = usage.doubts[0]
        self.assertEqual(('libvirt %s' % uri, None),
                         (doubt.source, doubt.names))
        self.assertIn('Failed to connect socket', doubt.message)
        self.assertEqual([doubt], usage.doubts_about(BASE))

    def test_a_libvirt_that_does_not_answer_fails_closed_in_time(self):
        path = os.path.join(self.root, 'silent.sock')
        silent = socket.socket(socket.AF_UNIX)
        silent.bind(path)
        # Connections queue up and are never answered; closing the socket
        # ends the call left waiting.
        silent.listen(8)
        self.addCleanup(silent.close)
        uri = 'qemu+unix:///system?socket=%s' % path
        started = time.monotonic()
        with self.assertRaises(domains.DomainsUnavailable) as raised:
            domains.LibvirtSource(uri, timeout=0.5).domains()
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual('no answer within 0.5 s', raised.exception.message)

    def test_the_timeout_holds_under_eventlet(self):
        # The daemon's default backend: green threads cannot give up on a
        # call that blocks in C.
        path = os.path.join(self.root, 'silent.sock')
        silent = socket.socket(socket.AF_UNIX)
        silent.bind(path)
        silent.listen(8)
        self.addCleanup(silent.close)
        process = subprocess.run(
            [sys.executable, '-W', 'ignore', '-c', _LIST_UNDER_EVENTLET,
             'qemu+unix:///system?socket=%s' % path],
            capture_output=True, text=True, timeout=30)
        self.assertEqual(0, process.returncode, process.stderr)
        self.assertTrue(process.stdout.endswith(': no answer within 0.5 s\n'),
                        process.stdout)

    def test_without_the_libvirt_module_the_pass_fails_closed(self):
        # An import of a module mapped to None fails, as if it were not
        # installed.
        with mock.patch.dict(sys.modules, libvirt=None):
            with self.assertRaises(domains.DomainsUnavailable) as raised:
                domains.LibvirtSource(TEST_URI).domains()
        self.assertIn('libvirt-python', raised.exception.message)

    def test_both_definitions_of_a_running_domain_count(self):
        live = self.overlay('live', self.base(BASE))
        next_boot = self.overlay('next', self.base(OTHER))
        domain_uuid = str(uuid.uuid4())
        self.driver.define(domain_xml(self.name, [(live, 'qcow2')],
                                      domain_uuid=domain_uuid), start=True)
        # A new persistent definition takes effect at the next start.
        self.driver.connection.defineXML(domain_xml(
            self.name, [(next_boot, 'qcow2')], domain_uuid=domain_uuid))
        self.assertEqual({BASE, OTHER}, set(self.collect().references))


class OrphansTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path
        self.driver = self.useFixture(TestDriver())

    def directory(self, name):
        path = os.path.join(self.root, name)
        os.mkdir(path)
        return path

    def test_directories_and_domains_that_do_not_match(self):
        by_uuid = str(uuid.uuid4())
        used = self.directory(by_uuid)
        resizing = self.directory(by_uuid + '_resize')
        holding = self.directory('legacy-name')
        disk = os.path.join(holding, 'disk')
        open(disk, 'wb').close()
        orphan = self.directory(str(uuid.uuid4()))
        deleted = self.directory(str(uuid.uuid4()) + '_del')
        missing = os.path.join(self.root, 'gone', 'disk')
        self.driver.define(domain_xml('cachekeeper-a', domain_uuid=by_uuid))
        self.driver.define(domain_xml('cachekeeper-b', [(disk, 'raw'),
                                                        (missing, 'raw')]))
        # Leave out the test driver's own domain.
        defined = [domain for domain in
                   domains.LibvirtSource(TEST_URI).domains()
                   if domain.name.startswith('cachekeeper-')]
        found = domains.orphans(
            [used, resizing, holding, orphan, deleted], defined)
        self.assertEqual((orphan, deleted), found.directories)
        self.assertEqual(
            (domains.MissingDisk(domain='cachekeeper-b', role='disk vdb',
                                 path=missing),),
            found.missing_disks)


class PassTestCase(fixtures.TestWithFixtures, unittest.TestCase):
    """cachekeeper-manage cache pass with [inventory] libvirt_uri set."""

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        self.instances_path = os.path.join(root, 'instances')
        self.cache_dir = os.path.join(self.instances_path, '_base')
        state_path = os.path.join(root, 'state')
        os.makedirs(self.cache_dir)
        os.makedirs(state_path, mode=0o700)
        self.node_xml = os.path.join(root, 'node.xml')
        self.config_file = os.path.join(root, 'cachekeeper.conf')
        with open(self.config_file, 'w') as f:
            f.write('[DEFAULT]\ninstances_path = %s\nstate_path = %s\n'
                    'host = compute-test\n[inventory]\n'
                    'libvirt_uri = test://%s\n'
                    % (self.instances_path, state_path, self.node_xml))
        self.base = os.path.join(self.cache_dir, BASE)
        self.disk = os.path.join(root, 'volumes', 'disk')
        os.makedirs(os.path.dirname(self.disk))
        test_qemu_locks.make_chain(self.base, self.disk)
        self.age_base()

    def age_base(self):
        when = time.time() - 2 * DAY
        os.utime(self.base, (when, when))

    def define_node(self, *domain_xmls):
        with open(self.node_xml, 'w') as f:
            f.write('<node>\n%s</node>\n' % ''.join(domain_xmls))

    def run_pass(self):
        process = subprocess.run(
            [MANAGE, '--config-file', self.config_file, 'cache', 'pass',
             '--json'], capture_output=True, text=True, timeout=60)
        return process, {os.path.basename(entry['path']): entry
                         for entry in json.loads(process.stdout)['files']}

    def test_a_defined_domain_keeps_its_base_until_it_is_gone(self):
        self.define_node(domain_xml('vm', [(self.disk, 'qcow2')]))
        process, files = self.run_pass()
        self.assertEqual(0, process.returncode, process.stderr)
        self.assertEqual(
            (facts.IN_USE,
             'backing chain of %s (disk vda of libvirt domain vm)'
             % self.disk),
            (files[BASE]['verdict'], files[BASE]['reason']))

        self.define_node(domain_xml('other'))
        self.age_base()
        process, files = self.run_pass()
        self.assertEqual(0, process.returncode, process.stderr)
        self.assertEqual(facts.QUEUED, files[BASE]['verdict'])
        self.assertFalse(os.path.lexists(self.base))

    def test_unreachable_libvirt_keeps_everything_and_says_why(self):
        process, files = self.run_pass()
        # The pass is done, with an error: what it could not read.
        self.assertEqual(1, process.returncode, process.stderr)
        self.assertEqual(facts.KEPT, files[BASE]['verdict'])
        self.assertIn('libvirt test://%s' % self.node_xml,
                      files[BASE]['reason'])
        warnings = [line for line in process.stderr.splitlines()
                    if ' WARNING ' in line and 'libvirt test://' in line]
        self.assertEqual(1, len(warnings), process.stderr)
        self.assertTrue(os.path.isfile(self.base))
