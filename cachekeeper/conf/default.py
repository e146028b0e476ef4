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
    cfg.IntOpt('pass_stall_timeout',
        default=600,
        min=1,
        mutable=True,
        help="""
Seconds a running pass (or drain of the scrub queue) may go without moving on
to another step or file, or receiving more bytes of a download. Past that,
the daemon logs a warning naming the step and the file and stops notifying
systemd's watchdog: systemd kills and restarts it once the unit's
WatchdogSec= has gone by without a notification. Without WatchdogSec= nothing
is checked.

Choose it longer than the longest single step a healthy host takes: one
``qemu-img info`` call ([image_cache] inspect_timeout, plus the few seconds a
killed one takes to be reaped), one read or stat on slow shared storage,
waiting for nova's lock on a file nova is working on, deleting the largest
quarantined file, one Glance request, or converting the largest precached
image to raw. Choose it short enough that a pass stuck for good, typically on
a hung NFS server, is restarted before the host needs the next pass. The
limits qemu-img runs under as in nova ([libvirt] images_cpu_time_limit and
images_address_space_limit) do not bound its wall time: a process blocked on
I/O reaches neither.
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
