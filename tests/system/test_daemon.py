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
import os
import signal
import subprocess
import unittest

import fixtures

from tests.system import daemon

PASS_LINE = r'INFO cachekeeper.service .* Pass done'


def _timestamp(line):
    return datetime.datetime.strptime(line[:23], '%Y-%m-%d %H:%M:%S.%f')


class DaemonTestMixin:
    backend = None

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.instances_path = os.path.join(self.tmp, 'instances')
        os.makedirs(os.path.join(self.instances_path, '_base'))
        self.state_path = os.path.join(self.tmp, 'state')
        os.mkdir(self.state_path, 0o700)
        self.config_file = os.path.join(self.tmp, 'cachekeeper.conf')

    def _configure(self, interval):
        daemon.write_config(
            self.config_file,
            DEFAULT={'instances_path': self.instances_path,
                     'state_path': self.state_path,
                     'service_backend': self.backend},
            image_cache={'manager_interval': interval})

    def _start(self, interval):
        self._configure(interval)
        process = daemon.Daemon(self.tmp, self.config_file)
        self.addCleanup(process.kill)
        return process

    def _assert_clean_log(self, process):
        self.assertNotIn('Traceback', process.log())
        self.assertNotIn(' ERROR ', process.log())

    def test_passes_reload_and_stop(self):
        process = self._start(interval=1)
        passes = process.wait_for(PASS_LINE, count=2)
        self.assertLess(
            (_timestamp(passes[1]) - _timestamp(passes[0])).total_seconds(),
            1.6)
        notifications = process.read_notifications()
        self.assertIn('READY=1', notifications)
        self.assertTrue(any(n.startswith('STATUS=Pass done')
                            for n in notifications), notifications)

        self._configure(interval=2)
        process.signal(signal.SIGHUP)
        reloaded = process.wait_for(r'a pass every 2 s')
        passes = [line for line in process.wait_for(PASS_LINE, count=6)
                  if _timestamp(line) > _timestamp(reloaded[0])]
        self.assertGreaterEqual(len(passes), 2)
        gaps = [(_timestamp(b) - _timestamp(a)).total_seconds()
                for a, b in zip(passes, passes[1:])]
        for gap in gaps:
            self.assertGreater(gap, 1.7, gaps)
            self.assertLess(gap, 2.6, gaps)

        status, seconds = process.stop()
        self.assertEqual(0, status)
        self.assertLess(seconds, 5)
        self.assertIn('STOPPING=1', process.read_notifications())
        self._assert_clean_log(process)

    def test_reload_with_a_bad_value_keeps_the_running_values(self):
        process = self._start(interval=1)
        process.wait_for(PASS_LINE, count=1)
        self._configure(interval='often')
        process.signal(signal.SIGHUP)
        process.wait_for(r'ERROR cachekeeper.config .* Configuration not '
                         r'reloaded.*\[image_cache\] manager_interval')
        before = len(process.lines(PASS_LINE))
        passes = process.wait_for(PASS_LINE, count=before + 2)
        gap = (_timestamp(passes[-1]) - _timestamp(passes[-2]))
        self.assertLess(gap.total_seconds(), 1.6)

        # A good reload after a bad one applies.
        self._configure(interval=2)
        process.signal(signal.SIGHUP)
        process.wait_for(r'a pass every 2 s')
        status, _seconds = process.stop()
        self.assertEqual(0, status)
        self.assertNotIn('Traceback', process.log())
        self.assertEqual(1, len(process.lines(' ERROR ')), process.log())

    def test_reload_without_a_readable_config_file_keeps_running(self):
        process = self._start(interval=1)
        process.wait_for(PASS_LINE, count=1)
        with open(self.config_file) as f:
            good = f.read()
        # The threading backend's reload is cotyledon's: it logs the
        # error with its traceback, and its worker goes on as it was.
        said = (r'ERROR cachekeeper.cmd.daemon .* Configuration not '
                r'reloaded, the running values stay: .*'
                if self.backend == 'eventlet' else
                r'ERROR cotyledon.* Exception raised during reload hooks: .*')
        for broken, problem in (
                (lambda: os.unlink(self.config_file), 'Failed to find'),
                (lambda: self._write_file('[image_cache\n'), 'parse'),
                (lambda: self._write_file('[DEFAULT]\n# \udcff\n'),
                 'decode')):
            broken()
            process.signal(signal.SIGHUP)
            process.wait_for(said + problem)
            before = len(process.lines(PASS_LINE))
            process.wait_for(PASS_LINE, count=before + 2)
        self._write_file(good.replace('manager_interval = 1',
                                      'manager_interval = 2'))
        process.signal(signal.SIGHUP)
        process.wait_for(r'a pass every 2 s')
        status, _seconds = process.stop()
        self.assertEqual(0, status)
        if self.backend == 'eventlet':
            self.assertNotIn('Traceback', process.log())

    def _write_file(self, text):
        with open(self.config_file, 'w', errors='surrogateescape') as f:
            f.write(text)

    def test_fractional_interval(self):
        process = self._start(interval=0.2)
        process.wait_for(r'a pass every 0.2 s')
        passes = process.wait_for(PASS_LINE, count=6, timeout=20)
        gaps = [(_timestamp(b) - _timestamp(a)).total_seconds()
                for a, b in zip(passes, passes[1:])]
        # Not timed to the millisecond: far below the half second the
        # loop would sleep if it slept in whole chunks.
        self.assertLess(sorted(gaps)[len(gaps) // 2], 0.45, gaps)
        status, _seconds = process.stop()
        self.assertEqual(0, status)
        self._assert_clean_log(process)

    def test_negative_interval_idles(self):
        process = self._start(interval=-1)
        process.wait_for(r'passes are disabled')
        self.assertRaises(AssertionError, process.wait_for, PASS_LINE,
                          timeout=3)
        self.assertEqual(1, len(process.lines('passes are disabled')))
        status, seconds = process.stop()
        self.assertEqual(0, status)
        self._assert_clean_log(process)

    def test_failed_pass_does_not_stop_the_loop(self):
        base = os.path.join(self.instances_path, '_base')
        os.rmdir(base)
        # A file where the cache directory should be: every pass fails.
        open(base, 'w').close()
        process = self._start(interval=1)
        process.wait_for(PASS_LINE + r'.*; 1 errors', count=2)
        # Said once, not every pass.
        self.assertEqual(1, len(process.lines('cannot read the image cache')))
        os.unlink(base)
        os.mkdir(base)
        process.wait_for(PASS_LINE + r'.*; 0 errors')
        process.wait_for(r'Resolved: cannot read the image cache')
        status, seconds = process.stop()
        self.assertEqual(0, status)
        self.assertNotIn('Traceback', process.log())


class EventletDaemonTestCase(DaemonTestMixin, fixtures.TestWithFixtures,
                             unittest.TestCase):
    backend = 'eventlet'


class ThreadingDaemonTestCase(DaemonTestMixin, fixtures.TestWithFixtures,
                              unittest.TestCase):
    backend = 'threading'


class BadConfigTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path

    def _run(self, *args):
        return subprocess.run(
            [daemon.console_script('cachekeeper')] + list(args),
            capture_output=True, text=True, timeout=30)

    def _assert_one_line(self, result, expected):
        self.assertEqual(2, result.returncode, result.stderr)
        self.assertNotIn('Traceback', result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(1, len(lines), result.stderr)
        self.assertIn(expected, lines[0])

    def test_bad_interval(self):
        config_file = os.path.join(self.tmp, 'bad.conf')
        daemon.write_config(config_file,
                            DEFAULT={'state_path': self.tmp},
                            image_cache={'manager_interval': 'abc'})
        self._assert_one_line(self._run('--config-file', config_file),
                              '[image_cache] manager_interval')

    def test_missing_config_file(self):
        missing = os.path.join(self.tmp, 'missing.conf')
        self._assert_one_line(self._run('--config-file', missing), missing)

    def test_unreadable_config_file(self):
        # Root reads any mode, so use something no one can read as a file.
        unreadable = os.path.join(self.tmp, 'a-directory.conf')
        os.mkdir(unreadable)
        self._assert_one_line(self._run('--config-file', unreadable),
                              unreadable)

    def test_state_path_missing(self):
        config_file = os.path.join(self.tmp, 'cachekeeper.conf')
        daemon.write_config(
            config_file,
            DEFAULT={'state_path': os.path.join(self.tmp, 'nowhere')})
        self._assert_one_line(self._run('--config-file', config_file),
                              '[DEFAULT] state_path')
