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
import time

import pytest

from tests.lib import daemon
from tests.lib import qemu
from tests.system import redis_server

DAY = 86400
INTERVAL = 1
PASS_LINE = r'INFO cachekeeper.service .* Pass done'
LEADER_LINE = r'is now the leader of image cache'


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


class SharedCache:
    """One instances_path for the daemons of several hosts.

    ``lease`` is the backend's, in seconds; ``redis`` the RedisServer they
    coordinate through, or None for the default backend, tooz's file
    driver under locks/. close() kills the daemons start() started.
    """

    def __init__(self, tmp, lease, redis=None):
        self.tmp = tmp
        self.lease = lease
        self.redis = redis
        self.instances_path = os.path.join(self.tmp, 'instances')
        self.cache_dir = os.path.join(self.instances_path, '_base')
        os.makedirs(self.cache_dir)
        self.daemons = []

    def backend_options(self):
        if self.redis is None:
            return {}
        return {'backend_url': self.redis.url(self.lease)}

    def start(self, host, service_backend):
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
        self.daemons.append(process)
        return process

    def close(self):
        for process in reversed(self.daemons):
            process.kill()

    def start_two(self):
        return (self.start('host-a', 'eventlet'),
                self.start('host-b', 'threading'))

    def base_file(self, seed, age=2 * DAY):
        path = os.path.join(self.cache_dir, cache_name(seed))
        with open(path, 'wb') as f:
            f.truncate(1024 * 1024)
        then = time.time() - age
        os.utime(path, (then, then))
        return path

    def unused(self, tag, count=4):
        return [self.base_file('%s-%d' % (tag, i)) for i in range(count)]

    def instance(self, uuid, base_path):
        directory = os.path.join(self.instances_path, uuid)
        os.mkdir(directory)
        qemu.qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
                      base_path, os.path.join(directory, 'disk'))

    def quarantined(self, path):
        """Which daemons quarantined ``path``, once per time they did."""
        pattern = r'Quarantined %s as' % re.escape(path)
        return [process for process in self.daemons
                for _ in process.lines(pattern)]

    def wait_gone(self, paths, timeout):
        wait_until(lambda: not any(os.path.exists(p) for p in paths),
                   timeout, 'removal of %s' % ', '.join(paths))

    def roles(self, first, second):
        """(leader, follower): the one that says it became the leader."""
        wait_until(lambda: first.lines(LEADER_LINE) or second.lines(
            LEADER_LINE), 10, 'a leader')
        if first.lines(LEADER_LINE):
            return first, second
        return second, first

    def assert_removed_once_by(self, remover, paths):
        for path in paths:
            assert [remover] == self.quarantined(path), path

    def assert_no_cachekeeper_error(self):
        for process in self.daemons:
            assert process.lines(r' ERROR cachekeeper') == []


@pytest.fixture
def redis(tmp_path):
    """A real redis-server on 127.0.0.1, stopped after the test."""
    server = redis_server.RedisServer(str(tmp_path / 'redis'))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def file_shared(tmp_path):
    """The default backend_url: tooz's file driver under locks/."""
    # The file driver's heartbeat says 10 s; the kernel drops the lock of
    # a killed process at once, so the next heartbeat takes it.
    shared = SharedCache(str(tmp_path), lease=10)
    yield shared
    shared.close()


@pytest.fixture
def redis_shared(tmp_path, redis):
    """A real redis-server on 127.0.0.1; locks expire after the lease."""
    shared = SharedCache(str(tmp_path), lease=2, redis=redis)
    yield shared
    shared.close()


@pytest.fixture(params=['file', 'redis'])
def shared(request):
    """The scenarios for any backend run on each."""
    return request.getfixturevalue(request.param + '_shared')


def test_one_remover_and_files_in_use_kept(shared):
    in_use_a = shared.base_file('in-use-a')
    in_use_b = shared.base_file('in-use-b')
    shared.instance('11111111-1111-1111-1111-111111111111', in_use_a)
    shared.instance('22222222-2222-2222-2222-222222222222', in_use_b)
    unused = shared.unused('before-start')
    first, second = shared.start_two()
    shared.wait_gone(unused, 20)
    leader, follower = shared.roles(first, second)
    passes = len(follower.lines(PASS_LINE))
    more = shared.unused('while-running')
    shared.wait_gone(more, 10)
    follower.wait_for(PASS_LINE, count=passes + 3)

    shared.assert_removed_once_by(leader, unused + more)
    assert follower.lines(r'Quarantined') == []
    assert follower.lines(LEADER_LINE) == []
    assert all('queued=0' in line
               for line in follower.lines(PASS_LINE))
    # The follower still touches what the instances use.
    for path in (in_use_a, in_use_b):
        assert time.time() - os.stat(path).st_mtime < 30
    # Both registered in nova's storage registry.
    with open(os.path.join(shared.instances_path, 'compute_nodes')) as f:
        assert set(json.load(f)) == {'host-a', 'host-b'}
    shared.assert_no_cachekeeper_error()
    for process in shared.daemons:
        assert 'Traceback' not in process.log()


def test_killed_leader_is_replaced(shared):
    first, second = shared.start_two()
    leader, follower = shared.roles(first, second)
    leader.wait_for(PASS_LINE)
    killed_at = datetime.datetime.now()
    leader.kill()
    [line] = follower.wait_for(LEADER_LINE,
                               timeout=INTERVAL + shared.lease + 5)
    takeover = (timestamp(line) - killed_at).total_seconds()
    assert takeover < INTERVAL + shared.lease, line
    unused = shared.unused('after-kill')
    shared.wait_gone(unused, 10)
    shared.assert_removed_once_by(follower, unused)
    shared.assert_no_cachekeeper_error()


def test_default_backend_lives_beside_nova_locks(file_shared):
    first, second = file_shared.start_two()
    file_shared.roles(first, second)
    locks_dir = os.path.join(file_shared.instances_path, 'locks')
    names = os.listdir(os.path.join(locks_dir,
                                    'cachekeeper-coordination'))
    assert len([n for n in names
                if n.startswith('cachekeeper-leader-')]) == 1
    assert [n for n in names if n.startswith('nova-')] == []


def test_redis_restart_stops_removals_until_it_is_back(redis_shared):
    first, second = redis_shared.start_two()
    leader, follower = redis_shared.roles(first, second)
    unused = redis_shared.unused('before-restart')
    redis_shared.wait_gone(unused, 10)

    redis_shared.redis.stop()
    # Whatever the leader confirmed before has lapsed by then.
    time.sleep(redis_shared.lease + 0.5)
    during = redis_shared.unused('while-down')
    passes = len(leader.lines(PASS_LINE))
    leader.wait_for(PASS_LINE, count=passes + 3)
    assert all(os.path.exists(p) for p in during)
    warnings = [line for process in redis_shared.daemons
                for line in process.lines(
                    r'WARNING cachekeeper.coordination')]
    assert warnings, leader.log()
    assert all('no removal' in line for line in warnings), warnings

    redis_shared.redis.start()
    redis_shared.wait_gone(during, 40)
    for path in during:
        assert len(redis_shared.quarantined(path)) == 1, path
    assert any(process.lines(r'answers again')
               for process in redis_shared.daemons)
    redis_shared.assert_no_cachekeeper_error()
