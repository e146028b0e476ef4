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
from unittest import mock
import uuid
from xml.sax import saxutils

import libvirt
import pytest

from cachekeeper.cache import domains
from cachekeeper.cache import facts
from cachekeeper.cache import inspect
from cachekeeper.cache import inventory
from tests.lib import qemu

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


class LibvirtTestDriver:
    """Defines domains on this process's test:///default.

    close() undefines them.
    """

    def __init__(self):
        self.connection = libvirt.open(TEST_URI)
        self.defined = []

    def define(self, xml, start=False):
        domain = self.connection.defineXML(xml)
        self.defined.append(domain)
        if start:
            domain.create()
        return domain

    def close(self):
        for domain in reversed(self.defined):
            self.undefine(domain)
        self.connection.close()

    @staticmethod
    def undefine(domain):
        try:
            if domain.isActive():
                domain.destroy()
            domain.undefine()
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise


@pytest.fixture
def driver():
    driver = LibvirtTestDriver()
    yield driver
    driver.close()


@pytest.fixture
def silent_socket(tmp_path):
    """The path of a socket that is listened on and never answers."""
    path = str(tmp_path / 'silent.sock')
    silent = socket.socket(socket.AF_UNIX)
    silent.bind(path)
    # Connections queue up and are never answered; closing the socket
    # ends the call left waiting.
    silent.listen(8)
    yield path
    silent.close()


class Node:
    """A compute node: an image cache, volumes outside it, and an Inventory
    that asks the test driver's domains.
    """

    def __init__(self, root, driver):
        self.root = root
        self.instances_path = os.path.join(self.root, 'instances')
        self.cache_dir = os.path.join(self.instances_path, '_base')
        self.volumes = os.path.join(self.root, 'volumes')
        os.makedirs(self.cache_dir)
        os.makedirs(self.volumes)
        self.driver = driver
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
        qemu.qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
                      backing, path)
        return path

    def collect(self):
        return self.inventory.collect(os.listdir(self.cache_dir))

    def reasons(self, usage):
        return {name: sorted(r.reason for r in references)
                for name, references in usage.references.items()}


@pytest.fixture
def node(tmp_path, driver):
    return Node(str(tmp_path), driver)


def test_disks_of_a_defined_domain_protect_their_chains(node):
    disk = node.overlay('disk', node.base(BASE))
    node.base(OTHER)
    node.driver.define(domain_xml(node.name, [(disk, 'qcow2')]))
    usage = node.collect()
    assert node.reasons(usage) == (
        {BASE: ['backing chain of %s (disk vda of libvirt domain %s)'
                % (disk, node.name)]})
    assert usage.references_to(BASE)[0].chain == (
        disk, os.path.join(node.cache_dir, BASE))
    assert usage.doubts == []


def test_an_undefined_domain_no_longer_protects(node):
    disk = node.overlay('disk', node.base(BASE))
    domain = node.driver.define(domain_xml(node.name, [(disk, 'qcow2')]))
    assert BASE in node.collect().references
    domain.undefine()
    assert node.collect().references == {}


def test_a_running_domain_protects_its_chain(node):
    disk = node.overlay('disk', node.base(BASE))
    node.driver.define(domain_xml(node.name, [(disk, 'qcow2')]),
                       start=True)
    assert BASE in node.collect().references


def test_the_whole_chain_is_followed(node):
    middle = os.path.join(node.cache_dir, OTHER)
    qemu.qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw',
                             '-b', node.base(BASE), middle)
    disk = os.path.join(node.volumes, 'disk')
    qemu.qemu_img('create', '-q', '-f', 'qcow2', '-F',
                             'qcow2', '-b', middle, disk)
    node.driver.define(domain_xml(node.name, [(disk, 'qcow2')]))
    usage = node.collect()
    assert set(usage.references) == {BASE, OTHER}
    assert usage.references_to(BASE)[0].chain == (
        disk, middle, os.path.join(node.cache_dir, BASE))


