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

"""The disk-space budget, on real files, through cachekeeper-manage.

The size bound is tested on the test's own files. The watermarks are
tested twice: against the real filesystem's current usage (thresholds just
below and above it), and exactly on a small tmpfs, which needs root to
mount.
"""

import math
import os

import pytest

from cachekeeper.cache import facts
from tests.lib import hosttree
from tests.lib import tmpfs

MiB = 1024 * 1024
MINUTE = hosttree.MINUTE
HOUR = hosttree.HOUR
UUID1 = '6f1c4a52-2d0e-4c36-9a51-000000000001'
ROOT = hosttree.image('root-image')
# Unused, too young to go by age, and each older than the next.
UNUSED = [hosttree.image('unused-%d' % n) for n in range(6)]
UNUSED_AGES = [(10 - n) * HOUR for n in range(6)]
RECENT = hosttree.image('used-a minute ago')


def allocated_file(host, name, age, mib=1, directory=None):
    """A file with ``mib`` MiB of blocks really allocated, aged ``age``."""
    path = os.path.join(directory or host.cache_dir, name)
    with open(path, 'wb') as f:
        os.posix_fallocate(f.fileno(), 0, mib * MiB)
    hosttree.set_age(path, age)
    return path


def build(host, mib=1):
    """An instance using ROOT, six unused files and one used recently."""
    root = allocated_file(host, ROOT, 20 * HOUR, mib)
    host.instance(UUID1, {'disk': root})
    for name, age in zip(UNUSED, UNUSED_AGES):
        allocated_file(host, name, age, mib)
    allocated_file(host, RECENT, MINUTE, mib)


def configure(host, scrubber=None, **image_cache):
    """Write the host's config with [image_cache] and [scrubber] options."""
    host.write_config(**image_cache)
    with open(host.config_file, 'a') as f:
        f.write('[scrubber]\n')
        for item in sorted((scrubber or {}).items()):
            f.write('%s = %s\n' % item)


def cache_allocated(host):
    return sum(os.lstat(host.cache_path(name)).st_blocks * 512
               for name in os.listdir(host.cache_dir))


def quarantined(host):
    directory = os.path.join(host.instances_path, '.cachekeeper-quarantine',
                             'compute-test')
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def verdicts(report):
    return {name: entry['verdict']
            for name, entry in hosttree.entries(report).items()}


def filesystem_percent(path):
    st = os.statvfs(path)
    used = st.f_blocks - st.f_bfree
    return 100.0 * used / (used + st.f_bavail)


def test_over_its_size_the_least_recently_used_unused_files_go(tmp_path):
    host = hosttree.HostTree(tmp_path)
    build(host)
    configure(host, max_cache_size_mb=5, eviction_minimum_age_seconds=600)
    assert cache_allocated(host) == 8 * MiB

    process, report = host.run_pass()

    assert process.returncode == 0, process.stderr
    # 8 MiB against 5: the three least recently used unused files go.
    gone = set(UNUSED[:3])
    assert verdicts(report) == dict(
        {ROOT: facts.IN_USE, RECENT: facts.TOO_YOUNG},
        **{name: facts.QUEUED if name in gone else facts.TOO_YOUNG
           for name in UNUSED})
    for name in gone:
        assert hosttree.entries(report)[name]['reason'].startswith(
            'over budget (cache 8.0 MiB > 5.0 MiB max): last used ')
        assert not os.path.exists(host.cache_path(name))
    assert cache_allocated(host) == 5 * MiB
    # Evicted files skip the scrub delay: nothing waits in quarantine.
    assert quarantined(host) == []
    assert report['bytes_reclaimed'] >= 3 * MiB
    assert report['budget'] == {
        'max_cache_bytes': 5 * MiB, 'high_watermark_percent': 85,
        'low_watermark_percent': 80, 'over_size': True,
        'over_watermark': False, 'cache_bytes_before': 8 * MiB,
        'cache_bytes_after': 5 * MiB, 'max_cache_files': 0,
        'over_files': False, 'cache_files_before': 8,
        'cache_files_after': 5,
        'filesystem_percent_before': report['budget'][
            'filesystem_percent_before'],
        'filesystem_percent_after': report['budget'][
            'filesystem_percent_after'],
        'evicted_files': 3, 'evicted_bytes': 3 * MiB,
        'expedited_entries': 0, 'within': True}
    assert report['cache'] == {'files': 5, 'apparent_bytes': 5 * MiB,
                               'allocated_bytes': 5 * MiB,
                               'kinds': report['cache']['kinds']}


def test_the_summary_line_says_what_the_budget_did(tmp_path):
    host = hosttree.HostTree(tmp_path)
    build(host)
    configure(host, max_cache_size_mb=5)

    process = host.manage('cache', 'pass')

    assert process.returncode == 0, process.stderr
    summary = process.stdout.splitlines()[-1]
    assert summary.startswith('Pass done in ')
    assert summary.endswith(
        '; over budget (cache 8.0 MiB > 5.0 MiB max): evicted 3 files '
        '(3.0 MiB); now cache 5.0 MiB, filesystem %s, within budget'
        % summary.rsplit('filesystem ', 1)[1].split(',')[0])


