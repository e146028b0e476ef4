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

"""A simulated nova-compute: spawns, changes and deletes instances.

Every step does the file system operations of nova's libvirt driver in
nova's order, under nova's locks (oslo.concurrency external locks in
``$instances_path/locks``, the library nova uses):

- spawn, for each disk (``Qcow2.create_image``): if the base is missing,
  take ``nova-<name>``, fetch it (an image into ``<name>.part``, then
  rename; swap and ephemeral files in place), release; touch the base
  (an ENOENT fails the spawn: nova's own window between its existence check
  and its touch); then, holding ``nova-<name>`` again, create the overlay
  with ``qemu-img create -b``, which fails if the base is gone. disk.info
  is rewritten in place before each disk, as nova does;
- rescue and unrescue (``disk.rescue`` on the rescue image);
- resize on the same host (``<uuid>`` renamed to ``<uuid>_resize``, the
  disks copied into a new ``<uuid>``, swap made anew, the root disk grown),
  then confirm (``<uuid>_resize`` deleted) or revert (renamed back);
- delete (renamed to ``<uuid>_del``, then removed).

A failed spawn is cleaned up like nova does and counted by the step that
failed. For each disk the simulator records, outside instances_path, which
download of its base it was made on (a random token the download writes at
the start of the file): the invariant checker compares it with the base on
disk. A base removed while a disk used it and downloaded again has another
token, so a removal cannot hide behind a later download.

It also records the inode of every lock file it takes: a lock file that
changes its inode was removed by somebody.

Run as ``python -m tests.stress.novasim``; it writes a JSON report.
"""

import argparse
import collections
import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid

from oslo_concurrency import lockutils

QEMU_IMG = shutil.which('qemu-img')
# A download's token: a uuid4 in hex.
TOKEN_BYTES = 32
IMAGE_SIZE = 1024 * 1024
# md5('vfat')[:7], the file system hash nova puts into ephemeral names.
VFAT = '0706d66'

DISK = 'disk'
DISK_LOCAL = 'disk.local'
DISK_SWAP = 'disk.swap'
DISK_RESCUE = 'disk.rescue'
DISK_NAMES = (DISK, DISK_LOCAL, DISK_SWAP, DISK_RESCUE)

RESIZE_SUFFIX = '_resize'
DELETE_SUFFIX = '_del'


def cache_name(image_id):
    return hashlib.sha1(image_id.encode('utf-8')).hexdigest()


def swap_name(swap_mb):
    return 'swap_%d' % swap_mb


def ephemeral_name(ephemeral_gb):
    return 'ephemeral_%d_%s' % (ephemeral_gb, VFAT)


def read_token(path):
    """The download token at the start of a base; OSError if missing."""
    with open(path, 'rb') as f:
        return f.read(TOKEN_BYTES).decode('ascii', 'replace')


def write_json(path, data):
    tmp = '%s.%d.tmp' % (path, os.getpid())
    with open(tmp, 'w') as f:
        json.dump(data, f)
    os.rename(tmp, path)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def records_path(records_dir, directory_name):
    return os.path.join(records_dir, directory_name + '.json')


class SpawnFailed(Exception):
    """A spawn failed cleanly at ``step``, as nova's would."""

    def __init__(self, step, detail):
        super().__init__('%s: %s' % (step, detail))
        self.step = step


@contextlib.contextmanager
def _ignoring_missing():
    try:
        yield
    except FileNotFoundError:
        pass


