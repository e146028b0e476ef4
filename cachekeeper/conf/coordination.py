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

coordination_group = cfg.OptGroup(
    'coordination',
    title='Coordination Options',
    help="""
Hosts that share one image cache (``instances_path`` on shared storage)
elect one of them to remove files, through a tooz backend.
""")

coordination_opts = [
    cfg.StrOpt('backend_url',
        default='file://$instances_path/locks/cachekeeper-coordination',
        # It may hold passwords (tooz reads them from the netloc and from
        # query parameters): the option dump of debug logs hides it, and
        # everything else shows it through cachekeeper.masking.
        secret=True,
        help="""
The tooz backend URL, such as ``redis://127.0.0.1:6379``. The default file
backend works for one host and, through POSIX locks, for hosts that share
``instances_path`` on NFS with working lock daemons.

Only the leader of an image cache removes files: the host that holds a
tooz lock named after the real path of the cache directory. When nova's
storage registry (``$instances_path/compute_nodes``) lists other hosts,
the backend must reach all of them: a file backend must then be on the
file system of the image cache. With redis or etcd, a leader that dies
is replaced once its lease runs out: tooz's ``timeout`` URL parameter, in
seconds (30 by default), e.g. ``redis://127.0.0.1:6379?timeout=10``.
"""),
]


def register_opts(conf):
    groups.register(conf, coordination_group, coordination_opts)


def list_opts():
    return {coordination_group: coordination_opts}
