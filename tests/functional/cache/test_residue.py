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

"""Download residue and cachekeeper's own leftovers, on real files.

Stale ``.part`` and ``.converted`` files go, under nova's lock of the file
they were to become and never while another process holds it; young ones
stay. Temporary files cachekeeper left behind go after the same age; nova's
lock files never do.
"""

import os

from cachekeeper.cache import facts
from tests.lib import hosttree
from tests.lib import locks as held_locks

HOUR = hosttree.HOUR
MINUTE = hosttree.MINUTE
UUID1 = '6f1c4a52-2d0e-4c36-9a51-000000000001'
ROOT = hosttree.image('root-image')
IMAGE = hosttree.image('downloaded')
OTHER = hosttree.image('other')
# The smallest residue age the configuration allows.
RESIDUE_AGE = HOUR
OLD = 2 * HOUR
YOUNG = 30 * MINUTE


def residue_host(tmp_path):
    host = hosttree.HostTree(tmp_path)
    host.instance(UUID1, {'disk': host.base(ROOT, OLD)})
    host.write_config(residue_minimum_age_seconds=RESIDUE_AGE)
    return host


def verdict_and_reason(report, name):
    entry = hosttree.entries(report)[name]
    return entry['verdict'], entry['reason']


def test_old_residue_is_removed_young_residue_is_kept(tmp_path):
    host = residue_host(tmp_path)
    for name, age in ((IMAGE + '.part', OLD), (IMAGE + '.converted', OLD),
                      (OTHER + '.part', YOUNG), ('disk.info.tmp', OLD)):
        host.base(name, age)
    young_before = os.lstat(host.cache_path(OTHER + '.part'))

    process, report = host.run_pass()

    assert process.returncode == 0, process.stderr
    assert verdict_and_reason(report, IMAGE + '.part') == (
        facts.REMOVED, 'download residue unmodified for 2h (minimum 1h)')
    assert verdict_and_reason(report, IMAGE + '.converted')[0] == (
        facts.REMOVED)
    assert verdict_and_reason(report, OTHER + '.part') == (
        facts.KEPT, 'download residue written 30m ago; removed once '
                    'unmodified for 1h')
    assert verdict_and_reason(report, 'disk.info.tmp') == (
        facts.KEPT, 'temporary file, not a download of nova or cachekeeper; '
                    'never removed')
    assert hosttree.entries(report)[IMAGE + '.part']['kind'] == (
        facts.RESIDUE)
    assert not os.path.exists(host.cache_path(IMAGE + '.part'))
    assert not os.path.exists(host.cache_path(IMAGE + '.converted'))
    young_after = os.lstat(host.cache_path(OTHER + '.part'))
    assert young_after.st_mtime_ns == young_before.st_mtime_ns
    assert os.path.exists(host.cache_path('disk.info.tmp'))
    # Deleted at once, not quarantined: residue is never used again.
    assert os.listdir(os.path.join(host.instances_path,
                                   '.cachekeeper-quarantine',
                                   'compute-test')) == []
    # The lock of the file the download was to become; never removed.
    assert os.path.exists(os.path.join(host.locks_dir, 'nova-' + IMAGE))


def test_residue_whose_lock_is_held_is_not_touched(tmp_path):
    host = residue_host(tmp_path)
    path = host.base(IMAGE + '.part', OLD)
    before = os.lstat(path)
    lock_path = os.path.join(host.locks_dir, 'nova-' + IMAGE)
    with held_locks.HeldLock(lock_path):
        # The pass does not wait for the download: PASS_TIMEOUT would
        # fail it.
        process, report = host.run_pass()
    assert process.returncode == 0, process.stderr
    assert verdict_and_reason(report, IMAGE + '.part') == (
        facts.KEPT, 'not removed: the lock %s is held, a download of %s may '
                    'be running' % (lock_path, IMAGE))
    after = os.lstat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino,
                                                 before.st_mtime_ns)

    process, report = host.run_pass()
    assert verdict_and_reason(report, IMAGE + '.part')[0] == facts.REMOVED
    assert not os.path.exists(path)