class Compute:
    """One nova-compute worker on a shared instances_path."""

    def __init__(self, instances_path, records_dir, rng, min_age,
                 images, rescue_images, swap_sizes, ephemeral_sizes):
        self.instances_path = instances_path
        self.cache_dir = os.path.join(instances_path, '_base')
        self.locks_dir = os.path.join(instances_path, 'locks')
        self.records_dir = records_dir
        self.rng = rng
        self.min_age = min_age
        self.images = images
        self.rescue_images = rescue_images
        self.swap_sizes = swap_sizes
        self.ephemeral_sizes = ephemeral_sizes
        self.counts = collections.Counter()
        self.failed_spawns = collections.Counter()
        self.violations = []
        self.lock_inodes = {}
        os.makedirs(self.cache_dir, exist_ok=True)

    # Locks and records.

    @contextlib.contextmanager
    def lock(self, name):
        with lockutils.lock(name, lock_file_prefix='nova-', external=True,
                            lock_path=self.locks_dir):
            path = os.path.join(self.locks_dir, 'nova-' + name)
            ino = os.stat(path).st_ino
            known = self.lock_inodes.setdefault(path, ino)
            if known != ino:
                self.violate('lock file %s was replaced (inode %d, then %d)'
                             % (path, known, ino))
                self.lock_inodes[path] = ino
            yield

    def violate(self, message):
        self.violations.append(message)
        print('VIOLATION: %s' % message, file=sys.stderr, flush=True)

    def record_disk(self, directory, disk, base, token):
        path = records_path(self.records_dir, os.path.basename(directory))
        try:
            record = read_json(path)
        except FileNotFoundError:
            record = {}
        record[disk] = {'base': base, 'token': token}
        write_json(path, record)

    def forget_disk(self, directory, disk):
        path = records_path(self.records_dir, os.path.basename(directory))
        record = read_json(path)
        record.pop(disk, None)
        write_json(path, record)

    def move_record(self, old_directory, new_directory):
        os.rename(records_path(self.records_dir, old_directory),
                  records_path(self.records_dir, new_directory))

    # Fetching into the image cache.

    @staticmethod
    def _write_base(path, size):
        with open(path, 'wb') as f:
            f.write(uuid.uuid4().hex.encode('ascii'))
            f.truncate(size)

    def fetch_image(self, base):
        # nova's images.fetch_to_raw: download to .part, rename into place.
        part = base + '.part'
        self._write_base(part, IMAGE_SIZE)
        os.rename(part, base)
        self.counts['downloads'] += 1

    def fetch_in_place(self, size):
        # swap and ephemeral bases are made under their final names.
        def fetch(base):
            self._write_base(base, size)
            self.counts['created_in_place'] += 1
        return fetch

    # Qcow2.create_image.

    def create_image(self, directory, disk, name, fetch):
        base = os.path.join(self.cache_dir, name)
        if not os.path.exists(base):
            with self.lock(name):
                if not os.path.exists(base):
                    fetch(base)
        touched_at = time.time()
        try:
            os.utime(base)
        except FileNotFoundError:
            raise SpawnFailed('touch', '%s vanished before its touch' % name)
        try:
            os.path.getsize(base)
        except FileNotFoundError:
            raise SpawnFailed('size', '%s vanished before verify_base_size'
                              % name)
        with self.lock(name):
            locked_after = time.time() - touched_at
            try:
                token = read_token(base)
            except FileNotFoundError:
                if locked_after < self.min_age - 0.05:
                    self.violate('%s removed %.3fs after its touch, before '
                                 'the overlay was made' % (base, locked_after))
                raise SpawnFailed('create', '%s vanished %.3fs after its '
                                  'touch' % (name, locked_after))
            process = subprocess.run(
                [QEMU_IMG, 'create', '-q', '-f', 'qcow2', '-o',
                 'backing_file=%s,backing_fmt=raw' % base,
                 os.path.join(directory, disk)],
                capture_output=True, text=True)
            if process.returncode:
                raise SpawnFailed('create', process.stderr.strip())
        self.record_disk(directory, disk, name, token)

    def write_disk_info(self, directory, disks):
        # nova's resolve_driver_format rewrites disk.info in place.
        path = os.path.join(directory, 'disk.info')
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(fd, 'r+') as f:
            f.write(json.dumps({os.path.join(directory, d): 'qcow2'
                                for d in disks}) + '\n')
            f.truncate()

    def make_disk(self, directory, disks, disk, name, fetch):
        disks.append(disk)
        self.write_disk_info(directory, disks)
        self.create_image(directory, disk, name, fetch)

    # Instance life cycle.

    def spawn(self):
        instance = {'uuid': str(uuid.UUID(int=self.rng.getrandbits(128))),
                    'image': self.rng.choice(self.images),
                    'swap_mb': self.rng.choice((0,) + self.swap_sizes),
                    'ephemeral_gb': self.rng.choice(
                        (0,) + self.ephemeral_sizes),
                    'rescued': False, 'resizing': False}
        directory = self.directory(instance)
        os.mkdir(directory)
        disks = []
        try:
            self.make_disk(directory, disks, DISK,
                           cache_name(instance['image']), self.fetch_image)
            if instance['ephemeral_gb']:
                self.make_disk(
                    directory, disks, DISK_LOCAL,
                    ephemeral_name(instance['ephemeral_gb']),
                    self.fetch_in_place(instance['ephemeral_gb'] * 1024 ** 3))
            self.make_swap(directory, disks, instance['swap_mb'])
        except SpawnFailed as e:
            self.failed_spawns[e.step] += 1
            print('failed spawn: %s' % e, file=sys.stderr, flush=True)
            self.destroy(os.path.basename(directory))
            return None
        self.counts['spawned'] += 1
        return instance

    def make_swap(self, directory, disks, swap_mb):
        if swap_mb:
            self.make_disk(directory, disks, DISK_SWAP, swap_name(swap_mb),
                           self.fetch_in_place(swap_mb * 1024 ** 2))

    def directory(self, instance, suffix=''):
        return os.path.join(self.instances_path, instance['uuid'] + suffix)

    def destroy(self, directory_name):
        # nova's delete_instance_files: rename to _del, then remove.
        with _ignoring_missing():
            os.unlink(records_path(self.records_dir, directory_name))
        path = os.path.join(self.instances_path, directory_name)
        if not os.path.exists(path):
            return
        os.rename(path, path + DELETE_SUFFIX)
        shutil.rmtree(path + DELETE_SUFFIX)

    def delete(self, instance):
        if instance['resizing']:
            self.confirm_resize(instance)
        self.destroy(instance['uuid'])
        self.counts['deleted'] += 1

    def rescue(self, instance):
        directory = self.directory(instance)
        disks = self._disks(directory) + [DISK_RESCUE]
        self.write_disk_info(directory, disks)
        try:
            self.create_image(directory, DISK_RESCUE,
                              cache_name(self.rng.choice(self.rescue_images)),
                              self.fetch_image)
        except SpawnFailed as e:
            self.failed_spawns['rescue ' + e.step] += 1
            with _ignoring_missing():
                os.unlink(os.path.join(directory, DISK_RESCUE))
            return
        instance['rescued'] = True
        self.counts['rescued'] += 1

    def unrescue(self, instance):
        directory = self.directory(instance)
        self.forget_disk(directory, DISK_RESCUE)
        os.unlink(os.path.join(directory, DISK_RESCUE))
        instance['rescued'] = False
        self.counts['unrescued'] += 1

    def _disks(self, directory):
        return [d for d in DISK_NAMES
                if os.path.exists(os.path.join(directory, d))]

    def resize(self, instance):
        # migrate_disk_and_power_off and finish_migration on one host.
        new = self.directory(instance)
        resized = self.directory(instance, RESIZE_SUFFIX)
        self.move_record(os.path.basename(new), os.path.basename(resized))
        os.rename(new, resized)
        os.mkdir(new)
        record = read_json(records_path(self.records_dir,
                                        os.path.basename(resized)))
        disks = []
        for disk in (DISK, DISK_LOCAL):
            if disk not in record:
                continue
            disks.append(disk)
            self.write_disk_info(new, disks)
            shutil.copyfile(os.path.join(resized, disk),
                            os.path.join(new, disk))
            self.record_disk(new, disk, record[disk]['base'],
                             record[disk]['token'])
        # The swap disk is made anew, at the new flavor's size.
        try:
            self.make_swap(new, disks,
                           self.rng.choice((0,) + self.swap_sizes))
        except SpawnFailed as e:
            self.failed_spawns['resize ' + e.step] += 1
        process = subprocess.run(
            [QEMU_IMG, 'resize', '-q', '-f', 'qcow2',
             os.path.join(new, DISK), '+1M'],
            capture_output=True, text=True)
        if process.returncode:
            self.violate('resize of %s failed: %s' % (
                new, process.stderr.strip()))
        instance['resizing'] = True
        instance['rescued'] = False
        self.counts['resized'] += 1

    def confirm_resize(self, instance):
        self.destroy(instance['uuid'] + RESIZE_SUFFIX)
        instance['resizing'] = False
        self.counts['confirmed'] += 1

    def revert_resize(self, instance):
        self.destroy(instance['uuid'])
        resized = instance['uuid'] + RESIZE_SUFFIX
        os.rename(os.path.join(self.instances_path, resized),
                  self.directory(instance))
        self.move_record(resized, instance['uuid'])
        instance['resizing'] = False
        self.counts['reverted'] += 1

    # What happens to a live instance next.

    def step(self, instance):
        """Do one thing to a live instance; return False once deleted."""
        if instance['resizing']:
            if self.rng.random() < 0.7:
                self.confirm_resize(instance)
            else:
                self.revert_resize(instance)
            return True
        if instance['rescued']:
            self.unrescue(instance)
            return True
        roll = self.rng.random()
        if roll < 0.45:
            self.delete(instance)
            return False
        if roll < 0.65:
            self.rescue(instance)
        elif roll < 0.85:
            self.resize(instance)
        return True


