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

"""cache pass on an image cache that nova's storage registry says is shared.

cachekeeper-manage runs as a subprocess; the leadership it competes for is
held, where a test needs it, by a coordinator in the test process.
"""

import json
import os
import time
import unittest

import fixtures

from cachekeeper.cache import registry
from cachekeeper import coordination
from tests.functional.cache import hosttree

UNUSED = hosttree.image('11111111-1111-1111-1111-111111111111')
IN_USE = hosttree.image('22222222-2222-2222-2222-222222222222')


class SharedPassTestCase(fixtures.TestWithFixtures, unittest.TestCase):

    def setUp(self):
        super().setUp()
        self.host = hosttree.HostTree(self.useFixture(fixtures.TempDir()).path)
        self.registry_path = registry.registry_path(self.host.instances_path)
        self.host.base(UNUSED, 2 * hosttree.DAY)
        in_use = self.host.base(IN_USE, 2 * hosttree.DAY)
        self.host.instance('6f1c4a52-2d0e-4c36-9a51-000000000001',
                           {'disk': in_use})

    def _configure(self, **sections):
        self.host.write_config()
        with open(self.host.config_file, 'a') as f:
            for section, options in sections.items():
                f.write('[%s]\n' % section)
                for name, value in options.items():
                    f.write('%s = %s\n' % (name, value))

    def _register(self, hosts):
        with open(self.registry_path, 'w') as f:
            json.dump(hosts, f)

    def _registry(self):
        with open(self.registry_path) as f:
            return f.read()

    def test_other_registered_host_and_the_default_backend(self):
        self._register({'compute-other': time.time() - 3 * hosttree.DAY})
        process, report = self.host.run_pass()
        self.assertEqual(0, process.returncode, process.stderr)
        entries = hosttree.entries(report)
        self.assertEqual('queued', entries[UNUSED]['verdict'])
        self.assertEqual('in_use', entries[IN_USE]['verdict'])
        hosts = json.loads(self._registry())
        self.assertEqual({'compute-other', 'compute-test'}, set(hosts))
        self.assertLess(time.time() - hosts['compute-test'], 60)

    def test_corrupt_registry_stops_removals(self):
        corrupt = '{"compute-other": 1700000000.0, "comp'
        with open(self.registry_path, 'w') as f:
            f.write(corrupt)
        process, report = self.host.run_pass()
        self.assertEqual(1, process.returncode, process.stderr)
        entry = hosttree.entries(report)[UNUSED]
        self.assertEqual('kept', entry['verdict'])
        self.assertIn('%s could not be read: not valid JSON'
                      % self.registry_path, entry['reason'])
        self.assertIn('the hosts that share this image cache are unknown',
                      entry['reason'])
        self.assertEqual('in_use', hosttree.entries(report)[IN_USE]['verdict'])
        self.assertIn('WARNING', process.stderr)
        self.assertIn('cannot read %s: not valid JSON' % self.registry_path,
                      process.stderr)
        # Never reset: nova's entries stay for an operator to repair.
        self.assertEqual(corrupt, self._registry())
        self.assertTrue(os.path.exists(self.host.cache_path(UNUSED)))

    def test_follower_keeps_and_records_unused_files(self):
        leader = coordination.Coordinator(
            'file://%s/cachekeeper-coordination' % self.host.locks_dir,
            self.host.instances_path, self.host.cache_dir, 'compute-other')
        leader.start()
        self.addCleanup(leader.stop)
        self.assertTrue(leader.wait_for_first_beat())
        self._register({'compute-other': time.time()})
        in_use_mtime = os.stat(self.host.cache_path(IN_USE)).st_mtime
        process, report = self.host.run_pass()
        self.assertEqual(0, process.returncode, process.stderr)
        entry = hosttree.entries(report)[UNUSED]
        self.assertEqual('kept', entry['verdict'])
        self.assertEqual('unused for 2d (minimum 1d); not removed: not the '
                         'leader for this cache (leader: compute-other)',
                         entry['reason'])
        self.assertEqual(0, report['bytes_queued'])
        # Files in use are touched all the same.
        self.assertGreater(os.stat(self.host.cache_path(IN_USE)).st_mtime,
                           in_use_mtime)
        explained = self.host.manage('cache', 'explain', UNUSED)
        self.assertNotIn('first seen unused: never seen', explained.stdout)
        self.assertIn('first seen unused: 20', explained.stdout)

        leader.stop()
        process, report = self.host.run_pass()
        self.assertEqual('queued', hosttree.entries(report)[UNUSED]['verdict'])

    def test_backend_that_does_not_reach_the_other_hosts(self):
        elsewhere = self.useFixture(fixtures.TempDir(rootdir='/dev/shm')).path
        self.assertNotEqual(os.stat(elsewhere).st_dev,
                            os.stat(self.host.cache_dir).st_dev)
        self._configure(coordination={
            'backend_url': 'file://%s/coordination' % elsewhere})
        # Alone, the local backend is enough.
        process, report = self.host.run_pass()
        self.assertEqual('queued', hosttree.entries(report)[UNUSED]['verdict'])
        self.host.base(UNUSED, 2 * hosttree.DAY)
        self._register({'compute-other': time.time()})
        process, report = self.host.run_pass()
        entry = hosttree.entries(report)[UNUSED]
        self.assertEqual('kept', entry['verdict'])
        self.assertIn('the image cache is shared with compute-other, but '
                      '[coordination] backend_url cannot keep them from '
                      'removing at the same time: its directory %s/'
                      'coordination is not on the file system of the image '
                      'cache' % elsewhere, entry['reason'])
        self.assertIn('WARNING', process.stderr)

    def test_unusable_backend_stops_removals(self):
        self._configure(coordination={
            'backend_url': 'file:///proc/cachekeeper-coordination'})
        process, report = self.host.run_pass()
        entry = hosttree.entries(report)[UNUSED]
        self.assertEqual('kept', entry['verdict'])
        self.assertIn('not removed: coordination unavailable', entry['reason'])
        self.assertIn('unavailable', process.stderr)
        self.assertEqual('in_use', hosttree.entries(report)[IN_USE]['verdict'])

    def test_per_host_cache_directory(self):
        cache_dir = os.path.join(self.host.instances_path, '_base_10.0.0.7')
        os.mkdir(cache_dir)
        os.rename(self.host.cache_path(UNUSED),
                  os.path.join(cache_dir, UNUSED))
        self.host.write_config(subdirectory_name='_base_$my_ip')
        with open(self.host.config_file) as f:
            config = f.read().replace(
                '[DEFAULT]\n', '[DEFAULT]\nmy_ip = 10.0.0.7\n')
        with open(self.host.config_file, 'w') as f:
            f.write(config)
        self._register({'compute-other': time.time()})
        process, report = self.host.run_pass()
        self.assertEqual(0, process.returncode, process.stderr)
        self.assertEqual(
            {os.path.join(cache_dir, UNUSED): 'queued'},
            {e['path']: e['verdict'] for e in report['files']})

    def test_dry_run_neither_registers_nor_coordinates(self):
        os.rmdir(self.host.locks_dir)
        process, report = self.host.run_pass('--dry-run')
        self.assertEqual(0, process.returncode, process.stderr)
        self.assertEqual('queued', hosttree.entries(report)[UNUSED]['verdict'])
        self.assertFalse(os.path.exists(self.registry_path))
        self.assertFalse(os.path.exists(self.host.locks_dir))

    def test_status_shows_backend_leader_and_registry(self):
        leader = coordination.Coordinator(
            'file://%s/cachekeeper-coordination' % self.host.locks_dir,
            self.host.instances_path, self.host.cache_dir, 'compute-other')
        leader.start()
        self.addCleanup(leader.stop)
        self.assertTrue(leader.wait_for_first_beat())
        self._register({'compute-other': time.time() - 2 * hosttree.DAY})
        self.host.run_pass()
        process = self.host.manage('cache', 'status', '--json')
        self.assertEqual(0, process.returncode, process.stderr)
        document = json.loads(process.stdout)['coordination']
        self.assertEqual('compute-other', document['leader']['host'])
        self.assertEqual(['compute-other'], document['shared_with'])
        self.assertEqual({'compute-other': True, 'compute-test': False},
                         {host: entry['stale'] for host, entry
                          in document['registry']['hosts'].items()})
        process = self.host.manage('cache', 'status')
        self.assertIn('\nLeader       compute-other (pid %d) since '
                      % os.getpid(), process.stdout)
        self.assertIn('\nCoordination file://%s/locks/cachekeeper-'
                      'coordination (lock %s)'
                      % (self.host.instances_path, leader.lock_name),
                      process.stdout)
