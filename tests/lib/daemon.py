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

"""Run the cachekeeper daemon as a real subprocess and watch its log."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

BIN_DIR = os.path.dirname(sys.executable)
# Runs the command line appended to it with WATCHDOG_PID set to its own pid,
# which exec keeps: the daemon's, as systemd sets it.
WITH_WATCHDOG_PID = ('sh', '-c', 'export WATCHDOG_PID=$$; exec "$@"', 'sh')


def console_script(name):
    return os.path.join(BIN_DIR, name)


def write_config(path, **sections):
    """Write an ini file from {'section': {'option': value}}."""
    with open(path, 'w') as f:
        for section, options in sections.items():
            f.write('[%s]\n' % section)
            for name, value in options.items():
                f.write('%s = %s\n' % (name, value))


class Daemon:
    """One cachekeeper process with its log file and systemd socket.

    ``wrapper`` is a command that runs the command line appended to it
    (it must exec it, so that the process is the daemon); ``env`` replaces
    this process's environment. ``watchdog_usec`` sets systemd's watchdog
    for the daemon, as WatchdogSec= would.
    """

    def __init__(self, workdir, config_file, wrapper=(), env=None,
                 watchdog_usec=None):
        self.log_path = os.path.join(workdir, 'daemon.log')
        self.notify_path = os.path.join(workdir, 'notify.sock')
        self.notify_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify_socket.bind(self.notify_path)
        self.notify_socket.setblocking(False)
        self.notifications = []
        env = dict(os.environ if env is None else env,
                   NOTIFY_SOCKET=self.notify_path)
        if watchdog_usec is not None:
            env['WATCHDOG_USEC'] = str(watchdog_usec)
            wrapper = WITH_WATCHDOG_PID + tuple(wrapper)
        with open(self.log_path, 'wb') as log:
            self.process = subprocess.Popen(
                list(wrapper) + [console_script('cachekeeper'),
                                 '--config-file', config_file],
                stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)

    def log(self):
        with open(self.log_path, errors='replace') as f:
            return f.read()

    def lines(self, pattern):
        return [line for line in self.log().splitlines()
                if re.search(pattern, line)]

    def wait_for(self, pattern, count=1, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.lines(pattern)
            if len(found) >= count:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError('%d lines matching %r not seen in %ss; log:\n%s'
                             % (count, pattern, timeout, self.log()))

    def read_notifications(self):
        while True:
            try:
                self.notifications.append(
                    self.notify_socket.recv(4096).decode())
            except BlockingIOError:
                return self.notifications

    def signal(self, signo):
        self.process.send_signal(signo)

    def stop(self, timeout=5):
        """SIGTERM; return (exit status, seconds it took)."""
        started = time.monotonic()
        self.signal(signal.SIGTERM)
        status = self.process.wait(timeout)
        return status, time.monotonic() - started

    def stop_cleanly(self, timeout=20):
        """SIGTERM; assert that it exited 0 with no traceback in its log.

        Returns the log.
        """
        status, _seconds = self.stop(timeout)
        log = self.log()
        assert status == 0, log
        assert 'Traceback' not in log, log
        return log

    def kill(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.notify_socket.close()
