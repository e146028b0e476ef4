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

"""Build a small demo compute host to run the daemon against.

The tree looks like what nova's libvirt driver leaves on a compute host that
uses the Qcow2 image backend: instance directories whose disks are qcow2
overlays on files in ``_base``, next to cache files that no instance uses any
more, of mixed ages, a download residue and an entry nova never made. Every
cache file is sparse, so the demo takes little more than the qcow2 headers on
disk.
"""

import dataclasses
import json
import os
import shutil
import time
import uuid
from xml.etree import ElementTree

from oslo_concurrency import processutils
from oslo_utils import units

from cachekeeper.cache import facts
from cachekeeper.cache import names

MARKER = '.cachekeeper-demo'
CONFIG_FILE = 'cachekeeper.conf'
INSTANCES_DIR = 'instances'
STATE_DIR = 'state'
CACHE_DIR = '_base'
LOCKS_DIR = 'locks'

NOVA_XML_NAMESPACE = 'http://openstack.org/xmlns/libvirt/nova/1.1'

# Ages against the default minimum ages (originals, swap and ephemeral one
# day, resized copies one hour): old files are removable once unused, medium
# ones only if they are resized copies, young ones never.
OLD = 2 * 24 * 3600
MEDIUM = 2 * 3600
YOUNG = 10 * 60

# Instance and image ids are derived from names so that a rebuild yields the
# same tree and the same names as the last one.
_NAMESPACE = uuid.UUID('5d3c7a4e-2f0b-4c55-9a61-0c6e8b1f7d42')

_MARKER_TEXT = """\
This directory is a cachekeeper demo host, built by
"cachekeeper-manage demo create". Running that command again deletes and
rebuilds everything it made here.
"""

_CONFIG_TEMPLATE = """\
# A demo compute host built by "cachekeeper-manage demo create".
#
# %(instances)s looks like nova's instances_path on a libvirt
# compute host with the Qcow2 image backend: instances whose disks are qcow2
# overlays on files in %(cache)s, next to cache files that no
# instance uses any more, some old and some young. No nova owns it: run the
# daemon against it and watch each pass refresh the files in use and queue
# the old unused ones for removal (the summary goes to stderr):
#
#   cachekeeper --config-file %(config)s
#
# "cachekeeper-manage demo create %(root)s" rebuilds the demo from
# scratch.

[DEFAULT]
instances_path = %(instances_value)s
state_path = %(state_value)s

[image_cache]
# A pass every few seconds rather than every 40 minutes, so that the pass
# summaries show up at once.
manager_interval = 3
"""


class DemoError(Exception):
    """The demo cannot be built; the message says why in one line."""


class NotADemoDirectory(DemoError):
    """The target holds something other than a demo: it is left alone."""


class QemuImgNotFound(DemoError):
    """qemu-img, needed for the qcow2 overlays, is not installed."""


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One entry of the demo's image cache and what it stands for."""

    name: str
    kind: str
    size: int
    age: int
    about: str
    # The entry is a symbolic link to this name instead of a file.
    link_to: str = None


@dataclasses.dataclass(frozen=True)
class Disk:
    """One disk of an instance: a qcow2 overlay on a cache file, or flat."""

    name: str
    size: int
    base: str = None

    @property
    def format(self):
        return 'qcow2' if self.base else 'raw'


@dataclasses.dataclass(frozen=True)
class Instance:
    name: str
    disks: tuple
    # The disks left in <uuid>_resize by a resize not yet confirmed.
    resize_source_disks: tuple = ()
    # A flat instance says which image it boots from only in libvirt.xml.
    root_image: str = None

    @property
    def uuid(self):
        return str(uuid.uuid5(_NAMESPACE, 'instance/' + self.name))


@dataclasses.dataclass(frozen=True)
class Summary:
    """What create() built."""

    path: str
    config_file: str
    instances_path: str
    state_path: str
    cache_dir: str
    cache_entries: tuple
    instances: tuple
    rebuilt: bool
    seconds: float


def image_id(image_name):
    return str(uuid.uuid5(_NAMESPACE, 'image/' + image_name))


def original_name(image_name):
    """The cache file name nova gives the image: sha1 of its id."""
    return names.image_cache_name(image_id(image_name))


