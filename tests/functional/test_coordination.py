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

import io
import json
import logging
import os
import re
import threading
import time
import urllib.parse

from oslo_config import cfg
from oslo_log import formatters
from oslo_log import log as oslo_logging
import pytest
import tooz

from cachekeeper.cache import registry
import cachekeeper.conf
from cachekeeper import coordination
from cachekeeper import masking
from tests.lib import tooz_urls

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


class Cluster:
    """Coordinators of hosts sharing an image cache; what they log.

    The coordinators in ``to_stop`` are stopped by close().
    """

    def __init__(self, instances_path, log):
        self.instances_path = instances_path
        self.cache_dir = os.path.join(self.instances_path, '_base')
        os.mkdir(self.cache_dir)
        self.url = 'file://%s/locks/cachekeeper-coordination%s' % (
            self.instances_path, LEASE_QUERY)
        self.log = log
        self.to_stop = []

    def close(self):
        for coordinator in reversed(self.to_stop):
            coordinator.stop()

    def start(self, host, url=None, **kwargs):
        coordinator = coordination.Coordinator(
            url or self.url, self.instances_path, self.cache_dir, host,
            **kwargs)
        coordinator.start()
        self.to_stop.append(coordinator)
        assert coordinator.wait_for_first_beat()
        return coordinator


@pytest.fixture
def coordination_log():
    """A LogCapture of cachekeeper.coordination at INFO."""
    log = LogCapture()
    logger = logging.getLogger('cachekeeper.coordination')
    level = logger.level
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    yield log
    logger.setLevel(level)
    logger.removeHandler(log)


@pytest.fixture
def cluster(tmp_path, coordination_log):
    cluster = Cluster(str(tmp_path), coordination_log)
    yield cluster
    cluster.close()


def test_one_leader(cluster):
    leader = cluster.start('host-a')
    follower = cluster.start('host-b')
    assert leader.removal_hold() is None
    assert leader.is_leader()
    assert follower.removal_hold() == (
        'not the leader for this cache (leader: host-a)')
    assert not follower.is_leader()
    with open(coordination.leader_record_path(cluster.instances_path,
                                              cluster.cache_dir)) as f:
        record = json.load(f)
    assert ('host-a', os.getpid()) == (record['host'], record['pid'])
    lock_file = os.path.join(cluster.instances_path, 'locks',
                             'cachekeeper-coordination',
                             leader.lock_name)
    assert os.path.exists(lock_file)
    assert [name for name in os.listdir(
        os.path.join(cluster.instances_path, 'locks'))
        if name.startswith('nova-')] == []
    assert 'This host (host-a) is now the leader' in cluster.log.output


def test_file_backend_tree_is_made_before_tooz_makes_it(cluster):
    # What prepare_file_backend makes must be all the file driver
    # makes, or tooz adds parts with this process's owner.
    from tooz.drivers import file as file_driver
    leader = cluster.start('host-a')
    directory = os.path.join(cluster.instances_path, 'locks',
                             'cachekeeper-coordination')
    driver = file_driver.FileDriver(
        b'probe', urllib.parse.urlsplit(cluster.url), {})
    made = [os.path.join(directory, name)
            for name in coordination.FILE_BACKEND_DIRS +
            (coordination.FILE_BACKEND_DRIVER_LOCK,)]
    assert sorted([directory] + made) == sorted(driver._reserved_paths)
    for path in made + [os.path.join(directory, leader.lock_name)]:
        assert os.path.exists(path), path


def test_only_file_backends_are_prepared(cluster):
    coordination.prepare_file_backend('redis://127.0.0.1:1',
                                      'cachekeeper-leader-x')
    coordination.prepare_file_backend(
        'file://%s/missing/coordination' % cluster.instances_path,
        'cachekeeper-leader-x')
    assert os.listdir(cluster.instances_path) == ['_base']


def test_stop_hands_the_leadership_over(cluster):
    leader = cluster.start('host-a')
    follower = cluster.start('host-b')
    leader.stop()
    assert coordination.read_leader(cluster.instances_path,
                                    cluster.cache_dir) is None
    assert wait_until(lambda: follower.removal_hold() is None)
    assert coordination.read_leader(
        cluster.instances_path, cluster.cache_dir).host == 'host-b'
    assert ('Gave up the leadership of image cache %s: this '
            'process stops' % cluster.cache_dir) in cluster.log.output


