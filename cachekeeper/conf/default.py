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

import socket

from oslo_config import cfg
from oslo_utils import netutils

default_opts = [
    cfg.StrOpt('instances_path',
        default='/var/lib/nova/instances',
        help="""
Where nova keeps instance directories.

The image cache lives in its [image_cache] subdirectory_name below this
directory and nova's external lock files in its locks subdirectory. This is
nova's option of the same name: pass nova.conf first on the command line and
cachekeeper uses nova's value.
"""),
    cfg.StrOpt('state_path',
        default='/var/lib/cachekeeper',
        help="""
Directory where cachekeeper keeps its own state: the pass report, the state
database and the scrub queue. It must exist and be writable by the service
user. Set it in cachekeeper.conf: nova.conf's state_path points at nova's
own state directory.
"""),
    cfg.StrOpt('host',
        default=socket.gethostname(),
        sample_default='<current_hostname>',
        help="""
Name of this compute host, as nova knows it (nova's [DEFAULT] host).
"""),
    cfg.StrOpt('my_ip',
        default=netutils.get_my_ipv4(),
        sample_default='<host_ipv4>',
        help="""
This host's IP address, as nova knows it (nova's [DEFAULT] my_ip). It is
used through ``$my_ip`` in other options, such as ``[image_cache]
subdirectory_name = _base_$my_ip`` for a per-host image cache on shared
storage, as nova documents it.
"""),
    cfg.BoolOpt('force_raw_images',
        default=True,
        help="""
Convert images downloaded into the image cache to raw, as nova does. This
is nova's option of the same name and must have nova's value: with it,
``cachekeeper-manage precache`` writes exactly the file nova would have
written.
"""),
    cfg.StrOpt('service_backend',
        default='eventlet',
        choices=[
            ('eventlet', 'Green threads; the oslo.service default.'),
            ('threading', 'Native threads; the service runs in a forked '
                          'worker process.'),
        ],
        help="""
The oslo.service backend the daemon runs on. It is chosen once at start-up,
before any service module is loaded, so a change needs a restart.
"""),
    cfg.StrOpt('metrics_file',
        mutable=True,
        help="""
After each pass, write Prometheus metrics in the text exposition format to
this file (atomically: a temporary file renamed into place), for
node_exporter's textfile collector, whose directory it should be in, with a
``.prom`` suffix. Unset, no metrics are written.
"""),
]


def register_opts(conf):
    conf.register_opts(default_opts)


def list_opts():
    return {'DEFAULT': default_opts}