_CIRROS = original_name('cirros-0.6.2')
_UBUNTU = original_name('ubuntu-24.04')
_DEBIAN = original_name('debian-12')
_CENTOS = original_name('centos-stream-9')
_FEDORA = original_name('fedora-41')
_ROCKY = original_name('rocky-9')
_CIRROS_RESIZED = names.resized_name(_CIRROS, units.Gi)
_DEBIAN_RESIZED = names.resized_name(_DEBIAN, units.Gi)
_EPHEMERAL_VFAT = names.ephemeral_name(1, 'vfat')
_EPHEMERAL_EXT4 = names.ephemeral_name(2, 'ext4')
_SWAP_512 = names.swap_name(512)
_SWAP_1024 = names.swap_name(1024)

CACHE_ENTRIES = (
    CacheEntry(_CIRROS, facts.ORIGINAL, 112 * units.Mi, OLD, 'cirros-0.6.2'),
    CacheEntry(_UBUNTU, facts.ORIGINAL, 576 * units.Mi, MEDIUM,
               'ubuntu-24.04'),
    CacheEntry(_DEBIAN, facts.ORIGINAL, 384 * units.Mi, OLD, 'debian-12'),
    CacheEntry(_CENTOS, facts.ORIGINAL, 640 * units.Mi, MEDIUM,
               'centos-stream-9'),
    CacheEntry(_FEDORA, facts.ORIGINAL, 448 * units.Mi, YOUNG, 'fedora-41'),
    CacheEntry(_ROCKY, facts.ORIGINAL, 512 * units.Mi, OLD, 'rocky-9'),
    CacheEntry(_CIRROS_RESIZED, facts.RESIZED, units.Gi, OLD,
               'cirros-0.6.2 resized to 1 GiB'),
    CacheEntry(_DEBIAN_RESIZED, facts.RESIZED, units.Gi, MEDIUM,
               'debian-12 resized to 1 GiB'),
    CacheEntry(_CENTOS + names.LEGACY_SM_SUFFIX, facts.LEGACY_SM,
               640 * units.Mi, OLD, 'centos-stream-9, pre-Folsom small copy'),
    CacheEntry(_SWAP_512, facts.SWAP, 512 * units.Mi, OLD, '512 MiB swap'),
    CacheEntry(_SWAP_1024, facts.SWAP, units.Gi, OLD, '1 GiB swap'),
    CacheEntry(_EPHEMERAL_VFAT, facts.EPHEMERAL, units.Gi, MEDIUM,
               '1 GiB vfat ephemeral disk'),
    CacheEntry(_EPHEMERAL_EXT4, facts.EPHEMERAL, 2 * units.Gi, OLD,
               '2 GiB ext4 ephemeral disk'),
    CacheEntry(original_name('opensuse-15.6') + names.PART_SUFFIX,
               facts.RESIDUE, 100 * units.Mi, OLD,
               'opensuse-15.6 download cut short by a crash'),
    CacheEntry('cirros-latest', facts.FOREIGN, 0, None,
               'symbolic link to cirros-0.6.2, made by hand', link_to=_CIRROS),
)

INSTANCES = (
    Instance('web-1', (Disk('disk', units.Gi, _CIRROS),
                       Disk('disk.swap', 512 * units.Mi, _SWAP_512))),
    # Booted before nova stopped making resized copies of originals.
    Instance('legacy-1', (Disk('disk', units.Gi, _CIRROS_RESIZED),)),
    Instance('db-1', (Disk('disk', 20 * units.Gi, _UBUNTU),
                      Disk('disk.local', units.Gi, _EPHEMERAL_VFAT))),
    # Resized from a flavor with 1 GiB swap, not yet confirmed: only its
    # <uuid>_resize directory still uses swap_1024.
    Instance('app-1',
             (Disk('disk', 20 * units.Gi, _UBUNTU),
              Disk('disk.swap', 512 * units.Mi, _SWAP_512)),
             resize_source_disks=(
                 Disk('disk', 10 * units.Gi, _UBUNTU),
                 Disk('disk.swap', units.Gi, _SWAP_1024))),
    # Flat image backend: a raw copy of its image, no backing file.
    Instance('flat-1', (Disk('disk', units.Gi),), root_image='rocky-9'),
)


