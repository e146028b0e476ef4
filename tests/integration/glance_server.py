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

"""A real glance-api on 127.0.0.1 for the integration tests.

Glance runs from its own virtualenv (``.venv-glance``, made by
tools/install.sh) under gunicorn, with an SQLite database and the file
store, and without Keystone: the default paste pipeline gives every request
an admin context, and a policy file opens the few rules that still ask for
an admin role. Clients reach it with ``auth_type = none`` and
``endpoint_override``, as a keystone-less deployment would.
"""

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request

from glanceclient import client as glance_client
from keystoneauth1 import noauth
from keystoneauth1 import session as ks_session

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
VENV = os.path.join(ROOT, '.venv-glance')

START_TIMEOUT = 60
STOP_TIMEOUT = 10

POLICY = '''"publicize_image": ""
"communitize_image": ""
"delete_image": ""
"modify_image": ""
'''

API_CONF = '''[DEFAULT]
enabled_backends = fs:file
worker_self_reference_url = {url}
image_cache_dir = {root}/cache
log_file = {root}/glance-api.log
[database]
connection = sqlite:///{root}/glance.sqlite
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = {root}/images/
[os_glance_staging_store]
filesystem_store_datadir = {root}/staging/
[os_glance_tasks_store]
filesystem_store_datadir = {root}/tasks/
[paste_deploy]
config_file = {root}/etc/glance-api-paste.ini
[oslo_policy]
enforce_new_defaults = False
enforce_scope = False
policy_file = {root}/etc/policy.yaml
[oslo_concurrency]
lock_path = {root}/locks
'''


class GlanceUnavailable(Exception):
    """The glance virtualenv is missing or the server did not start."""


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class GlanceServer:
    """One glance-api with its own directory, database and port."""

    def __init__(self, root):
        self.root = str(root)
        self.port = free_port()
        self.url = 'http://127.0.0.1:%d' % self.port
        self.process = None
        self._output = None

    @staticmethod
    def available():
        """None if glance can run here, else why not."""
        for tool in ('glance-manage', 'gunicorn'):
            if not os.access(os.path.join(VENV, 'bin', tool), os.X_OK):
                return ('%s has no %s: run tools/install.sh'
                        % (os.path.relpath(VENV, ROOT), tool))
        return None

    def start(self):
        """Create the database and start serving; return once it serves."""
        missing = self.available()
        if missing:
            raise GlanceUnavailable(missing)
        if not os.path.exists(os.path.join(self.root, 'glance.sqlite')):
            self._write_config()
            self._run(os.path.join(VENV, 'bin', 'glance-manage'),
                      '--config-file', self.config_file, 'db', 'sync')
        self._output = open(os.path.join(self.root, 'gunicorn.out'), 'ab')
        env = dict(os.environ, OS_GLANCE_CONFIG_DIR=self.etc_dir)
        # A session of its own: stop() and kill() reach the workers too.
        self.process = subprocess.Popen(
            [os.path.join(VENV, 'bin', 'gunicorn'),
             '--bind', '127.0.0.1:%d' % self.port,
             '--workers', '1', '--threads', '4', '--worker-class', 'gthread',
             '--timeout', '120', '--no-control-socket',
             'glance.wsgi.api:application'],
            cwd=self.root, env=env, stdin=subprocess.DEVNULL,
            stdout=self._output, stderr=subprocess.STDOUT,
            start_new_session=True)
        self._wait_until_serving()

    def stop(self):
        """Stop the server gracefully (kill it if it does not stop)."""
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reap()

    def kill(self):
        """SIGKILL the server and all its workers at once."""
        self._signal(signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT)
        self._reap()

    def client(self):
        """A glanceclient that talks to this server with no auth at all."""
        session = ks_session.Session(auth=noauth.NoAuth())
        return glance_client.Client('2', session=session,
                                    endpoint_override=self.url)

    def image_path(self, image_id):
        """Where the file store keeps the data of ``image_id``."""
        return os.path.join(self.root, 'images', image_id)

    def set_checksums(self, image_id, size, checksum, os_hash_value):
        """Rewrite what glance's database says about an image's data."""
        with sqlite3.connect(os.path.join(self.root, 'glance.sqlite')) as db:
            db.execute('UPDATE images SET size = ?, checksum = ?, '
                       'os_hash_value = ? WHERE id = ?',
                       (size, checksum, os_hash_value, image_id))

    def set_hash_algorithm(self, image_id, algorithm):
        """Make glance's database name another multihash algorithm."""
        with sqlite3.connect(os.path.join(self.root, 'glance.sqlite')) as db:
            db.execute('UPDATE images SET os_hash_algo = ? WHERE id = ?',
                       (algorithm, image_id))

    @property
    def etc_dir(self):
        return os.path.join(self.root, 'etc')

    @property
    def config_file(self):
        return os.path.join(self.etc_dir, 'glance-api.conf')

    def log_tail(self, lines=30):
        text = ''
        for name in ('gunicorn.out', 'glance-api.log'):
            path = os.path.join(self.root, name)
            try:
                with open(path, errors='replace') as f:
                    text += ''.join(f.readlines()[-lines:])
            except FileNotFoundError:
                pass
        return text

    def _write_config(self):
        for sub in ('etc', 'images', 'staging', 'tasks', 'locks', 'cache'):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        paste = os.path.join(self.etc_dir, 'glance-api-paste.ini')
        shutil.copyfile(os.path.join(VENV, 'etc', 'glance',
                                     'glance-api-paste.ini'), paste)
        with open(paste) as f:
            text = f.read()
        # The health check's off switch must not point into /etc.
        text = text.replace('/etc/glance/healthcheck_disable',
                            os.path.join(self.root, 'healthcheck_disable'))
        with open(paste, 'w') as f:
            f.write(text)
        with open(os.path.join(self.etc_dir, 'policy.yaml'), 'w') as f:
            f.write(POLICY)
        with open(self.config_file, 'w') as f:
            f.write(API_CONF.format(root=self.root, url=self.url))

    def _run(self, *command):
        result = subprocess.run(command, cwd=self.root, capture_output=True,
                                text=True, timeout=START_TIMEOUT,
                                stdin=subprocess.DEVNULL)
        if result.returncode:
            raise GlanceUnavailable('%s failed (%d): %s' % (
                os.path.basename(command[0]), result.returncode,
                result.stderr[-2000:]))

    def _wait_until_serving(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reap()
                raise GlanceUnavailable('glance-api exited with %s:\n%s' % (
                    self.process.returncode, self.log_tail()))
            try:
                with urllib.request.urlopen(self.url + '/healthcheck',
                                            timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.kill()
        raise GlanceUnavailable('glance-api did not serve within %d s:\n%s'
                                % (START_TIMEOUT, self.log_tail()))

    def _signal(self, signum):
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def _reap(self):
        if self._output is not None:
            self._output.close()
            self._output = None
