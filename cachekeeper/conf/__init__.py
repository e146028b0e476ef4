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
from oslo_reports import opts as gmr_opts

from cachekeeper.conf import coordination
from cachekeeper.conf import default
from cachekeeper.conf import glance
from cachekeeper.conf import image_cache
from cachekeeper.conf import inventory
from cachekeeper.conf import libvirt
from cachekeeper.conf import scrubber

CONF = cfg.CONF

ALL_MODULES = (
    default,
    image_cache,
    inventory,
    libvirt,
    scrubber,
    glance,
    coordination,
)


def register_opts(conf):
    for module in ALL_MODULES:
        module.register_opts(conf)
    # [oslo_reports], for the daemon's Guru Meditation Reports: checked
    # with the rest of the configuration.
    gmr_opts.set_defaults(conf)


register_opts(CONF)
