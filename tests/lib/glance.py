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

"""A host that uses a real glance-api: its cache, config and images.

Host is an instances_path, a state_path and a config file that reach
Glance at a URL; upload() puts an image into that Glance.
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import time
import uuid

from oslo_config import cfg

import cachekeeper.conf
from cachekeeper.glance import client as glance_client
from cachekeeper.glance import downloads
from tests.lib import daemon
from tests.lib import qemu

MANAGE = os.path.join(os.path.dirname(sys.executable), 'cachekeeper-manage')


def cache_name(image_id):
    return hashlib.sha1(image_id.encode('utf-8')).hexdigest()


def set_age(path, age):
    when = time.time() - age
    os.utime(path, (when, when))


def read(path):
    with open(path, 'rb') as f:
        return f.read()


def upload(client, data, disk_format='raw', **properties):
    """Create an active public image holding ``data``; return its id."""
    image = client.images.create(name='test', disk_format=disk_format,
                                 container_format='bare',
                                 visibility='public', **properties)
    client.images.upload(image['id'], io.BytesIO(data))
    return image['id']


def make_qcow2(path, size='16M'):
    """A self-contained qcow2 with data at a few places; return its bytes."""
    qemu.qemu_img('create', '-q', '-f', 'qcow2', path, size, timeout=60)
    subprocess.run([qemu.QEMU_IO, '-f', 'qcow2',
                    '-c', 'write -P 0xab 1M 2M',
                    '-c', 'write -P 0x5c 9M 300k', str(path)],
                   check=True, capture_output=True, timeout=60)
    return read(path)


class Host:
    """An instances_path, a state_path and a config using one Glance."""

    def __init__(self, root, glance_url, **options):
        self.root = str(root)
        self.instances_path = os.path.join(self.root, 'instances')
        self.cache_dir = os.path.join(self.instances_path, '_base')
        self.state_path = os.path.join(self.root, 'state')
        self.config_file = os.path.join(self.root, 'cachekeeper.conf')
        self.glance_url = glance_url
        self.options = options
        os.makedirs(self.cache_dir)
        os.makedirs(self.state_path, mode=0o700)
        self.write_config()

    def write_config(self, **options):
        """Write the config file; options are named ``group__option``."""
        sections = {
            'DEFAULT': {'instances_path': self.instances_path,
                        'state_path': self.state_path,
                        'host': 'compute-test'},
            'glance': {'auth_type': 'none',
                       'endpoint_override': self.glance_url},
            'image_cache': {},
        }
        for key, value in dict(self.options, **options).items():
            group, name = key.split('__')
            sections[group][name] = value
        daemon.write_config(self.config_file, **sections)

    def conf(self):
        conf = cfg.ConfigOpts()
        cachekeeper.conf.register_opts(conf)
        conf(['--config-file', self.config_file], project='cachekeeper',
             default_config_files=[])
        return conf

    def path(self, image_id):
        return os.path.join(self.cache_dir, cache_name(image_id))

    def listing(self):
        return sorted(os.listdir(self.cache_dir))

    def precacher(self):
        conf = self.conf()
        return downloads.Precacher.from_conf(conf,
                                             glance_client.make_client(conf))

    def manage(self, *argv):
        return subprocess.run(
            [MANAGE, '--config-file', self.config_file] + list(argv),
            capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL)

    def instance_using(self, image_id):
        """An instance whose disk is a qcow2 overlay of the image's file."""
        directory = os.path.join(self.instances_path, str(uuid.uuid4()))
        os.makedirs(directory)
        disk = os.path.join(directory, 'disk')
        qemu.qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw',
                      '-b', self.path(image_id), disk, timeout=60)
        with open(os.path.join(directory, 'disk.info'), 'w') as f:
            json.dump({disk: 'qcow2'}, f)