def users(cache_name):
    """Who uses ``cache_name``: demo instances and how they reach it."""
    found = []
    for instance in INSTANCES:
        if cache_name in [disk.base for disk in instance.disks]:
            found.append(instance.name)
        if cache_name in [disk.base for disk in instance.resize_source_disks]:
            found.append(instance.name + names.RESIZE_SUFFIX)
        if (instance.root_image and
                cache_name == original_name(instance.root_image)):
            found.append(instance.name + ' (libvirt.xml only)')
    return found


def create(path):
    """Build the demo host in ``path``, or rebuild the one already there.

    Returns a Summary. Raises NotADemoDirectory if ``path`` exists and holds
    anything but a demo, QemuImgNotFound without qemu-img, and DemoError if
    building fails.
    """
    started = time.monotonic()
    root = os.path.abspath(path)
    if not shutil.which('qemu-img'):
        raise QemuImgNotFound(
            'qemu-img not found: install qemu-utils (Debian, Ubuntu) or '
            'qemu-img (Fedora, CentOS) to build the demo')
    rebuilt = _claim(root)
    instances_path = os.path.join(root, INSTANCES_DIR)
    state_path = os.path.join(root, STATE_DIR)
    cache_dir = os.path.join(instances_path, CACHE_DIR)
    config_file = os.path.join(root, CONFIG_FILE)
    try:
        _remove_previous_demo(root)
        os.makedirs(cache_dir)
        os.mkdir(os.path.join(instances_path, LOCKS_DIR))
        os.mkdir(state_path, 0o700)
        _make_cache_entries(instances_path)
        for instance in INSTANCES:
            _make_instance(instances_path, instance)
        _set_cache_ages(cache_dir, time.time())
        _write_config(config_file, root, instances_path, state_path)
    except OSError as e:
        raise DemoError('cannot build the demo in %s: %s' % (root, e))
    except processutils.ProcessExecutionError as e:
        raise DemoError('qemu-img failed: %s' % e.stderr.strip())
    return Summary(path=root,
                   config_file=config_file,
                   instances_path=instances_path,
                   state_path=state_path,
                   cache_dir=cache_dir,
                   cache_entries=CACHE_ENTRIES,
                   instances=INSTANCES,
                   rebuilt=rebuilt,
                   seconds=time.monotonic() - started)


def _claim(root):
    """Make sure ``root`` is ours to build in and mark it as a demo.

    Returns True if it already held a demo.
    """
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        entries = None
    except NotADirectoryError:
        raise NotADemoDirectory('%s exists and is not a directory' % root)
    except OSError as e:
        raise DemoError('cannot read %s: %s' % (root, e.strerror))
    if entries and MARKER not in entries:
        raise NotADemoDirectory(
            '%s is not empty and was not made by "demo create": not touching '
            'it; choose a new or empty directory' % root)
    try:
        os.makedirs(root, exist_ok=True)
        # Marked before anything is built, so that a build cut short can be
        # rebuilt.
        with open(os.path.join(root, MARKER), 'w') as marker:
            marker.write(_MARKER_TEXT)
    except OSError as e:
        raise DemoError('cannot create %s: %s' % (root, e))
    return bool(entries)


def _remove_previous_demo(root):
    # Only what a demo build or a daemon running on the demo puts there: the
    # quarantine and the coordination files live below instances/.
    for name in (INSTANCES_DIR, STATE_DIR):
        if os.path.lexists(os.path.join(root, name)):
            shutil.rmtree(os.path.join(root, name))
    if os.path.lexists(os.path.join(root, CONFIG_FILE)):
        os.unlink(os.path.join(root, CONFIG_FILE))


def _make_cache_entries(instances_path):
    cache_dir = os.path.join(instances_path, CACHE_DIR)
    locks_dir = os.path.join(instances_path, LOCKS_DIR)
    for entry in CACHE_ENTRIES:
        path = os.path.join(cache_dir, entry.name)
        if entry.link_to:
            os.symlink(entry.link_to, path)
            continue
        _make_sparse_file(path, entry.size)
        # nova's lock file for the base (a download residue was written
        # under the lock of the file it was to become).
        lock_name = 'nova-' + (names.download_target(entry.name) or
                               entry.name)
        with open(os.path.join(locks_dir, lock_name), 'a'):
            pass


