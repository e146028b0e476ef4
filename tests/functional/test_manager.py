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

"""CacheManager.run_pass in process, as the daemon runs it.

On real files, a real qcow2 overlay and a real state database: a pass
keeps its books (the scrub queue, the ledger, the totals, nova's storage
registry, the report and metrics files); a dry run evaluates, executes dry
and reports, and keeps none. A bookkeeping step that fails never fails the
pass: it is warned once, and said resolved once it works again.
"""

import json
import logging
import os
import shutil
import time

from oslo_config import cfg
import pytest

from cachekeeper.cache import registry
import cachekeeper.conf
from cachekeeper import config
from cachekeeper import coordination
from cachekeeper import manager
from cachekeeper import progress
from cachekeeper import report
from cachekeeper.scrub import queue
from cachekeeper.state import ledger
from cachekeeper.state import totals
from tests.lib import hosttree

X = hosttree.image('image-x')
U = hosttree.image('unused-image')
OLD = 2 * hosttree.DAY
UUID = '6f1c4a52-2d0e-4c36-9a51-00000000000a'


class Host(hosttree.HostTree):
    """A host with an instance on X, an old unused U and a metrics file."""

    def __init__(self, root):
        super().__init__(root)
        self.metrics_file = os.path.join(self.root, 'metrics',
                                         'cachekeeper.prom')
        os.mkdir(os.path.dirname(self.metrics_file))
        self.report_file = os.path.join(self.state_path, report.REPORT_FILE)
        self.base(X, OLD)
        self.base(U, OLD)
        self.instance(UUID, {'disk': self.cache_path(X)})
        with open(self.config_file, 'a') as f:
            f.write('[DEFAULT]\nmetrics_file = %s\n' % self.metrics_file)

    def conf(self):
        conf = cfg.ConfigOpts()
        cachekeeper.conf.register_opts(conf)
        config.parse_args(['cachekeeper', '--config-file', self.config_file],
                          conf=conf)
        return conf


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


@pytest.fixture
def cache_manager(host):
    conf = host.conf()
    scrub_queue = queue.from_conf(conf)
    scrub_queue.check_quarantine_dir()
    yield manager.CacheManager(conf, scrub_queue)
    scrub_queue.close()


def _verdicts(result):
    return {os.path.basename(f.path): f.verdict for f in result.files}


def test_a_pass_keeps_its_books(host, cache_manager):
    result = cache_manager.run_pass()

    assert _verdicts(result) == {X: 'in_use', U: 'queued'}
    assert result.exit_code == 0
    assert not os.path.exists(host.cache_path(U))
    state_db = cache_manager.scrub_queue.state_db
    assert [e.name for e in cache_manager.scrub_queue.entries()] == [U]
    assert ledger.lookup(state_db, X).last_seen_in_use is not None
    assert ledger.lookup(state_db, U).first_seen_unused is not None
    assert totals.read(state_db)['errors'] == 0
    assert 'compute-test' in registry.read(host.instances_path).hosts
    with open(host.report_file) as f:
        assert json.load(f)['summary'] == result.summary
    assert os.path.isfile(host.metrics_file)


def test_a_dry_run_keeps_no_books(host, cache_manager):
    before = hosttree.snapshot(host.instances_path)

    result = cache_manager.run_pass(dry_run=True)

    assert _verdicts(result) == {X: 'in_use', U: 'queued'}
    assert result.dry_run and result.exit_code == 0
    # Nothing touched, queued, locked or registered.
    assert hosttree.snapshot(host.instances_path) == before
    state_db = cache_manager.scrub_queue.state_db
    assert cache_manager.scrub_queue.entries() == []
    assert ledger.lookup(state_db, X) is None
    assert ledger.lookup(state_db, U) is None
    assert set(totals.read(state_db).values()) == {0}
    assert not os.path.exists(host.report_file)
    assert not os.path.exists(host.metrics_file)


def test_a_failed_bookkeeping_step_is_warned_once(host, cache_manager,
                                                  caplog):
    caplog.set_level(logging.INFO, logger='cachekeeper')
    # The metrics file cannot be written while its directory is missing.
    os.rmdir(os.path.dirname(host.metrics_file))
    what = 'Cannot write the metrics file %s: ' % host.metrics_file

    results = [cache_manager.run_pass() for _ in range(3)]

    assert [r.exit_code for r in results] == [0, 0, 0]
    warned = [r for r in caplog.records if r.getMessage().startswith(what)]
    assert [r.levelname for r in warned] == ['WARNING']
    # The other books were kept.
    assert os.path.isfile(host.report_file)
    assert [e.name for e in cache_manager.scrub_queue.entries()] == [U]

    os.mkdir(os.path.dirname(host.metrics_file))
    cache_manager.run_pass()

    assert os.path.isfile(host.metrics_file)
    resolved = [r for r in caplog.records
                if r.getMessage().startswith('Resolved: ' + what)]
    assert [r.levelname for r in resolved] == ['INFO']


