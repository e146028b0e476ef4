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

"""Choose the oslo.service backend, once, before any service module loads.

oslo_service.service, loopingcall and threadgroup bind their classes to the
backend when they are imported, so the choice must come first; eventlet must
also patch the standard library before threads or sockets are made.
"""

import os
import warnings

# Both backends import eventlet (futurist does even for threading), and its
# deprecation banner tells an operator nothing they can act on.
warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')
# As nova does: the system's resolver rather than eventlet's green one,
# which loads dnspython (a sixth of the daemon's memory) and has had its
# own bugs; the few names the daemon resolves (Glance, Keystone, a tooz
# backend) are looked up briefly and rarely. An operator may still ask for
# it in the environment.
os.environ.setdefault('EVENTLET_NO_GREENDNS', 'yes')

from oslo_service import backend  # noqa: E402

EVENTLET = 'eventlet'
THREADING = 'threading'


def init_backend(name):
    if name == EVENTLET:
        import eventlet
        eventlet.monkey_patch()
        backend.init_backend(backend.BackendType.EVENTLET)
    else:
        backend.init_backend(backend.BackendType.THREADING)
