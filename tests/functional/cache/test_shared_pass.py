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

import pytest

from cachekeeper.cache import registry
from cachekeeper import coordination
from tests.lib import hosttree

UNUSED = hosttree.image('11111111-1111-1111-1111-111111111111')
IN_USE = hosttree.image('22222222-2222-2222-2222-222222222222')


class SharedCache:
    """A HostTree with an unused and a used cache file, and its registry."""

    def __init__(self, root):
        self.host = hosttree.HostTree(root)
        self.registry_path = registry.registry_path(self.host.instances_path)
        self.host.base(UNUSED, 2 * hosttree.DAY)
        in_use = self.host.base(IN_USE, 2 * hosttree.DAY)
        self.host.instance('6f1c4a52-2d0e-4c36-9a51-000000000001',
                           {'disk': in_use})

    def configure(self, **sections):
        self.host.write_config()
        with open(self.host.config_file, 'a') as f:
            for section, options in sections.items():
                f.write('[%s]\n' % section)
                for name, value in options.items():
                    f.write('%s = %s\n' % (name, value))

    def register(self, hosts):
        with open(self.registry_path, 'w') as f:
            json.dump(hosts, f)

    def registry(self):
        with open(self.registry_path) as f:
            return f.read()


@pytest.fixture
def shared(tmp_path):
    return SharedCache(tmp_path)


@pytest.fixture
def leader(shared):
    """Another host's coordinator, leader of the cache until stopped."""
    coordinator = coordination.Coordinator(
        'file://%s/cachekeeper-coordination' % shared.host.locks_dir,
        shared.host.instances_path, shared.host.cache_dir, 'compute-other')
    coordinator.start()
    yield coordinator
    coordinator.stop()


def test_other_registered_host_and_the_default_backend(shared):
    shared.register({'compute-other': time.time() - 3 * hosttree.DAY})
    process, report = shared.host.run_pass()
    assert process.returncode == 0, process.stderr
    entries = hosttree.entries(report)
    assert entries[UNUSED]['verdict'] == 'queued'
    assert entries[IN_USE]['verdict'] == 'in_use'
    hosts = json.loads(shared.registry())
    assert set(hosts) == {'compute-other', 'compute-test'}
    assert time.time() - hosts['compute-test'] < 60


def test_corrupt_registry_stops_removals(shared):
    corrupt = '{"compute-other": 1700000000.0, "comp'
    with open(shared.registry_path, 'w') as f:
        f.write(corrupt)
    process, report = shared.host.run_pass()
    assert process.returncode == 1, process.stderr
    entry = hosttree.entries(report)[UNUSED]
    assert entry['verdict'] == 'kept'
    assert ('%s could not be read: not valid JSON'
            % shared.registry_path) in entry['reason']
    assert 'the hosts that share this image cache are unknown' in (
        entry['reason'])
    assert hosttree.entries(report)[IN_USE]['verdict'] == 'in_use'
    assert 'WARNING' in process.stderr
    assert 'cannot read %s: not valid JSON' % shared.registry_path in (
        process.stderr)
    # Never reset: nova's entries stay for an operator to repair.
    assert corrupt == shared.registry()
    assert os.path.exists(shared.host.cache_path(UNUSED))


def test_follower_keeps_and_records_unused_files(shared, leader):
    assert leader.wait_for_first_beat()
    shared.register({'compute-other': time.time()})
    in_use_mtime = os.stat(shared.host.cache_path(IN_USE)).st_mtime
    process, report = shared.host.run_pass()
    assert process.returncode == 0, process.stderr
    entry = hosttree.entries(report)[UNUSED]
    assert entry['verdict'] == 'kept'
    assert entry['reason'] == (
        'unused for 2d (minimum 1d); not removed: not the '
        'leader for this cache (leader: compute-other)')
    assert report['bytes_queued'] == 0
    # Files in use are touched all the same.
    assert os.stat(shared.host.cache_path(IN_USE)).st_mtime > in_use_mtime
    explained = shared.host.manage('cache', 'explain', UNUSED)
    assert 'first seen unused: never seen' not in explained.stdout
    assert 'first seen unused: 20' in explained.stdout

    leader.stop()
    process, report = shared.host.run_pass()
    assert hosttree.entries(report)[UNUSED]['verdict'] == 'queued'