class RecordedProgress(progress.PassProgress):
    """A PassProgress that keeps what it is told: [(step, [files])]."""

    def __init__(self):
        super().__init__()
        self.told = []

    def step(self, name):
        self.told.append((name, []))
        super().step(name)

    def file(self, path):
        self.told[-1][1].append(path)
        super().file(path)

    def working_on(self, path):
        self.told[-1][1].append(path)
        return super().working_on(path)

    def files_in(self, name):
        return {path for step, files in self.told if step == name
                for path in files}


def test_a_pass_tells_each_step_and_each_file(host, cache_manager):
    recorded = cache_manager.progress = RecordedProgress()

    cache_manager.run_pass()

    assert [step for step, _files in recorded.told] == [
        'leftovers', 'registry', 'scan', 'inventory', 'catalog', 'plan',
        'bookkeeping', 'coordination', 'execute', 'bookkeeping',
        'precache', 'drain', 'bookkeeping']
    disk = os.path.join(host.instances_path, UUID, 'disk')
    assert {os.path.dirname(disk), disk} <= recorded.files_in('inventory')
    assert recorded.files_in('execute') >= {host.cache_path(X),
                                            host.cache_path(U)}

    [entry] = cache_manager.scrub_queue.entries()
    recorded.told.clear()
    cache_manager.drain(ignore_delay=True)

    assert recorded.told == [('drain', [entry.quarantine_path])]


def _allocate(path, mib=1):
    """Give ``path`` ``mib`` MiB of real blocks, as a download leaves it."""
    with open(path, 'r+b') as f:
        os.posix_fallocate(f.fileno(), 0, mib * 1024 * 1024)


NEW = hosttree.image('new-image')
# The host's instance on X and two more.
X_USERS = [UUID] + [UUID[:-1] + str(n) for n in (1, 2)]


@pytest.mark.parametrize('policy, evicted', [('lru', X), ('cost', NEW)])
def test_the_uses_a_pass_records_weigh_in_the_next_eviction(
        host, cache_manager, policy, evicted):
    _allocate(host.cache_path(X))
    for uuid in X_USERS[1:]:
        host.instance(uuid, {'disk': host.cache_path(X)})
    cache_manager.run_pass()
    assert ledger.lookup(cache_manager.scrub_queue.state_db, X).uses == 3
    # Then the instances are gone, and a file no pass saw in use was
    # downloaded since: lru evicts X, used longer ago; cost keeps it for
    # its uses.
    for uuid in X_USERS:
        shutil.rmtree(os.path.join(host.instances_path, uuid))
    _allocate(host.base(NEW, 0))
    conf = cache_manager.conf
    conf.set_override('max_cache_size_mb', 1, group='image_cache')
    conf.set_override('eviction_minimum_age_seconds', 0, group='image_cache')
    conf.set_override('eviction_policy', policy, group='image_cache')

    result = cache_manager.run_pass()

    assert [os.path.basename(f.path) for f in result.files
            if f.reason.startswith('over budget')] == [evicted]
    assert result.budget['evicted_files'] == 1


def _file_state(path):
    with open(path, 'rb') as f:
        return f.read(), os.stat(path).st_mtime_ns


def test_evict_refuses_a_file_in_use_and_leaves_it(host):
    before = _file_state(host.cache_path(X))

    process = host.manage('cache', 'evict', X)

    assert process.returncode == 1
    assert 'Refused %s: in use' % X in process.stdout
    assert _file_state(host.cache_path(X)) == before


def test_evict_queues_a_young_unused_file_and_restore_brings_it_back(host):
    young = hosttree.image('young-image')
    path = host.base(young, hosttree.HOUR)
    with open(path, 'r+b') as f:
        f.write(b'content of the image')
    hosttree.set_age(path, hosttree.HOUR)
    before = _file_state(path)

    process = host.manage('cache', 'evict', young, '--reason', 'test')

    assert process.returncode == 0, process.stdout + process.stderr
    assert not os.path.exists(path)
    listed = json.loads(host.manage('scrub', 'list', '--json').stdout)
    [entry] = listed['entries']
    assert entry['reason'].endswith('cache evict: test')
    restored = host.manage('scrub', 'restore', str(entry['id']))
    assert restored.returncode == 0, restored.stderr
    assert _file_state(path) == before


