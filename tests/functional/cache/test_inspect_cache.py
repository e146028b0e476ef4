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

"""The inspection cache: real SQLite, real images, real qemu-img."""

import os
import shutil
import time
import types

import pytest

from cachekeeper.cache import evidence
from cachekeeper.cache import inspect
from cachekeeper.cache import inspect_cache
from cachekeeper.cache import inventory
from cachekeeper.state import db
from tests.lib import hosttree
from tests.lib import qemu

FOUND = ('base.raw', 'raw', None)
QEMU_IMG_ONLY = (inspect_cache.QEMU_IMG,)
ANY_METHOD = (inspect_cache.QEMU_IMG, inspect_cache.HEADER)


def later():
    """A clock past the racy window of files made just now."""
    return time.time_ns() + 10 * 10 ** 9


@pytest.fixture
def state_db(tmp_path):
    state = tmp_path / 'state'
    state.mkdir(mode=0o700)
    state_db = db.open_state(str(state))
    yield state_db
    state_db.close()


@pytest.fixture
def disk(tmp_path):
    (tmp_path / 'base.raw').write_bytes(b'')
    path = tmp_path / 'disk'
    qemu.qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
                  'base.raw', path)
    return path


def stored(state_db, path, method=inspect_cache.QEMU_IMG, fmt='qcow2'):
    cache = inspect_cache.InspectionCache(state_db, clock=later)
    cache.store(os.stat(path), fmt, method, *FOUND)
    cache.save()
    return inspect_cache.InspectionCache(state_db)


def test_answer_kept_for_the_next_pass(state_db, disk):
    cache = stored(state_db, disk)
    assert cache.lookup(os.stat(disk), 'qcow2', QEMU_IMG_ONLY) == FOUND


def test_answer_is_for_the_format_it_was_read_as(state_db, disk):
    cache = stored(state_db, disk)
    assert cache.lookup(os.stat(disk), 'raw', QEMU_IMG_ONLY) is None


# Changes to a file that make its answers stale; 'replaced' puts the
# file 'copy' in its place.
CHANGES = pytest.mark.parametrize('change', [
    lambda path: os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1)),
    lambda path: path.write_bytes(path.read_bytes()),
    lambda path: os.truncate(path, os.stat(path).st_size + 512),
    lambda path: os.chmod(path, 0o600),
    lambda path: os.replace(path.with_name('copy'), path),
], ids=['mtime', 'rewritten', 'grown', 'ctime', 'replaced'])


@CHANGES
def test_changed_disk_is_not_answered(state_db, disk, change):
    disk.with_name('copy').write_bytes(disk.read_bytes())
    cache = stored(state_db, disk)
    change(disk)
    assert cache.lookup(os.stat(disk), 'qcow2', QEMU_IMG_ONLY) is None


def test_recently_changed_disk_is_not_kept(state_db, disk):
    cache = inspect_cache.InspectionCache(state_db)
    cache.store(os.stat(disk), 'qcow2', inspect_cache.QEMU_IMG, *FOUND)
    cache.save()
    assert inspect_cache.InspectionCache(state_db).lookup(
        os.stat(disk), 'qcow2', QEMU_IMG_ONLY) is None


def test_only_regular_files_are_kept(state_db, tmp_path):
    os.mkfifo(tmp_path / 'fifo')
    cache = inspect_cache.InspectionCache(state_db, clock=later)
    cache.store(os.stat(tmp_path / 'fifo'), 'qcow2',
                inspect_cache.QEMU_IMG, *FOUND)
    cache.save()
    assert state_db.query('SELECT * FROM inspection') == []


def test_header_answers_count_only_for_auto(state_db, disk):
    cache = stored(state_db, disk, method=inspect_cache.HEADER)
    st = os.stat(disk)
    assert cache.lookup(st, 'qcow2', QEMU_IMG_ONLY) is None
    assert cache.lookup(st, 'qcow2', ANY_METHOD) == FOUND


