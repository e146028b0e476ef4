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

"""cachekeeper-manage cache status, the metrics file and thrash reports.

Real files and passes run as cachekeeper-manage; the status is checked
against the disk, and the metrics file, parsed with prometheus_client's
own parser, against the status.
"""

import json
import os
import re
import subprocess

from prometheus_client import parser
import pytest

from cachekeeper.cache import facts
from cachekeeper.cache import registry
from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.state import db
from tests.lib import hosttree

MiB = 1024 * 1024
HOUR = hosttree.HOUR
DAY = hosttree.DAY
UUID1 = '6f1c4a52-2d0e-4c36-9a51-000000000001'
UUID2 = '6f1c4a52-2d0e-4c36-9a51-000000000002'
ROOT = hosttree.image('root-image')
UNUSED = [hosttree.image('unused-%d' % n) for n in range(4)]
OLD_IMAGE = hosttree.image('old-image')
STATES = ('quarantining', 'queued', 'draining', 'parked', 'restoring',
          'drained', 'restored', 'rolled_back')


def allocated_file(path, age, mib=1):
    with open(path, 'wb') as f:
        os.posix_fallocate(f.fileno(), 0, mib * MiB)
    hosttree.set_age(path, age)
    return path


class Host(hosttree.HostTree):
    """A host with a metrics file and extra config sections."""

    def __init__(self, root):
        super().__init__(root)
        self.metrics_file = os.path.join(self.root, 'textfile',
                                         'cachekeeper.prom')
        os.mkdir(os.path.dirname(self.metrics_file))
        self.configure()

    def configure(self, default=None, scrubber=None, **image_cache):
        self.write_config(**image_cache)
        default = dict({'metrics_file': self.metrics_file}, **(default or {}))
        with open(self.config_file, 'a') as f:
            for section, options in (('DEFAULT', default),
                                     ('scrubber', scrubber or {})):
                f.write('[%s]\n' % section)
                f.writelines('%s = %s\n' % item
                             for item in sorted(options.items()))

    def status(self, *config_files):
        argv = []
        for config_file in config_files:
            argv.extend(['--config-file', config_file])
        process = subprocess.run(
            [hosttree.MANAGE] + argv + ['--config-file', self.config_file,
                                        'cache', 'status', '--json'],
            capture_output=True, text=True, timeout=hosttree.PASS_TIMEOUT)
        assert process.returncode == 0, process.stderr
        return json.loads(process.stdout)

    def metrics(self):
        """{(name, labels): value} of every sample in the metrics file."""
        with open(self.metrics_file) as f:
            text = f.read()
        return {(sample.name, tuple(sorted(sample.labels.items()))):
                sample.value
                for family in parser.text_string_to_metric_families(text)
                for sample in family.samples}


def build(host):
    root = allocated_file(host.cache_path(ROOT), 20 * HOUR)
    host.instance(UUID1, {'disk': root})
    for number, name in enumerate(UNUSED):
        allocated_file(host.cache_path(name), (10 - number) * HOUR)
    allocated_file(host.cache_path(OLD_IMAGE), 3 * DAY, mib=2)
    host.base(hosttree.image('partial') + '.part', 2 * DAY)


def on_disk(host):
    """What the cache holds, counted by the test itself."""
    entries = [os.lstat(host.cache_path(n)) for n in os.listdir(
        host.cache_dir)]
    return {'files': len(entries),
            'apparent_bytes': sum(st.st_size for st in entries),
            'allocated_bytes': sum(st.st_blocks * 512 for st in entries)}


