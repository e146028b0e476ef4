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

"""Two daemons on one shared instances_path: one remover at a time.

Each daemon is a host of its own (its [DEFAULT] host, state_path and
scrub queue) on the same instances_path, as two compute hosts on NFS
are; they coordinate through tooz's file backend (the default) or a real
redis-server.
"""

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import unittest

import fixtures

from tests.system import daemon
from tests.system import redis_server

DAY = 86400
INTERVAL = 1
PASS_LINE = r'INFO cachekeeper.service .* Pass done'
LEADER_LINE = r'is now the leader of image cache'
QEMU_IMG = shutil.which('qemu-img')


def cache_name(seed):
    return hashlib.sha1(seed.encode('utf-8')).hexdigest()


def timestamp(line):
    return datetime.datetime.strptime(line[:23], '%Y-%m-%d %H:%M:%S.%f')


def wait_until(predicate, timeout, message):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError('%s not reached in %ss' % (message, timeout))


class SharedCacheMixin:
    """Scenarios for any backend; ``lease`` is the backend's, in seconds."""

    lease = None

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.instances_path = os.path.join(self.tmp, 'instances')
        self.cache_dir = os.path.join(self.instances_path, '_base')
        os.makedirs(self.cache_dir)
        self.daemons = []

    def backend_options(self):
        return {}

    def _start(self, host, service_backend):
        workdir = os.path.join(self.tmp, host)
        state_path = os.path.join(workdir, 'state')
        os.makedirs(state_path, 0o700)
        config_file = os.path.join(workdir, 'cachekeeper.conf')
        daemon.write_config(
            config_file,
            DEFAULT={'instances_path': self.instances_path,
                     'state_path': state_path, 'host': host,
                     'service_backend': service_backend},
            image_cache={'manager_interval': INTERVAL,
                         'remove_unused_original_minimum_age_seconds': DAY},
            scrubber={'scrub_delay': 0},
            coordination=self.backend_options())
        process = daemon.Daemon(workdir, config_file)
        self.addCleanup(process.kill)
        self.daemons.append(process)
        return process

    def _start_two(self):
        return (self._start('host-a', 'eventlet'),
                self._start('host-b', 'threading'))

    def _base_file(self, seed, age=2 * DAY):
        path = os.path.join(self.cache_dir, cache_name(seed))
        with open(path, 'wb') as f:
            f.truncate(1024 * 1024)
        then = time.time() - age
        os.utime(path, (then, then))
        return path

    def _unused(self, tag, count=4):
        return [self._base_file('%s-%d' % (tag, i)) for i in range(count)]

    def _instance(self, uuid, base_path):
        directory = os.path.join(self.instances_path, uuid)
        os.mkdir(directory)
        subprocess.run([QEMU_IMG, 'create', '-q', '-f', 'qcow2', '-F', 'raw',
                        '-b', base_path, os.path.join(directory, 'disk')],
                       check=True)

    def _quarantined(self, path):
        """Which daemons quarantined ``path``, once per time they did."""
        pattern = r'Quarantined %s as' % re.escape(path)
        return [process for process in self.daemons
                for _ in process.lines(pattern)]

    def _wait_gone(self, paths, timeout):
        wait_until(lambda: not any(os.path.exists(p) for p in paths),
                   timeout, 'removal of %s' % ', '.join(paths))

    def _roles(self, first, second):
        """(leader, follower): the one that says it became the leader."""
        wait_until(lambda: first.lines(LEADER_LINE) or second.lines(
            LEADER_LINE), 10, 'a leader')
        if first.lines(LEADER_LINE):
            return first, second
        return second, first

    def _assert_removed_once_by(self, remover, paths):
        for path in paths:
            self.assertEqual([remover], self._quarantined(path), path)

    def _assert_no_cachekeeper_error(self):
        for process in self.daemons:
            self.assertEqual([], process.lines(r' ERROR cachekeeper'))

    def test_one_remover_and_files_in_use_kept(self):
        in_use_a = self._base_file('in-use-a')
        in_use_b = self._base_file('in-use-b')
        self._instance('11111111-1111-1111-1111-111111111111', in_use_a)
        self._instance('22222222-2222-2222-2222-222222222222', in_use_b)
        unused = self._unused('before-start')
        first, second = self._start_two()
        self._wait_gone(unused, 20)
        leader, follower = self._roles(first, second)
        passes = len(follower.lines(PASS_LINE))
        more = self._unused('while-running')
        self._wait_gone(more, 10)
        follower.wait_for(PASS_LINE, count=passes + 3)

        self._assert_removed_once_by(leader, unused + more)
        self.assertEqual([], follower.lines(r'Quarantined'))
        self.assertEqual([], follower.lines(LEADER_LINE))
        self.assertTrue(all('queued=0' in line
                            for line in follower.lines(PASS_LINE)))
        # The follower still touches what the instances use.
        for path in (in_use_a, in_use_b):
            self.assertLess(time.time() - os.stat(path).st_mtime, 30)
        # Both registered in nova's storage registry.
        with open(os.path.join(self.instances_path, 'compute_nodes')) as f:
            self.assertEqual({'host-a', 'host-b'}, set(json.load(f)))
        self._assert_no_cachekeeper_error()
        for process in self.daemons:
            self.assertNotIn('Traceback', process.log())

    def test_killed_leader_is_replaced(self):
        first, second = self._start_two()
        leader, follower = self._roles(first, second)
        leader.wait_for(PASS_LINE)
        killed_at = datetime.datetime.now()
        leader.kill()
        [line] = follower.wait_for(LEADER_LINE, timeout=INTERVAL + self.lease
                                   + 5)
        takeover = (timestamp(line) - killed_at).total_seconds()
        self.assertLess(takeover, INTERVAL + self.lease, line)
        unused = self._unused('after-kill')
        self._wait_gone(unused, 10)
        self._assert_removed_once_by(follower, unused)
        self._assert_no_cachekeeper_error()


