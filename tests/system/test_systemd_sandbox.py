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

"""The daemon in the sandbox of etc/systemd/cachekeeper.service.

Under systemd, the daemon runs with the unit's own properties (the test
skips where PID 1 is not systemd). Everywhere else, where root can make a
mount namespace, ProtectSystem=strict and ReadWritePaths= are made by hand,
as systemd makes them.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from cachekeeper import config
from tests.lib import daemon
from tests.lib import locks
from tests.lib import unitfile

READ_ONLY = 'is on a read-only file system (systemd ProtectSystem?)'

# What systemd does for ProtectSystem=strict with one ReadWritePaths=
# entry: the tree ("$1") is bound onto itself and made read-only, then the
# writable directory below it ("$2") is bound onto itself and made
# writable again. The rest of the arguments is the command to exec.
_READ_WRITE_PATHS = (
    'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && '
    'mount --bind "$2" "$2" && mount -o remount,bind,rw "$2" && '
    'shift 2 && exec "$@"')


def _skip_without_mount_namespaces():
    if os.geteuid() != 0:
        pytest.skip('mounting a read-only tree needs root')
    if not shutil.which('unshare'):
        pytest.skip('unshare (util-linux) is not installed')
    probe = subprocess.run(['unshare', '--mount', 'true'],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip('cannot make a mount namespace here: %s'
                    % probe.stderr.strip())


class ReadOnlyHost:
    """A tree that is read-only to the daemon but for ``inside``.

    ``outside`` and ``inside`` each have a state directory and a metrics
    directory; nova's instances are inside.
    """

    def __init__(self, tmp):
        self.tmp = tmp
        self.tree = os.path.join(tmp, 'host')
        self.outside = os.path.join(self.tree, 'outside')
        self.inside = os.path.join(self.tree, 'inside')
        for directory in (self.outside, self.inside):
            os.makedirs(os.path.join(directory, 'metrics'))
            os.makedirs(os.path.join(directory, 'state'), 0o700)
        self.instances_path = os.path.join(self.inside, 'instances')
        os.makedirs(os.path.join(self.instances_path, '_base'))
        self.config_file = os.path.join(tmp, 'cachekeeper.conf')

    def configure(self, state_path, metrics_file):
        daemon.write_config(
            self.config_file,
            DEFAULT={'instances_path': self.instances_path,
                     'state_path': state_path,
                     'metrics_file': metrics_file},
            image_cache={'manager_interval': 1})
        return self.config_file

    def wrapper(self):
        """The command that runs the one appended to it in the sandbox."""
        return ('unshare', '--mount', '--propagation', 'private',
                'sh', '-c', _READ_WRITE_PATHS, 'sandbox',
                self.tree, self.inside)


@pytest.fixture
def read_only_host(tmp_path):
    _skip_without_mount_namespaces()
    return ReadOnlyHost(str(tmp_path))


@pytest.mark.parametrize('option, problem', [
    ('state_path', '[DEFAULT] state_path: {outside}/state'),
    ('metrics_file', '[DEFAULT] metrics_file: directory {outside}/metrics'),
])
def test_a_path_outside_read_write_paths_stops_the_daemon(read_only_host,
                                                          option, problem):
    host = read_only_host
    where = {'state_path': host.inside, 'metrics_file': host.inside}
    where[option] = host.outside
    host.configure(
        state_path=os.path.join(where['state_path'], 'state'),
        metrics_file=os.path.join(where['metrics_file'], 'metrics',
                                  'cachekeeper.prom'))
    result = subprocess.run(
        host.wrapper() + (daemon.console_script('cachekeeper'),
                          '--config-file', host.config_file),
        capture_output=True, text=True, timeout=60)
    # Exit status 2: the unit does not restart it.
    assert result.returncode == config.EXIT_CONFIG, result.stderr
    assert result.stderr.splitlines() == [
        'cachekeeper: %s %s' % (problem.format(outside=host.outside),
                                READ_ONLY)]


def test_paths_inside_read_write_paths_work(read_only_host):
    host = read_only_host
    metrics_file = os.path.join(host.inside, 'metrics', 'cachekeeper.prom')
    host.configure(state_path=os.path.join(host.inside, 'state'),
                   metrics_file=metrics_file)
    process = daemon.Daemon(host.tmp, host.config_file,
                            wrapper=host.wrapper())
    try:
        process.wait_for(r'Pass done .*; 0 errors')
        # Written through the writable bind, so seen out here too.
        with open(metrics_file) as f:
            assert 'cachekeeper_last_pass_timestamp_seconds' in f.read()
        process.stop_cleanly()
    finally:
        process.kill()
    # The sandbox held: nothing was written outside.
    for directory in ('metrics', 'state'):
        assert os.listdir(os.path.join(host.outside, directory)) == []


# The owner libvirt gives the disks of a running guest: cachekeeper
# refreshes their times through CAP_FOWNER.
QEMU_UID = locks.NOVA_UID + 100

# The unit's properties that name this machine's paths and users, or that
# would hide a failure: the transient service gets the test's instead.
_NOT_COPIED = frozenset([
    'ExecStart', 'User', 'Group', 'ReadWritePaths', 'StateDirectory',
    'StateDirectoryMode', 'LogsDirectory', 'Restart', 'RestartSec',
    'RestartPreventExitStatus'])
_HOME_DIRECTORIES = ('/home', '/root', '/run/user')


def _systemctl(*args, check=True):
    return subprocess.run(('systemctl',) + args, capture_output=True,
                          text=True, timeout=120, check=check)


class TransientService:
    """The daemon run by systemd-run with the unit's own sandbox.

    Its demo host lives in a directory of its own under /var/lib: systemd
    hides /tmp and the home directories from the service.
    """

    def __init__(self, backend):
        self.name = 'cachekeeper-test-%s.service' % uuid.uuid4().hex[:12]
        self.root = tempfile.mkdtemp(prefix='cachekeeper-test-',
                                     dir='/var/lib')
        os.chmod(self.root, 0o755)
        subprocess.run([daemon.console_script('cachekeeper-manage'),
                        'demo', 'create', self.root], check=True,
                       capture_output=True, timeout=300)
        self.config_file = os.path.join(self.root, 'cachekeeper.conf')
        self.metrics_file = os.path.join(self.root, 'cachekeeper.prom')
        with open(self.config_file, 'a') as f:
            # qemu-img (under prlimit) for every disk, not the header
            # reader: the sandbox must let it run.
            f.write('[image_cache]\ninspect_method = qemu-img\n'
                    '[DEFAULT]\nservice_backend = %s\nmetrics_file = %s\n'
                    % (backend, self.metrics_file))
        for directory, _dirs, files in os.walk(self.root):
            os.chown(directory, locks.NOVA_UID, locks.NOVA_GID)
            for name in files:
                os.chown(os.path.join(directory, name), locks.NOVA_UID,
                         locks.NOVA_GID, follow_symlinks=False)
        cache_dir = os.path.join(self.root, 'instances', '_base')
        for entry in os.scandir(cache_dir):
            if entry.is_file(follow_symlinks=False):
                os.chown(entry.path, QEMU_UID, QEMU_UID)

    def properties(self):
        unit = unitfile.UnitFile()
        properties = ['%s=%s' % (key, value)
                      for key, values in unit.sections['Service'].items()
                      if key not in _NOT_COPIED for value in values]
        properties += ['User=%d' % locks.NOVA_UID,
                       'Group=%d' % locks.NOVA_GID,
                       'ReadWritePaths=%s' % self.root]
        # The packaged daemon is never below a home directory; this
        # checkout and its interpreter may be.
        needed = {os.path.realpath(path) for path in
                  (sys.prefix, sys.base_prefix, unitfile.REPO_ROOT)}
        hidden = sorted(path for path in needed
                        if path.startswith(_HOME_DIRECTORIES))
        if hidden:
            properties += ['ProtectHome=tmpfs',
                           'BindReadOnlyPaths=%s' % ' '.join(hidden)]
        return properties

    def start(self):
        # Type=notify: systemd-run returns once the daemon sent READY=1.
        result = subprocess.run(
            ['systemd-run', '--quiet', '--unit', self.name] +
            ['--property=%s' % p for p in self.properties()] +
            [daemon.console_script('cachekeeper'),
             '--config-file', self.config_file],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr + self.journal()

    def journal(self):
        return subprocess.run(
            ['journalctl', '--unit', self.name, '--output', 'cat',
             '--no-pager'], capture_output=True, text=True,
            timeout=60).stdout

    def wait_for(self, text, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.journal():
                return
            time.sleep(0.5)
        raise AssertionError('%r not logged in %ss:\n%s'
                             % (text, timeout, self.journal()))

    def close(self):
        _systemctl('stop', self.name, check=False)
        _systemctl('reset-failed', self.name, check=False)
        shutil.rmtree(self.root)


@pytest.fixture(params=['eventlet', 'threading'])
def transient_service(request):
    if not os.path.isdir('/run/systemd/system'):
        pytest.skip('PID 1 is not systemd: systemd-run cannot start units')
    if os.geteuid() != 0:
        pytest.skip("starting a service of the system's manager needs root")
    if not shutil.which('systemd-run'):
        pytest.skip('systemd-run is not installed')
    service = TransientService(request.param)
    yield service
    service.close()


def test_daemon_runs_in_the_units_sandbox(transient_service):
    service = transient_service
    service.start()
    # The pass inspected every disk with qemu-img and refreshed the times
    # of cache files the qemu user owns.
    service.wait_for('; 0 errors')
    with open(service.metrics_file) as f:
        assert 'cachekeeper_last_pass_timestamp_seconds' in f.read()
    with open(service.config_file, 'a') as f:
        f.write('[image_cache]\nmanager_interval = 7\n')
    _systemctl('reload', service.name)
    service.wait_for('a pass every 7 s')
    _systemctl('stop', service.name)
    # A unit whose process failed stays "failed".
    assert _systemctl('is-failed', service.name,
                      check=False).returncode != 0, service.journal()
    journal = service.journal()
    assert 'Traceback' not in journal
    assert ' ERROR ' not in journal
