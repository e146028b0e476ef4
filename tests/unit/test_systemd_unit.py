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

"""Tests for etc/systemd/cachekeeper.service."""

import collections
import configparser
import os
import re
import shutil
import subprocess
import sys

import pytest

from cachekeeper.conf import default
from cachekeeper import config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
UNIT_PATH = os.path.join(REPO_ROOT, 'etc', 'systemd', 'cachekeeper.service')
INSTALLED_EXEC = '/usr/bin/cachekeeper'

# oslo.service's [DEFAULT] graceful_shutdown_timeout default, in seconds.
GRACEFUL_SHUTDOWN_TIMEOUT = 60


def parse_unit(text):
    """Return {section: {key: [values]}}: keys may repeat in a unit file."""
    sections = collections.defaultdict(lambda: collections.defaultdict(list))
    section = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(('#', ';')):
            continue
        if line.startswith('[') and line.endswith(']'):
            section = line[1:-1]
            continue
        if section is None or '=' not in line or line.endswith('\\'):
            raise ValueError('line %d not understood: %r' % (number, raw))
        key, value = line.split('=', 1)
        sections[section][key.strip()].append(value.strip())
    return sections


def _option_default(name):
    return next(opt.default for opt in default.default_opts
                if opt.name == name)


class UnitFile:
    """The unit file, parsed."""

    def __init__(self, path):
        with open(path) as f:
            self.sections = parse_unit(f.read())

    def one(self, section, key):
        values = self.sections[section][key]
        assert len(values) == 1, ('%s= set %d times in [%s]'
                                  % (key, len(values), section))
        return values[0]

    def words(self, section, key):
        return [word for value in self.sections[section][key]
                for word in value.split()]


@pytest.fixture(scope='module')
def unit():
    return UnitFile(UNIT_PATH)


def test_sections(unit):
    assert set(unit.sections) == {'Unit', 'Service', 'Install'}


def test_notify_from_the_forked_worker(unit):
    assert unit.one('Service', 'Type') == 'notify'
    assert unit.one('Service', 'NotifyAccess') == 'all'


def test_runs_as_nova(unit):
    assert unit.one('Service', 'User') == 'nova'
    assert unit.one('Service', 'Group') == 'nova'


def test_exec_start_reads_nova_conf_then_its_own(unit):
    assert unit.one('Service', 'ExecStart').split() == (
        [INSTALLED_EXEC,
         '--config-file', '/etc/nova/nova.conf',
         '--config-file', '/etc/cachekeeper/cachekeeper.conf'])


def test_reload_is_sighup_to_the_main_process(unit):
    assert unit.one('Service', 'ExecReload') == '/bin/kill -HUP $MAINPID'


def test_restart_and_stop(unit):
    assert unit.one('Service', 'Restart') == 'on-failure'
    assert str(config.EXIT_CONFIG) == (
        unit.one('Service', 'RestartPreventExitStatus'))
    # The main process stops the threading backend's worker itself;
    # the whole group gets only the final SIGKILL.
    assert unit.one('Service', 'KillMode') == 'mixed'
    timeout = unit.one('Service', 'TimeoutStopSec')
    assert re.search(r'^\d+s?$', timeout)
    assert int(timeout.rstrip('s')) > GRACEFUL_SHUTDOWN_TIMEOUT


def test_file_system_is_read_only_but_for_the_daemon_paths(unit):
    assert unit.one('Service', 'ProtectSystem') == 'strict'
    writable = unit.words('Service', 'ReadWritePaths')
    assert sorted(writable) == sorted(
        [_option_default('instances_path'), _option_default('state_path')])
    assert unit.one('Service', 'StateDirectory') == 'cachekeeper'
    assert unit.one('Service', 'StateDirectoryMode') == '0700'
    assert _option_default('state_path') == (
        os.path.join('/var/lib', unit.one('Service', 'StateDirectory')))
    assert unit.one('Service', 'PrivateTmp') == 'yes'
    assert unit.one('Service', 'ProtectHome') == 'yes'
    assert unit.one('Service', 'NoNewPrivileges') == 'yes'


