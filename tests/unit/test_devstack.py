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

"""Tests for the devstack plugin (devstack/settings, devstack/plugin.sh).

bash sources the plugin the way stack.sh, unstack.sh and clean.sh do, with
devstack's functions replaced by stubs: iniset writes real ini files, the
others record their arguments.
"""

import configparser
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
import unittest

import fixtures

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GENERATOR_CONF = os.path.join(
    'etc', 'cachekeeper', 'cachekeeper-config-generator.conf')
PYTHON_BIN_DIR = os.path.dirname(sys.executable)
BASH = shutil.which('bash')

# Like devstack's iniset: replaces the option's line in its section or adds
# it right below the section header, and leaves every other line alone.
INISET_PY = """\
import sys

path, section, option, value = sys.argv[1:]
try:
    with open(path) as f:
        lines = f.read().splitlines()
except FileNotFoundError:
    lines = []
header = '[%s]' % section
if header not in lines:
    lines += ['', header]
start = lines.index(header) + 1
end = next((i for i in range(start, len(lines))
            if lines[i].startswith('[')), len(lines))
new_line = '%s = %s' % (option, value)
for i in range(start, end):
    if lines[i].split('=', 1)[0].strip() == option:
        lines[i] = new_line
        break
else:
    lines.insert(start, new_line)
with open(path, 'w') as f:
    f.write('\\n'.join(lines) + '\\n')
"""

# Calls are recorded one a line, arguments separated by tabs, so that a
# command passed as one argument stays one field.
STUBS_SH = """\
function _record {
    local IFS=$'\\t'
    echo "$*" >> "$CALLS_LOG"
}
function enable_service {
    local service
    for service in "$@"; do
        ENABLED_SERVICES+=",$service"
    done
}
function is_service_enabled {
    local service
    for service in "$@"; do
        if [[ ",$ENABLED_SERVICES," == *",$service,"* ]]; then
            return 0
        fi
    done
    return 1
}
function iniset {
    if [[ "$1" == "-sudo" ]]; then
        shift
    fi
    "$PYTHON" "$INISET_PY" "$@"
}
function get_python_exec_prefix { echo "$PYTHON_EXEC_PREFIX"; }
function is_fedora { return 1; }
function echo_summary { :; }
function sudo { "$@"; }
function setup_develop { _record setup_develop "$@"; }
function install_package { _record install_package "$@"; }
function run_process { _record run_process "$@"; }
function stop_process { _record stop_process "$@"; }
"""

# Stands in for the real generator: checks the arguments the plugin passes
# and writes what a generated file starts with (all options commented out).
FAKE_GENERATOR_SH = """\
#!/bin/bash
set -o errexit
(IFS=$'\\t'; echo "oslo-config-generator$IFS$*" >> "$CALLS_LOG")
while [[ $# -gt 0 ]]; do
    case $1 in
        --config-file) config_file=$2; shift 2 ;;
        --output-file) output_file=$2; shift 2 ;;
        *) echo "unexpected argument $1" >&2; exit 2 ;;
    esac
done
test -f "$config_file"
cat > "$output_file" <<EOF
[DEFAULT]

#
# From cachekeeper
#
#instances_path = /var/lib/nova/instances

[image_cache]
#manager_interval = 2400
EOF
"""


def _write(path, text, mode=0o644):
    with open(path, 'w') as f:
        f.write(text)
    os.chmod(path, mode)


def _read_ini(path):
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str
    if not parser.read(path):
        raise AssertionError('%s was not written' % path)
    return parser


class DevstackPluginTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.dest = self._mkdir('opt')
        # enable_plugin clones the repository to $DEST/cachekeeper.
        os.symlink(REPO_ROOT, os.path.join(self.dest, 'cachekeeper'))
        self.data_dir = self._mkdir('data')
        self.instances_path = self._mkdir('data', 'nova', 'instances')
        self.nova_state_path = os.path.dirname(self.instances_path)
        nova_conf_dir = self._mkdir('etc', 'nova')
        self.nova_conf = os.path.join(nova_conf_dir, 'nova.conf')
        self.nova_cpu_conf = os.path.join(nova_conf_dir, 'nova-cpu.conf')
        nova_conf_text = textwrap.dedent("""\
            [DEFAULT]
            state_path = %s
            instances_path = %s
            """ % (self.nova_state_path, self.instances_path))
        _write(self.nova_conf, nova_conf_text)
        _write(self.nova_cpu_conf, nova_conf_text)
        self.conf_dir = os.path.join(self.tmp, 'etc', 'cachekeeper')
        self.conf = os.path.join(self.conf_dir, 'cachekeeper.conf')
        self.state_path = os.path.join(self.data_dir, 'cachekeeper')
        self.exec_prefix = self._mkdir('usr', 'local', 'bin')
        self.fake_bin = self._mkdir('fake-bin')
        _write(os.path.join(self.fake_bin, 'oslo-config-generator'),
               FAKE_GENERATOR_SH, mode=0o755)
        self.calls_log = os.path.join(self.tmp, 'calls.log')
        self.stubs = os.path.join(self.tmp, 'stubs.sh')
        _write(self.stubs, STUBS_SH)
        self.iniset_py = os.path.join(self.tmp, 'iniset.py')
        _write(self.iniset_py, INISET_PY)

    def _mkdir(self, *parts):
        path = os.path.join(self.tmp, *parts)
        os.makedirs(path, exist_ok=True)
        return path

    def devstack(self, *phases, services='n-cpu', path=None, **variables):
        """Run phases (lists of plugin.sh arguments) in one bash process.

        Like stack.sh, unstack.sh and clean.sh, the process sources
        devstack/settings once, then plugin.sh once per phase.
        """
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(('CACHEKEEPER_', 'NOVA_'))}
        env.update({
            'PATH': path or os.pathsep.join([self.fake_bin, env['PATH']]),
            'DEST': self.dest,
            'DATA_DIR': self.data_dir,
            'STACK_USER': pwd.getpwuid(os.getuid()).pw_name,
            'NOVA_CONF': self.nova_conf,
            'NOVA_CPU_CONF': self.nova_cpu_conf,
            'NOVA_INSTANCES_PATH': self.instances_path,
            'CACHEKEEPER_CONF_DIR': self.conf_dir,
            'ENABLED_SERVICES': services,
            'CALLS_LOG': self.calls_log,
            'PYTHON': sys.executable,
            'PYTHON_EXEC_PREFIX': self.exec_prefix,
            'INISET_PY': self.iniset_py,
        })
        env.update(variables)
        script = ['set -o errexit -o nounset -o pipefail',
                  'source "$1"',
                  'source "$DEST/cachekeeper/devstack/settings"']
        script += ['source "$DEST/cachekeeper/devstack/plugin.sh" %s'
                   % ' '.join(phase) for phase in phases]
        try:
            subprocess.run(
                [BASH, '-c', '\n'.join(script), 'bash', self.stubs],
                cwd=self.tmp, env=env, check=True, timeout=60,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except subprocess.CalledProcessError as e:
            self.fail('%s failed (%d):\n%s' % (
                ' '.join(' '.join(phase) for phase in phases),
                e.returncode, e.stderr))

    def stack(self, **kwargs):
        self.devstack(['stack', 'install'], ['stack', 'post-config'],
                      ['stack', 'extra'], **kwargs)

    def calls(self):
        if not os.path.exists(self.calls_log):
            return []
        with open(self.calls_log) as f:
            return [line.rstrip('\n').split('\t') for line in f]

    def run_process_calls(self):
        return [call for call in self.calls() if call[0] == 'run_process']


class StackTestCase(DevstackPluginTestCase):

    def _bin_dir(self, name, *commands):
        """A PATH entry holding only these commands (plugin.sh uses grep)."""
        bin_dir = self._mkdir(name)
        for command in ('grep',) + commands:
            os.symlink(shutil.which(command), os.path.join(bin_dir, command))
        return bin_dir

    def test_install(self):
        self.devstack(['stack', 'install'])
        self.assertIn(
            ['setup_develop', os.path.join(self.dest, 'cachekeeper')],
            self.calls())

    def test_install_qemu_img_when_missing(self):
        self.devstack(['stack', 'install'], path=self._bin_dir('no-qemu'))
        self.assertIn(['install_package', 'qemu-utils'], self.calls())

    def test_install_keeps_existing_qemu_img(self):
        self.devstack(['stack', 'install'],
                      path=self._bin_dir('qemu', 'qemu-img'))
        self.assertNotIn('install_package', [c[0] for c in self.calls()])

    def test_post_config_writes_cachekeeper_conf(self):
        self.devstack(['stack', 'post-config'], CACHEKEEPER_INTERVAL='120')
        generator_calls = [c for c in self.calls()
                           if c[0] == 'oslo-config-generator']
        self.assertEqual(
            [['oslo-config-generator',
              '--config-file',
              os.path.join(self.dest, 'cachekeeper', GENERATOR_CONF),
              '--output-file', self.conf]],
            generator_calls)
        conf = _read_ini(self.conf)
        self.assertEqual(self.instances_path,
                         conf['DEFAULT']['instances_path'])
        self.assertEqual(self.state_path, conf['DEFAULT']['state_path'])
        self.assertNotIn('host', conf['DEFAULT'])
        self.assertEqual('120', conf['image_cache']['manager_interval'])

    def test_post_config_default_interval(self):
        self.devstack(['stack', 'post-config'])
        conf = _read_ini(self.conf)
        self.assertEqual('300', conf['image_cache']['manager_interval'])

    def test_post_config_creates_private_state_dir(self):
        self.devstack(['stack', 'post-config'])
        self.assertTrue(os.path.isdir(self.conf_dir))
        st = os.stat(self.state_path)
        self.assertTrue(stat.S_ISDIR(st.st_mode))
        self.assertEqual(0o700, stat.S_IMODE(st.st_mode))
        self.assertEqual(os.getuid(), st.st_uid)

    def test_post_config_turns_off_novas_image_cache_manager(self):
        self.devstack(['stack', 'post-config'])
        # nova-cpu.conf is rebuilt from nova.conf when nova-compute starts,
        # so both must carry it.
        for path in (self.nova_conf, self.nova_cpu_conf):
            nova = _read_ini(path)
            self.assertEqual('-1', nova['image_cache']['manager_interval'],
                             path)
            self.assertEqual(self.instances_path,
                             nova['DEFAULT']['instances_path'], path)

    def test_post_config_without_nova_cpu_conf(self):
        self.devstack(['stack', 'post-config'], NOVA_CPU_CONF='')
        nova = _read_ini(self.nova_conf)
        self.assertEqual('-1', nova['image_cache']['manager_interval'])

    def test_extra_runs_the_daemon_with_nova_conf_first(self):
        self.stack()
        self.assertEqual(
            [['run_process', 'cachekeeper',
              '%s/cachekeeper --config-file %s --config-file %s'
              % (self.exec_prefix, self.nova_cpu_conf, self.conf)]],
            self.run_process_calls())

    def test_nothing_without_n_cpu(self):
        with open(self.nova_conf) as f:
            nova_conf_before = f.read()
        self.stack(services='n-api,g-api')
        self.assertEqual(
            [['setup_develop', os.path.join(self.dest, 'cachekeeper')]],
            self.calls())
        self.assertFalse(os.path.exists(self.conf_dir))
        self.assertFalse(os.path.exists(self.state_path))
        with open(self.nova_conf) as f:
            self.assertEqual(nova_conf_before, f.read())


class UnstackCleanTestCase(DevstackPluginTestCase):

    def setUp(self):
        super().setUp()
        self.stack()
        os.remove(self.calls_log)

    def test_unstack_stops_the_daemon(self):
        self.devstack(['unstack'])
        self.assertEqual([['stop_process', 'cachekeeper']], self.calls())
        self.assertTrue(os.path.exists(self.conf))

    def test_clean_removes_conf_and_state(self):
        cache_dir = self._mkdir('data', 'nova', 'instances', '_base')
        self.devstack(['unstack'])
        self.devstack(['clean'])
        self.assertFalse(os.path.exists(self.conf_dir))
        self.assertFalse(os.path.exists(self.state_path))
        self.assertTrue(os.path.isdir(cache_dir))
        self.assertTrue(os.path.exists(self.nova_conf))


class GeneratedConfigTestCase(DevstackPluginTestCase):
    """The real generator, then cachekeeper reading what devstack wrote."""

    def test_cachekeeper_reads_the_devstack_config(self):
        path = os.pathsep.join([PYTHON_BIN_DIR, os.environ['PATH']])
        self.devstack(['stack', 'post-config'], ['stack', 'extra'], path=path)
        with open(self.conf) as f:
            # The generated help survives the iniset calls.
            self.assertIn('#remove_unused_base_images = true', f.read())
        [call] = self.run_process_calls()
        command = shlex.split(call[2])
        self.assertEqual(os.path.join(self.exec_prefix, 'cachekeeper'),
                         command[0])
        # nova-cpu.conf now says manager_interval = -1 and names nova's own
        # state_path: cachekeeper's file must win on both.
        check = textwrap.dedent("""\
            import sys
            from cachekeeper import config
            config.parse_args(sys.argv)
            conf = config.CONF
            print(conf.instances_path, conf.state_path,
                  '%g' % conf.image_cache.manager_interval)
            """)
        result = subprocess.run(
            [sys.executable, '-c', check] + command[1:],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            timeout=60)
        self.assertEqual(0, result.returncode, result.stderr)
        self.assertEqual(
            [self.instances_path, self.state_path, '300'],
            result.stdout.split())