def test_a_host_that_would_not_remove_leaves_it_to_others(cluster):
    wanted = threading.Event()
    first = cluster.start('host-a', wants_leadership=wanted.is_set)
    assert first.removal_hold() == (
        'not the leader for this cache (leader: unknown)')
    second = cluster.start('host-b')
    assert second.removal_hold() is None
    second.stop()
    wanted.set()
    assert wait_until(lambda: first.removal_hold() is None)
    wanted.clear()
    assert wait_until(lambda: first.removal_hold() is not None)
    assert 'removal is disabled' in cluster.log.output


def test_caches_have_their_own_leader(cluster):
    other_cache = os.path.join(cluster.instances_path, '_base_10.0.0.2')
    os.mkdir(other_cache)
    first = cluster.start('host-a')
    second = coordination.Coordinator(cluster.url, cluster.instances_path,
                                      other_cache, 'host-b')
    second.start()
    cluster.to_stop.append(second)
    second.wait_for_first_beat()
    assert first.removal_hold() is None
    assert second.removal_hold() is None
    assert first.lock_name != second.lock_name


def test_unanswered_heartbeat_stops_removals(cluster):
    clock = FakeClock()
    answering = threading.Event()
    answering.set()

    def wants_leadership():
        # Called within each heartbeat: a backend call that hangs.
        answering.wait()
        return True

    leader = cluster.start('host-a', wants_leadership=wants_leadership,
                         clock=clock)
    assert leader.removal_hold() is None
    answering.clear()
    clock.offset += 60
    hold = leader.removal_hold()
    assert re.search((r'^coordination unavailable: no answer for '
                      r'\d+s$'), hold)
    assert hold == leader.removal_hold()
    answering.set()
    assert wait_until(lambda: leader.removal_hold() is None)
    assert cluster.log.output.count('no answer for') == 1
    assert cluster.log.output.count('answers again') == 1


def test_unusable_backend_is_said_once(cluster):
    coordinator = cluster.start('host-a', url='nosuch://nowhere')
    assert re.search(r'^coordination unavailable: no usable tooz driver', (
        coordinator.removal_hold()))
    time.sleep(1.5)
    assert cluster.log.output.count('unavailable') == 1
    assert not coordinator.is_leader()


class ReachCache:
    """An instances_path and its image cache."""

    def __init__(self, instances_path):
        self.instances_path = instances_path
        self.cache_dir = os.path.join(self.instances_path, '_base')
        os.mkdir(self.cache_dir)


@pytest.fixture
def reach(tmp_path):
    return ReachCache(str(tmp_path))


def test_file_backend_on_the_cache_file_system(reach):
    assert coordination.reach_problem(
        'file://%s/locks/not-made-yet' % reach.instances_path,
        reach.cache_dir) is None


def test_file_backend_elsewhere(reach):
    assert os.stat('/proc').st_dev != os.stat(reach.cache_dir).st_dev
    assert 'is not on the file system of the image cache' in (
        coordination.reach_problem('file:///proc/coordination',
                                   reach.cache_dir))


def test_host_local_and_distributed_backends(reach):
    assert 'reaches only this host' in coordination.reach_problem(
        'ipc://', reach.cache_dir)
    assert coordination.reach_problem(
        'redis://127.0.0.1:6379', reach.cache_dir) is None
    assert coordination.reach_problem(
        'etcd3+http://127.0.0.1:2379', reach.cache_dir) is None


def test_cache_id_follows_the_real_path(reach):
    link = os.path.join(reach.instances_path, 'base-link')
    os.symlink(reach.cache_dir, link)
    assert coordination.cache_id(reach.cache_dir) == (
        coordination.cache_id(link))
    assert coordination.cache_id(reach.cache_dir) != (
        coordination.cache_id(reach.instances_path))


