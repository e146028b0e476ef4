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

import datetime
import json
import os
import re
import signal
import subprocess
import time

import pytest

from cachekeeper import masking
from tests.lib import daemon
from tests.lib import hosttree
from tests.lib import tmpfs
from tests.lib import tooz_urls

PASS_LINE = r'INFO cachekeeper.service .* Pass done'


def _timestamp(line):
    return datetime.datetime.strptime(line[:23], '%Y-%m-%d %H:%M:%S.%f')


class DaemonHost:
    """An image cache and a config for the daemon with ``backend``.

    The daemons start() started are killed by close().
    """

    def __init__(self, tmp, backend):
        self.tmp = tmp
        self.backend = backend
        self.processes = []
        self.instances_path = os.path.join(self.tmp, 'instances')
        os.makedirs(os.path.join(self.instances_path, '_base'))
        self.state_path = os.path.join(self.tmp, 'state')
        os.mkdir(self.state_path, 0o700)
        self.config_file = os.path.join(self.tmp, 'cachekeeper.conf')

    def configure(self, interval, **image_cache):
        daemon.write_config(
            self.config_file,
            DEFAULT={'instances_path': self.instances_path,
                     'state_path': self.state_path,
                     'service_backend': self.backend},
            image_cache=dict(image_cache, manager_interval=interval))

    def start(self, interval, **image_cache):
        self.configure(interval, **image_cache)
        process = daemon.Daemon(self.tmp, self.config_file)
        self.processes.append(process)
        return process

    def close(self):
        for process in reversed(self.processes):
            process.kill()

    def assert_clean_log(self, process):
        assert 'Traceback' not in process.log()
        assert ' ERROR ' not in process.log()

    def write_file(self, text):
        with open(self.config_file, 'w', errors='surrogateescape') as f:
            f.write(text)


@pytest.fixture(params=['eventlet', 'threading'])
def host(request, tmp_path):
    """A DaemonHost for each service backend."""
    host = DaemonHost(str(tmp_path), request.param)
    yield host
    host.close()


def test_passes_reload_and_stop(host):
    process = host.start(interval=1)
    passes = process.wait_for(PASS_LINE, count=2)
    assert (_timestamp(passes[1]) - _timestamp(passes[0])).total_seconds() < (
        1.6)
    notifications = process.read_notifications()
    assert 'READY=1' in notifications
    assert any(n.startswith('STATUS=Pass done')
               for n in notifications), notifications

    host.configure(interval=2)
    process.signal(signal.SIGHUP)
    reloaded = process.wait_for(r'a pass every 2 s')
    passes = [line for line in process.wait_for(PASS_LINE, count=6)
              if _timestamp(line) > _timestamp(reloaded[0])]
    assert len(passes) >= 2
    gaps = [(_timestamp(b) - _timestamp(a)).total_seconds()
            for a, b in zip(passes, passes[1:])]
    for gap in gaps:
        assert gap > 1.7, gaps
        assert gap < 2.6, gaps

    status, seconds = process.stop()
    assert status == 0
    assert seconds < 5
    assert 'STOPPING=1' in process.read_notifications()
    host.assert_clean_log(process)


def test_reload_with_a_bad_value_keeps_the_running_values(host):
    process = host.start(interval=1)
    process.wait_for(PASS_LINE, count=1)
    host.configure(interval='often')
    process.signal(signal.SIGHUP)
    process.wait_for(r'ERROR cachekeeper.config .* Configuration not '
                     r'reloaded.*\[image_cache\] manager_interval')
    before = len(process.lines(PASS_LINE))
    passes = process.wait_for(PASS_LINE, count=before + 2)
    gap = (_timestamp(passes[-1]) - _timestamp(passes[-2]))
    assert gap.total_seconds() < 1.6

    # A good reload after a bad one applies.
    host.configure(interval=2)
    process.signal(signal.SIGHUP)
    process.wait_for(r'a pass every 2 s')
    status, _seconds = process.stop()
    assert status == 0
    assert 'Traceback' not in process.log()
    assert len(process.lines(' ERROR ')) == 1, process.log()


