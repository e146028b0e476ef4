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

import pytest

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


class Devstack:
    """A devstack host in ``tmp``: DEST, DATA_DIR, nova's config files."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.dest = self.mkdir('opt')
        # enable_plugin clones the repository to $DEST/cachekeeper.
        os.symlink(REPO_ROOT, os.path.join(self.dest, 'cachekeeper'))
        self.data_dir = self.mkdir('data')
        self.instances_path = self.mkdir('data', 'nova', 'instances')
        self.nova_state_path = os.path.dirname(self.instances_path)
        nova_conf_dir = self.mkdir('etc', 'nova')
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
        self.exec_prefix = self.mkdir('usr', 'local', 'bin')
        self.fake_bin = self.mkdir('fake-bin')
        _write(os.path.join(self.fake_bin, 'oslo-config-generator'),
               FAKE_GENERATOR_SH, mode=0o755)
        self.calls_log = os.path.join(self.tmp, 'calls.log')
        self.stubs = os.path.join(self.tmp, 'stubs.sh')
        _write(self.stubs, STUBS_SH)
        self.iniset_py = os.path.join(self.tmp, 'iniset.py')
        _write(self.iniset_py, INISET_PY)

    def mkdir(self, *parts):
        path = os.path.join(self.tmp, *parts)
        os.makedirs(path, exist_ok=True)
        return path

    def run(self, *phases, services='n-cpu', path=None, **variables):
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
            pytest.fail('%s failed (%d):\n%s' % (
                ' '.join(' '.join(phase) for phase in phases),
                e.returncode, e.stderr))

    def bin_dir(self, name):
        """A PATH entry holding only grep, which plugin.sh uses."""
        bin_dir = self.mkdir(name)
        os.symlink(shutil.which('grep'), os.path.join(bin_dir, 'grep'))
        return bin_dir

    def stack(self, **kwargs):
        self.run(['stack', 'install'], ['stack', 'post-config'],
                 ['stack', 'extra'], **kwargs)

    def calls(self):
        if not os.path.exists(self.calls_log):
            return []
        with open(self.calls_log) as f:
            return [line.rstrip('\n').split('\t') for line in f]

    def run_process_calls(self):
        return [call for call in self.calls() if call[0] == 'run_process']


@pytest.fixture
def devstack(tmp_path):
    return Devstack(str(tmp_path))


@pytest.fixture
def stacked(devstack):
    """The devstack host after stack.sh, with no call recorded yet."""
    devstack.stack()
    os.remove(devstack.calls_log)
    return devstack


def test_install(devstack):
    devstack.run(['stack', 'install'])
    assert ['setup_develop', os.path.join(devstack.dest, 'cachekeeper')] in (
        devstack.calls())


def _devstack_packages(path):
    """The packages of a devstack/files list, read as devstack reads it.

    As functions-common's _parse_package_files: a NOPRIME line is left for
    later, what follows a ``#`` is a comment; ``dist:`` and ``not:``
    qualifiers are not used here.
    """
    with open(os.path.join(REPO_ROOT, 'devstack', 'files', path)) as f:
        lines = f.read().splitlines()
    assert not [line for line in lines if 'dist:' in line or 'not:' in line]
    return [line.split('#', 1)[0].strip() for line in lines
            if 'NOPRIME' not in line and line.split('#', 1)[0].strip()]


def test_qemu_img_comes_from_devstacks_package_lists():
    # devstack installs files/debs/<plugin> on Debian and Ubuntu and
    # files/rpms/<plugin> on the Red Hat family, before any plugin phase.
    assert _devstack_packages(os.path.join('debs', 'cachekeeper')) == (
        ['qemu-utils'])
    assert _devstack_packages(os.path.join('rpms', 'cachekeeper')) == (
        ['qemu-img'])


def test_install_installs_no_package_itself(devstack):
    devstack.run(['stack', 'install'], path=devstack.bin_dir('no-qemu'))
    assert 'install_package' not in [c[0] for c in devstack.calls()]


def test_post_config_writes_cachekeeper_conf(devstack):
    devstack.run(['stack', 'post-config'], CACHEKEEPER_INTERVAL='120')
    generator_calls = [c for c in devstack.calls()
                       if c[0] == 'oslo-config-generator']
    assert generator_calls == (
        [['oslo-config-generator',
          '--config-file',
          os.path.join(devstack.dest, 'cachekeeper', GENERATOR_CONF),
          '--output-file', devstack.conf]])
    conf = _read_ini(devstack.conf)
    assert devstack.instances_path == conf['DEFAULT']['instances_path']
    assert devstack.state_path == conf['DEFAULT']['state_path']
    assert 'host' not in conf['DEFAULT']
    assert conf['image_cache']['manager_interval'] == '120'


def test_post_config_default_interval(devstack):
    devstack.run(['stack', 'post-config'])
    conf = _read_ini(devstack.conf)
    assert conf['image_cache']['manager_interval'] == '300'


def test_post_config_creates_private_state_dir(devstack):
    devstack.run(['stack', 'post-config'])
    assert os.path.isdir(devstack.conf_dir)
    st = os.stat(devstack.state_path)
    assert stat.S_ISDIR(st.st_mode)
    assert 0o700 == stat.S_IMODE(st.st_mode)
    assert os.getuid() == st.st_uid


def test_post_config_turns_off_novas_image_cache_manager(devstack):
    devstack.run(['stack', 'post-config'])
    # nova-cpu.conf is rebuilt from nova.conf when nova-compute starts,
    # so both must carry it.
    for path in (devstack.nova_conf, devstack.nova_cpu_conf):
        nova = _read_ini(path)
        assert nova['image_cache']['manager_interval'] == '-1', path
        assert devstack.instances_path == nova['DEFAULT']['instances_path'], (
            path)


def test_post_config_without_nova_cpu_conf(devstack):
    devstack.run(['stack', 'post-config'], NOVA_CPU_CONF='')
    nova = _read_ini(devstack.nova_conf)
    assert nova['image_cache']['manager_interval'] == '-1'


def test_extra_runs_the_daemon_with_nova_conf_first(devstack):
    devstack.stack()
    assert devstack.run_process_calls() == (
        [['run_process', 'cachekeeper',
          '%s/cachekeeper --config-file %s --config-file %s'
          % (devstack.exec_prefix, devstack.nova_cpu_conf, devstack.conf)]])


def test_nothing_without_n_cpu(devstack):
    with open(devstack.nova_conf) as f:
        nova_conf_before = f.read()
    devstack.stack(services='n-api,g-api')
    assert devstack.calls() == (
        [['setup_develop', os.path.join(devstack.dest, 'cachekeeper')]])
    assert not os.path.exists(devstack.conf_dir)
    assert not os.path.exists(devstack.state_path)
    with open(devstack.nova_conf) as f:
        assert nova_conf_before == f.read()


def test_unstack_stops_the_daemon(stacked):
    stacked.run(['unstack'])
    assert stacked.calls() == [['stop_process', 'cachekeeper']]
    assert os.path.exists(stacked.conf)


def test_clean_removes_conf_and_state(stacked):
    cache_dir = stacked.mkdir('data', 'nova', 'instances', '_base')
    stacked.run(['unstack'])
    stacked.run(['clean'])
    assert not os.path.exists(stacked.conf_dir)
    assert not os.path.exists(stacked.state_path)
    assert os.path.isdir(cache_dir)
    assert os.path.exists(stacked.nova_conf)


# The real generator, then cachekeeper reading what devstack wrote.


def test_cachekeeper_reads_the_devstack_config(devstack):
    path = os.pathsep.join([PYTHON_BIN_DIR, os.environ['PATH']])
    devstack.run(['stack', 'post-config'], ['stack', 'extra'], path=path)
    with open(devstack.conf) as f:
        # The generated help survives the iniset calls.
        assert '#remove_unused_base_images = true' in f.read()
    [call] = devstack.run_process_calls()
    command = shlex.split(call[2])
    assert os.path.join(devstack.exec_prefix, 'cachekeeper') == command[0]
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
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == (
        [devstack.instances_path, devstack.state_path, '300'])