def run(compute, cycles, max_live, mean_life, deadline):
    """Spawn ``cycles`` instances and act on them; leave the last ones.

    Instances still alive at the end are left for the final check of the
    invariant.
    """
    live = []
    attempts = 0
    while attempts < cycles and time.monotonic() < deadline:
        now = time.monotonic()
        if len(live) < max_live:
            attempts += 1
            instance = compute.spawn()
            if instance is not None:
                instance['next'] = now + compute.rng.expovariate(
                    1 / mean_life)
                live.append(instance)
        for instance in list(live):
            if instance['next'] > now:
                continue
            if compute.step(instance):
                instance['next'] = now + compute.rng.expovariate(
                    1 / mean_life)
            else:
                live.remove(instance)
        time.sleep(compute.rng.uniform(0, 0.02))
    return attempts, live


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--instances-path', required=True)
    parser.add_argument('--records', required=True)
    parser.add_argument('--report', required=True)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cycles', type=int, default=100)
    parser.add_argument('--max-live', type=int, default=3)
    parser.add_argument('--mean-life', type=float, default=0.8)
    parser.add_argument('--min-age', type=float, default=1.0)
    parser.add_argument('--images', type=int, default=6)
    parser.add_argument('--time-limit', type=float, default=3600)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    compute = Compute(
        args.instances_path, args.records, random.Random(args.seed),
        args.min_age,
        images=['image-%d' % n for n in range(args.images)],
        rescue_images=['rescue-image-0', 'rescue-image-1'],
        swap_sizes=(1, 2), ephemeral_sizes=(1, 2))
    attempts, live = run(compute, args.cycles, args.max_live, args.mean_life,
                         time.monotonic() + args.time_limit)
    write_json(args.report, {
        'cycles': attempts,
        'counts': dict(compute.counts),
        'failed_spawns': dict(compute.failed_spawns),
        'violations': compute.violations,
        'live': [i['uuid'] for i in live],
        'lock_inodes': compute.lock_inodes,
    })
    return 0


if __name__ == '__main__':
    sys.exit(main())
