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

libvirt_group = cfg.OptGroup(
    'libvirt',
    title='Libvirt Options',
    help="""
The options of nova's ``[libvirt]`` group that bear on disk inspection. They
keep nova's names and defaults.
""")

libvirt_opts = [
    cfg.IntOpt('images_cpu_time_limit',
        default=30,
        min=1,
        mutable=True,
        help='CPU time process limit in seconds for qemu-img'),
    cfg.IntOpt('images_address_space_limit',
        default=2,
        min=1,
        mutable=True,
        help='Address space process limit in gigabytes for qemu-img'),
]


def register_opts(conf):
    conf.register_group(libvirt_group)
    conf.register_opts(libvirt_opts, group=libvirt_group)


def list_opts():
    return {libvirt_group: libvirt_opts}