def test_reload_without_a_readable_config_file_keeps_running(host):
    process = host.start(interval=1)
    process.wait_for(PASS_LINE, count=1)
    with open(host.config_file) as f:
        good = f.read()
    # The threading backend's reload is cotyledon's: it logs the
    # error with its traceback, and its worker goes on as it was.
    said = (r'ERROR cachekeeper.cmd.daemon .* Configuration not '
            r'reloaded, the running values stay: .*'
            if host.backend == 'eventlet' else
            r'ERROR cotyledon.* Exception raised during reload hooks: .*')
    for broken, problem in (
            (lambda: os.unlink(host.config_file), 'Failed to find'),
            (lambda: host.write_file('[image_cache\n'), 'parse'),
            (lambda: host.write_file('[DEFAULT]\n# \udcff\n'),
             'decode')):
        broken()
        process.signal(signal.SIGHUP)
        process.wait_for(said + problem)
        before = len(process.lines(PASS_LINE))
        process.wait_for(PASS_LINE, count=before + 2)
    host.write_file(good.replace('manager_interval = 1',
                                  'manager_interval = 2'))
    process.signal(signal.SIGHUP)
    process.wait_for(r'a pass every 2 s')
    status, _seconds = process.stop()
    assert status == 0
    if host.backend == 'eventlet':
        assert 'Traceback' not in process.log()


