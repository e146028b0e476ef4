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

"""A nova-compute worker on nova's real libvirt image code.

Spawns, rescues, unrescues and deletes instances through nova's own
``LibvirtDriver._create_image`` (the driver built without a libvirt
connection: only its image methods run), so every disk goes through
``imagebackend.Backend(use_cow=True).by_name(...).cache(...)``,
``Qcow2.create_image``, ``resolve_driver_format`` (disk.info) and
``libvirt_utils.create_image``, with nova's locks in
``$instances_path/locks``; swap and ephemeral bases are made by nova's
``_create_swap`` (mkswap) and ``_create_ephemeral`` (mkfs). Deleting is
``LibvirtDriver.delete_instance_files`` (rename to ``<uuid>_del``, then
remove), also after a failed spawn, as nova's compute manager does.

Only Glance is faked: ``nova.virt.images.IMAGE_API`` answers ``get`` with a
raw image and ``download`` with a 1 MiB raw file that starts with a random
token, so that nova's own ``fetch_to_raw`` (``.part``, deep inspection,
qemu-img info, rename) runs. Swap and ephemeral bases get such a token too,
written into their unused first bytes right after nova made them, inside
nova's lock. Two spies only record: the touch of a base
(``nova.privsep.path.utime``) and the creation of an overlay
(``libvirt_utils.create_image``, called inside nova's lock for the base),
where the token and inode of the base the disk is made on, and the inode
of the lock file, are recorded for tests/stress/invariant.py and race.py.
privsep runs in-process (``client_mode = False``, as in nova's own
PrivsepFixture).

A failed spawn or rescue is counted by the step of nova's code that
failed (STEPS). Two kinds are allowed: nova's own window between its
unlocked existence check of the base and its touch (the safety check and
the touch, NOVA_WINDOW), and a base that aged out, older than the minimum
age, between the touch and the overlay (with minimum ages of 1 s, a slow
spawn). Any other failure is also a violation.

Run with the python of a virtualenv that holds nova, as
``python -m tests.stress.novareal`` with the arguments of
tests.stress.novasim; it writes the same JSON report. It imports nothing
but nova and the standard library.

With ``--killed-in-disk-info`` it spawns one instance and is killed
(SIGKILL) where nova's ``resolve_driver_format`` has created disk.info
empty and is about to write the file it renames over it: a nova-compute
killed there leaves an empty disk.info for good.
"""

import argparse
import collections
import glob
import json
import logging
import os
import random
import signal
import sys
import time
import traceback
import uuid
import warnings

TOKEN_BYTES = 32
IMAGE_SIZE = 1024 * 1024
# Glance image ids, as uuids.
IMAGE_ID = '00000000-0000-4000-8000-%012d'
RESCUE_IMAGES = ('00000000-0000-4000-9000-000000000000',
                 '00000000-0000-4000-9000-000000000001')
# Flavors: swap in MiB and ephemeral disk in GiB, 0 for none.
SWAP_MB = (0, 1, 2)
EPHEMERAL_GB = (0, 1)

RESCUE_SUFFIX = '.rescue'
# The module whose frames a failed spawn's traceback is cut to.
IMAGEBACKEND = os.path.join('libvirt', 'imagebackend.py')
# The step of nova's code a failure came from: the first of these functions
# called from Qcow2.create_image or Image.cache.
STEPS = {
    'fetch_func_sync': 'fetch',
    'get_image_format': 'safety check',
    '_update_utime_ignore_eacces': 'touch',
    'verify_base_size': 'size',
    'get_disk_backing_file': 'backing file',
    'create_qcow2_image': 'create',
    'get_disk_size': 'resize',
    'resize_image': 'resize',
}
# Between nova's unlocked existence check of the base and its touch.
NOVA_WINDOW = ('safety check', 'touch')
# After the touch: the base may go once older than the minimum age.
AFTER_TOUCH = ('size', 'create')
# How much sooner than the minimum age a base may go (clock granularity).
AGE_SLACK = 0.05


def write_json(path, data):
    """Replace ``path`` with ``data`` as JSON (only this worker writes it)."""
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(json.dumps(data))
    os.replace(tmp, path)


def _stamp(path):
    """Write a random token at the start of ``path``; return it."""
    token = uuid.uuid4().hex
    with open(path, 'r+b') as f:
        f.write(token.encode('ascii'))
    return token


