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

"""Disk inspection with the real qemu-img, and a fake one for failures."""

import json
import os
import subprocess
import sys
import textwrap
import time

from oslo_config import cfg
import pytest

from cachekeeper.cache import inspect
from cachekeeper import conf as ck_conf
from tests.lib import instances
from tests.lib import qemu


@pytest.fixture
def images(tmp_path):
    d = tmp_path / 'img'
    d.mkdir()
    qemu.qemu_img('create', '-q', '-f', 'raw', str(d / 'base.raw'), '1M')
    qemu.qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', 'base.raw',
                  str(d / 'overlay.qcow2'))
    qemu.qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
                  str(d / 'base.raw'), str(d / 'overlay_abs.qcow2'))
    qemu.qemu_img('create', '-q', '-f', 'qcow2', str(d / 'plain.qcow2'), '1M')
    qemu.qemu_img('create', '-q', '-f', 'vmdk', str(d / 'plain.vmdk'), '1M')
    return d


def process_alive(pid):
    """True if pid runs (a zombie that is not reaped yet counts as dead)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != 'Z'


def test_inspect_overlay_relative_and_absolute(images):
    inspector = inspect.Inspector()
    info = inspector.inspect(str(images / 'overlay.qcow2'), 'qcow2')
    assert info == inspect.DiskInfo(
        path=str(images / 'overlay.qcow2'), format='qcow2',
        backing_file='base.raw', backing_format='raw')
    info = inspector.inspect(str(images / 'overlay_abs.qcow2'), 'qcow2')
    assert info.backing_file == str(images / 'base.raw')
    info = inspector.inspect(str(images / 'plain.qcow2'), 'qcow2')
    assert info.backing_file is None and info.backing_format is None
    assert inspector.qemu_img_calls == 3


def test_inspect_makes_relative_path_absolute(images, monkeypatch):
    monkeypatch.chdir(images)
    info = inspect.Inspector().inspect('overlay.qcow2', 'qcow2')
    assert info.path == str(images / 'overlay.qcow2')


def test_wrong_format_is_an_error_not_a_probe(images):
    inspector = inspect.Inspector()
    with pytest.raises(inspect.InspectError) as e:
        inspector.inspect(str(images / 'base.raw'), 'qcow2')
    assert e.value.path == str(images / 'base.raw')
    assert 'not in qcow2 format' in e.value.message
    assert '\n' not in str(e.value)
    # Read as raw, an overlay is a raw disk: qemu-img is never left to guess.
    info = inspector.inspect(str(images / 'overlay.qcow2'), 'raw')
    assert info.format == 'raw' and info.backing_file is None


def test_corrupt_qcow2_header(tmp_path):
    disk = tmp_path / 'disk'
    disk.write_bytes(b'QFI\xfb' + b'\xff' * 508)
    with pytest.raises(inspect.InspectError) as e:
        inspect.Inspector().inspect(str(disk), 'qcow2')
    assert 'exit code 1' in e.value.message


def test_missing_file_and_fifo(tmp_path):
    inspector = inspect.Inspector()
    with pytest.raises(inspect.InspectError) as e:
        inspector.inspect(str(tmp_path / 'gone'), 'qcow2')
    assert e.value.message == 'No such file or directory'
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    with pytest.raises(inspect.InspectError) as e:
        inspector.inspect(str(fifo), 'qcow2')
    assert e.value.message == 'not a regular file'
    assert inspector.qemu_img_calls == 0


def test_missing_qemu_img(images, tmp_path, monkeypatch):
    empty = tmp_path / 'empty'
    empty.mkdir()
    inspector = inspect.Inspector()
    monkeypatch.setenv('PATH', str(empty))
    with pytest.raises(inspect.InspectError) as e:
        inspector.inspect(str(images / 'plain.qcow2'), 'qcow2')
    assert 'qemu-img' in e.value.message


def test_missing_qemu_img_without_prlimit(images, tmp_path, monkeypatch):
    empty = tmp_path / 'empty'
    empty.mkdir()
    monkeypatch.setenv('PATH', str(empty))
    inspector = inspect.Inspector()
    with pytest.raises(inspect.InspectError) as e:
        inspector.inspect(str(images / 'plain.qcow2'), 'qcow2')
    assert e.value.message.startswith('cannot run qemu-img')
    assert inspector.qemu_img_calls == 0


@pytest.mark.parametrize('body, expected', [
    ('echo "qemu-img: broken" >&2; exit 1',
     'exit code 1: qemu-img: broken'),
    ('echo "this is not json"', 'no valid JSON'),
    ('echo "[1, 2]"', 'no valid JSON'),
    ('echo "{}"', "reported format None"),
    ('echo \'{"format": "raw"}\'', "reported format 'raw'"),
    ('echo \'{"format": "qcow2", "backing-filename": 7}\'', 'not a string'),
    ('echo \'{"format": "qcow2", "backing-filename": "/x\\u0000y"}\'',
     'with a NUL byte'),
    ('head -c 9000000 /dev/zero | tr "\\000" x', 'more than'),
    ('yes', 'more than 8388608 bytes'),
    ('yes >&2', 'more than 8388608 bytes'),
    ('kill -SEGV $$', 'killed by signal 11'),
])
def test_bad_qemu_img(images, fake_bin, body, expected):
    instances.install_fake_qemu_img(fake_bin, body)
    inspector = inspect.Inspector()
    with pytest.raises(inspect.InspectError) as e:
        inspector.inspect(str(images / 'plain.qcow2'), 'qcow2')
    assert expected in e.value.message
    assert '\n' not in str(e.value)
    assert inspector.qemu_img_calls == 1


def test_command_line_environment_and_limits(images, fake_bin, tmp_path):
    record = tmp_path / 'record'
    instances.install_fake_qemu_img(fake_bin, '''
        echo "$@" > %(r)s
        echo "$LC_ALL $LANG" >> %(r)s
        ulimit -v >> %(r)s
        ulimit -t >> %(r)s
        echo '{"format": "qcow2"}'
    ''' % {'r': record})
    path = str(images / 'plain.qcow2')
    inspect.Inspector(cpu_time_limit=7, address_space_limit_gb=3).inspect(
        path, 'qcow2')
    assert record.read_text().splitlines() == [
        'info --output=json --force-share -f qcow2 %s' % path,
        'C C',
        str(3 * 1024 * 1024),
        '7',
    ]


def test_limits_without_prlimit_binary(images, fake_bin, tmp_path,
                                       monkeypatch):
    # Only the fake qemu-img and a shell on PATH: no prlimit binary.
    record = tmp_path / 'record'
    instances.install_fake_qemu_img(fake_bin, '''
        ulimit -v > %(r)s
        ulimit -t >> %(r)s
        echo '{"format": "qcow2"}'
    ''' % {'r': record})
    monkeypatch.setenv('PATH', str(fake_bin))
    inspector = inspect.Inspector(cpu_time_limit=5, address_space_limit_gb=1)
    assert inspector._prlimit is None
    inspector.inspect(str(images / 'plain.qcow2'), 'qcow2')
    assert record.read_text().split() == [str(1024 * 1024), '5']


def test_cpu_limit_kills(images, fake_bin):
    instances.install_fake_qemu_img(fake_bin, 'while :; do :; done')
    started = time.monotonic()
    with pytest.raises(inspect.InspectError) as e:
        inspect.Inspector(cpu_time_limit=1, timeout=20).inspect(
            str(images / 'plain.qcow2'), 'qcow2')
    assert 'killed by signal' in e.value.message
    assert time.monotonic() - started < 10


def test_timeout_kills_and_reaps(images, fake_bin, tmp_path):
    pids = tmp_path / 'pids'
    instances.install_fake_qemu_img(fake_bin, '''
        sleep 60 &
        echo $$ $! > %s
        wait
    ''' % pids)
    started = time.monotonic()
    with pytest.raises(inspect.InspectError) as e:
        inspect.Inspector(timeout=1).inspect(
            str(images / 'plain.qcow2'), 'qcow2')
    assert time.monotonic() - started < 5
    assert 'did not finish within 1 s' in e.value.message
    qemu_img_pid, child_pid = map(int, pids.read_text().split())
    # The direct child is reaped, not just killed.
    assert not os.path.exists('/proc/%d' % qemu_img_pid)
    deadline = time.monotonic() + 5
    while process_alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(child_pid)


def test_a_child_left_behind_is_killed(images, fake_bin, tmp_path):
    pid_file = tmp_path / 'pid'
    instances.install_fake_qemu_img(fake_bin, '''
        sleep 60 &
        echo $! > %s
        echo '{"format": "qcow2"}'
    ''' % pid_file)
    info = inspect.Inspector(timeout=1).inspect(
        str(images / 'plain.qcow2'), 'qcow2')
    assert info.backing_file is None
    child_pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while process_alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(child_pid)


def test_detect_format(images, tmp_path):
    inspector = inspect.Inspector()
    assert inspector.detect_format(str(images / 'base.raw')) == 'raw'
    assert inspector.detect_format(str(images / 'overlay.qcow2')) == 'qcow2'
    assert inspector.detect_format(str(images / 'plain.vmdk')) == 'vmdk'
    empty = tmp_path / 'empty'
    empty.write_bytes(b'')
    assert inspector.detect_format(str(empty)) == 'raw'
    assert inspector.qemu_img_calls == 0


def test_detect_format_reads_a_bounded_prefix(tmp_path):
    # A qcow2 header at the very start of a large file: the answer comes
    # from the first chunks, whatever follows.
    image = tmp_path / 'big'
    qemu.qemu_img('create', '-q', '-f', 'qcow2', str(image), '1M')
    with open(image, 'ab') as f:
        f.truncate(64 * 1024 * 1024 * 1024)
    started = time.monotonic()
    assert inspect.Inspector().detect_format(str(image)) == 'qcow2'
    assert time.monotonic() - started < 2


@pytest.mark.timeout(10)
def test_detect_format_errors(tmp_path):
    inspector = inspect.Inspector()
    with pytest.raises(inspect.InspectError) as e:
        inspector.detect_format(str(tmp_path / 'gone'))
    assert e.value.message == 'No such file or directory'
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    with pytest.raises(inspect.InspectError) as e:
        inspector.detect_format(str(fifo))
    assert e.value.message == 'not a regular file'
    with pytest.raises(inspect.InspectError):
        inspector.detect_format(str(tmp_path))


def test_inspect_many_collects_errors(images):
    inspector = inspect.Inspector(workers=2)
    results = inspector.inspect_many([
        (str(images / 'overlay.qcow2'), 'qcow2'),
        (str(images / 'plain.qcow2'), 'qcow2'),
        (str(images / 'base.raw'), 'qcow2'),
        (str(images / 'gone'), 'qcow2'),
    ])
    assert results[str(images / 'overlay.qcow2')].backing_file == 'base.raw'
    assert results[str(images / 'plain.qcow2')].backing_file is None
    assert isinstance(results[str(images / 'base.raw')], inspect.InspectError)
    assert isinstance(results[str(images / 'gone')], inspect.InspectError)
    assert inspector.qemu_img_calls == 3
    assert inspector.inspect_many([]) == {}


def test_inspect_many_is_bounded(images, fake_bin, tmp_path):
    running = tmp_path / 'running'
    running.mkdir()
    counts = tmp_path / 'counts'
    instances.install_fake_qemu_img(fake_bin, '''
        touch %(run)s/$$
        ls %(run)s | wc -l >> %(counts)s
        sleep 0.3
        rm %(run)s/$$
        echo '{"format": "qcow2"}'
    ''' % {'run': running, 'counts': counts})
    requests = []
    for i in range(6):
        path = tmp_path / ('disk%d' % i)
        path.write_bytes(b'')
        requests.append((str(path), 'qcow2'))
    inspector = inspect.Inspector(workers=2)
    results = inspector.inspect_many(requests)
    assert all(isinstance(r, inspect.DiskInfo) for r in results.values())
    assert max(int(n) for n in counts.read_text().split()) == 2
    assert inspector.qemu_img_calls == 6


def test_from_conf():
    conf = cfg.ConfigOpts()
    ck_conf.register_opts(conf)
    conf([], project='cachekeeper', default_config_files=[])
    # Option groups are shared between ConfigOpts objects (oslo.config
    # copies them shallowly): overrides must not outlive the test.
    try:
        conf.set_override('images_cpu_time_limit', 11, group='libvirt')
        conf.set_override('images_address_space_limit', 3, group='libvirt')
        conf.set_override('inspect_timeout', 9, group='image_cache')
        conf.set_override('inspect_workers', 5, group='image_cache')
        inspector = inspect.Inspector.from_conf(conf)
    finally:
        conf.reset()
    assert (inspector.cpu_time_limit, inspector.address_space_limit,
            inspector.timeout, inspector.workers) == (
                11, 3 * 1024 ** 3, 9, 5)


def test_timeout_under_eventlet(images, fake_bin, tmp_path):
    # The daemon's default backend monkey-patches; a hung qemu-img must
    # still be killed, and the pool must still work.
    pid_file = tmp_path / 'pid'
    instances.install_fake_qemu_img(fake_bin, '''
        case "$*" in *hang*) echo $$ > %s; exec sleep 60;; esac
        exec %s "$@"
    ''' % (pid_file, qemu.QEMU_IMG))
    hang = tmp_path / 'hang'
    hang.write_bytes(b'')
    script = textwrap.dedent('''
        import eventlet
        eventlet.monkey_patch()
        import json, sys, time
        from cachekeeper.cache import inspect
        inspector = inspect.Inspector(timeout=1, workers=2)
        started = time.monotonic()
        results = inspector.inspect_many(
            [(sys.argv[1], 'qcow2'), (sys.argv[2], 'qcow2')])
        print(json.dumps({
            'elapsed': time.monotonic() - started,
            'results': {p: getattr(r, 'message', None) or r.backing_file
                        for p, r in results.items()}}))
    ''')
    proc = subprocess.run(
        [sys.executable, '-c', script, str(images / 'overlay.qcow2'),
         str(hang)],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out['elapsed'] < 5
    assert out['results'] == {
        str(images / 'overlay.qcow2'): 'base.raw',
        str(hang): 'qemu-img info did not finish within 1 s and was killed',
    }
    assert not process_alive(int(pid_file.read_text()))