def test_evict_dry_run_changes_nothing(host):
    before = hosttree.snapshot(host.instances_path)

    process = host.manage('cache', 'evict', U, '--dry-run')

    assert process.returncode == 0, process.stderr
    assert 'Would queue %s' % host.cache_path(U) in process.stdout
    assert hosttree.snapshot(host.instances_path) == before


def test_evict_refuses_a_pinned_file(host):
    assert host.manage('cache', 'pin', U).returncode == 0

    process = host.manage('cache', 'evict', U)

    assert process.returncode == 1
    assert 'Refused %s: pinned' % U in process.stdout
    assert os.path.exists(host.cache_path(U))


def _corrupt_qcow2(host, directory):
    # A qcow2 magic and then nothing a header reader can make sense of.
    with open(os.path.join(directory, 'disk'), 'wb') as f:
        f.write(b'QFI\xfb' + b'\xff' * 508)


def _unparsable_libvirt_xml(host, directory):
    # A flat disk: only nova's metadata could say what it was copied from.
    host.instance(os.path.basename(directory), {'disk': None})
    with open(os.path.join(directory, 'libvirt.xml'), 'w') as f:
        f.write('<domain type="kvm"><metadata>')


# An unparsable disk.info holds back only what the directory's disks use,
# which a header read finds in use anyway: no refusal of its own to see.
@pytest.mark.parametrize('unreadable', [_corrupt_qcow2,
                                        _unparsable_libvirt_xml])
def test_evict_refuses_a_file_something_unreadable_could_use(host,
                                                             unreadable):
    directory = os.path.join(host.instances_path,
                             '6f1c4a52-2d0e-4c36-9a51-00000000000b')
    os.makedirs(directory)
    unreadable(host, directory)
    before = _file_state(host.cache_path(U))

    process = host.manage('cache', 'evict', U)

    assert process.returncode == 1, process.stdout
    [line] = process.stdout.splitlines()
    assert line.startswith('Refused %s: not removed: %s' % (U, directory))
    assert 'could not be read' in line
    assert _file_state(host.cache_path(U)) == before
    assert json.loads(host.manage('scrub', 'list', '--json').stdout)[
        'entries'] == []


def test_evict_on_a_shared_cache_from_a_follower_says_it_is_not_leader(
        host):
    now = time.time()
    with open(registry.registry_path(host.instances_path), 'w') as f:
        json.dump({'compute-test': now, 'compute-other': now}, f)
    conf = host.conf()
    # The other host's daemon, on the default file backend under locks/.
    leader = coordination.Coordinator(
        conf.coordination.backend_url, host.instances_path, host.cache_dir,
        'compute-other')
    leader.start()
    try:
        assert leader.wait_for_first_beat()
        assert leader.removal_hold() is None
        process = host.manage('cache', 'evict', U)
    finally:
        leader.stop()

    assert process.returncode == 1, process.stdout + process.stderr
    assert process.stdout.splitlines() == [
        'Refused %s: not removed: not the leader for this cache '
        '(leader: compute-other)' % U]
    assert os.path.exists(host.cache_path(U))


def test_every_json_document_carries_the_schema_version(host):
    process = host.manage('cache', 'pass')
    assert process.returncode == 0, process.stdout + process.stderr
    assert host.manage('cache', 'pin', X).returncode == 0

    with open(host.report_file) as f:
        last_pass = json.load(f)
    scrub_list = json.loads(host.manage('scrub', 'list', '--json').stdout)
    cache_list = json.loads(host.manage('cache', 'list', '--json').stdout)
    pin_list = json.loads(host.manage('cache', 'pins', '--json').stdout)
    status = json.loads(host.manage('cache', 'status', '--json').stdout)

    # The pass queued U: every list has something in it.
    assert [e['path'] for e in scrub_list['entries']] == [host.cache_path(U)]
    assert [row['name'] for row in cache_list] == [X]
    assert [pin['name'] for pin in pin_list] == [X]
    for document in [last_pass, scrub_list, status] + cache_list + pin_list:
        assert document['schema_version'] == report.SCHEMA_VERSION