def _make_sparse_file(path, size):
    with open(path, 'wb') as f:
        f.truncate(size)


def _make_instance(instances_path, instance):
    instance_dir = os.path.join(instances_path, instance.uuid)
    _make_disks(instances_path, instance_dir, instance.disks)
    # nova renames the directory to <uuid>_resize and copies disk.info to
    # the new one: in both, disk.info names the disks below <uuid>/.
    _write_disk_info(instance_dir, instance_dir, instance.disks)
    if instance.resize_source_disks:
        resize_dir = instance_dir + names.RESIZE_SUFFIX
        _make_disks(instances_path, resize_dir, instance.resize_source_disks)
        _write_disk_info(resize_dir, instance_dir,
                         instance.resize_source_disks)
    if instance.root_image:
        _write_libvirt_xml(instance_dir, instance)


def _make_disks(instances_path, directory, disks):
    os.mkdir(directory)
    for disk in disks:
        path = os.path.join(directory, disk.name)
        if disk.base:
            base = os.path.join(instances_path, CACHE_DIR, disk.base)
            # The absolute backing path, as nova writes it.
            processutils.execute(
                'qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw',
                '-b', base, path, str(disk.size))
        else:
            _make_sparse_file(path, disk.size)


def _write_disk_info(directory, named_dir, disks):
    formats = {os.path.join(named_dir, disk.name): disk.format
               for disk in disks}
    with open(os.path.join(directory, names.DISK_INFO), 'w') as f:
        f.write(json.dumps(formats))


def _write_libvirt_xml(instance_dir, instance):
    """A trimmed libvirt.xml carrying nova's instance metadata."""
    ElementTree.register_namespace('nova', NOVA_XML_NAMESPACE)

    def nova(tag):
        return '{%s}%s' % (NOVA_XML_NAMESPACE, tag)

    domain = ElementTree.Element('domain', type='kvm')
    ElementTree.SubElement(domain, 'uuid').text = instance.uuid
    ElementTree.SubElement(domain, 'name').text = 'instance-00000005'
    ElementTree.SubElement(domain, 'memory').text = str(512 * units.Ki)
    ElementTree.SubElement(domain, 'vcpu').text = '1'
    metadata = ElementTree.SubElement(domain, 'metadata')
    meta = ElementTree.SubElement(metadata, nova('instance'))
    ElementTree.SubElement(meta, nova('name')).text = instance.name
    flavor = ElementTree.SubElement(meta, nova('flavor'), name='m1.tiny')
    root_gb = instance.disks[0].size // units.Gi
    for tag, value in (('memory', 512), ('disk', root_gb), ('swap', 0),
                       ('ephemeral', 0), ('vcpus', 1)):
        ElementTree.SubElement(flavor, nova(tag)).text = str(value)
    ElementTree.SubElement(meta, nova('root'), type='image',
                           uuid=image_id(instance.root_image))
    devices = ElementTree.SubElement(domain, 'devices')
    for index, disk in enumerate(instance.disks):
        element = ElementTree.SubElement(devices, 'disk', type='file',
                                         device='disk')
        ElementTree.SubElement(element, 'driver', name='qemu',
                               type=disk.format, cache='none')
        ElementTree.SubElement(element, 'source',
                               file=os.path.join(instance_dir, disk.name))
        ElementTree.SubElement(element, 'target', dev='vd' + 'abcd'[index],
                               bus='virtio')
    ElementTree.indent(domain)
    ElementTree.ElementTree(domain).write(
        os.path.join(instance_dir, names.LIBVIRT_XML), encoding='unicode')


def _set_cache_ages(cache_dir, now):
    for entry in CACHE_ENTRIES:
        if entry.age is not None:
            mtime = now - entry.age
            os.utime(os.path.join(cache_dir, entry.name), (mtime, mtime))


def _write_config(config_file, root, instances_path, state_path):
    # oslo.config reads "$name" as a reference to another option.
    with open(config_file, 'w') as f:
        f.write(_CONFIG_TEMPLATE % {
            'root': root,
            'config': config_file,
            'instances': os.path.join(INSTANCES_DIR, ''),
            'cache': os.path.join(INSTANCES_DIR, CACHE_DIR, ''),
            'instances_value': instances_path.replace('$', '$$'),
            'state_value': state_path.replace('$', '$$'),
        })