def test_prune_forgets_what_a_pass_did_not_use(state_db, disk, tmp_path):
    other = tmp_path / 'other'
    other.write_bytes(disk.read_bytes())
    stored(state_db, disk)
    stored(state_db, other)
    cache = inspect_cache.InspectionCache(state_db)
    assert cache.lookup(os.stat(other), 'qcow2', QEMU_IMG_ONLY) == FOUND
    cache.save(prune=True)
    assert [row['ino'] for row in state_db.query(
        'SELECT ino FROM inspection')] == [os.stat(other).st_ino]


def test_inode_numbers_beyond_sqlite_integers(state_db):
    st = types.SimpleNamespace(
        st_mode=0o100644, st_dev=2 ** 64 - 1, st_ino=2 ** 63 + 5,
        st_size=1, st_mtime_ns=1, st_ctime_ns=1)
    cache = inspect_cache.InspectionCache(state_db)
    cache.store(st, 'qcow2', inspect_cache.QEMU_IMG, *FOUND)
    cache.save()
    assert inspect_cache.InspectionCache(state_db).lookup(
        st, 'qcow2', QEMU_IMG_ONLY) == FOUND


def test_unusable_database_only_costs_inspections(state_db, disk):
    with state_db.transaction() as connection:
        connection.execute('DROP TABLE inspection')
    cache = inspect_cache.InspectionCache(state_db, clock=later)
    st = os.stat(disk)
    assert cache.lookup(st, 'qcow2', QEMU_IMG_ONLY) is None
    cache.store(st, 'qcow2', inspect_cache.QEMU_IMG, *FOUND)
    cache.save()


def inspector(state_db, method):
    return inspect.Inspector(
        method=method, cache=inspect_cache.InspectionCache(
            state_db, clock=later))


@pytest.mark.parametrize('method,header_reads,qemu_img_calls', [
    (inspect.AUTO, 1, 0), (inspect_cache.QEMU_IMG, 0, 1)])
def test_inspector_asks_once_then_uses_the_cache(
        state_db, disk, method, header_reads, qemu_img_calls):
    first = inspector(state_db, method)
    info = first.inspect(str(disk), 'qcow2')
    first.save()
    assert info.backing_file == 'base.raw'
    assert (first.header_reads, first.qemu_img_calls) == (
        header_reads, qemu_img_calls)

    second = inspector(state_db, method)
    assert second.inspect_many([(str(disk), 'qcow2')]) == {str(disk): info}
    assert (second.cache_hits, second.header_reads,
            second.qemu_img_calls) == (1, 0, 0)


def test_qemu_img_method_does_not_trust_the_header_reader(state_db, disk):
    first = inspector(state_db, inspect.AUTO)
    first.inspect(str(disk), 'qcow2')
    first.save()
    second = inspector(state_db, inspect_cache.QEMU_IMG)
    second.inspect(str(disk), 'qcow2')
    assert (second.cache_hits, second.qemu_img_calls) == (0, 1)


def test_auto_asks_qemu_img_what_the_reader_does_not_understand(
        state_db, tmp_path):
    path = tmp_path / 'disk'
    qemu.qemu_img('create', '-q', '-f', 'qcow2', '-o',
                  'extended_l2=on', path, '1M')
    auto = inspector(state_db, inspect.AUTO)
    info = auto.inspect(str(path), 'qcow2')
    assert info.backing_file is None
    assert (auto.header_reads, auto.qemu_img_calls) == (0, 1)


def detected(inspector, *paths):
    return [inspector.detect_format(str(path)) for path in paths]


def test_detected_formats_serve_a_new_process(state_db, disk, tmp_path):
    first = inspector(state_db, inspect.AUTO)
    assert detected(first, disk, tmp_path / 'base.raw') == ['qcow2', 'raw']
    assert (first.format_detections, first.detection_cache_hits) == (2, 0)
    first.save()

    second = inspector(state_db, inspect.AUTO)
    assert detected(second, disk, tmp_path / 'base.raw') == ['qcow2', 'raw']
    assert (second.format_detections, second.detection_cache_hits) == (0, 2)
    # Another pass of the same process asks its memory.
    assert detected(second, disk) == ['qcow2']
    assert second.detection_cache_hits == 3


