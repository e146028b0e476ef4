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

"""A pass stuck in the real daemon: the watchdog, the Guru Meditation Report.

The first pass asks qemu-img about an instance disk, and a qemu-img first
on the daemon's PATH never answers, as on an unresponsive NFS server. The
daemon notifies systemd's watchdog (a socket the test reads) until the
pass has been stuck for [DEFAULT] pass_stall_timeout, then stops and says
where the pass is. A Guru Meditation Report says it too: on SIGUSR2 under
eventlet; under the threading backend, where SIGUSR2 reaches the main
process and the pass runs in the worker, when the trigger file is touched.
"""

import glob
import os
import signal
import sys
import time

import pytest

from tests.lib import daemon
from tests.lib import hosttree

X = hosttree.image('image-x')
UUID = '6f1c4a52-2d0e-4c36-9a51-00000000000a'
# A notification every half second, and a pass stuck for 2 s is stuck for
# good; qemu-img would be killed only after [image_cache] inspect_timeout.
WATCHDOG_USEC = 1000000
PING_INTERVAL = WATCHDOG_USEC / 2e6
STALL_TIMEOUT = 2
WATCHDOG = 'WATCHDOG=1'
STUCK_LINE = r'WARNING cachekeeper\.service .* has made no progress'
WAIT = 15

HANGING_QEMU_IMG = '''#!{python}
"""qemu-img that never answers, until the daemon that ran it is gone."""
import os
import time

with open({pid_file!r}, 'w') as f:
    f.write(str(os.getpid()))
parent = os.getppid()
while os.getppid() == parent:
    time.sleep(0.1)
'''


def _gone(pid):
    """Whether process ``pid`` has exited (a zombie has)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            # The state follows the command name, in parentheses.
            return f.read().rpartition(')')[2].split()[0] == 'Z'
    except FileNotFoundError:
        return True


def _wait(condition, what):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError('%s not seen in %ss' % (what, WAIT))


class StuckHost(hosttree.HostTree):
    """An instance on X whose disk qemu-img never answers about.

    The daemon start() starts is killed, and qemu-img with it, by close().
    """

    def __init__(self, root, backend):
        self.backend = backend
        self.bin_dir = os.path.join(root, 'bin')
        self.reports_dir = os.path.join(root, 'reports')
        self.trigger_file = os.path.join(root, 'report-trigger')
        self.qemu_img_pid_file = os.path.join(root, 'qemu-img.pid')
        self.process = None
        super().__init__(root)
        for directory in (self.bin_dir, self.reports_dir):
            os.mkdir(directory)
        open(self.trigger_file, 'w').close()
        qemu_img = os.path.join(self.bin_dir, 'qemu-img')
        with open(qemu_img, 'w') as f:
            f.write(HANGING_QEMU_IMG.format(
                python=sys.executable, pid_file=self.qemu_img_pid_file))
        os.chmod(qemu_img, 0o755)
        self.instance(UUID, {'disk': self.base(X, 2 * hosttree.DAY)})
        self.disk = os.path.realpath(
            os.path.join(self.instances_path, UUID, 'disk'))

    def write_config(self):
        daemon.write_config(
            self.config_file,
            DEFAULT={'instances_path': self.instances_path,
                     'state_path': self.state_path, 'host': 'compute-test',
                     'service_backend': self.backend,
                     'pass_stall_timeout': STALL_TIMEOUT},
            image_cache={'manager_interval': 60, 'inspect_timeout': 60,
                         # Every disk goes to qemu-img, even a plain qcow2.
                         'inspect_method': 'qemu-img'},
            oslo_reports={'log_dir': self.reports_dir,
                          'file_event_handler': self.trigger_file,
                          'file_event_handler_interval': 1})

    def start(self):
        env = dict(os.environ,
                   PATH=os.pathsep.join([self.bin_dir, os.environ['PATH']]))
        self.process = daemon.Daemon(self.root, self.config_file, env=env,
                                     watchdog_usec=WATCHDOG_USEC)
        return self.process

    def reports(self):
        """{path: text} of the Guru Meditation Reports written."""
        reports = {}
        for path in glob.glob(os.path.join(self.reports_dir,
                                           'cachekeeper_gurumeditation_*')):
            with open(path) as f:
                reports[path] = f.read()
        return reports

    def wait_for_report(self, text):
        """Return a report with ``text`` (written whole by then)."""
        return _wait(lambda: next((report for report in self.reports().values()
                                   if text in report), None),
                     'a report with %r' % text)

    def clear_reports(self):
        for path in self.reports():
            os.unlink(path)

    def close(self):
        """Kill the daemon; return whether qemu-img went with it."""
        if self.process is not None:
            self.process.kill()
        try:
            with open(self.qemu_img_pid_file) as f:
                pid = int(f.read())
        except FileNotFoundError:
            return True
        deadline = time.monotonic() + WAIT
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        return _gone(pid)


@pytest.fixture(params=['eventlet', 'threading'])
def host(request, tmp_path):
    host = StuckHost(tmp_path, request.param)
    yield host
    host.close()


def test_a_stuck_pass_stops_the_watchdog_and_is_reported(host):
    process = host.start()

    [warning] = process.wait_for(STUCK_LINE, timeout=WAIT)
    assert 'in step inventory, file %s:' % host.disk in warning
    notifications = list(process.read_notifications())
    # From the start of the service (READY=1), while the pass moved on
    # and while it was stuck for less than pass_stall_timeout.
    assert notifications.index(WATCHDOG) > notifications.index('READY=1')
    assert notifications.count(WATCHDOG) >= 3, notifications
    assert notifications[-1] == 'STATUS=Pass stuck in step inventory, ' \
        'file %s' % host.disk
    time.sleep(4 * PING_INTERVAL)
    assert process.read_notifications().count(WATCHDOG) == (
        notifications.count(WATCHDOG))

    process.signal(signal.SIGUSR2)
    if host.backend == 'threading':
        # The main process reports itself, and where to look instead.
        host.wait_for_report('no pass runs in this process (pid %d)'
                             % process.process.pid)
        host.clear_reports()
        os.utime(host.trigger_file)
    report = host.wait_for_report('step = inventory')
    assert 'Cache pass' in report
    assert 'file = %s\n' % host.disk in report
    assert 'last pass = none yet' in report
    assert 'Traceback' not in process.log()

    assert host.close(), 'qemu-img outlived the daemon'
