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

from oslo_config import cfg

from cachekeeper.conf import groups

inventory_group = cfg.OptGroup(
    'inventory',
    title='Inventory Options',
    help="""
Where a pass learns which image cache files are in use, besides the
instance directories under ``instances_path`` and, before each removal, the
image locks of running QEMU processes, which are always read.
""")

inventory_opts = [
    cfg.StrOpt('libvirt_uri',
        default='',
        mutable=True,
        help="""
libvirt connection URI, such as ``qemu:///system``, to read the domains
defined on this host through a read-only connection. Every disk of every
defined domain, running or shut off, and its whole backing chain, keeps
the image cache files it reaches, even when the disk lies outside
``instances_path``; so does the image named by nova's metadata in the
domain. While libvirt cannot be reached, a pass removes nothing. Needs the
libvirt Python module (libvirt-python). Empty: libvirt is not asked.
"""),
]


def register_opts(conf):
    groups.register(conf, inventory_group, inventory_opts)


def list_opts():
    return {inventory_group: inventory_opts}
