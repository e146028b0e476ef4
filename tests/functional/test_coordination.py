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

"""Leader election on tooz's file backend, with real locks."""

import json
import logging
import os
import threading
import time
import unittest
import urllib.parse

import fixtures
from oslo_config import cfg

from cachekeeper.cache import registry
import cachekeeper.conf
from cachekeeper import coordination

# A short lease: the file backend beats every third of it.
LEASE_QUERY = '?timeout=1'
WAIT = 5


def wait_until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class LogCapture(logging.Handler):
    """The messages logged, one a line, in ``output``."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    @property
    def output(self):
        return '\n'.join(self.lines)


class FakeClock:

    def __init__(self):
        self.offset = 0.0

    def __call__(self):
        return time.monotonic() + self.offset


class CoordinatorTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.instances_path = self.useFixture(fixtures.TempDir()).path
        self.cache_dir = os.path.join(self.instances_path, '_base')
        os.mkdir(self.cache_dir)
        self.url = 'file://%s/locks/cachekeeper-coordination%s' % (
            self.instances_path, LEASE_QUERY)
        self.log = LogCapture()
        logger = logging.getLogger('cachekeeper.coordination')
        logger.addHandler(self.log)
        self.addCleanup(logger.removeHandler, self.log)
        level = logger.level
        logger.setLevel(logging.INFO)
        self.addCleanup(logger.setLevel, level)

    def _start(self, host, url=None, **kwargs):
        coordinator = coordination.Coordinator(
            url or self.url, self.instances_path, self.cache_dir, host,
            **kwargs)
        coordinator.start()
        self.addCleanup(coordinator.stop)
        self.assertTrue(coordinator.wait_for_first_beat())
        return coordinator

    def test_one_leader(self):
        leader = self._start('host-a')
        follower = self._start('host-b')
        self.assertIsNone(leader.removal_hold())
        self.assertTrue(leader.is_leader())
        self.assertEqual('not the leader for this cache (leader: host-a)',
                         follower.removal_hold())
        self.assertFalse(follower.is_leader())
        with open(coordination.leader_record_path(self.instances_path,
                                                  self.cache_dir)) as f:
            record = json.load(f)
        self.assertEqual(('host-a', os.getpid()),
                         (record['host'], record['pid']))
        lock_file = os.path.join(self.instances_path, 'locks',
                                 'cachekeeper-coordination',
                                 leader.lock_name)
        self.assertTrue(os.path.exists(lock_file))
        self.assertEqual([], [name for name in os.listdir(
            os.path.join(self.instances_path, 'locks'))
            if name.startswith('nova-')])
        self.assertIn('This host (host-a) is now the leader', self.log.output)

    def test_file_backend_tree_is_made_before_tooz_makes_it(self):
        # What prepare_file_backend makes must be all the file driver
        # makes, or tooz adds parts with this process's owner.
        from tooz.drivers import file as file_driver
        leader = self._start('host-a')
        directory = os.path.join(self.instances_path, 'locks',
                                 'cachekeeper-coordination')
        driver = file_driver.FileDriver(
            b'probe', urllib.parse.urlsplit(self.url), {})
        made = [os.path.join(directory, name)
                for name in coordination.FILE_BACKEND_DIRS
                + (coordination.FILE_BACKEND_DRIVER_LOCK,)]
        self.assertEqual(sorted([directory] + made),
                         sorted(driver._reserved_paths))
        for path in made + [os.path.join(directory, leader.lock_name)]:
            self.assertTrue(os.path.exists(path), path)

    def test_only_file_backends_are_prepared(self):
        coordination.prepare_file_backend('redis://127.0.0.1:1',
                                          'cachekeeper-leader-x')
        coordination.prepare_file_backend(
            'file://%s/missing/coordination' % self.instances_path,
            'cachekeeper-leader-x')
        self.assertEqual(['_base'], os.listdir(self.instances_path))

    def test_stop_hands_the_leadership_over(self):
        leader = self._start('host-a')
        follower = self._start('host-b')
        leader.stop()
        self.assertIsNone(coordination.read_leader(self.instances_path,
                                                   self.cache_dir))
        self.assertTrue(wait_until(lambda: follower.removal_hold() is None))
        self.assertEqual('host-b', coordination.read_leader(
            self.instances_path, self.cache_dir).host)
        self.assertIn('Gave up the leadership of image cache %s: this '
                      'process stops' % self.cache_dir, self.log.output)

    def test_a_host_that_would_not_remove_leaves_it_to_others(self):
        wanted = threading.Event()
        first = self._start('host-a', wants_leadership=wanted.is_set)
        self.assertEqual('not the leader for this cache (leader: unknown)',
                         first.removal_hold())
        second = self._start('host-b')
        self.assertIsNone(second.removal_hold())
        second.stop()
        wanted.set()
        self.assertTrue(wait_until(lambda: first.removal_hold() is None))
        wanted.clear()
        self.assertTrue(wait_until(lambda: first.removal_hold() is not None))
        self.assertIn('removal is disabled', self.log.output)

    def test_caches_have_their_own_leader(self):
        other_cache = os.path.join(self.instances_path, '_base_10.0.0.2')
        os.mkdir(other_cache)
        first = self._start('host-a')
        second = coordination.Coordinator(self.url, self.instances_path,
                                          other_cache, 'host-b')
        second.start()
        self.addCleanup(second.stop)
        second.wait_for_first_beat()
        self.assertIsNone(first.removal_hold())
        self.assertIsNone(second.removal_hold())
        self.assertNotEqual(first.lock_name, second.lock_name)

    def test_unanswered_heartbeat_stops_removals(self):
        clock = FakeClock()
        answering = threading.Event()
        answering.set()

        def wants_leadership():
            # Called within each heartbeat: a backend call that hangs.
            answering.wait()
            return True

        leader = self._start('host-a', wants_leadership=wants_leadership,
                             clock=clock)
        self.assertIsNone(leader.removal_hold())
        answering.clear()
        clock.offset += 60
        hold = leader.removal_hold()
        self.assertRegex(hold, r'^coordination unavailable: no answer for '
                               r'\d+s$')
        self.assertEqual(hold, leader.removal_hold())
        answering.set()
        self.assertTrue(wait_until(lambda: leader.removal_hold() is None))
        self.assertEqual(1, self.log.output.count('no answer for'))
        self.assertEqual(1, self.log.output.count('answers again'))

    def test_unusable_backend_is_said_once(self):
        coordinator = self._start('host-a', url='nosuch://nowhere')
        self.assertRegex(coordinator.removal_hold(),
                         r'^coordination unavailable: no usable tooz driver')
        time.sleep(1.5)
        self.assertEqual(1, self.log.output.count('unavailable'))
        self.assertFalse(coordinator.is_leader())


class ReachTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.instances_path = self.useFixture(fixtures.TempDir()).path
        self.cache_dir = os.path.join(self.instances_path, '_base')
        os.mkdir(self.cache_dir)

    def test_file_backend_on_the_cache_file_system(self):
        self.assertIsNone(coordination.reach_problem(
            'file://%s/locks/not-made-yet' % self.instances_path,
            self.cache_dir))

    def test_file_backend_elsewhere(self):
        self.assertNotEqual(os.stat('/proc').st_dev,
                            os.stat(self.cache_dir).st_dev)
        self.assertIn('is not on the file system of the image cache',
                      coordination.reach_problem('file:///proc/coordination',
                                                 self.cache_dir))

    def test_host_local_and_distributed_backends(self):
        self.assertIn('reaches only this host', coordination.reach_problem(
            'ipc://', self.cache_dir))
        self.assertIsNone(coordination.reach_problem(
            'redis://127.0.0.1:6379', self.cache_dir))
        self.assertIsNone(coordination.reach_problem(
            'etcd3+http://127.0.0.1:2379', self.cache_dir))

    def test_cache_id_follows_the_real_path(self):
        link = os.path.join(self.instances_path, 'base-link')
        os.symlink(self.cache_dir, link)
        self.assertEqual(coordination.cache_id(self.cache_dir),
                         coordination.cache_id(link))
        self.assertNotEqual(coordination.cache_id(self.cache_dir),
                            coordination.cache_id(self.instances_path))

    def test_safe_url(self):
        self.assertEqual('redis://:***@10.0.0.1:6379?timeout=5',
                         coordination.safe_url(
                             'redis://:secret@10.0.0.1:6379?timeout=5'))
        self.assertEqual('file:///var/lib/x',
                         coordination.safe_url('file:///var/lib/x'))


class StatusTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.instances_path = self.useFixture(fixtures.TempDir()).path
        self.cache_dir = os.path.join(self.instances_path, '_base')
        os.mkdir(self.cache_dir)
        self.conf = cfg.ConfigOpts()
        cachekeeper.conf.register_opts(self.conf)
        self.conf([])
        self.conf.set_override('instances_path', self.instances_path)
        self.conf.set_override('host', 'host-a')

    def test_status_of_a_shared_cache(self):
        now = time.time()
        with open(registry.registry_path(self.instances_path), 'w') as f:
            json.dump({'host-a': now - 10, 'host-b': now - 2 * 86400}, f)
        leader = coordination.Coordinator.from_conf(self.conf,
                                                    self.cache_dir)
        leader.start()
        self.addCleanup(leader.stop)
        leader.wait_for_first_beat()
        document = coordination.status(self.conf, self.cache_dir, now)
        self.assertEqual('file://%s/locks/cachekeeper-coordination'
                         % self.instances_path, document['backend'])
        self.assertEqual(leader.lock_name, document['lock'])
        self.assertEqual(('host-a', os.getpid()),
                         (document['leader']['host'],
                          document['leader']['pid']))
        self.assertEqual(['host-b'], document['shared_with'])
        self.assertIsNone(document['reach_problem'])
        self.assertTrue(document['registry']['hosts']['host-b']['stale'])
        rows = coordination.status_rows(document)
        self.assertEqual(('Coordination', '%s (lock %s)' % (
            document['backend'], leader.lock_name)), rows[0])
        self.assertEqual('Leader', rows[1][0])
        self.assertRegex(rows[1][1], r'^host-a \(pid \d+\) since \d{4}-')
        self.assertEqual(('Registry', '%s: host-a (10s ago), host-b '
                          '(172800s ago, stale)'
                          % registry.registry_path(self.instances_path)),
                         rows[2])
        self.assertEqual(3, len(rows))
        self.assertEqual([], coordination.status_warnings(document))

    def test_status_of_a_corrupt_registry_on_a_local_backend(self):
        with open(registry.registry_path(self.instances_path), 'w') as f:
            f.write('{"host-b": ')
        self.conf.set_override('backend_url', 'file:///proc/coordination',
                               group='coordination')
        # Group options are shared between ConfigOpts objects.
        self.addCleanup(self.conf.clear_override, 'backend_url',
                        group='coordination')
        document = coordination.status(self.conf, self.cache_dir,
                                       time.time())
        self.assertIsNone(document['leader'])
        self.assertIsNone(document['reach_problem'])
        rows = coordination.status_rows(document)
        self.assertEqual(('Leader', 'none recorded'), rows[1])
        self.assertTrue(rows[2][1].endswith(': unreadable'), rows)
        [warning] = coordination.status_warnings(document)
        self.assertRegex(warning, r"^nova's storage registry .* not valid "
                                  r"JSON .*: no removal until it is "
                                  r"repaired$")
        with open(registry.registry_path(self.instances_path), 'w') as f:
            json.dump({'host-b': time.time()}, f)
        self.assertEqual(
            ['the image cache is shared with host-b, but [coordination] '
             'backend_url cannot reach them: its directory '
             '/proc/coordination is not on the file system of the image '
             'cache, so the other hosts do not see its locks; no removal'],
            coordination.status_warnings(coordination.status(
                self.conf, self.cache_dir, time.time())))