def failed_step(tb):
    """The STEPS name of where in nova's image code ``tb`` failed."""
    frames = traceback.extract_tb(tb)
    start = 0
    for index, frame in enumerate(frames):
        if (frame.filename.endswith(IMAGEBACKEND) and
                frame.name in ('cache', 'create_image')):
            start = index + 1
    for frame in frames[start:]:
        if frame.name in STEPS:
            return STEPS[frame.name]
    last = frames[-1] if frames else None
    return 'other (%s)' % (last.name if last else '?')


class Nova:
    """nova's configuration, driver and objects, with Glance faked."""

    def __init__(self, instances_path, host):
        # nova's modules warn about eventlet and objects at import time.
        warnings.simplefilter('ignore')
        import nova.conf
        from nova import context
        from nova import objects
        import nova.privsep
        import nova.privsep.path
        from nova.virt import images
        from nova.virt.libvirt import driver
        from nova.virt.libvirt import imagebackend
        from nova.virt.libvirt import instancejobtracker
        from nova.virt.libvirt import utils as libvirt_utils

        self.instances_path = instances_path
        # Where imagebackend takes its locks: $instances_path/locks.
        self.locks_dir = os.path.join(instances_path, 'locks')
        conf = nova.conf.CONF
        conf([], project='nova', default_config_files=[])
        conf.set_override('instances_path', instances_path)
        conf.set_override('host', host)
        conf.set_override('use_cow_images', True)
        conf.set_override('images_type', 'qcow2', group='libvirt')
        conf.set_override('subdirectory_name', '_base', group='image_cache')
        conf.set_override('lock_path', self.locks_dir,
                          group='oslo_concurrency')
        nova.privsep.sys_admin_pctxt.client_mode = False
        objects.register_all()
        self.objects = objects
        self.context = context.get_admin_context()
        self.libvirt_utils = libvirt_utils
        self.privsep_path = nova.privsep.path
        self.glance = images.IMAGE_API = FakeGlance()
        self.driver = driver.LibvirtDriver.__new__(driver.LibvirtDriver)
        self.driver.image_backend = imagebackend.Backend(conf.use_cow_images)
        self.driver.job_tracker = instancejobtracker.InstanceJobTracker()
        self.driver_class = driver.LibvirtDriver
        self.imagebackend = imagebackend


class FakeGlance:
    """What nova.virt.images asks of Glance: an image's metadata and data."""

    def __init__(self):
        self.downloads = 0

    def get(self, context, image_id, *args, **kwargs):
        return {'id': image_id, 'disk_format': 'raw',
                'container_format': 'bare', 'size': IMAGE_SIZE}

    def download(self, context, image_id, dest_path=None, **kwargs):
        with open(dest_path, 'wb') as f:
            f.write(uuid.uuid4().hex.encode('ascii'))
            f.truncate(IMAGE_SIZE)
        self.downloads += 1