def test_a_cache_file_used_as_a_disk_is_in_use_even_when_missing(node):
    raw = node.base(BASE)
    missing = os.path.join(node.cache_dir, OTHER)
    node.driver.define(domain_xml(node.name, [(raw, 'raw'),
                                              (missing, 'raw')]))
    assert node.reasons(node.collect()) == (
        {BASE: ['disk vda of libvirt domain %s' % node.name],
         OTHER: ['disk vdb of libvirt domain %s' % node.name]})


def test_a_disk_reached_through_a_symlink_is_compared_by_real_path(node):
    link = os.path.join(node.volumes, 'image')
    os.symlink(node.base(BASE), link)
    node.driver.define(domain_xml(node.name, [(link, 'raw')]))
    assert list(node.collect().references) == [BASE]


def test_nova_metadata_protects_the_root_image(node):
    node.base(ROOT_IMAGE)
    node.base(ROOT_IMAGE + '_20')
    node.base(OTHER)
    node.driver.define(domain_xml(node.name, image_id=IMAGE_ID))
    reason = 'root image %s in libvirt domain %s' % (IMAGE_ID, node.name)
    assert node.reasons(node.collect()) == (
        {ROOT_IMAGE: [reason], ROOT_IMAGE + '_20': [reason]})


def test_a_domain_defined_after_collect_is_found_by_recheck(node):
    disk = node.overlay('disk', node.base(BASE))
    assert node.collect().references == {}
    node.driver.define(domain_xml(node.name, [(disk, 'qcow2')]))
    references, doubts = node.inventory.recheck(BASE)
    assert [r.source for r in references] == [disk]
    assert doubts == []


def test_an_unreadable_disk_is_a_doubt_about_its_chain(node):
    disk = os.path.join(node.volumes, 'disk')
    with open(disk, 'wb') as f:
        f.write(b'QFI\xfb' + b'\0' * 60)
    node.driver.define(domain_xml(node.name, [(disk, 'qcow2')]))
    usage = node.collect()
    assert [d.source for d in usage.doubts] == [disk]
    assert usage.doubts[0].names is None


def test_a_storage_pool_volume_is_a_doubt(node):
    xml = domain_xml(node.name).replace(
        '<devices>',
        "<devices><disk type='volume' device='disk'>"
        "<driver name='qemu' type='qcow2'/>"
        "<source pool='default' volume='vm.qcow2'/>"
        "<target dev='vdb' bus='virtio'/></disk>")
    node.driver.define(xml)
    assert [(d.source, d.message, d.names) for d in node.collect().doubts] == (
        [('libvirt domain %s' % node.name,
          'disk vdb is the storage pool volume default/vm.qcow2', None)])


def test_unreachable_libvirt_fails_closed(node):
    uri = 'qemu+unix:///system?socket=%s' % os.path.join(node.root,
                                                         'nothing')
    node.inventory.domain_source = domains.LibvirtSource(uri)
    node.base(BASE)
    usage = node.collect()
    assert len(usage.doubts) == 1
    doubt = usage.doubts[0]
    assert ('libvirt %s' % uri, None) == (doubt.source, doubt.names)
    assert 'Failed to connect socket' in doubt.message
    assert usage.doubts_about(BASE) == [doubt]


def test_a_libvirt_that_does_not_answer_fails_closed_in_time(node,
                                                            silent_socket):
    uri = 'qemu+unix:///system?socket=%s' % silent_socket
    started = time.monotonic()
    with pytest.raises(domains.DomainsUnavailable) as raised:
        domains.LibvirtSource(uri, timeout=0.5).domains()
    assert time.monotonic() - started < 5
    assert raised.value.message == 'no answer within 0.5 s'


def test_the_timeout_holds_under_eventlet(node, silent_socket):
    # The daemon's default backend: green threads cannot give up on a
    # call that blocks in C.
    process = subprocess.run(
        [sys.executable, '-W', 'ignore', '-c', _LIST_UNDER_EVENTLET,
         'qemu+unix:///system?socket=%s' % silent_socket],
        capture_output=True, text=True, timeout=30)
    assert process.returncode == 0, process.stderr
    assert process.stdout.endswith(': no answer within 0.5 s\n'), (
        process.stdout)


