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

"""How much memory the daemon's imports take before any pass.

Each line is a new interpreter that imports one more layer, as the daemon
does (eventlet monkey-patched, without its green resolver) and prints its
resident memory: the interpreter alone, the libraries the product fixes,
then cachekeeper's own modules. Run with the project's virtualenv::

    .venv/bin/python bench/footprint.py
"""

import os
import subprocess
import sys

LAYERS = [
    ('python', ''),
    ('+ eventlet, monkey-patched', '''
import eventlet
eventlet.monkey_patch()
'''),
    ('+ oslo.service, oslo.log, oslo.config', '''
from oslo_service import backend
backend.init_backend(backend.BackendType.EVENTLET)
from oslo_config import cfg
from oslo_log import log
from oslo_service import service
'''),
    ('+ keystoneauth1 loading (the [glance] options)', '''
from keystoneauth1 import loading
'''),
    ('+ sqlite3, oslo.concurrency, oslo.utils imageutils', '''
import sqlite3
from oslo_concurrency import processutils
from oslo_utils import imageutils
'''),
    ('+ cachekeeper (what the daemon imports)', '''
from cachekeeper import concurrency
concurrency.init_backend(concurrency.EVENTLET)
from cachekeeper.cmd import daemon
from cachekeeper import service
'''),
]

REPORT = '''
with open('/proc/self/status') as f:
    for line in f:
        if line.startswith('VmRSS:'):
            print(int(line.split()[1]) / 1024)
'''


ENV = dict(os.environ, EVENTLET_NO_GREENDNS='yes', PYTHONWARNINGS='ignore')


def rss_mb(code, python=sys.executable):
    """The resident memory (MB) of a new interpreter once it ran ``code``."""
    return float(subprocess.run(
        [python, '-c', code + REPORT], env=ENV, check=True,
        capture_output=True, text=True).stdout)


def floor_rss_mb(python=sys.executable):
    """The daemon's import floor: every layer, in one interpreter."""
    return rss_mb(''.join(layer for _title, layer in LAYERS), python)


def main():
    code = ''
    previous = None
    for title, layer in LAYERS:
        code += layer
        rss = rss_mb(code)
        added = '' if previous is None else '(+%.1f)' % (rss - previous)
        print('%-52s %6.1f MB %s' % (title, rss, added))
        previous = rss


if __name__ == '__main__':
    main()
