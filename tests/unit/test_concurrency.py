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

"""The backend choice, in a new interpreter each: it patches the process."""

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from cachekeeper import concurrency
concurrency.init_backend(sys.argv[1])
from eventlet import patcher
print(json.dumps({'socket_patched': patcher.is_monkey_patched('socket'),
                  'greendns': 'dns' in sys.modules}))
"""


def probe(backend, **environ):
    env = {name: value for name, value in os.environ.items()
           if name != 'EVENTLET_NO_GREENDNS'}
    env.update(environ)
    process = subprocess.run([sys.executable, '-c', PROBE, backend],
                             capture_output=True, text=True, env=env,
                             timeout=60, check=True)
    return json.loads(process.stdout)


@pytest.mark.parametrize('backend, patched', [('eventlet', True),
                                              ('threading', False)])
def test_backend_patches_only_under_eventlet(backend, patched):
    # eventlet's green resolver (dnspython) is not loaded by default.
    assert probe(backend) == {'socket_patched': patched, 'greendns': False}


def test_green_resolver_when_asked_for():
    assert probe('eventlet', EVENTLET_NO_GREENDNS='no') == {
        'socket_patched': True, 'greendns': True}
