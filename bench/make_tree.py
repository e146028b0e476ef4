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

"""Build a synthetic compute host as nova's libvirt driver lays it out.

``ROOT/instances`` is the instances_path: ``_base`` holds the cached
images (sparse raw originals, resized copies, swap and ephemeral files and
a little download residue), and each instance directory holds what nova
writes there: ``disk`` (a real qcow2 overlay made by qemu-img, its backing
file named by absolute path with its format, as nova's Qcow2 backend does),
``disk.local`` and ``disk.swap`` overlays for flavors that have them, a raw
``disk.config`` for some, ``disk.info``, ``libvirt.xml`` with nova's
metadata and ``console.log``. A few ``<uuid>_resize`` directories and
directories of deleted instances are there too.

``ROOT/instances.json`` is the instance list in the format of nova's
pass oracle (what nova would read from its database), so nova's real image
cache manager can run on the same tree.

Everything follows from the seed; ages are relative to the build time.
Standard library plus qemu-img: usable without cachekeeper installed.

    python bench/make_tree.py ROOT --files 10000 --instances 2000
"""

import argparse
import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid

HOST = 'compute-bench'
# md5('vfat')[:7]: nova's ephemeral file name suffix for its default
# ephemeral file system.
EPHEMERAL_SUFFIX = '0706d66'
GIB = 1024 ** 3
MIB = 1024 ** 2
DAY = 86400
# Sparse size of every cached image: the content is never read by a pass.
BASE_SIZE = MIB

# Shares of the _base files and of the instances, roughly as on a busy
# host that has run many images over time.
RESIZED_SHARE = 0.1
IN_USE_SHARE = 0.15
SWAP_SIZES_MB = (512, 1024, 2048, 4096)
EPHEMERAL_SIZES_GB = (1, 10, 20, 40)
RESIDUE = ('.part', '.converted')
LOCAL_DISK_SHARE = 0.3
SWAP_DISK_SHARE = 0.2
CONFIG_DRIVE_SHARE = 0.1
RESIZE_DIR_SHARE = 0.01
DELETED_DIR_SHARE = 0.02
# Ages: a third of the files young (minutes), the rest older than
# nova's default minimum ages.
AGES = (600, 2 * 3600, 2 * DAY, 30 * DAY)

LIBVIRT_XML = '''<domain type="kvm">
  <uuid>{uuid}</uuid>
  <name>instance-{id:08x}</name>
  <memory>2097152</memory>
  <vcpu>1</vcpu>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="31.0.0"/>
      <nova:name>vm-{id}</nova:name>
      <nova:creationTime>2026-01-01 00:00:00</nova:creationTime>
      <nova:flavor name="bench.{root_gb}">
        <nova:memory>2048</nova:memory>
        <nova:disk>{root_gb}</nova:disk>
        <nova:swap>{swap_mb}</nova:swap>
        <nova:ephemeral>{ephemeral_gb}</nova:ephemeral>
        <nova:vcpus>1</nova:vcpus>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid="6b2ac9d1c4a64a8f">admin</nova:user>
        <nova:project uuid="0c2ad4e1b7f84d6c">admin</nova:project>
      </nova:owner>
      <nova:root type="image" uuid="{image_id}"/>
    </nova:instance>
  </metadata>
  <os>
    <type>hvm</type>
    <boot dev="hd"/>
  </os>
  <devices>
{devices}    <interface type="bridge">
      <mac address="fa:16:3e:00:00:01"/>
      <model type="virtio"/>
      <source bridge="br-int"/>
    </interface>
    <serial type="file">
      <source path="{directory}/console.log"/>
    </serial>
  </devices>
</domain>
'''

DOMAIN_DISK = '''    <disk type="file" device="{device}">
      <driver name="qemu" type="{fmt}" cache="none"/>
      <source file="{path}"/>
      <target bus="virtio" dev="{target}"/>
    </disk>
'''


def sha1(text):
    return hashlib.sha1(text.encode('utf-8')).hexdigest()