class Compute:
    """One nova-compute worker on a shared instances_path.

    ``args`` are the worker's arguments (see parse_args). ``report`` is
    what it writes at the end: counts of what it did, failures by step,
    violations, and the inode of each lock file it used.
    """

    def __init__(self, nova, args):
        self.nova = nova
        self.args = args
        self.rng = random.Random(args.seed)
        self.images = [IMAGE_ID % n for n in range(args.images)]
        self.records = {}
        self.report = {'counts': collections.Counter(),
                       'failed_spawns': collections.Counter(),
                       'violations': [], 'lock_inodes': {}}
        self.last_touch = None
        self._spy()

    # The spies: they call nova's function and record what it did.

    def _spy(self):
        utils = self.nova.libvirt_utils
        create_image = utils.create_image
        utime = self.nova.privsep_path.utime

        def touch(path):
            utime(path)
            self.last_touch = time.monotonic()

        def create_overlay(path, disk_format, disk_size, backing_file=None,
                           *args, **kwargs):
            if not backing_file:
                return create_image(path, disk_format, disk_size, *args,
                                    **kwargs)
            # Inside nova's lock for the base: what the overlay is made on.
            with open(backing_file, 'rb') as f:
                token = f.read(TOKEN_BYTES).decode('ascii', 'replace')
                inode = os.fstat(f.fileno()).st_ino
            create_image(path, disk_format, disk_size, backing_file, *args,
                         **kwargs)
            name = os.path.basename(backing_file)
            lock = os.path.join(self.nova.locks_dir, 'nova-' + name)
            self.report['lock_inodes'].setdefault(lock, os.stat(lock).st_ino)
            self._record(path, {'base': name, 'token': token,
                                'inode': inode})

        utils.create_image = create_overlay
        self.nova.privsep_path.utime = touch
        for method in ('_create_swap', '_create_ephemeral'):
            setattr(self.nova.driver, method,
                    self._stamping(getattr(self.nova.driver_class, method)))

    def _stamping(self, make_base):
        """nova's ``make_base``, then a token in the base's first bytes."""
        def make_and_stamp(target, *args, **kwargs):
            make_base(target, *args, **kwargs)
            _stamp(target)
            self.report['counts']['created_in_place'] += 1
        return make_and_stamp

    def _records_path(self, directory_name):
        return os.path.join(self.args.records, directory_name + '.json')

    def _record(self, path, made_on):
        """Record what disk ``path`` is made on, for the checker."""
        directory, disk = os.path.split(path)
        if os.path.dirname(directory) != self.nova.instances_path:
            return
        name = os.path.basename(directory)
        self.records.setdefault(name, {})[disk] = made_on
        write_json(self._records_path(name), self.records[name])

    def _forget(self, name, disk=None):
        if disk is None:
            self.records.pop(name, None)
            try:
                os.unlink(self._records_path(name))
            except FileNotFoundError:
                pass
        elif self.records.get(name, {}).pop(disk, None) is not None:
            write_json(self._records_path(name), self.records[name])

    def violate(self, message):
        self.report['violations'].append(message)
        print('VIOLATION: %s' % message, file=sys.stderr, flush=True)

    def count(self, what):
        self.report['counts'][what] += 1

    # Failures.

    def failed(self, what, error):
        """Count a failure of nova's code by step; violate if not allowed."""
        step = failed_step(error.__traceback__)
        since_touch = (time.monotonic() - self.last_touch
                       if self.last_touch is not None else None)
        if step in AFTER_TOUCH and (since_touch is not None and
                                    since_touch >= self.args.min_age -
                                    AGE_SLACK):
            step += ' (aged out)'
        elif step not in NOVA_WINDOW:
            self.violate('%s failed at step %s, %s after the touch: %s' % (
                what, step, '%.3fs' % since_touch if since_touch is not None
                else 'never', ''.join(traceback.format_exception(error))))
        name = step if what == 'spawn' else '%s %s' % (what, step)
        self.report['failed_spawns'][name] += 1
        print('failed %s: %s: %s' % (what, type(error).__name__, error),
              file=sys.stderr, flush=True)

    # Instance life cycle.

    def new_instance(self):
        choice = self.rng.choice
        flavor = self.nova.objects.Flavor(
            name='race', flavorid='race', memory_mb=64, vcpus=1,
            root_gb=choice((0, 1)), swap=choice(SWAP_MB),
            ephemeral_gb=choice(EPHEMERAL_GB), extra_specs={})
        return self.nova.objects.Instance(
            id=self.rng.getrandbits(31),
            uuid=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            image_ref=choice(self.images), kernel_id='', ramdisk_id='',
            os_type='linux', vm_mode=None, vm_state='building',
            task_state='spawning', flavor=flavor, trusted_certs=None,
            migration_context=None, system_metadata={}, config_drive='')

    @staticmethod
    def disk_mapping(instance):
        """blockinfo's disk mapping for the instance's flavor."""
        disks = [('disk', True), ('disk.local', instance.flavor.ephemeral_gb),
                 ('disk.swap', instance.flavor.swap)]
        return {name: {'bus': 'virtio', 'dev': 'vd' + 'abc'[index],
                       'type': 'disk'}
                for index, (name, wanted) in enumerate(disks) if wanted}

    def spawn(self):
        instance = self.new_instance()
        self.last_touch = None
        try:
            self.nova.driver._create_image(self.nova.context, instance,
                                           self.disk_mapping(instance))
        except Exception as e:
            self.failed('spawn', e)
            self.destroy(instance)
            return None
        instance.vm_state = 'active'
        instance.task_state = None
        self.count('spawned')
        return instance

    def destroy(self, instance):
        self._forget(instance.uuid)
        if not self.nova.driver.delete_instance_files(instance):
            self.violate('deleting %s failed' % instance.uuid)

    def delete(self, instance):
        self.destroy(instance)
        self.count('deleted')

    def rescue(self, instance):
        mapping = {'disk' + RESCUE_SUFFIX: {'bus': 'virtio', 'dev': 'vda',
                                            'type': 'disk'},
                   'disk': {'bus': 'virtio', 'dev': 'vdb', 'type': 'disk'}}
        images = {'image_id': self.rng.choice(RESCUE_IMAGES),
                  'kernel_id': None, 'ramdisk_id': None}
        self.last_touch = None
        try:
            self.nova.driver._create_image(
                self.nova.context, instance, mapping, suffix=RESCUE_SUFFIX,
                disk_images=images)
        except Exception as e:
            self.failed('rescue', e)
            self.unrescue(instance)
            return
        instance.vm_state = 'rescued'
        self.count('rescued')

    def unrescue(self, instance):
        self._forget(instance.uuid, 'disk' + RESCUE_SUFFIX)
        directory = self.nova.libvirt_utils.get_instance_path(instance)
        # nova's unrescue: every *.rescue file goes.
        for path in glob.iglob(os.path.join(directory, '*' + RESCUE_SUFFIX)):
            os.unlink(path)
        if instance.vm_state == 'rescued':
            instance.vm_state = 'active'
            self.count('unrescued')

    def step(self, instance):
        """Do one thing to a live instance; return False once deleted."""
        if instance.vm_state == 'rescued':
            self.unrescue(instance)
            return True
        if self.rng.random() < 0.6:
            self.delete(instance)
            return False
        self.rescue(instance)
        return True


