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

"""Instance directories of real images, as nova's libvirt driver makes them.

Host is an instances_path with its cache directory and an Inventory over
it; its images are made by the real qemu-img, even while a fake one
(install_fake_qemu_img, in a directory first on PATH) is what a pass runs.
"""

import json
import os
import textwrap
import time

from cachekeeper.cache import evidence
from cachekeeper.cache import inspect
from cachekeeper.cache import inventory
from tests.lib import qemu


class Host:
    """An instances_path with its cache directory, made of real images."""

    def __init__(self, root):
        self.root = root
        self.instances = root / 'instances'
        self.cache = self.instances / '_base'
        self.cache.mkdir(parents=True)
        (self.instances / 'locks').mkdir()
        self.inspector = inspect.Inspector(timeout=5, workers=4)
        self.inventory = inventory.Inventory(
            str(self.instances), str(self.cache), self.inspector)

    def base(self, name, fmt='raw', backing=None, backing_fmt='raw'):
        path = self.cache / name
        if backing is None:
            qemu.qemu_img('create', '-q', '-f', fmt, path, '1M')
        else:
            qemu.qemu_img('create', '-q', '-f', fmt, '-F', backing_fmt, '-b',
                     backing, path)
        return path

    def instance(self, name):
        path = self.instances / name
        path.mkdir(exist_ok=True)
        return path

    def instance_over(self, name, base):
        """Instance directory ``name`` with a disk over cache file ``base``."""
        path = self.instance(name)
        self.overlay(path / 'disk', self.cache / base)
        return path

    @staticmethod
    def overlay(path, backing, backing_fmt='raw', unsafe=False):
        """Make a qcow2 over ``backing``; unsafe: without opening it."""
        args = ['create', '-q', '-f', 'qcow2', '-F', backing_fmt,
                '-b', backing]
        if unsafe:
            args += ['-u', path, '1M']
        else:
            args.append(path)
        qemu.qemu_img(*args)
        return path

    def disk_info(self, directory, formats):
        (directory / 'disk.info').write_text(json.dumps(
            {str(directory / name): fmt for name, fmt in formats.items()}))

    def cache_names(self):
        return set(os.listdir(self.cache))

    def collect(self):
        return self.inventory.collect(self.cache_names())

    def backdate(self):
        """Age every directory and metadata file past the racy window."""
        past = time.time() - 3600
        for dirpath, dirnames, filenames in os.walk(self.instances):
            os.utime(dirpath, (past, past))
            for name in filenames:
                if name in ('disk.info', 'libvirt.xml'):
                    os.utime(os.path.join(dirpath, name), (past, past))


def install_fake_qemu_img(bin_dir, body):
    """Make ``bin_dir``/qemu-img a shell script running ``body``."""
    script = bin_dir / 'qemu-img'
    script.write_text('#!/bin/sh\n' + textwrap.dedent(body))
    script.chmod(0o755)
    return script


def sources(usage):
    """{name: sorted sources} of a Usage."""
    return {name: sorted(r.source for r in refs)
            for name, refs in usage.references.items()}


def backdate_disks(host):
    past = time.time() - 3600
    for path in host.instances.glob('*/disk*'):
        os.utime(path, (past, past))
    # Their change times are now: wait them past the racy window.
    time.sleep(evidence.RACY_SECONDS + 0.1)


def instance_on_a(host):
    """Instance directory 'inst' with a disk over cache file A, all past
    the racy window.
    """
    host.base('A')
    inst = host.instance_over('inst', 'A')
    host.backdate()
    backdate_disks(host)
    return inst


def next_pass(host, memory):
    """collect() as the next pass of a daemon: a new Inventory."""
    host.inventory = inventory.Inventory(
        str(host.instances), str(host.cache), host.inspector, memory=memory)
    return host.collect()