@pytest.fixture
def formatted_log():
    """What cachekeeper.coordination logs, formatted as in the daemon's log.

    oslo.log's formatter adds the exception being handled to a warning, in
    the exception's own words.
    """
    conf = cfg.ConfigOpts()
    oslo_logging.register_options(conf)
    conf([])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatters.ContextFormatter(config=conf))
    logger = logging.getLogger('cachekeeper.coordination')
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def test_a_backend_error_that_quotes_the_url_is_shown_masked(
        cluster, formatted_log, monkeypatch):
    template, secrets = tooz_urls.SECRET_URLS['redis']
    url = template.format(port=6379)

    def get_coordinator(backend_url, member_id):
        # As a client library may word its error.
        raise tooz.ToozError('cannot connect to %s' % backend_url)

    monkeypatch.setattr('tooz.coordination.get_coordinator', get_coordinator)
    coordinator = cluster.start('host-a', url=url)
    assert coordinator.backend == masking.mask(url)
    assert coordinator.removal_hold() == (
        'coordination unavailable: cannot connect to %s' % masking.mask(url))
    log = formatted_log.getvalue()
    assert 'Coordination backend %s unavailable' % masking.mask(url) in log
    for secret in secrets:
        assert secret not in log


class StatusHost:
    """host-a's config, on an image cache of its own."""

    def __init__(self, instances_path):
        self.instances_path = instances_path
        self.cache_dir = os.path.join(self.instances_path, '_base')
        os.mkdir(self.cache_dir)
        self.conf = cfg.ConfigOpts()
        cachekeeper.conf.register_opts(self.conf)
        self.conf([])
        self.conf.set_override('instances_path', self.instances_path)
        self.conf.set_override('host', 'host-a')


@pytest.fixture
def status_host(tmp_path):
    status_host = StatusHost(str(tmp_path))
    yield status_host
    # Group options are shared between ConfigOpts objects: no override
    # may outlive the test.
    status_host.conf.reset()


def test_status_of_a_shared_cache(status_host):
    now = time.time()
    with open(registry.registry_path(status_host.instances_path), 'w') as f:
        json.dump({'host-a': now - 10, 'host-b': now - 2 * 86400}, f)
    leader = coordination.Coordinator.from_conf(status_host.conf,
                                                status_host.cache_dir)
    leader.start()
    try:
        leader.wait_for_first_beat()
        document = coordination.status(status_host.conf,
                                       status_host.cache_dir, now)
    finally:
        leader.stop()
    assert document['backend'] == ('file://%s/locks/cachekeeper-coordination'
                                   % status_host.instances_path)
    assert leader.lock_name == document['lock']
    assert ('host-a', os.getpid()) == (document['leader']['host'],
                                       document['leader']['pid'])
    assert document['shared_with'] == ['host-b']
    assert document['reach_problem'] is None
    assert document['leader']['since'] <= time.time()
    # cmd/render makes the rows of cache status from these.
    assert document['registry'] == (
        {'path': registry.registry_path(status_host.instances_path),
         'problem': None,
         'hosts': {
             'host-a': {'registered_at': now - 10, 'age_s': 10.0,
                        'stale': False},
             'host-b': {'registered_at': now - 2 * 86400,
                        'age_s': 172800.0, 'stale': True}}})
    assert coordination.status_warnings(document) == []


def test_status_shows_the_backend_masked(status_host):
    url = tooz_urls.SECRET_URLS['redis'][0].format(port=6379)
    status_host.conf.set_override('backend_url', url, group='coordination')
    document = coordination.status(status_host.conf, status_host.cache_dir,
                                   time.time())
    assert document['backend'] == masking.mask(url)


def test_status_of_a_corrupt_registry_on_a_local_backend(status_host):
    with open(registry.registry_path(status_host.instances_path), 'w') as f:
        f.write('{"host-b": ')
    status_host.conf.set_override('backend_url', 'file:///proc/coordination',
                                  group='coordination')
    document = coordination.status(status_host.conf, status_host.cache_dir,
                                   time.time())
    assert document['leader'] is None
    assert document['reach_problem'] is None
    assert document['registry']['hosts'] == {}
    [warning] = coordination.status_warnings(document)
    assert re.search((r"^nova's storage registry .* not valid "
                      r"JSON .*: no removal until it is "
                      r"repaired$"), warning)
    with open(registry.registry_path(status_host.instances_path), 'w') as f:
        json.dump({'host-b': time.time()}, f)
    assert coordination.status_warnings(coordination.status(
               status_host.conf, status_host.cache_dir, time.time())) == (
        ['the image cache is shared with host-b, but [coordination] '
         'backend_url cannot reach them: its directory '
         '/proc/coordination is not on the file system of the image '
         'cache, so the other hosts do not see its locks; no removal'])