class Tree:
    """Plans a host tree, then writes it."""

    def __init__(self, root, files, instances, seed):
        self.root = os.path.abspath(root)
        self.instances_path = os.path.join(self.root, 'instances')
        self.cache_dir = os.path.join(self.instances_path, '_base')
        self.rng = random.Random(seed)
        self.now = time.time()
        self.base_files = {}
        self.instance_records = []
        self.directories = {}
        self._plan(files, instances)

    def _uuid(self):
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _add_base(self, name, size=BASE_SIZE):
        self.base_files[name] = (size, self.now - self.rng.choice(AGES))

    def _plan(self, files, instances):
        for mb in SWAP_SIZES_MB:
            self._add_base('swap_%d' % mb, mb * MIB)
        for gb in EPHEMERAL_SIZES_GB:
            self._add_base('ephemeral_%d_%s' % (gb, EPHEMERAL_SUFFIX),
                           gb * GIB)
        images = []
        resized = int(files * RESIZED_SHARE)
        originals = files - len(self.base_files) - resized - len(RESIDUE)
        for _ in range(originals):
            image_id = self._uuid()
            images.append(image_id)
            self._add_base(sha1(image_id))
        for index in range(resized):
            image_id = images[index * 7 % len(images)]
            self._add_base('%s_%d' % (sha1(image_id), (20 + index) * GIB))
        for suffix in RESIDUE:
            self._add_base(sha1(self._uuid()) + suffix)
        in_use = images[:max(1, int(len(images) * IN_USE_SHARE))]
        for index in range(instances):
            self._plan_instance(index + 1, self.rng.choice(in_use))
        for index in range(int(instances * DELETED_DIR_SHARE)):
            # Left behind by an instance nova no longer lists.
            self._plan_instance(instances + index + 1,
                                self.rng.choice(images), listed=False)

    def _plan_instance(self, instance_id, image_id, listed=True):
        rng = self.rng
        instance_uuid = self._uuid()
        swap_mb = (rng.choice(SWAP_SIZES_MB)
                   if rng.random() < SWAP_DISK_SHARE else 0)
        ephemeral_gb = (rng.choice(EPHEMERAL_SIZES_GB)
                        if rng.random() < LOCAL_DISK_SHARE else 0)
        root_gb = rng.choice((10, 20, 40, 80))
        disks = [('disk', 'qcow2', sha1(image_id), root_gb * GIB)]
        if ephemeral_gb:
            disks.append(('disk.local', 'qcow2', 'ephemeral_%d_%s' % (
                ephemeral_gb, EPHEMERAL_SUFFIX), ephemeral_gb * GIB))
        if swap_mb:
            disks.append(('disk.swap', 'qcow2', 'swap_%d' % swap_mb,
                          swap_mb * MIB))
        if rng.random() < CONFIG_DRIVE_SHARE:
            disks.append(('disk.config', 'raw', None, 460 * 1024))
        directory = os.path.join(self.instances_path, instance_uuid)
        self.directories[directory] = dict(
            uuid=instance_uuid, id=instance_id, image_id=image_id,
            root_gb=root_gb, swap_mb=swap_mb, ephemeral_gb=ephemeral_gb,
            disks=disks)
        if listed and rng.random() < RESIZE_DIR_SHARE:
            # The source of a resize waiting for confirmation.
            self.directories[directory + '_resize'] = dict(
                self.directories[directory], disks=disks[:1])
        if listed:
            self.instance_records.append({
                'uuid': instance_uuid, 'id': instance_id,
                'image_ref': image_id, 'kernel_id': None,
                'ramdisk_id': None, 'host': HOST,
                'vm_state': 'active', 'task_state': None, 'os_type': None,
                'deleted': False,
                'flavor': {'swap': swap_mb, 'ephemeral_gb': ephemeral_gb}})

    def write(self, jobs):
        if os.path.exists(self.root):
            shutil.rmtree(self.root)
        os.makedirs(self.cache_dir)
        os.makedirs(os.path.join(self.instances_path, 'locks'))
        for name, (size, _mtime) in self.base_files.items():
            with open(os.path.join(self.cache_dir, name), 'wb') as f:
                f.truncate(size)
        overlays = []
        for directory, instance in self.directories.items():
            overlays.extend(self._write_directory(directory, instance))
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            list(pool.map(_create_overlay, overlays))
        # Last: qemu-img create reads the backing files.
        for name, (_size, mtime) in self.base_files.items():
            os.utime(os.path.join(self.cache_dir, name), (mtime, mtime))
        with open(os.path.join(self.root, 'instances.json'), 'w') as f:
            json.dump({'host': HOST, 'instances': self.instance_records}, f)
        return len(overlays)

    def _write_directory(self, directory, instance):
        os.mkdir(directory)
        overlays = []
        recorded = {}
        domain_disks = []
        for index, (name, fmt, base, size) in enumerate(instance['disks']):
            path = os.path.join(directory, name)
            recorded[path] = fmt
            domain_disks.append(DOMAIN_DISK.format(
                device='cdrom' if name == 'disk.config' else 'disk',
                fmt=fmt, path=path, target='vd' + 'abcd'[index]))
            if base is None:
                with open(path, 'wb') as f:
                    f.truncate(size)
            else:
                overlays.append((path, os.path.join(self.cache_dir, base),
                                 size))
        with open(os.path.join(directory, 'disk.info'), 'w') as f:
            json.dump(recorded, f)
        with open(os.path.join(directory, 'libvirt.xml'), 'w') as f:
            f.write(LIBVIRT_XML.format(
                directory=directory, devices=''.join(domain_disks),
                **instance))
        with open(os.path.join(directory, 'console.log'), 'wb') as f:
            f.write(b'[    0.000000] Linux version 6.1.0\n' * 64)
        return overlays

    @property
    def disk_count(self):
        return sum(len(d['disks']) for d in self.directories.values())


def _create_overlay(job):
    path, backing, size = job
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw',
                    '-b', backing, path, str(size)],
                   check=True, stdout=subprocess.DEVNULL)


def build(root, files, instances, seed=1, jobs=None):
    """Write the tree under ``root`` (replacing it); return its numbers."""
    started = time.monotonic()
    tree = Tree(root, files, instances, seed)
    overlays = tree.write(jobs or 2 * (os.cpu_count() or 1))
    return {'root': tree.root, 'instances_path': tree.instances_path,
            'files': len(tree.base_files),
            'instances': len(tree.instance_records),
            'directories': len(tree.directories),
            'disks': tree.disk_count, 'overlays': overlays,
            'build_s': round(time.monotonic() - started, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('root', help='directory to (re)create')
    parser.add_argument('--files', type=int, default=1000,
                        help='files in _base')
    parser.add_argument('--instances', type=int, default=200,
                        help='instances nova lists')
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--jobs', type=int, default=None,
                        help='parallel qemu-img create calls')
    args = parser.parse_args(argv)
    json.dump(build(args.root, args.files, args.instances, args.seed,
                    args.jobs), sys.stdout)
    print()


if __name__ == '__main__':
    main()