def test_residue_of_a_file_removed_in_the_same_pass_goes_too(tmp_path):
    host = residue_host(tmp_path)
    host.base(IMAGE, 2 * hosttree.DAY)
    host.base(IMAGE + '.part', OLD)
    process, report = host.run_pass()
    assert process.returncode == 0, process.stderr
    assert verdict_and_reason(report, IMAGE)[0] == facts.QUEUED
    assert verdict_and_reason(report, IMAGE + '.part')[0] == facts.REMOVED
    assert os.listdir(host.cache_dir) == [ROOT]


def test_residue_is_kept_when_removal_is_disabled(tmp_path):
    host = residue_host(tmp_path)
    host.write_config(residue_minimum_age_seconds=RESIDUE_AGE,
                      remove_unused_base_images=False)
    host.base(IMAGE + '.part', OLD)
    process, report = host.run_pass()
    assert verdict_and_reason(report, IMAGE + '.part')[0] == facts.KEPT
    assert os.path.exists(host.cache_path(IMAGE + '.part'))


def make_file(path, age):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(b'partial')
    hosttree.set_age(path, age)
    return path


def test_stale_temporary_files_of_cachekeeper_are_removed(tmp_path):
    host = residue_host(tmp_path)
    metrics_file = os.path.join(host.root, 'textfile', 'cachekeeper.prom')
    os.mkdir(os.path.dirname(metrics_file))
    with open(host.config_file, 'a') as f:
        f.write('[DEFAULT]\nmetrics_file = %s\n' % metrics_file)
    # The default file coordination backend's directory, in locks/.
    backend_dir = os.path.join(host.locks_dir, 'cachekeeper-coordination')
    os.makedirs(backend_dir, exist_ok=True)
    stale = [
        make_file(os.path.join(backend_dir, '.cachekeeper-a1b2c3d4'), OLD),
        make_file(os.path.join(host.state_path, '.last_pass.jsonab12cd34'),
                  OLD),
        make_file(os.path.join(host.locks_dir, '.cachekeeper-k2j3h4g5'),
                  OLD),
        make_file(host.cache_path('.directio.x1y2z3w4'), OLD),
        make_file(metrics_file + '.4242.139871234567', OLD),
    ]
    kept = [
        make_file(os.path.join(host.state_path, '.last_pass.jsonyoung123'),
                  YOUNG),
        make_file(os.path.join(host.locks_dir, '.cachekeeper-young123'),
                  YOUNG),
        # nova's lock files, and other programs' files, are never removed.
        make_file(os.path.join(host.locks_dir, 'nova-' + OTHER), 30 * OLD),
        make_file(os.path.join(host.locks_dir, 'nova-storage-registry-lock'),
                  30 * OLD),
        make_file(os.path.join(os.path.dirname(metrics_file), 'node.prom'),
                  30 * OLD),
        make_file(metrics_file + '.old', 30 * OLD),
    ]

    process, report = host.run_pass()

    assert process.returncode == 0, process.stderr
    removed = {e['path']: e for e in report['files']
               if e['verdict'] == facts.REMOVED}
    assert sorted(removed) == sorted(stale)
    for path in stale:
        assert not os.path.exists(path)
        assert removed[path]['kind'] == facts.RESIDUE
        assert removed[path]['reason'].startswith(
            'temporary file of cachekeeper left by an interrupted write')
    for path in kept:
        assert os.path.exists(path), path


def test_dry_run_removes_no_temporary_file(tmp_path):
    host = residue_host(tmp_path)
    stale = make_file(os.path.join(host.locks_dir, '.cachekeeper-k2j3h4g5'),
                      OLD)
    host.base(IMAGE + '.part', OLD)
    process, report = host.run_pass('--dry-run')
    assert process.returncode == 0, process.stderr
    assert os.path.exists(stale)
    assert os.path.exists(host.cache_path(IMAGE + '.part'))
    assert verdict_and_reason(report, IMAGE + '.part')[1].startswith(
        'dry run: would remove: download residue')


def test_orphans_in_quarantine_are_adopted_by_a_pass(tmp_path):
    host = residue_host(tmp_path)
    host.run_pass()
    orphan = make_file(os.path.join(
        host.instances_path, '.cachekeeper-quarantine', 'compute-test',
        '17-' + OTHER), OLD)
    with open(host.config_file, 'a') as f:
        f.write('[scrubber]\nscrub_delay = 0\n')

    process, report = host.run_pass()

    assert process.returncode == 0, process.stderr
    assert 'Adopted %s into the scrub queue' % orphan in process.stderr
    assert not os.path.exists(orphan)