@CHANGES
def test_changed_disk_is_detected_again(state_db, disk, change):
    disk.with_name('copy').write_bytes(b'')
    first = inspector(state_db, inspect.AUTO)
    detected(first, disk)
    first.save()
    change(disk)
    second = inspector(state_db, inspect.AUTO)
    assert detected(second, disk) == detected(inspect.Inspector(), disk)
    assert (second.format_detections, second.detection_cache_hits) == (1, 0)


def test_racily_recent_disk_is_detected_again(state_db, disk):
    recent = inspect.Inspector(cache=inspect_cache.InspectionCache(state_db))
    detected(recent, disk, disk)
    recent.save()
    assert recent.format_detections == 2
    assert state_db.query('SELECT * FROM detection') == []


def test_another_detector_detects_again(state_db, disk, monkeypatch):
    first = inspector(state_db, inspect.AUTO)
    detected(first, disk)
    first.save()
    monkeypatch.setattr(inspect, 'DETECTOR', 'oslo.utils 99.0.0')
    second = inspector(state_db, inspect.AUTO)
    assert detected(second, disk) == ['qcow2']
    assert second.format_detections == 1


def test_prune_forgets_detections_a_pass_did_not_use(state_db, disk,
                                                     tmp_path):
    first = inspector(state_db, inspect.AUTO)
    detected(first, disk, tmp_path / 'base.raw')
    first.save()
    second = inspector(state_db, inspect.AUTO)
    detected(second, disk)
    second.save(prune=True)
    assert [row['ino'] for row in state_db.query(
        'SELECT ino FROM detection')] == [os.stat(disk).st_ino]


def test_migration_adds_detections_to_an_old_database(tmp_path, disk,
                                                      monkeypatch):
    state = tmp_path / 'old'
    state.mkdir(mode=0o700)
    # The database as the release before detections were kept wrote it.
    with monkeypatch.context() as patch:
        patch.setattr(db, 'MIGRATIONS', db.MIGRATIONS[:3])
        old = db.open_state(str(state))
        cache = inspect_cache.InspectionCache(old, clock=later)
        cache.store(os.stat(disk), 'qcow2', inspect_cache.QEMU_IMG, *FOUND)
        cache.save()
        old.close()
    state_db = db.open_state(str(state))
    try:
        version = state_db.query('PRAGMA user_version')[0][0]
        assert version == len(db.MIGRATIONS)
        kept = inspector(state_db, inspect_cache.QEMU_IMG)
        assert kept.inspect(str(disk), 'qcow2').backing_file == FOUND[0]
        assert detected(kept, disk) == ['qcow2']
        kept.save()
        assert len(state_db.query('SELECT * FROM detection')) == 1
    finally:
        state_db.close()


# The tree of the pass tests: instances with a root disk and an ephemeral
# disk over cache files, one config drive that disk.info says is raw.
IMAGES = ('a' * 40, 'b' * 40)


def counting_qemu_img(bin_dir, record):
    """A qemu-img first on PATH that records each call, then runs the
    real one.
    """
    bin_dir.mkdir()
    script = bin_dir / 'qemu-img'
    script.write_text('#!/bin/sh\necho "$@" >> %s\nexec %s "$@"\n' % (
        record, qemu.QEMU_IMG))
    script.chmod(0o755)
    return str(bin_dir)


def calls(record):
    try:
        return record.read_text().splitlines()
    except FileNotFoundError:
        return []


@pytest.fixture
def host(tmp_path):
    host = hosttree.HostTree(tmp_path / 'host')
    for name in IMAGES + ('ephemeral_1_0706d66',):
        host.base(name, hosttree.DAY)
    for index, image in enumerate(IMAGES):
        directory = host.instance('instance-%d' % index, {
            'disk': host.cache_path(image),
            'disk.local': host.cache_path('ephemeral_1_0706d66'),
            'disk.config': None})
        with open(os.path.join(directory, 'disk.config'), 'wb') as f:
            f.write(b'QFI\xfb')
    # Until the racy window has passed, no answer may be kept.
    time.sleep(evidence.RACY_SECONDS + 0.1)
    return host