def test_backend_that_does_not_reach_the_other_hosts(shared, elsewhere):
    assert os.stat(elsewhere).st_dev != os.stat(shared.host.cache_dir).st_dev
    shared.configure(coordination={
        'backend_url': 'file://%s/coordination' % elsewhere})
    # Alone, the local backend is enough.
    process, report = shared.host.run_pass()
    assert hosttree.entries(report)[UNUSED]['verdict'] == 'queued'
    shared.host.base(UNUSED, 2 * hosttree.DAY)
    shared.register({'compute-other': time.time()})
    process, report = shared.host.run_pass()
    entry = hosttree.entries(report)[UNUSED]
    assert entry['verdict'] == 'kept'
    assert ('the image cache is shared with compute-other, but '
            '[coordination] backend_url cannot keep them from '
            'removing at the same time: its directory %s/'
            'coordination is not on the file system of the image '
            'cache' % elsewhere) in entry['reason']
    assert 'WARNING' in process.stderr


def test_unusable_backend_stops_removals(shared):
    shared.configure(coordination={
        'backend_url': 'file:///proc/cachekeeper-coordination'})
    process, report = shared.host.run_pass()
    entry = hosttree.entries(report)[UNUSED]
    assert entry['verdict'] == 'kept'
    assert 'not removed: coordination unavailable' in entry['reason']
    assert 'unavailable' in process.stderr
    assert hosttree.entries(report)[IN_USE]['verdict'] == 'in_use'


def test_per_host_cache_directory(shared):
    cache_dir = os.path.join(shared.host.instances_path, '_base_10.0.0.7')
    os.mkdir(cache_dir)
    os.rename(shared.host.cache_path(UNUSED),
              os.path.join(cache_dir, UNUSED))
    shared.host.write_config(subdirectory_name='_base_$my_ip')
    with open(shared.host.config_file) as f:
        config = f.read().replace(
            '[DEFAULT]\n', '[DEFAULT]\nmy_ip = 10.0.0.7\n')
    with open(shared.host.config_file, 'w') as f:
        f.write(config)
    shared.register({'compute-other': time.time()})
    process, report = shared.host.run_pass()
    assert process.returncode == 0, process.stderr
    assert {e['path']: e['verdict'] for e in report['files']} == (
        {os.path.join(cache_dir, UNUSED): 'queued'})


def test_dry_run_neither_registers_nor_coordinates(shared):
    os.rmdir(shared.host.locks_dir)
    process, report = shared.host.run_pass('--dry-run')
    assert process.returncode == 0, process.stderr
    assert hosttree.entries(report)[UNUSED]['verdict'] == 'queued'
    assert not os.path.exists(shared.registry_path)
    assert not os.path.exists(shared.host.locks_dir)


def test_status_shows_backend_leader_and_registry(shared, leader):
    assert leader.wait_for_first_beat()
    shared.register({'compute-other': time.time() - 2 * hosttree.DAY})
    shared.host.run_pass()
    process = shared.host.manage('cache', 'status', '--json')
    assert process.returncode == 0, process.stderr
    document = json.loads(process.stdout)['coordination']
    assert document['leader']['host'] == 'compute-other'
    assert document['shared_with'] == ['compute-other']
    assert {host: entry['stale'] for host, entry
            in document['registry']['hosts'].items()} == (
        {'compute-other': True, 'compute-test': False})
    process = shared.host.manage('cache', 'status')
    assert ('\nLeader       compute-other (pid %d) since '
            % os.getpid()) in process.stdout
    assert ('\nCoordination file://%s/locks/cachekeeper-'
            'coordination (lock %s)'
            % (shared.host.instances_path, leader.lock_name)) in process.stdout
