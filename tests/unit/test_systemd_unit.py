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
import shutil
import subprocess
import sys
import unittest

import fixtures

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


class TestUnitContent(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        with open(UNIT_PATH) as f:
            cls.unit = parse_unit(f.read())

    def one(self, section, key):
        values = self.unit[section][key]
        self.assertEqual(1, len(values), '%s= set %d times in [%s]'
                         % (key, len(values), section))
        return values[0]

    def words(self, section, key):
        return [word for value in self.unit[section][key]
                for word in value.split()]

    def test_sections(self):
        self.assertEqual({'Unit', 'Service', 'Install'}, set(self.unit))

    def test_notify_from_the_forked_worker(self):
        self.assertEqual('notify', self.one('Service', 'Type'))
        self.assertEqual('all', self.one('Service', 'NotifyAccess'))

    def test_runs_as_nova(self):
        self.assertEqual('nova', self.one('Service', 'User'))
        self.assertEqual('nova', self.one('Service', 'Group'))

    def test_exec_start_reads_nova_conf_then_its_own(self):
        self.assertEqual(
            [INSTALLED_EXEC,
             '--config-file', '/etc/nova/nova.conf',
             '--config-file', '/etc/cachekeeper/cachekeeper.conf'],
            self.one('Service', 'ExecStart').split())

    def test_reload_is_sighup_to_the_main_process(self):
        self.assertEqual('/bin/kill -HUP $MAINPID',
                         self.one('Service', 'ExecReload'))

    def test_restart_and_stop(self):
        self.assertEqual('on-failure', self.one('Service', 'Restart'))
        self.assertEqual(str(config.EXIT_CONFIG),
                         self.one('Service', 'RestartPreventExitStatus'))
        # The main process stops the threading backend's worker itself;
        # the whole group gets only the final SIGKILL.
        self.assertEqual('mixed', self.one('Service', 'KillMode'))
        timeout = self.one('Service', 'TimeoutStopSec')
        self.assertRegex(timeout, r'^\d+s?$')
        self.assertGreater(int(timeout.rstrip('s')),
                           GRACEFUL_SHUTDOWN_TIMEOUT)

    def test_file_system_is_read_only_but_for_the_daemon_paths(self):
        self.assertEqual('strict', self.one('Service', 'ProtectSystem'))
        writable = self.words('Service', 'ReadWritePaths')
        self.assertCountEqual(
            [_option_default('instances_path'), _option_default('state_path')],
            writable)
        self.assertEqual('cachekeeper', self.one('Service', 'StateDirectory'))
        self.assertEqual('0700', self.one('Service', 'StateDirectoryMode'))
        self.assertEqual(
            _option_default('state_path'),
            os.path.join('/var/lib', self.one('Service', 'StateDirectory')))
        self.assertEqual('yes', self.one('Service', 'PrivateTmp'))
        self.assertEqual('yes', self.one('Service', 'ProtectHome'))
        self.assertEqual('yes', self.one('Service', 'NoNewPrivileges'))

    def test_only_capability_is_fowner(self):
        self.assertEqual(['CAP_FOWNER'],
                         self.words('Service', 'AmbientCapabilities'))
        self.assertEqual(['CAP_FOWNER'],
                         self.words('Service', 'CapabilityBoundingSet'))

    def test_ordering(self):
        after = self.words('Unit', 'After')
        self.assertIn('network-online.target', after)
        self.assertIn('network-online.target', self.words('Unit', 'Wants'))
        self.assertIn('nova-compute.service', after)
        self.assertIn('openstack-nova-compute.service', after)
        # cachekeeper must neither start nova-compute nor stop with it.
        for key in ('Requires', 'Requisite', 'BindsTo', 'PartOf'):
            self.assertFalse(
                [unit for unit in self.words('Unit', key)
                 if 'nova' in unit], key)
        self.assertEqual([_option_default('instances_path')],
                         self.words('Unit', 'RequiresMountsFor'))

    def test_documentation_and_install(self):
        self.assertRegex(self.one('Unit', 'Documentation'), r'^https://')
        self.assertEqual('multi-user.target',
                         self.one('Install', 'WantedBy'))

    def test_installed_by_pbr(self):
        setup = configparser.ConfigParser()
        setup.read(os.path.join(REPO_ROOT, 'setup.cfg'))
        data_files = setup['files']['data_files']
        self.assertRegex(
            data_files,
            r'lib/systemd/system =\s*\n\s*etc/systemd/cachekeeper\.service')


class TestParseUnit(unittest.TestCase):

    def test_repeated_keys_and_comments(self):
        unit = parse_unit('# c\n[Unit]\nAfter=a\n; c\nAfter = b c\n')
        self.assertEqual({'After': ['a', 'b c']}, unit['Unit'])

    def test_refuses_continuation_lines(self):
        self.assertRaises(ValueError, parse_unit,
                          '[Service]\nExecStart=/bin/true \\\n  -x\n')


def _existing_executable():
    """The cachekeeper console script of this environment."""
    beside_python = os.path.join(os.path.dirname(sys.executable),
                                 'cachekeeper')
    if os.access(beside_python, os.X_OK):
        return beside_python
    return shutil.which('cachekeeper') or sys.executable


@unittest.skipUnless(shutil.which('systemd-analyze'),
                     'systemd-analyze is not installed')
class TestSystemdAnalyzeVerify(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path

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

    def test_verify_is_clean(self):
        with open(UNIT_PATH) as f:
            text = f.read()
        self.assertIn('ExecStart=%s ' % INSTALLED_EXEC, text)
        # The package is not installed system-wide here: point ExecStart at
        # an executable that exists, which is all verify checks about it.
        text = text.replace('ExecStart=%s ' % INSTALLED_EXEC,
                            'ExecStart=%s ' % _existing_executable())
        self.assertEqual((0, []), self.verify(text))

    def test_verify_reports_a_bad_key(self):
        # The check above can fail: verify does report unit mistakes.
        returncode, problems = self.verify(
            '[Service]\nTyp=notify\nExecStart=%s\n' % sys.executable)
        self.assertEqual(1, len(problems), problems)
        self.assertIn("Unknown key 'Typ'", problems[0])