def test_status_and_metrics_agree_with_the_disk(tmp_path):
    host = Host(tmp_path)
    build(host)
    host.configure(max_cache_size_mb=4)

    process, report = host.run_pass()
    assert process.returncode == 0, process.stderr
    status = host.status()

    cache = status['cache']
    assert {key: cache[key] for key in on_disk(host)} == on_disk(host)
    assert (cache['path'], cache['max_bytes']) == (host.cache_dir, 4 * MiB)
    assert cache['kinds'][facts.ORIGINAL]['files'] == 4
    assert cache['allocated_bytes'] <= 4 * MiB

    last_pass = status['last_pass']
    assert last_pass['result'] == 'done'
    assert last_pass['started_at'] == report['started_at']
    assert last_pass['duration_s'] == report['duration_s']
    assert last_pass['files'] == {
        facts.ORIGINAL: {facts.IN_USE: {'files': 1, 'bytes': MiB},
                         facts.QUEUED: {'files': 2, 'bytes': 3 * MiB},
                         facts.TOO_YOUNG: {'files': 3, 'bytes': 3 * MiB}},
        facts.RESIDUE: {facts.REMOVED: {'files': 1, 'bytes': MiB}}}
    # The old image goes anyway (and waits in quarantine): one eviction
    # does the rest, and drains at once.
    assert last_pass['budget']['evicted_files'] == 1
    queue = status['queue']
    assert queue['entries'] == dict(dict.fromkeys(STATES, 0), drained=1,
                                    queued=1)
    assert queue['quarantined_bytes'] == 2 * MiB

    st = os.statvfs(host.cache_dir)
    filesystem = status['filesystem']
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    assert abs(filesystem['used_bytes'] - used) < 256 * MiB
    assert (filesystem['high_watermark_percent'],
            filesystem['low_watermark_percent']) == (85, 80)

    metrics = host.metrics()
    assert metrics[('cachekeeper_cache_bytes', ())] == cache[
        'allocated_bytes']
    for kind, verdicts in last_pass['files'].items():
        for verdict, counted in verdicts.items():
            assert metrics[('cachekeeper_files', (('kind', kind),
                                                  ('verdict', verdict)))] == (
                counted['files'])
    assert len([key for key in metrics if key[0] == 'cachekeeper_files']) == 4
    assert metrics[('cachekeeper_pass_duration_seconds', ())] == (
        last_pass['duration_s'])
    assert metrics[('cachekeeper_last_pass_timestamp_seconds', ())] == (
        last_pass['finished_at'])
    for state, count in queue['entries'].items():
        assert metrics[('cachekeeper_queue_entries',
                        (('state', state),))] == count
    assert metrics[('cachekeeper_reclaimed_bytes_total', ())] == (
        status['totals']['reclaimed_bytes'])
    assert status['totals']['reclaimed_bytes'] >= MiB
    assert metrics[('cachekeeper_errors_total', ())] == 0
    assert metrics[('cachekeeper_comebacks_total', ())] == 0


def test_totals_grow_across_passes_and_metrics_follow(tmp_path):
    host = Host(tmp_path)
    build(host)
    host.configure(scrubber={'scrub_delay': 0})
    host.run_pass()
    first = host.metrics()[('cachekeeper_reclaimed_bytes_total', ())]
    allocated_file(host.cache_path(hosttree.image('another')), 3 * DAY,
                   mib=3)
    host.run_pass()
    second = host.metrics()[('cachekeeper_reclaimed_bytes_total', ())]
    assert second - first == 3 * MiB
    assert host.status()['totals']['reclaimed_bytes'] == second
    # Nothing left in the metrics directory but the metrics file.
    assert os.listdir(os.path.dirname(host.metrics_file)) == [
        'cachekeeper.prom']


def test_thrash_is_detected_after_remove_and_recreate(tmp_path):
    host = Host(tmp_path)
    host.configure(scrubber={'scrub_delay': 0})
    path = allocated_file(host.cache_path(OLD_IMAGE), 3 * DAY)
    process, report = host.run_pass()
    assert hosttree.entries(report)[OLD_IMAGE]['verdict'] == facts.QUEUED
    assert not os.path.exists(path)

    # nova downloads it again.
    allocated_file(path, 0)
    process, report = host.run_pass()

    assert process.returncode == 0, process.stderr
    [warning] = [line for line in process.stderr.splitlines()
                 if 'came back' in line]
    assert ' WARNING ' in warning
    # A loaded machine may take a second or two between the passes.
    assert re.search(r'Image cache file %s came back \d+s after a pass '
                     r'removed it' % re.escape(path), warning)
    assert warning.endswith('consider a longer [image_cache] '
                            'remove_unused_original_minimum_age_seconds')
    assert report['comebacks'] == 1
    assert hosttree.entries(report)[OLD_IMAGE]['verdict'] == (
        facts.TOO_YOUNG)

    process, report = host.run_pass()
    assert 'came back' not in process.stderr
    assert report['comebacks'] == 0
    status = host.status()
    assert status['totals']['comebacks'] == 1
    assert host.metrics()[('cachekeeper_comebacks_total', ())] == 1


def test_status_before_any_pass(tmp_path):
    host = Host(tmp_path)
    status = host.status()
    assert status['last_pass'] is None
    assert status['cache']['files'] == 0
    assert ('no pass has written a report into %s yet' % host.state_path
            in status['warnings'])
    assert status['nova'] is None
    assert status['orphans'] is None