def test_dry_run_says_what_it_would_evict_and_evicts_nothing(tmp_path):
    host = hosttree.HostTree(tmp_path)
    build(host)
    configure(host, max_cache_size_mb=5)
    before = hosttree.snapshot(host.instances_path)

    process, report = host.run_pass('--dry-run')

    assert process.returncode == 0, process.stderr
    assert hosttree.snapshot(host.instances_path) == before
    for name in UNUSED[:3]:
        assert hosttree.entries(report)[name]['reason'].startswith(
            'dry run: would queue for removal: over budget')
    assert report['budget']['evicted_files'] == 3


def test_files_in_use_are_never_evicted_and_say_so_once(tmp_path):
    host = hosttree.HostTree(tmp_path)
    root = allocated_file(host, ROOT, 20 * HOUR, mib=3)
    host.instance(UUID1, {'disk': root})
    allocated_file(host, UNUSED[0], 5 * HOUR, mib=1)
    configure(host, max_cache_size_mb=2)

    process, report = host.run_pass()

    assert process.returncode == 0, process.stderr
    assert verdicts(report) == {ROOT: facts.IN_USE, UNUSED[0]: facts.QUEUED}
    assert os.path.exists(root)
    [warning] = [line for line in process.stderr.splitlines()
                 if 'cannot get within its budget' in line]
    assert ('(cache 4.0 MiB > 2.0 MiB max): 1.0 MiB more would have to go, '
            'but what is left is 3.0 MiB in use' in warning)
    assert report['budget']['within'] is False
    assert report['budget']['cache_bytes_after'] == 3 * MiB


def test_eviction_minimum_age_protects_recently_used_files(tmp_path):
    host = hosttree.HostTree(tmp_path)
    build(host)
    configure(host, max_cache_size_mb=1, eviction_minimum_age_seconds=600)

    process, report = host.run_pass()

    assert verdicts(report)[RECENT] == facts.TOO_YOUNG
    assert verdicts(report)[ROOT] == facts.IN_USE
    assert all(verdicts(report)[name] == facts.QUEUED for name in UNUSED)
    assert os.path.exists(host.cache_path(RECENT))


def test_watermarks_relative_to_the_real_filesystem(tmp_path):
    host = hosttree.HostTree(tmp_path)
    build(host)
    percent = filesystem_percent(host.cache_dir)
    if percent < 3 or percent > 97:
        pytest.skip('the filesystem is %.1f%% full: no room for thresholds '
                    'on both sides of its usage' % percent)
    # Well above the current usage: nothing is evicted.
    configure(host, disk_high_watermark_percent=math.ceil(percent) + 1,
              disk_low_watermark_percent=math.ceil(percent))
    process, report = host.run_pass()
    assert process.returncode == 0, process.stderr
    assert facts.QUEUED not in verdicts(report).values()
    assert report['budget']['over_watermark'] is False

    # Below it: the test's files cannot bring the filesystem down a whole
    # percent, so every unused file old enough goes, and that is said.
    configure(host, disk_high_watermark_percent=math.floor(percent) - 1,
              disk_low_watermark_percent=math.floor(percent) - 2)
    process, report = host.run_pass()
    assert process.returncode == 0, process.stderr
    assert verdicts(report) == dict(
        {ROOT: facts.IN_USE, RECENT: facts.TOO_YOUNG},
        **{name: facts.QUEUED for name in UNUSED})
    assert report['budget']['over_watermark'] is True
    assert report['budget']['within'] is False
    assert 'cannot get within its budget' in process.stderr
    assert quarantined(host) == []


def test_watermarks_on_a_tmpfs_free_down_to_the_low_one(tmp_path):
    with tmpfs.Tmpfs(tmp_path / 'host' / 'instances', 64):
        host = hosttree.HostTree(tmp_path / 'host')
        build(host, mib=4)
        # Something else filling the filesystem: 20 MiB.
        allocated_file(host, 'filler', 0, mib=20,
                       directory=host.instances_path)
        # An older removal still waits in the scrub queue.
        queued = hosttree.image('removed earlier')
        allocated_file(host, queued, 3 * hosttree.DAY, mib=4)
        configure(host, scrubber={'scrub_delay': 3600},
                  disk_high_watermark_percent=100)
        process, report = host.run_pass()
        assert verdicts(report)[queued] == facts.QUEUED, process.stderr
        assert len(quarantined(host)) == 1

        st = os.statvfs(host.instances_path)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        size = used + st.f_bavail * st.f_frsize
        assert 60 < 100.0 * used / size < 90
        high, low = 75, 65
        configure(host, scrubber={'scrub_delay': 3600},
                  disk_high_watermark_percent=high,
                  disk_low_watermark_percent=low)
        # The queued file goes first, then the fewest unused files, least
        # recently used first, that reach the low watermark.
        to_free = used - low * size // 100 - 4 * MiB
        evicted = math.ceil(to_free / (4 * MiB))
        assert 0 < evicted < len(UNUSED)

        process, report = host.run_pass()

        assert process.returncode == 0, process.stderr
        gone = set(UNUSED[:evicted])
        assert verdicts(report) == dict(
            {ROOT: facts.IN_USE, RECENT: facts.TOO_YOUNG},
            **{name: facts.QUEUED if name in gone else facts.TOO_YOUNG
               for name in UNUSED})
        assert quarantined(host) == []
        assert filesystem_percent(host.instances_path) <= low
        budget = report['budget']
        assert (budget['over_watermark'], budget['expedited_entries'],
                budget['evicted_files'], budget['within']) == (
                    True, 1, evicted, True)
        assert budget['filesystem_percent_after'] <= low
