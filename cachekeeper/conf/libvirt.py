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

libvirt_group = cfg.OptGroup(
    'libvirt',
    title='Libvirt Options',
    help="""
The options of nova's ``[libvirt]`` group that bear on disk inspection:
nova's own options of these names, with nova's defaults (those of the nova
release the tests run; older releases hard-coded 30 s and 1 GiB). The unit
reads nova.conf first, so a value set there limits nova's qemu-img and
cachekeeper's alike: what nova can inspect, cachekeeper can.
""")

libvirt_opts = [
    cfg.IntOpt('images_cpu_time_limit',
        default=30,
        min=1,
        mutable=True,
        help="""
Seconds of CPU time a ``qemu-img info`` may use before the kernel kills it
(RLIMIT_CPU). It bounds what a crafted image can make qemu-img compute, not
how long it may wait: a disk on a hung NFS server is bounded by
``[image_cache] inspect_timeout``. 30 s, nova's default, is generous for
``info`` on any real image; a disk whose inspection is killed is reported
and holds back the files it could use.
"""),
    cfg.IntOpt('images_address_space_limit',
        default=2,
        min=1,
        mutable=True,
        help="""
GiB of address space a ``qemu-img info`` may map (RLIMIT_AS), against
images crafted to exhaust memory. The default is nova's. Lower than nova's,
a disk that nova's qemu-img reads could be one cachekeeper's cannot, and
that disk would hold back the files it could use.
"""),
]


def register_opts(conf):
    groups.register(conf, libvirt_group, libvirt_opts)


def list_opts():
    return {libvirt_group: libvirt_opts}