def pass_verdicts(host, bin_dir):
    process, report = host.run_pass('--dry-run', path_prefix=bin_dir)
    assert process.returncode == 0, process.stderr
    return {name: entry['verdict']
            for name, entry in hosttree.entries(report).items()}


def test_unchanged_disks_spawn_no_qemu_img_on_the_next_pass(host, tmp_path):
    host.write_config(inspect_method='qemu-img')
    record = tmp_path / 'calls'
    bin_dir = counting_qemu_img(tmp_path / 'bin', record)

    first = pass_verdicts(host, bin_dir)
    # The four qcow2 disks; the raw config drive needs no inspection.
    assert len(calls(record)) == 4, calls(record)
    assert not any('disk.config' in call for call in calls(record))
    assert first['a' * 40] == 'in_use'

    assert pass_verdicts(host, bin_dir) == first
    assert len(calls(record)) == 4

    changed = os.path.join(host.instances_path, 'instance-1', 'disk')
    os.utime(changed, (time.time() - 60, time.time() - 60))
    assert pass_verdicts(host, bin_dir) == first
    assert calls(record)[4:] == [
        'info --output=json --force-share -f qcow2 %s' % changed]


def test_auto_reads_nova_overlays_without_qemu_img(host, tmp_path):
    record = tmp_path / 'calls'
    bin_dir = counting_qemu_img(tmp_path / 'bin', record)
    first = pass_verdicts(host, bin_dir)
    assert first['b' * 40] == 'in_use'
    assert first['ephemeral_1_0706d66'] == 'in_use'
    assert calls(record) == []


def test_answers_of_directories_carried_over_are_kept(state_db, tmp_path):
    cache_dir = tmp_path / 'instances' / '_base'
    cache_dir.mkdir(parents=True)
    (cache_dir / 'base').write_bytes(b'')
    directory = tmp_path / 'instances' / 'instance'
    directory.mkdir()
    qemu.qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
                  cache_dir / 'base', directory / 'disk')
    past = time.time() - 3600
    for path in (directory, directory / 'disk'):
        os.utime(path, (past, past))
    time.sleep(evidence.RACY_SECONDS + 0.1)
    # As the daemon's manager keeps them from pass to pass.
    memory = evidence.Memory()
    cache = inspect_cache.InspectionCache(state_db)
    passes = []
    for _ in range(2):
        passes.append(inspect.Inspector(method=inspect_cache.QEMU_IMG,
                                        cache=cache))
        inventory.Inventory(str(tmp_path / 'instances'), str(cache_dir),
                            passes[-1], memory=memory).collect(['base'])
    # The second pass carried the directory over without reading it.
    assert [(p.qemu_img_calls, p.cache_hits) for p in passes] == [
        (1, 0), (0, 0)]

    fresh = inspector(state_db, inspect_cache.QEMU_IMG)
    fresh.inspect(str(directory / 'disk'), 'qcow2')
    assert (fresh.cache_hits, fresh.qemu_img_calls) == (1, 0)


def test_answers_about_deleted_instances_are_forgotten(state_db, tmp_path):
    instances = tmp_path / 'instances'
    cache_dir = instances / '_base'
    cache_dir.mkdir(parents=True)
    (cache_dir / 'base').write_bytes(b'')
    past = time.time() - 3600
    for name in ('kept', 'deleted'):
        directory = instances / name
        directory.mkdir()
        qemu.qemu_img('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
                      cache_dir / 'base', directory / 'disk')
        for path in (directory, directory / 'disk'):
            os.utime(path, (past, past))
    time.sleep(evidence.RACY_SECONDS + 0.1)
    memory = evidence.Memory()
    cache = inspect_cache.InspectionCache(state_db)

    def run_pass():
        inventory.Inventory(
            str(instances), str(cache_dir),
            inspect.Inspector(method=inspect_cache.QEMU_IMG, cache=cache),
            memory=memory).collect(['base'])
        return len(state_db.query('SELECT ino FROM inspection'))

    assert run_pass() == 2
    assert run_pass() == 2
    shutil.rmtree(instances / 'deleted')
    assert run_pass() == 1