def test_fractional_interval(host):
    process = host.start(interval=0.2)
    process.wait_for(r'a pass every 0.2 s')
    passes = process.wait_for(PASS_LINE, count=6, timeout=20)
    gaps = [(_timestamp(b) - _timestamp(a)).total_seconds()
            for a, b in zip(passes, passes[1:])]
    # Not timed to the millisecond: far below the half second the
    # loop would sleep if it slept in whole chunks.
    assert sorted(gaps)[len(gaps) // 2] < 0.45, gaps
    status, _seconds = process.stop()
    assert status == 0
    host.assert_clean_log(process)


def test_negative_interval_idles(host):
    process = host.start(interval=-1)
    process.wait_for(r'passes are disabled')
    with pytest.raises(AssertionError):
        process.wait_for(PASS_LINE, timeout=3)
    assert len(process.lines('passes are disabled')) == 1
    status, seconds = process.stop()
    assert status == 0
    host.assert_clean_log(process)


def test_failed_pass_does_not_stop_the_loop(host):
    base = os.path.join(host.instances_path, '_base')
    os.rmdir(base)
    # A file where the cache directory should be: every pass fails.
    open(base, 'w').close()
    process = host.start(interval=1)
    process.wait_for(PASS_LINE + r'.*; 1 errors', count=2)
    # Said once, not every pass.
    assert len(process.lines('cannot read the image cache')) == 1
    os.unlink(base)
    os.mkdir(base)
    process.wait_for(PASS_LINE + r'.*; 0 errors')
    process.wait_for(r'Resolved: cannot read the image cache')
    status, seconds = process.stop()
    assert status == 0
    assert 'Traceback' not in process.log()


class BadConfig:
    """The daemon run on a config that cannot be used."""

    def __init__(self, tmp):
        self.tmp = tmp

    def run(self, *args):
        return subprocess.run(
            [daemon.console_script('cachekeeper')] + list(args),
            capture_output=True, text=True, timeout=30)

    def assert_one_line(self, result, expected):
        assert result.returncode == 2, result.stderr
        assert 'Traceback' not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert expected in lines[0]


@pytest.fixture
def bad_config(tmp_path):
    return BadConfig(str(tmp_path))


def test_bad_interval(bad_config):
    config_file = os.path.join(bad_config.tmp, 'bad.conf')
    daemon.write_config(config_file,
                        DEFAULT={'state_path': bad_config.tmp},
                        image_cache={'manager_interval': 'abc'})
    bad_config.assert_one_line(bad_config.run('--config-file', config_file),
                          '[image_cache] manager_interval')


def test_missing_config_file(bad_config):
    missing = os.path.join(bad_config.tmp, 'missing.conf')
    bad_config.assert_one_line(bad_config.run('--config-file', missing),
                               missing)


def test_unreadable_config_file(bad_config):
    # Root reads any mode, so use something no one can read as a file.
    unreadable = os.path.join(bad_config.tmp, 'a-directory.conf')
    os.mkdir(unreadable)
    bad_config.assert_one_line(bad_config.run('--config-file', unreadable),
                          unreadable)


def test_state_path_missing(bad_config):
    config_file = os.path.join(bad_config.tmp, 'cachekeeper.conf')
    daemon.write_config(
        config_file,
        DEFAULT={'state_path': os.path.join(bad_config.tmp, 'nowhere')})
    bad_config.assert_one_line(bad_config.run('--config-file', config_file),
                          '[DEFAULT] state_path')


def test_the_debug_log_shows_no_secret_of_the_backend_url(tmp_path):
    # redis, whose client the test requirements install, so that the
    # daemon really connects; with the secrets of every driver, and one
    # that only mask_password knows.
    template, secrets = tooz_urls.SECRET_URLS['redis']
    template += ('&keyfile_password=keyfile-pw&ssl_key_password=ssl-key-pw'
                 '&token=a-token')
    secrets += ('keyfile-pw', 'ssl-key-pw', 'a-token')
    host = DaemonHost(str(tmp_path), 'eventlet')
    # A file a pass would remove but for the unreachable backend.
    unused = os.path.join(host.instances_path, '_base',
                          hosttree.image('unused'))
    with open(unused, 'wb') as f:
        f.truncate(1024 * 1024)
    hosttree.set_age(unused, 2 * hosttree.DAY)
    with tooz_urls.closed_port() as port:
        url = template.format(port=port)
        daemon.write_config(
            host.config_file,
            DEFAULT={'instances_path': host.instances_path,
                     'state_path': host.state_path, 'debug': True},
            image_cache={'manager_interval': 1},
            coordination={'backend_url': url})
        process = daemon.Daemon(host.tmp, host.config_file)
        try:
            process.wait_for(r'WARNING cachekeeper.coordination .* '
                             r'unavailable')
            process.wait_for(PASS_LINE)
            log = process.stop_cleanly()
        finally:
            process.kill()
    # The eventlet backend logs every option at start with debug on.
    assert process.lines(r'coordination\.backend_url +=\s\*{4}\s')
    assert 'Coordination backend %s unavailable' % masking.mask(url) in log
    with open(os.path.join(host.state_path, 'last_pass.json')) as f:
        report = f.read()
    assert 'coordination unavailable' in report
    for secret in secrets:
        assert secret not in log
        assert secret not in report


PRESSURE_STARTS = (r'INFO cachekeeper.service .* The image cache is over its '
                   r'budget between passes \(cache \d+ files > 2 max\): a '
                   r'pass evicts now')
PRESSURE_ENDS = (r'INFO cachekeeper.service .* The image cache is within its '
                 r'budget again: cache .* in 2 files')
PRESSURE_PASS = PASS_LINE + r' in [0-9.]+s, trigger=pressure: '


def _cache_file(host, label, age):
    """An unused original, ``age`` seconds old, in the daemon's cache."""
    path = os.path.join(host.instances_path, '_base', hosttree.image(label))
    with open(path, 'wb') as f:
        f.truncate(1024 * 1024)
    hosttree.set_age(path, age)
    return path


def _assert_one_pass_at_a_time(process):
    # Each pass line says when the pass ended and how long it took: each
    # started after the one before it had ended.
    passes = [(_timestamp(line),
               float(re.search(r'Pass done in ([0-9.]+)s', line).group(1)))
              for line in process.lines(PASS_LINE)]
    for (ended, _), (next_ended, took) in zip(passes, passes[1:]):
        assert (next_ended - ended).total_seconds() >= took - 0.01, passes


def test_pressure_between_passes_evicts_at_once(host):
    used = _cache_file(host, 'used', 30 * hosttree.DAY)
    directory = os.path.join(host.instances_path, 'instance-1')
    disk = hosttree.HostTree.overlay(os.path.join(directory, 'disk'), used)
    with open(os.path.join(directory, 'disk.info'), 'w') as f:
        json.dump({disk: 'qcow2'}, f)
    process = host.start(interval=3600, max_cache_files=2,
                         pressure_check_interval=1)
    process.wait_for(r'a pass every 3600 s; the budget checked every 1 s')
    process.wait_for(PASS_LINE)
    # Younger than an original's minimum age (a day), older than
    # eviction_minimum_age_seconds: only the budget removes them.
    oldest = _cache_file(host, 'oldest', 3 * hosttree.HOUR)
    older = _cache_file(host, 'older', 2 * hosttree.HOUR)
    newest = _cache_file(host, 'newest', 1 * hosttree.HOUR)

    process.wait_for(PRESSURE_STARTS, timeout=10)
    process.wait_for(PRESSURE_PASS + r'.*evicted 2 files')
    process.wait_for(PRESSURE_ENDS, timeout=10)

    assert not os.path.exists(oldest)
    assert not os.path.exists(older)
    assert os.path.exists(newest)
    assert os.path.exists(used)
    with open(os.path.join(host.state_path, 'last_pass.json')) as f:
        report = json.load(f)
    assert report['trigger'] == 'pressure'
    assert report['budget']['cache_files_after'] == 2

    # Pressure again: a pass again, said once more each way.
    again = _cache_file(host, 'again', 2 * hosttree.HOUR)
    process.wait_for(PRESSURE_ENDS, count=2, timeout=10)
    assert not os.path.exists(again)
    log = process.stop_cleanly()
    assert len(process.lines(PRESSURE_STARTS)) == 2, log
    assert len(process.lines(PRESSURE_PASS)) == 2, log
    assert len(process.lines(PASS_LINE)) == 3, log
    _assert_one_pass_at_a_time(process)


def test_pressure_a_pass_cannot_relieve_runs_no_pass_again(host):
    # Both files in use: over the cap for good, and nothing to evict.
    for label in ('a', 'b', 'c'):
        base = _cache_file(host, label, hosttree.DAY)
        directory = os.path.join(host.instances_path, 'instance-' + label)
        disk = hosttree.HostTree.overlay(os.path.join(directory, 'disk'),
                                         base)
        with open(os.path.join(directory, 'disk.info'), 'w') as f:
            json.dump({disk: 'qcow2'}, f)
    process = host.start(interval=3600, max_cache_files=2,
                         pressure_check_interval=0.2)
    process.wait_for(PASS_LINE + r'.*still over budget')
    process.wait_for(PRESSURE_STARTS, timeout=10)
    process.wait_for(PRESSURE_PASS)
    # Many checks later: no pass, no line, until a new file appears.
    time.sleep(2)
    assert len(process.lines(PASS_LINE)) == 2
    _cache_file(host, 'new', 2 * hosttree.HOUR)
    process.wait_for(PRESSURE_PASS, count=2, timeout=10)
    process.stop_cleanly()
    assert len(process.lines(PRESSURE_STARTS)) == 1
    assert not process.lines(PRESSURE_ENDS)


def _allocated_file(path, mib, age):
    """A file whose blocks are all written, so that they are counted."""
    with open(path, 'wb') as f:
        for _ in range(mib):
            f.write(b'\1' * 1024 * 1024)
    hosttree.set_age(path, age)
    return path


def _percent_used(path):
    st = os.statvfs(path)
    used = st.f_blocks - st.f_bfree
    return 100.0 * used / (used + st.f_bavail)


def test_pressure_on_a_full_tmpfs_evicts_down_to_the_low_watermark(
        tmp_path):
    with tmpfs.Tmpfs(tmp_path / 'instances', 32):
        host = DaemonHost(str(tmp_path), 'eventlet')
        try:
            base = os.path.join(host.instances_path, '_base')
            used = _allocated_file(os.path.join(base, hosttree.image('used')),
                                   4, hosttree.DAY)
            directory = os.path.join(host.instances_path, 'instance-1')
            disk = hosttree.HostTree.overlay(os.path.join(directory, 'disk'),
                                             used)
            with open(os.path.join(directory, 'disk.info'), 'w') as f:
                json.dump({disk: 'qcow2'}, f)
            process = host.start(interval=3600, pressure_check_interval=0.5,
                                 disk_high_watermark_percent=60,
                                 disk_low_watermark_percent=40)
            process.wait_for(PASS_LINE)
            # 4 + 4 * 4 MiB of 32: over 60%; down to 40% takes the two
            # least recently used.
            unused = [_allocated_file(
                os.path.join(base, hosttree.image('unused-%d' % hours)), 4,
                hours * hosttree.HOUR) for hours in (4, 3, 2, 1)]
            assert _percent_used(host.instances_path) > 60

            process.wait_for(r'The image cache is over its budget between '
                             r'passes \(filesystem [0-9.]+% > 60% high '
                             r'watermark\)', timeout=10)
            process.wait_for(r'The image cache is within its budget again',
                             timeout=10)

            assert [os.path.exists(path) for path in unused] == [
                False, False, True, True]
            assert os.path.exists(used)
            assert _percent_used(host.instances_path) <= 40
            process.stop_cleanly()
            assert len(process.lines('over its budget between passes')) == 1
            assert len(process.lines('within its budget again')) == 1
        finally:
            host.close()


def test_evict_while_the_daemon_runs(host):
    young = hosttree.image('young-image')
    path = os.path.join(host.instances_path, '_base', young)
    with open(path, 'wb') as f:
        f.truncate(1024 * 1024)
    process = host.start(interval=3600)
    process.wait_for(PASS_LINE)

    evicted = subprocess.run(
        [hosttree.MANAGE, '--config-file', host.config_file, 'cache',
         'evict', young], capture_output=True, text=True,
        timeout=hosttree.PASS_TIMEOUT)

    assert evicted.returncode == 0, evicted.stdout + evicted.stderr
    assert not os.path.exists(path)
    listed = subprocess.run(
        [hosttree.MANAGE, '--config-file', host.config_file, 'scrub', 'list',
         '--json'], capture_output=True, text=True,
        timeout=hosttree.PASS_TIMEOUT)
    assert [e['name'] for e in json.loads(listed.stdout)['entries']] == [
        young]
    host.assert_clean_log(process)