class FileBackendTestCase(SharedCacheMixin, fixtures.TestWithFixtures,
                          unittest.TestCase):
    """The default backend_url: tooz's file driver under locks/."""

    # The file driver's heartbeat says 10 s; the kernel drops the lock of
    # a killed process at once, so the next heartbeat takes it.
    lease = 10

    def test_default_backend_lives_beside_nova_locks(self):
        first, second = self._start_two()
        self._roles(first, second)
        locks_dir = os.path.join(self.instances_path, 'locks')
        names = os.listdir(os.path.join(locks_dir,
                                        'cachekeeper-coordination'))
        self.assertEqual(1, len([n for n in names
                                 if n.startswith('cachekeeper-leader-')]))
        self.assertEqual([], [n for n in names if n.startswith('nova-')])


class RedisBackendTestCase(SharedCacheMixin, fixtures.TestWithFixtures,
                           unittest.TestCase):
    """A real redis-server on 127.0.0.1; locks expire after the lease."""

    lease = 2

    def setUp(self):
        self.redis = self.useFixture(redis_server.RedisServer())
        super().setUp()

    def backend_options(self):
        return {'backend_url': self.redis.url(self.lease)}

    def test_redis_restart_stops_removals_until_it_is_back(self):
        first, second = self._start_two()
        leader, follower = self._roles(first, second)
        unused = self._unused('before-restart')
        self._wait_gone(unused, 10)

        self.redis.stop()
        # Whatever the leader confirmed before has lapsed by then.
        time.sleep(self.lease + 0.5)
        during = self._unused('while-down')
        passes = len(leader.lines(PASS_LINE))
        leader.wait_for(PASS_LINE, count=passes + 3)
        self.assertTrue(all(os.path.exists(p) for p in during))
        warnings = [line for process in self.daemons
                    for line in process.lines(
                        r'WARNING cachekeeper.coordination')]
        self.assertTrue(warnings, leader.log())
        self.assertTrue(all('no removal' in line for line in warnings),
                        warnings)

        self.redis.start()
        self._wait_gone(during, 40)
        for path in during:
            self.assertEqual(1, len(self._quarantined(path)), path)
        self.assertTrue(any(process.lines(r'answers again')
                            for process in self.daemons))
        self._assert_no_cachekeeper_error()
