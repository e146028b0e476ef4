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

"""Build a compute host's instances_path as nova's libvirt driver lays it out.

Real files and real qcow2 images made by qemu-img, with explicit
modification times, and cachekeeper-manage run on them as a subprocess.
"""

import hashlib
import json
import os
import subprocess
import sys
import time

from tests.lib import nova
from tests.lib import qemu

MANAGE = os.path.join(os.path.dirname(sys.executable), 'cachekeeper-manage')

MINUTE = 60
HOUR = 3600
DAY = 24 * HOUR

# nova's ephemeral file system hashes: md5(fs)[:7] for vfat and ext4.
VFAT = '0706d66'
EXT4 = '40d1d2c'

# The minimum ages every scenario runs with, so verdicts do not depend on
# the defaults; rows override them through their own options.
DEFAULT_OPTIONS = {
    'remove_unused_original_minimum_age_seconds': DAY,
    'remove_unused_resized_minimum_age_seconds': HOUR,
}

PASS_TIMEOUT = 30


def image(image_id):
    """The cache file name of a glance image, as nova derives it."""
    return hashlib.sha1(image_id.encode('utf-8')).hexdigest()


def image_format(path):
    """qcow2 or raw: what nova records as the format of a backing file."""
    with open(path, 'rb') as f:
        return 'qcow2' if f.read(4) == b'QFI\xfb' else 'raw'


def set_age(path, age):
    when = time.time() - age
    os.utime(path, (when, when), follow_symlinks=False)


def entries(report):
    """{cache file name: report entry} of a pass report."""
    return {os.path.basename(entry['path']): entry
            for entry in report['files']}


def snapshot(root):
    """{relative path: (type bits, size, mtime_ns, inode)} of a whole tree."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            state[os.path.relpath(path, root)] = (
                st.st_mode & 0o170000, st.st_size, st.st_mtime_ns, st.st_ino)
    return state


class HostTree:
    """An instances_path with its _base, a state_path and a config file."""

    def __init__(self, root, locks_dir=True):
        self.root = str(root)
        self.instances_path = os.path.join(self.root, 'instances')
        self.cache_dir = os.path.join(self.instances_path, '_base')
        self.locks_dir = os.path.join(self.instances_path, 'locks')
        self.state_path = os.path.join(self.root, 'state')
        self.config_file = os.path.join(self.root, 'cachekeeper.conf')
        os.makedirs(self.cache_dir)
        os.makedirs(self.state_path)
        if locks_dir:
            os.makedirs(self.locks_dir)
        self.write_config()

    def cache_path(self, name):
        return os.path.join(self.cache_dir, name)

    def base(self, name, age, fmt='raw', backing=None):
        """Make _base/name, aged ``age`` seconds; return its path.

        A qcow2 base (a resized copy) has ``backing`` as its backing file,
        named by absolute path as nova does.
        """
        path = self.cache_path(name)
        if backing is None:
            with open(path, 'wb') as f:
                f.truncate(1024 * 1024)
        else:
            self.overlay(path, backing)
        set_age(path, age)
        return path

    @staticmethod
    def overlay(path, backing, backing_fmt='raw', unsafe=False):
        """Make a qcow2 overlay of ``backing`` (unsafe: without opening it)."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        args = ['create', '-q', '-f', 'qcow2', '-F', backing_fmt,
                '-b', backing, path]
        if unsafe:
            args[1:1] = ['-u']
            args.append('1M')
        qemu.qemu_img(*args)
        return path

    def instance(self, directory, disks, formats=None, libvirt_xml=None):
        """Make an instance directory under instances_path.

        ``disks`` maps disk names to the cache file each is an overlay of,
        or to None for a flat raw disk. disk.info records every disk's
        format, as nova's Qcow2 and Flat backends do, unless ``formats``
        says otherwise ({} for no disk.info). ``libvirt_xml`` is a dict of
        image_id, swap_mb and ephemeral_gb for nova's domain metadata.
        """
        path = os.path.join(self.instances_path, directory)
        os.makedirs(path, exist_ok=True)
        recorded = {}
        for name, backing in disks.items():
            disk = os.path.join(path, name)
            if backing is None:
                with open(disk, 'wb') as f:
                    f.truncate(1024 * 1024)
                recorded[name] = 'raw'
            else:
                self.overlay(disk, backing, backing_fmt=image_format(
                    os.path.join(path, backing)))
                recorded[name] = 'qcow2'
        if formats is not None:
            recorded = formats
        if recorded:
            with open(os.path.join(path, 'disk.info'), 'w') as f:
                json.dump({os.path.join(path, name): fmt
                           for name, fmt in recorded.items()}, f)
        if libvirt_xml is not None:
            with open(os.path.join(path, 'libvirt.xml'), 'w') as f:
                f.write(nova.libvirt_xml(directory=path, **libvirt_xml))
        return path

    def write_config(self, **image_cache):
        options = dict(DEFAULT_OPTIONS, **image_cache)
        lines = ['[DEFAULT]',
                 'instances_path = %s' % self.instances_path,
                 'state_path = %s' % self.state_path,
                 'host = compute-test',
                 '[image_cache]']
        lines.extend('%s = %s' % item for item in sorted(options.items()))
        with open(self.config_file, 'w') as f:
            f.write('\n'.join(lines) + '\n')

    def manage_command(self, *argv):
        return [MANAGE, '--config-file', self.config_file] + list(argv)

    def manage(self, *argv, path_prefix=None, wrapper=None):
        """Run cachekeeper-manage on this host; return the CompletedProcess.

        ``path_prefix`` goes first on PATH; ``wrapper`` is a command that
        runs the command line appended to it.
        """
        env = dict(os.environ)
        if path_prefix:
            env['PATH'] = '%s:%s' % (path_prefix, env['PATH'])
        return subprocess.run(list(wrapper or ()) + self.manage_command(*argv),
                              capture_output=True, text=True, env=env,
                              timeout=PASS_TIMEOUT)

    def run_pass(self, *flags, path_prefix=None, wrapper=None):
        """Run ``cache pass --json``; return (process, report dict)."""
        process = self.manage('cache', 'pass', '--json', *flags,
                              path_prefix=path_prefix, wrapper=wrapper)
        try:
            report = json.loads(process.stdout)
        except ValueError:
            raise AssertionError(
                'cache pass printed no JSON (exit %d): %s\n%s' % (
                    process.returncode, process.stdout, process.stderr))
        return process, report