def write_nova_conf(host, name, text):
    path = os.path.join(host.root, name)
    with open(path, 'w') as f:
        f.write(text)
    return path


def test_nova_manager_interval_is_read_from_nova_conf(tmp_path):
    host = Host(tmp_path)
    cases = [
        ('nova.conf', '[image_cache]\nmanager_interval = -1\n', -1, False),
        ('nova.conf', '[DEFAULT]\nimage_cache_manager_interval = 600\n', 600,
         True),
        ('nova.conf', '[DEFAULT]\nstate_path = /var/lib/nova\n', 2400, True),
        ('compute.conf', '[DEFAULT]\ncompute_driver = libvirt.'
                         'LibvirtDriver\n[image_cache]\nmanager_interval = '
                         '0\n', 0, True),
    ]
    for name, text, interval, warned in cases:
        nova_conf = write_nova_conf(host, name, text)
        status = host.status(nova_conf)
        nova = status['nova']
        assert nova['config_files'] == [nova_conf]
        assert nova['manager_interval'] == interval, text
        warnings = [w for w in status['warnings']
                    if "nova's own image cache manager" in w]
        assert bool(warnings) == warned, status['warnings']
        os.unlink(nova_conf)
    # cachekeeper's own value, given second, does not hide nova's.
    nova_conf = write_nova_conf(host, 'nova.conf',
                                '[image_cache]\nmanager_interval = 300\n')
    host.configure(manager_interval=-1)
    assert host.status(nova_conf)['nova']['manager_interval'] == 300


def test_human_status_is_a_compact_table(tmp_path):
    host = Host(tmp_path)
    build(host)
    host.run_pass()
    process = subprocess.run(
        host.manage_command('cache', 'status'), capture_output=True,
        text=True, timeout=hosttree.PASS_TIMEOUT)
    assert process.returncode == 0, process.stderr
    lines = process.stdout.splitlines()
    titles = [line[:13].strip() for line in lines[:12] if line[:13].strip()]
    assert titles == ['Image cache', 'Filesystem', 'Last pass',
                      'Scrub queue', 'Totals', 'Coordination', 'Leader',
                      'Registry', 'nova.conf', 'Orphans']
    assert lines[0].startswith('Image cache  %s: 5 files' % host.cache_dir)
    header = next(line for line in lines if line.startswith('KIND'))
    assert header.split() == ['KIND', 'FILES', 'SIZE', facts.IN_USE,
                              facts.TOO_YOUNG, facts.QUEUED, facts.REMOVED]
    assert any(line.split()[:2] == [facts.ORIGINAL, '6'] for line in lines)


def test_orphans_from_libvirt(tmp_path):
    host = Host(tmp_path)
    host.instance(UUID1, {'disk': None})
    host.instance(UUID2, {'disk': None})
    node_xml = os.path.join(host.root, 'node.xml')
    missing = os.path.join(host.root, 'gone', 'disk')
    with open(node_xml, 'w') as f:
        f.write('''<node><domain type='test'>
  <name>vm</name><uuid>%s</uuid><memory>1024</memory>
  <os><type>hvm</type></os>
  <devices><disk type='file' device='disk'>
    <driver name='qemu' type='raw'/><source file='%s'/>
    <target dev='vda' bus='virtio'/></disk></devices>
</domain></node>''' % (UUID1, missing))
    with open(host.config_file, 'a') as f:
        f.write('[inventory]\nlibvirt_uri = test://%s\n' % node_xml)

    status = host.status()

    assert status['orphans'] == {
        'error': None,
        'directories': [os.path.join(host.instances_path, UUID2)],
        'missing_disks': [{'domain': 'vm', 'role': 'disk vda',
                           'path': missing}]}
    assert ('instance directories no defined domain uses: %s'
            % os.path.join(host.instances_path, UUID2) in status['warnings'])


def test_unreachable_libvirt_is_reported_not_fatal(tmp_path):
    host = Host(tmp_path)
    with open(host.config_file, 'a') as f:
        f.write('[inventory]\nlibvirt_uri = test://%s\n'
                % os.path.join(host.root, 'missing.xml'))
    status = host.status()
    assert status['orphans']['error']
    assert status['orphans']['directories'] == []


def test_a_relative_metrics_file_is_a_configuration_error(tmp_path):
    host = Host(tmp_path)
    host.configure(default={'metrics_file': 'cachekeeper.prom'})
    process = host.manage('cache', 'status')
    assert process.returncode == 2
    assert ('cachekeeper-manage: [DEFAULT] metrics_file: must be an absolute '
            'path' in process.stderr.splitlines())