def test_without_the_libvirt_module_the_pass_fails_closed(node):
    # An import of a module mapped to None fails, as if it were not
    # installed.
    with mock.patch.dict(sys.modules, libvirt=None):
        with pytest.raises(domains.DomainsUnavailable) as raised:
            domains.LibvirtSource(TEST_URI).domains()
    assert 'libvirt-python' in raised.value.message


def test_both_definitions_of_a_running_domain_count(node):
    live = node.overlay('live', node.base(BASE))
    next_boot = node.overlay('next', node.base(OTHER))
    domain_uuid = str(uuid.uuid4())
    node.driver.define(domain_xml(node.name, [(live, 'qcow2')],
                                  domain_uuid=domain_uuid), start=True)
    # A new persistent definition takes effect at the next start.
    node.driver.connection.defineXML(domain_xml(
        node.name, [(next_boot, 'qcow2')], domain_uuid=domain_uuid))
    assert set(node.collect().references) == {BASE, OTHER}


class OrphanTree:
    """Instance directories, to match with the test driver's domains."""

    def __init__(self, root, driver):
        self.root = root
        self.driver = driver

    def directory(self, name):
        path = os.path.join(self.root, name)
        os.mkdir(path)
        return path


@pytest.fixture
def orphan_tree(tmp_path, driver):
    return OrphanTree(str(tmp_path), driver)


def test_directories_and_domains_that_do_not_match(orphan_tree):
    by_uuid = str(uuid.uuid4())
    used = orphan_tree.directory(by_uuid)
    resizing = orphan_tree.directory(by_uuid + '_resize')
    holding = orphan_tree.directory('legacy-name')
    disk = os.path.join(holding, 'disk')
    open(disk, 'wb').close()
    orphan = orphan_tree.directory(str(uuid.uuid4()))
    deleted = orphan_tree.directory(str(uuid.uuid4()) + '_del')
    missing = os.path.join(orphan_tree.root, 'gone', 'disk')
    orphan_tree.driver.define(domain_xml('cachekeeper-a', domain_uuid=by_uuid))
    orphan_tree.driver.define(domain_xml('cachekeeper-b', [(disk, 'raw'),
                                                           (missing, 'raw')]))
    # Leave out the test driver's own domain.
    defined = [domain for domain in
               domains.LibvirtSource(TEST_URI).domains()
               if domain.name.startswith('cachekeeper-')]
    found = domains.orphans(
        [used, resizing, holding, orphan, deleted], defined)
    assert found.directories == (orphan, deleted)
    assert found.missing_disks == (
        domains.MissingDisk(domain='cachekeeper-b', role='disk vdb',
                            path=missing),)


class DomainPass:
    """cachekeeper-manage cache pass with [inventory] libvirt_uri set."""

    def __init__(self, root):
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
        qemu.make_chain(self.base, self.disk)
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


@pytest.fixture
def domain_pass(tmp_path):
    return DomainPass(str(tmp_path))


def test_a_defined_domain_keeps_its_base_until_it_is_gone(domain_pass):
    domain_pass.define_node(domain_xml('vm', [(domain_pass.disk, 'qcow2')]))
    process, files = domain_pass.run_pass()
    assert process.returncode == 0, process.stderr
    assert (facts.IN_USE,
            'backing chain of %s (disk vda of libvirt domain vm)'
            % domain_pass.disk) == (
        files[BASE]['verdict'], files[BASE]['reason'])

    domain_pass.define_node(domain_xml('other'))
    domain_pass.age_base()
    process, files = domain_pass.run_pass()
    assert process.returncode == 0, process.stderr
    assert files[BASE]['verdict'] == facts.QUEUED
    assert not os.path.lexists(domain_pass.base)


def test_unreachable_libvirt_keeps_everything_and_says_why(domain_pass):
    process, files = domain_pass.run_pass()
    # The pass is done, with an error: what it could not read.
    assert process.returncode == 1, process.stderr
    assert files[BASE]['verdict'] == facts.KEPT
    assert 'libvirt test://%s' % domain_pass.node_xml in files[BASE]['reason']
    warnings = [line for line in process.stderr.splitlines()
                if ' WARNING ' in line and 'libvirt test://' in line]
    assert len(warnings) == 1, process.stderr
    assert os.path.isfile(domain_pass.base)
