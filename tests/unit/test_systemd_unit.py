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

import configparser
import glob
import os
import re
import shutil
import subprocess
import sys
import urllib.parse

from oslo_config import cfg
from oslo_log import log as logging
import pytest

import cachekeeper.conf
from cachekeeper.conf import default
from cachekeeper import config
from tests.lib import unitfile

REPO_ROOT = unitfile.REPO_ROOT
UNIT_PATH = unitfile.UNIT_PATH
# Resolved by systemd through its own search path: see
# test_exec_start_finds_pip_and_package_installs.
INSTALLED_EXEC = 'cachekeeper'

# oslo.service's [DEFAULT] graceful_shutdown_timeout default, in seconds.
GRACEFUL_SHUTDOWN_TIMEOUT = 60

# Where the documented example paths are read from: the README and the
# documentation (devstack/ is left out: DevStack runs the daemon in its own
# devstack@cachekeeper unit, not this one).
DOCUMENTS = [os.path.join(REPO_ROOT, 'README.rst')] + sorted(glob.glob(
    os.path.join(REPO_ROOT, 'doc', 'source', '**', '*.rst'), recursive=True))
# "option = /a/path" or "option = file:///a/path", as the docs write them.
_EXAMPLE = re.compile(r'\b(\w+) = ((?:file://)?/[^\s`]+)')


def _option_default(name):
    return next(opt.default for opt in default.default_opts
                if opt.name == name)


@pytest.fixture(scope='module')
def unit():
    return unitfile.UnitFile(UNIT_PATH)


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
    assert unit.one('Service', 'StateDirectory') == 'cachekeeper'
    assert unit.one('Service', 'StateDirectoryMode') == '0700'
    assert unit.one('Service', 'PrivateTmp') == 'yes'
    assert unit.one('Service', 'ProtectHome') == 'yes'
    assert unit.one('Service', 'NoNewPrivileges') == 'yes'
    # The service cannot do without instances_path: it must not start
    # without it. The other directories belong to other packages.
    entries = unit.words('Service', 'ReadWritePaths')
    assert _option_default('instances_path') in entries
    assert [entry for entry in entries if not entry.startswith('-')] == (
        [_option_default('instances_path')])


def _configuration():
    """Every option the daemon reads, with its default value."""
    conf = cfg.ConfigOpts()
    cachekeeper.conf.register_opts(conf)
    # log_dir and log_file.
    logging.register_options(conf)
    conf([], project='cachekeeper', default_config_files=[],
         default_config_dirs=[])
    return conf


def _option_values(conf):
    """Yield (name, value) for every option, in every group."""
    for name in conf:
        value = conf[name]
        if isinstance(value, cfg.ConfigOpts.GroupAttr):
            for option in value:
                yield option, value[option]
        else:
            yield name, value


def _path(value):
    """The absolute path in an option's value, None if there is none."""
    if not isinstance(value, str):
        return None
    if value.startswith('file://'):
        # A tooz file backend: its directory.
        return urllib.parse.urlsplit(value).path
    return value if os.path.isabs(value) else None


def _documented_paths():
    """[(path, where it comes from)]: option defaults and doc examples."""
    conf = _configuration()
    names = set()
    paths = []
    for name, value in _option_values(conf):
        names.add(name)
        if _path(value):
            paths.append((_path(value), 'the default of %s' % name))
    for document in DOCUMENTS:
        with open(document) as f:
            examples = _EXAMPLE.findall(f.read())
        paths.extend((_path(value), '%s in %s' % (
            name, os.path.relpath(document, REPO_ROOT)))
            for name, value in examples if name in names)
    return paths


def _is_within(path, directory):
    return os.path.commonpath([path, directory]) == directory


def test_every_documented_path_is_writable(unit):
    documented = _documented_paths()
    # The scan finds what it must: a default with a $variable in it, and
    # the README's example.
    assert (os.path.join(_option_default('instances_path'),
                         '.cachekeeper-quarantine'),
            'the default of quarantine_dir') in documented
    assert 'metrics_file in README.rst' in [where for _, where in documented]
    writable = [path for path, _optional in unit.writable_paths()]
    outside = [(path, where) for path, where in documented
               if not any(_is_within(path, directory)
                          for directory in writable)]
    assert not outside, 'not in ReadWritePaths=: %s' % outside


def test_state_path_is_the_state_directory(unit):
    assert _option_default('state_path') == (
        os.path.join('/var/lib', unit.one('Service', 'StateDirectory')))


def test_metrics_example_is_debians_textfile_directory(unit):
    # prometheus-node-exporter's --collector.textfile.directory on Debian
    # and Ubuntu.
    debian = '/var/lib/prometheus/node-exporter'
    # Optional: not every compute host runs node_exporter.
    assert '-' + debian in unit.words('Service', 'ReadWritePaths')
    with open(os.path.join(REPO_ROOT, 'README.rst')) as f:
        examples = dict(_EXAMPLE.findall(f.read()))
    assert os.path.dirname(examples['metrics_file']) == debian


