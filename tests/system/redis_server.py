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

"""A real redis-server on 127.0.0.1 for the tests, and nothing kept."""

import os
import shutil
import socket
import subprocess
import time

START_TIMEOUT = 10


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class RedisServer:
    """redis-server (Debian's) on a free port, without persistence.

    Its log goes into ``directory``. ``stop()`` and ``start()`` restart it
    on the same port, empty, as a restarted server without persistence
    comes back.
    """

    def __init__(self, directory):
        self.binary = shutil.which('redis-server')
        if self.binary is None:
            raise RuntimeError('redis-server is not installed; '
                               'tools/install.sh installs it')
        self.directory = directory
        os.makedirs(self.directory, exist_ok=True)
        self.port = free_port()
        self.process = None

    def url(self, lease):
        """A tooz URL whose locks expire ``lease`` seconds after a beat."""
        return 'redis://127.0.0.1:%d?timeout=%d' % (self.port, lease)

    def start(self):
        log = open(os.path.join(self.directory, 'redis.log'), 'ab')
        with log:
            self.process = subprocess.Popen(
                [self.binary, '--bind', '127.0.0.1', '--port',
                 str(self.port), '--save', '', '--appendonly', 'no',
                 '--dir', self.directory],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self._ping():
                return
            time.sleep(0.05)
        raise RuntimeError('redis-server did not start on port %d'
                           % self.port)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def _ping(self):
        try:
            with socket.create_connection(('127.0.0.1', self.port),
                                          timeout=1) as s:
                s.sendall(b'PING\r\n')
                return s.recv(16).startswith(b'+PONG')
        except OSError:
            return False