class _KilledWhileWriting:
    """nova's jsonutils for imagebackend, but killed when it writes."""

    def __init__(self, jsonutils):
        self.loads = jsonutils.loads

    @staticmethod
    def dumps(data):
        os.kill(os.getpid(), signal.SIGKILL)


def killed_in_disk_info(compute):
    """Spawn one instance; be killed with disk.info created empty."""
    imagebackend = compute.nova.imagebackend
    imagebackend.jsonutils = _KilledWhileWriting(imagebackend.jsonutils)
    compute.spawn()


def run(compute):
    """Spawn instances and act on each when due; leave the last ones.

    Returns (spawn attempts, the instances still alive).
    """
    args = compute.args
    deadline = time.monotonic() + args.time_limit
    alive = {}
    attempts = 0

    def next_time():
        return time.monotonic() + compute.rng.expovariate(1 / args.mean_life)

    while attempts < args.cycles and time.monotonic() < deadline:
        if len(alive) < args.max_live:
            attempts += 1
            instance = compute.spawn()
            if instance is not None:
                alive[instance.uuid] = [instance, next_time()]
        for key in sorted(alive):
            instance, due = alive[key]
            if due > time.monotonic():
                continue
            if compute.step(instance):
                alive[key][1] = next_time()
            else:
                del alive[key]
        time.sleep(compute.rng.uniform(0, 0.02))
    return attempts, [instance for instance, _due in alive.values()]


# The arguments of tests.stress.novasim (race.py passes them to both):
# name, type and default.
OPTIONS = (('seed', int, 0), ('cycles', int, 100), ('max-live', int, 3),
           ('mean-life', float, 0.8), ('min-age', float, 1.0),
           ('images', int, 6), ('time-limit', float, 3600))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ('instances-path', 'records', 'report'):
        parser.add_argument('--' + name, required=True)
    for name, kind, default in OPTIONS:
        parser.add_argument('--' + name, type=kind, default=default)
    parser.add_argument('--killed-in-disk-info', action='store_true')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    compute = Compute(Nova(os.path.abspath(args.instances_path), 'race'),
                      args)
    if args.killed_in_disk_info:
        killed_in_disk_info(compute)
    attempts, live = run(compute)
    compute.report['counts']['downloads'] = compute.nova.glance.downloads
    write_json(args.report, dict(compute.report, cycles=attempts,
                                 live=[instance.uuid for instance in live]))
    return 0


if __name__ == '__main__':
    sys.exit(main())