def test_sandbox_keeps_what_the_daemon_needs(unit):
    service = unit.sections['Service']
    # prlimit64 and setrlimit, which put nova's limits on qemu-img, are in
    # @system-service (@resources).
    assert unit.words('Service', 'SystemCallFilter') == ['@system-service']
    assert unit.one('Service', 'SystemCallErrorNumber') == 'EPERM'
    assert sorted(unit.words('Service', 'RestrictAddressFamilies')) == (
        ['AF_INET', 'AF_INET6', 'AF_UNIX'])
    # The modes nova-compute gives the files cachekeeper writes too.
    assert unit.one('Service', 'UMask') == '0022'
    # Each would break something: the unit file says what.
    for key in ('PrivateUsers', 'PrivateDevices', 'MemoryDenyWriteExecute',
                'RemoveIPC', 'PrivateNetwork', 'IPAddressDeny'):
        assert key not in service, key


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
    # The manual pages the package installs (doc/source/cli/).
    assert unit.words('Unit', 'Documentation') == (
        ['man:cachekeeper(8)', 'man:cachekeeper-manage(1)'])
    assert unit.one('Install', 'WantedBy') == 'multi-user.target'


def test_installed_by_pbr(unit):
    setup = configparser.ConfigParser()
    setup.read(os.path.join(REPO_ROOT, 'setup.cfg'))
    data_files = setup['files']['data_files']
    assert re.search(
        r'lib/systemd/system =\s*\n\s*etc/systemd/cachekeeper\.service',
        data_files)


def test_repeated_keys_and_comments():
    unit = unitfile.parse_unit('# c\n[Unit]\nAfter=a\n; c\nAfter = b c\n')
    assert unit['Unit'] == {'After': ['a', 'b c']}


def test_refuses_continuation_lines():
    with pytest.raises(ValueError):
        unitfile.parse_unit('[Service]\nExecStart=/bin/true \\\n  -x\n')


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


def _systemd_analyze(*args, cwd):
    """Run systemd-analyze; return (exit status, what it printed)."""
    result = subprocess.run(
        ('systemd-analyze',) + args,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=60, cwd=cwd)
    return result.returncode, result.stdout


class SystemdVerify:
    """systemd-analyze verify, on a unit file written in ``tmp``."""

    def __init__(self, tmp):
        self.tmp = tmp

    def verify(self, text):
        path = os.path.join(self.tmp, 'cachekeeper.service')
        with open(path, 'w') as f:
            f.write(text)
        # The manual pages are installed with the package, not here.
        returncode, output = _systemd_analyze('verify', '--man=no', path,
                                              cwd=self.tmp)
        # verify exits 0 even for unknown keys and values it cannot parse,
        # so every line it prints counts. Lines that do not name this unit
        # are about the units it pulls in (network-online.target,
        # multi-user.target) and belong to the host.
        problems = [line for line in output.splitlines()
                    if 'cachekeeper.service' in line]
        return returncode, problems


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


@requires_systemd_analyze
@pytest.mark.parametrize('bin_dir, found', [
    ('usr/local/bin', True),   # pip install
    ('usr/bin', True),         # distribution package
    ('opt/cachekeeper/bin', False),
])
def test_exec_start_finds_pip_and_package_installs(tmp_path, bin_dir,
                                                   found):
    # verify --root looks the command up below the root, through the
    # search path that systemd itself uses.
    root = tmp_path / 'root'
    executable = root / bin_dir / INSTALLED_EXEC
    executable.parent.mkdir(parents=True)
    executable.write_text('#!/bin/sh\n')
    executable.chmod(0o755)
    unit_dir = root / 'etc' / 'systemd' / 'system'
    unit_dir.mkdir(parents=True)
    shutil.copy(UNIT_PATH, unit_dir)
    _returncode, output = _systemd_analyze(
        'verify', '--man=no', '--root', str(root),
        str(unit_dir / 'cachekeeper.service'), cwd=str(tmp_path))
    # The root has nothing else (no /bin/kill, no targets): only the
    # line about this command matters.
    missing = 'Command %s is not executable' % INSTALLED_EXEC
    assert (missing not in output) == found, output


@pytest.mark.skipif(not shutil.which('systemd-path'),
                    reason='systemd-path is not installed')
def test_pip_install_comes_first_in_the_search_path():
    # As in a shell's PATH: a pip install is meant to take precedence.
    search_path = subprocess.run(
        ['systemd-path', 'search-binaries-default'], stdout=subprocess.PIPE,
        text=True, timeout=60, check=True).stdout.strip().split(':')
    assert search_path.index('/usr/local/bin') < (
        search_path.index('/usr/bin'))


@requires_systemd_analyze
def test_security_exposure_is_at_most_3(tmp_path):
    # --threshold is in tenths: exit status 1 above an exposure of 3.0.
    returncode, output = _systemd_analyze(
        'security', '--offline=yes', '--threshold=30', UNIT_PATH,
        cwd=str(tmp_path))
    assert returncode == 0, output


@requires_systemd_analyze
def test_security_threshold_fails_an_unhardened_unit(tmp_path):
    # The check above can fail: the exit status follows the threshold.
    path = tmp_path / 'bare.service'
    path.write_text('[Service]\nExecStart=%s\n' % sys.executable)
    returncode, output = _systemd_analyze(
        'security', '--offline=yes', '--threshold=30', str(path),
        cwd=str(tmp_path))
    assert returncode != 0, output