def test_only_capability_is_fowner(unit):
    assert unit.words('Service', 'AmbientCapabilities') == ['CAP_FOWNER']
    assert unit.words('Service', 'CapabilityBoundingSet') == ['CAP_FOWNER']


def test_ordering(unit):
    after = unit.words('Unit', 'After')
    assert 'network-online.target' in after
    assert 'network-online.target' in unit.words('Unit', 'Wants')
    assert 'nova-compute.service' in after
    assert 'openstack-nova-compute.service' in after
    # cachekeeper must neither start nova-compute nor stop with it.
    for key in ('Requires', 'Requisite', 'BindsTo', 'PartOf'):
        assert not [unit for unit in unit.words('Unit', key)
                    if 'nova' in unit], key
    assert unit.words('Unit', 'RequiresMountsFor') == (
        [_option_default('instances_path')])


def test_documentation_and_install(unit):
    assert re.search(r'^https://', unit.one('Unit', 'Documentation'))
    assert unit.one('Install', 'WantedBy') == 'multi-user.target'


def test_installed_by_pbr(unit):
    setup = configparser.ConfigParser()
    setup.read(os.path.join(REPO_ROOT, 'setup.cfg'))
    data_files = setup['files']['data_files']
    assert re.search(
        r'lib/systemd/system =\s*\n\s*etc/systemd/cachekeeper\.service',
        data_files)


def test_repeated_keys_and_comments():
    unit = parse_unit('# c\n[Unit]\nAfter=a\n; c\nAfter = b c\n')
    assert unit['Unit'] == {'After': ['a', 'b c']}


def test_refuses_continuation_lines():
    with pytest.raises(ValueError):
        parse_unit('[Service]\nExecStart=/bin/true \\\n  -x\n')


def _existing_executable():
    """The cachekeeper console script of this environment."""
    beside_python = os.path.join(os.path.dirname(sys.executable),
                                 'cachekeeper')
    if os.access(beside_python, os.X_OK):
        return beside_python
    return shutil.which('cachekeeper') or sys.executable


requires_systemd_analyze = pytest.mark.skipif(
    not shutil.which('systemd-analyze'),
    reason='systemd-analyze is not installed')


class SystemdVerify:
    """systemd-analyze verify, on a unit file written in ``tmp``."""

    def __init__(self, tmp):
        self.tmp = tmp

    def verify(self, text):
        path = os.path.join(self.tmp, 'cachekeeper.service')
        with open(path, 'w') as f:
            f.write(text)
        result = subprocess.run(
            ['systemd-analyze', 'verify', path],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=60, cwd=self.tmp)
        # verify exits 0 even for unknown keys and values it cannot parse,
        # so every line it prints counts. Lines that do not name this unit
        # are about the units it pulls in (network-online.target,
        # multi-user.target) and belong to the host.
        problems = [line for line in result.stdout.splitlines()
                    if 'cachekeeper.service' in line]
        return result.returncode, problems


@pytest.fixture
def systemd_verify(tmp_path):
    return SystemdVerify(str(tmp_path))


@requires_systemd_analyze
def test_verify_is_clean(systemd_verify):
    with open(UNIT_PATH) as f:
        text = f.read()
    assert 'ExecStart=%s ' % INSTALLED_EXEC in text
    # The package is not installed system-wide here: point ExecStart at
    # an executable that exists, which is all verify checks about it.
    text = text.replace('ExecStart=%s ' % INSTALLED_EXEC,
                        'ExecStart=%s ' % _existing_executable())
    assert systemd_verify.verify(text) == (0, [])


@requires_systemd_analyze
def test_verify_reports_a_bad_key(systemd_verify):
    # The check above can fail: verify does report unit mistakes.
    returncode, problems = systemd_verify.verify(
        '[Service]\nTyp=notify\nExecStart=%s\n' % sys.executable)
    assert len(problems) == 1, problems
    assert "Unknown key 'Typ'" in problems[0]