def _nova_conf(host, manager_interval):
    return write_nova_conf(host, 'nova.conf',
                           '[image_cache]\nmanager_interval = %d\n'
                           % manager_interval)


def _check(host, *config_files):
    argv = []
    for config_file in config_files:
        argv.extend(['--config-file', config_file])
    return subprocess.run(
        [hosttree.MANAGE] + argv + ['--config-file', host.config_file,
                                    'cache', 'status', '--check'],
        capture_output=True, text=True, timeout=hosttree.PASS_TIMEOUT)


def test_check_is_one_line_and_an_exit_status_for_a_probe(tmp_path):
    host = Host(tmp_path)
    assert _check(host).returncode == 2
    assert host.manage('cache', 'pass').returncode == 0
    nova_off = _nova_conf(host, -1)

    healthy = _check(host, nova_off)

    assert healthy.returncode == 0, healthy.stdout
    assert healthy.stdout.startswith('OK: ')
    assert len(healthy.stdout.splitlines()) == 1
    assert host.status(nova_off)['schema_version'] == 1


def test_check_warns_while_nova_s_own_manager_runs(tmp_path):
    host = Host(tmp_path)
    assert host.manage('cache', 'pass').returncode == 0
    nova_on = _nova_conf(host, 2400)

    process = _check(host, nova_on)

    assert process.returncode == 1, process.stdout
    assert process.stdout.startswith('WARNING: ')
    assert "nova's own image cache manager also runs" in process.stdout
    assert len(process.stdout.splitlines()) == 1


def test_check_is_critical_when_the_last_pass_is_three_intervals_old(
        tmp_path):
    host = Host(tmp_path)
    host.configure(manager_interval=60)
    assert host.manage('cache', 'pass').returncode == 0
    report_file = os.path.join(host.state_path, 'last_pass.json')
    with open(report_file) as f:
        document = json.load(f)
    document['finished_at'] -= 181
    with open(report_file, 'w') as f:
        json.dump(document, f)
    nova_off = _nova_conf(host, -1)

    process = _check(host, nova_off)

    assert process.returncode == 2, process.stdout
    assert process.stdout.startswith('CRITICAL: the last pass finished')


def _park_every_entry(host):
    state_db = db.open_state(host.state_path)
    try:
        with state_db.transaction() as connection:
            connection.execute('UPDATE scrub_entry SET state = ?',
                               (scrub_entries.PARKED,))
    finally:
        state_db.close()


def _garble_the_registry(host):
    with open(registry.registry_path(host.instances_path), 'w') as f:
        f.write('{"compute-other": ')


def _thrash(host):
    # Removed by the first pass, downloaded again by nova, seen by a pass.
    allocated_file(host.cache_path(OLD_IMAGE), 0)
    assert host.manage('cache', 'pass').returncode == 0


@pytest.mark.parametrize('cause, reason', [
    (_park_every_entry, '1 scrub queue entries are parked'),
    (_garble_the_registry, "nova's storage registry %s"),
    (_thrash, '1 files removed by passes came back'),
])
def test_check_warns_of_what_a_pass_cannot_settle_itself(tmp_path, cause,
                                                          reason):
    host = Host(tmp_path)
    host.configure(scrubber={'scrub_delay': 0 if cause is _thrash else 3600})
    allocated_file(host.cache_path(OLD_IMAGE), 3 * DAY)
    assert host.manage('cache', 'pass').returncode == 0
    nova_off = _nova_conf(host, -1)
    assert _check(host, nova_off).returncode == 0

    cause(host)
    process = _check(host, nova_off)

    assert process.returncode == 1, process.stdout
    [line] = process.stdout.splitlines()
    assert line.startswith('WARNING: ')
    assert reason.replace('%s', registry.registry_path(
        host.instances_path)) in line


def _disk_info_garbled(host):
    directory = host.instance(UUID1, {'disk': None})
    with open(os.path.join(directory, 'disk.info'), 'w') as f:
        f.write('{not json')


def test_check_is_critical_when_the_last_pass_had_errors(tmp_path):
    host = Host(tmp_path)
    _disk_info_garbled(host)
    assert host.manage('cache', 'pass').returncode == 1
    nova_off = _nova_conf(host, -1)

    process = _check(host, nova_off)

    assert process.returncode == 2, process.stdout
    [line] = process.stdout.splitlines()
    assert line.startswith('CRITICAL: the last pass done with errors '
                           '(1 errors)')
