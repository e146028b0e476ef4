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

"""The text of cachekeeper-manage, from documents and objects alone."""

import errno
import types

import pytest

from cachekeeper.cache import budget
from cachekeeper.cache import eviction
from cachekeeper.cache import facts
from cachekeeper.cache import locks
from cachekeeper.cache import plan
from cachekeeper.cache import qemu_locks
from cachekeeper.cmd import render
from cachekeeper import demo
from cachekeeper import report
from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.scrub import queue
from cachekeeper.state import ledger

# 2027-01-15T08:00:00+00:00
NOW = 1800000000.0
HOUR = 3600
DAY = 86400
MiB = 1024 * 1024
GiB = 1024 * MiB
CACHE = '/var/lib/nova/instances/_base'
REGISTRY = '/var/lib/nova/instances/compute_nodes'
ROOT = CACHE + '/' + 'a' * 40
POLICY = facts.Policy(remove_unused=True, original_min_age=DAY,
                      resized_min_age=HOUR, swap_min_age=DAY,
                      ephemeral_min_age=DAY)


def coordination_document(leader=None, hosts=None, problem=None):
    return {
        'backend': 'file:///var/lib/nova/instances/locks/coordination',
        'lock': 'cachekeeper-leader-0123456789abcdef',
        'leader': leader,
        'shared_with': [],
        'reach_problem': None,
        'registry': {'path': REGISTRY, 'problem': problem,
                     'hosts': hosts or {}},
    }


def test_coordination_rows_of_a_shared_cache():
    document = coordination_document(
        leader={'host': 'host-a', 'pid': 4242, 'since': NOW},
        hosts={'host-a': {'registered_at': NOW - 10, 'age_s': 10.0,
                          'stale': False},
               'host-b': {'registered_at': NOW - 2 * DAY,
                          'age_s': 172800.0, 'stale': True}})
    assert render.coordination_rows(document) == [
        ('Coordination', 'file:///var/lib/nova/instances/locks/coordination'
                         ' (lock cachekeeper-leader-0123456789abcdef)'),
        ('Leader', 'host-a (pid 4242) since 2027-01-15T08:00:00+00:00'),
        ('Registry', '%s: host-a (10s ago), host-b (172800s ago, stale)'
                     % REGISTRY)]


@pytest.mark.parametrize('problem, registry_text', [
    (None, 'no host registered'),
    ('is not valid JSON', 'unreadable'),
])
def test_coordination_rows_without_leader_or_hosts(problem, registry_text):
    rows = render.coordination_rows(coordination_document(problem=problem))
    assert rows[1:] == [('Leader', 'none recorded'),
                        ('Registry', '%s: %s' % (REGISTRY, registry_text))]


def status_document(last_pass=None, filesystem=True, **extra):
    document = {
        'cache': {'path': CACHE, 'files': 6, 'apparent_bytes': 5 * MiB,
                  'allocated_bytes': 2 * GiB, 'max_bytes': 3 * GiB,
                  'kinds': {}},
        'filesystem': {
            'path': CACHE, 'size_bytes': 100 * GiB, 'used_bytes': 26 * GiB,
            'available_bytes': 74 * GiB, 'used_percent': 26.0,
            'high_watermark_percent': 85, 'low_watermark_percent': 80,
            'over_high_watermark': False} if filesystem else None,
        'last_pass': last_pass,
        'queue': {'entries': {state: 0 for state in
                              scrub_entries.ACTIVE_STATES +
                              scrub_entries.FINAL_STATES},
                  'quarantined_bytes': 0, 'parked': []},
        'totals': {'reclaimed_bytes': 4 * MiB, 'errors': 1, 'comebacks': 2},
        'thrash_window_seconds': 2 * HOUR,
        'coordination': coordination_document(),
        'warnings': [],
    }
    document['queue']['entries'].update(queued=5, parked=1, drained=2)
    document.update(extra)
    return document


def last_pass(budget=None):
    return {
        'started_at': NOW, 'finished_at': NOW + 1, 'duration_s': 0.214,
        'result': 'done', 'errors': 0, 'bytes_queued': 4 * MiB,
        'bytes_reclaimed': 3 * MiB, 'comebacks': 0, 'budget': budget,
        'files': {facts.ORIGINAL: {facts.IN_USE: {'files': 1,
                                                  'bytes': MiB},
                                   facts.QUEUED: {'files': 7,
                                                  'bytes': 9 * MiB}},
                  facts.FOREIGN: {facts.IGNORED: {'files': 2, 'bytes': 11}}},
        'kinds': {facts.ORIGINAL: {'files': 8, 'bytes': 10 * MiB},
                  facts.FOREIGN: {'files': 2, 'bytes': 11}},
        'verdicts': {facts.IN_USE: {'files': 1, 'bytes': MiB},
                     facts.QUEUED: {'files': 7, 'bytes': 9 * MiB},
                     facts.IGNORED: {'files': 2, 'bytes': 11}},
    }


def test_status_after_a_pass():
    budget = {'over_size': True, 'over_watermark': False, 'within': True,
              'evicted_files': 2, 'evicted_bytes': 4 * MiB}
    document = status_document(
        last_pass(budget), warnings=['1 scrub queue entries are parked'],
        nova={'config_files': ['/etc/nova/nova.conf'], 'error': None,
              'manager_interval': 600, 'source': '/etc/nova/nova.conf'},
        orphans=None)
    assert render.status(document) == [
        'Image cache  %s: 6 files, 5.0 MiB apparent, 2.0 GiB allocated '
        '(max 3.0 GiB)' % CACHE,
        'Filesystem   26.0% used, 26.0 GiB of 100.0 GiB (high watermark '
        '85%, low 80%)',
        'Last pass    2027-01-15T08:00:00+00:00, 0.21 s, done',
        '             4.0 MiB queued for removal, 3.0 MiB reclaimed, '
        '0 errors, 0 came back',
        '             over budget: evicted 2 files (4.0 MiB); within budget '
        'after it',
        'Scrub queue  5 queued, 1 parked (0.0 MiB in quarantine); 2 drained, '
        '0 restored',
        'Totals       4.0 MiB reclaimed, 1 errors, 2 files came back within '
        '2h of their removal',
        'Coordination file:///var/lib/nova/instances/locks/coordination '
        '(lock cachekeeper-leader-0123456789abcdef)',
        'Leader       none recorded',
        'Registry     %s: no host registered' % REGISTRY,
        "nova.conf    manager_interval = 600 (/etc/nova/nova.conf): nova's "
        'image cache manager runs too',
        'Orphans      not checked: [inventory] libvirt_uri is not set',
        '',
        'KIND      FILES      SIZE  in_use  queued  ignored',
        'original      8  10.0 MiB       1       7        0',
        'foreign       2   0.0 MiB       0       0        2',
        '',
        'Warnings:',
        '  - 1 scrub queue entries are parked',
    ]


def test_status_before_any_pass_without_host_checks():
    lines = render.status(status_document(filesystem=False))
    assert lines[1:3] == ['Filesystem   unknown (statvfs failed)',
                          'Last pass    none yet']
    assert lines[-1] == 'Registry     %s: no host registered' % REGISTRY
    assert not any(line.startswith(('nova.conf', 'Orphans', 'KIND', 'Warn'))
                   for line in lines)


def test_last_pass_at_an_unknown_time_still_over_budget():
    budget = {'over_size': False, 'over_watermark': True, 'within': False,
              'evicted_files': 0, 'evicted_bytes': 0}
    document = status_document(dict(last_pass(budget), started_at=None,
                                    duration_s=None, result=None))
    lines = render.status(document)
    index = lines.index('Last pass    at an unknown time, 0.00 s, done')
    assert lines[index + 2] == ('             over budget: evicted 0 files '
                                '(0.0 MiB); still over budget after it')


@pytest.mark.parametrize('nova, text', [
    (None, "not given: pass nova.conf with --config-file to check nova's "
           'manager_interval'),
    ({'config_files': ['nova.conf'], 'error': 'cannot read nova.conf: x',
      'manager_interval': 2400, 'source': None}, 'cannot read nova.conf: x'),
    ({'config_files': ['nova.conf'], 'error': None, 'manager_interval': -1,
      'source': 'nova.conf'}, 'manager_interval = -1 (nova.conf): disabled'),
    ({'config_files': ['nova.conf'], 'error': None,
      'manager_interval': 2400, 'source': None},
     "manager_interval = 2400 (nova's default): nova's image cache manager "
     'runs too'),
])
def test_nova_conf_row(nova, text):
    lines = render.status(status_document(nova=nova))
    assert 'nova.conf    ' + text in lines


@pytest.mark.parametrize('orphans, text', [
    ({'error': 'no connection', 'directories': [], 'missing_disks': []},
     'cannot ask libvirt: no connection'),
    ({'error': None, 'directories': ['/i/one', '/i/two'],
      'missing_disks': [{'domain': 'vm', 'role': 'disk vda', 'path': '/x'}]},
     '2 instance directories without a domain, 1 disks of domains missing'),
])
def test_orphans_row(orphans, text):
    lines = render.status(status_document(orphans=orphans))
    assert 'Orphans      ' + text in lines


def test_table_aligns_columns_and_trims_the_ends():
    rows = [['A', 'LONG', 'B'], ['wide cell', '1', ''], ['x', '22', '3']]
    assert render.table(rows) == ['A          LONG  B',
                                  'wide cell  1',
                                  'x          22    3']
    assert render.table(rows, right_aligned=True) == [
        'A          LONG  B',
        'wide cell     1',
        'x            22  3']


def scrub_entry(entry_id, **fields):
    values = dict(
        id=entry_id, name='a' * 40, path=ROOT, quarantine_path='/q/x',
        kind=facts.ORIGINAL, ino=1, size=MiB, allocated=MiB, mtime_ns=0,
        reason='unused', state=scrub_entries.QUEUED, queued_at=NOW,
        updated_at=NOW)
    values.update(fields)
    return scrub_entries.Entry(**values)


def test_scrub_list():
    entries = [scrub_entry(1),
               scrub_entry(12, path=CACHE + '/swap_512', kind=facts.SWAP,
                           size=512 * MiB, state=scrub_entries.PARKED,
                           attempts=5, last_error='cannot delete: EPERM')]
    assert render.scrub_list(entries) == [
        'ID  PATH%s  KIND      SIZE       STATE   QUEUED AT                '
        '  ATTEMPTS  LAST ERROR' % (' ' * (len(ROOT) - 4)),
        '1   %s  original  1.0 MiB    queued  2027-01-15T08:00:00+00:00  0'
        % ROOT,
        '12  %s  swap      512.0 MiB  parked  2027-01-15T08:00:00+00:00  5'
        '         cannot delete: EPERM'
        % (CACHE + '/swap_512').ljust(len(ROOT)),
    ]
    assert render.scrub_list([]) == ['The scrub queue is empty.']


def test_scrub_actions():
    result = queue.DrainResult(drained=3, bytes_reclaimed=3 * MiB, failed=1,
                               parked=2)
    assert render.drained(result) == (
        'Drained 3 entries, 3.0 MiB reclaimed; 1 failed and will be retried; '
        '2 parked.')
    entry = scrub_entry(7)
    assert render.restored(entry) == 'Restored entry 7: %s' % ROOT
    assert render.queued_again(entry) == 'Queued entry 7 again: %s' % ROOT


def test_pass_lines_end_with_the_summary_line():
    result = report.PassReport(duration_s=0.5, files=[
        facts.FileReport(ROOT, facts.ORIGINAL, facts.QUEUED, 2 * DAY + HOUR,
                         MiB, 'unused, 2d 1h of 1d'),
        facts.FileReport(CACHE + '/x', facts.FOREIGN, facts.IGNORED, 3, 0,
                         'unrecognised name; never removed')])
    lines = render.pass_lines(result)
    assert lines == [
        'queued     original       2d 1h   1.0 MiB  %s  (unused, 2d 1h of '
        '1d)' % ROOT,
        'ignored    foreign           3s   0.0 MiB  %s/x  (unrecognised name; '
        'never removed)' % CACHE,
        result.summary_line()]


def base_file(name='a' * 40, kind=facts.ORIGINAL, file_type='file'):
    return facts.BaseFile(name=name, path=CACHE + '/' + name, kind=kind,
                          file_type=file_type, size=2 * MiB,
                          allocated=MiB, mtime=NOW - 2 * DAY, dev=1, ino=2)


def evaluation(usage=None, budget_outcome=None):
    return types.SimpleNamespace(policy=POLICY, usage=usage or facts.Usage(),
                                 budget_outcome=budget_outcome)


NO_LOCK = ('/var/lib/nova/instances/locks/nova-' + 'a' * 40, False, None)


def test_explanation_of_a_file_in_use():
    usage = facts.Usage()
    disk = '/var/lib/nova/instances/uuid/disk'
    usage.add_reference(facts.Reference(
        'a' * 40, disk, chain=(disk, ROOT), reason='backing chain of ' + disk))
    usage.add_reference(facts.Reference('a' * 40, 'libvirt.xml',
                                        reason='named in libvirt.xml'))
    decision = facts.Decision(base_file(), facts.IN_USE,
                              'backing chain of ' + disk, 2 * DAY + 30)
    image_lock = qemu_locks.ImageLock(start=100, length=1, exclusive=False,
                                      pid=99)
    lines = render.explanation(
        decision, evaluation(usage), NO_LOCK, image_lock,
        ledger.LedgerEntry('a' * 40, last_seen_in_use=NOW,
                           first_seen_in_use=NOW - 3 * DAY, uses=4,
                           comebacks=1))
    assert lines == [
        'path:     %s' % ROOT,
        'kind:     original (file, 2.0 MiB, 1.0 MiB allocated)',
        'verdict:  in_use',
        'reason:   backing chain of %s' % disk,
        'modified: 2027-01-13T08:00:00+00:00, 2d ago',
        'minimum age when unused: 1d',
        'used by:  ',
        '  backing chain of %s' % disk,
        '    chain: %s -> %s' % (disk, ROOT),
        '  named in libvirt.xml',
        'lock:     %s (no file)' % NO_LOCK[0],
        'QEMU lock probe: %s (%s)' % (image_lock.reason(),
                                      image_lock.meaning()),
        'first seen unused: never seen',
        'last seen in use:  2027-01-15T08:00:00+00:00',
        'first seen in use: 2027-01-12T08:00:00+00:00',
        'uses:     4 (instances passes saw starting to use it), '
        'comebacks: 1',
    ]


def test_explanation_of_a_removable_file_held_back_by_doubts():
    usage = facts.Usage()
    usage.add_doubt(facts.Doubt('/i/uuid/disk.info', 'cannot read disk.info',
                                frozenset(['a' * 40])))
    usage.add_doubt(facts.Doubt('/i/uuid2/disk', 'qemu-img failed'))
    decision = facts.Decision(base_file(), facts.REMOVABLE, 'unused',
                              -5, min_age=600)
    lines = render.explanation(
        decision, evaluation(usage),
        (NO_LOCK[0], True, locks.LockHolder(pid=1234, exclusive=True)),
        OSError(errno.EACCES, 'Permission denied'), None)
    assert lines[2] == 'verdict:  removable (a pass would remove it)'
    assert lines[4].endswith(', 0s ago')
    assert lines[5:] == [
        'minimum age when unused: 10m',
        'used by:  nothing found',
        'unread, so removal is held back:',
        '  /i/uuid/disk.info: cannot read disk.info (holds back only the 1 '
        'file(s) its directory uses)',
        '  /i/uuid2/disk: qemu-img failed (holds back every file)',
        'lock:     %s (held by pid 1234)' % NO_LOCK[0],
        'QEMU lock probe: cannot probe: Permission denied',
        'first seen unused: never seen',
        'last seen in use:  never seen',
        'first seen in use: never seen',
        'uses:     0 (instances passes saw starting to use it), '
        'comebacks: 0',
    ]


@pytest.mark.parametrize('lock, qemu_lock, lock_text, qemu_text', [
    ((NO_LOCK[0], True, None), None, 'not held', 'not open'),
    (NO_LOCK, OSError('odd'), 'no file', 'cannot probe: odd'),
])
def test_explanation_of_the_locks(lock, qemu_lock, lock_text, qemu_text):
    decision = facts.Decision(base_file(), facts.TOO_YOUNG, 'unused', HOUR)
    lines = render.explanation(decision, evaluation(), lock, qemu_lock,
                               None)
    assert lines[-6:-4] == ['lock:     %s (%s)' % (lock[0], lock_text),
                            'QEMU lock probe: %s' % qemu_text]


def test_explanation_of_a_foreign_entry_has_no_minimum_age():
    decision = facts.Decision(
        base_file('a-link', facts.FOREIGN, 'symlink'), facts.IGNORED,
        'symlink; never removed', DAY)
    lines = render.explanation(decision, evaluation(), NO_LOCK, None, None)
    assert not any(line.startswith('minimum age') for line in lines)
    assert 'QEMU lock probe: not probed (symlink)' in lines


def _budgeted(limits, *files):
    """(decisions by name, Outcome) of unused ``files`` (name, age, MiB)."""
    base_files = [facts.BaseFile(name, CACHE + '/' + name, facts.ORIGINAL,
                                 'file', mib * MiB, mib * MiB, NOW - age, 1,
                                 n)
                  for n, (name, age, mib) in enumerate(files)]
    usage = facts.Usage()
    usage.add_reference(facts.Reference('used', '/i/uuid/disk'))
    decisions, outcome = budget.apply(
        plan.plan(base_files, usage, POLICY, NOW), usage, {}, limits, None,
        [], NOW)
    return {d.base_file.name: d for d in decisions}, outcome


def _eviction_line(decision, outcome, usage=None):
    lines = render.explanation(decision, evaluation(usage, outcome), NO_LOCK,
                               None, None)
    return lines[-1]


def test_explanation_says_why_a_file_was_evicted_or_spared():
    limits = budget.Limits(max_cache_bytes=3 * MiB, eviction_min_age=600,
                           eviction_policy=eviction.COST)
    decisions, outcome = _budgeted(limits, ('old', 5 * HOUR, 2),
                                   ('new', HOUR, 2))
    place = ' of 2 to go under eviction_policy = cost (lowest expected ' \
        'cost first): '
    assert _eviction_line(decisions['old'], outcome) == (
        'eviction: evicted, 1' + place + 'last used 5h ago, 0 uses, 0 '
        'comebacks, 2.0 MiB to download again: credit 129d')
    assert _eviction_line(decisions['new'], outcome) == (
        'eviction: spared, 2' + place + 'evicting the 1 before it was '
        'enough: last used 1h ago, 0 uses, 0 comebacks, 2.0 MiB to '
        'download again: credit 129d')


def test_explanation_says_where_a_file_stands_within_the_budget():
    limits = budget.Limits(max_cache_bytes=10 * MiB, eviction_min_age=600)
    decisions, outcome = _budgeted(limits, ('old', 5 * HOUR, 2),
                                   ('recent', 60, 2), ('aged', 2 * DAY, 2))
    assert _eviction_line(decisions['old'], outcome) == (
        'eviction: none needed, the cache is within its budget; 1 of 1 to '
        'go under eviction_policy = lru (least recently used first): last '
        'used 5h ago')
    assert _eviction_line(decisions['recent'], outcome) == (
        'eviction: not yet, used within eviction_minimum_age_seconds (10m)')
    assert _eviction_line(decisions['aged'], outcome) == (
        'eviction: not needed, it goes by age')
    in_use = facts.Decision(base_file('used'), facts.IN_USE, 'used', DAY)
    assert _eviction_line(in_use, outcome) == (
        'eviction: never, a file in_use is not evicted')
    usage = facts.Usage()
    usage.add_doubt(facts.Doubt('/i/uuid/disk', 'I/O error'))
    assert _eviction_line(decisions['recent'], outcome, usage) == (
        'eviction: not while disks that could use it are unread')


def test_download_progress():
    assert render.download_progress('img', 3 * MiB, 12 * MiB, 1.5 * MiB) == (
        'img: 3.0 MiB of 12.0 MiB (25%), 1.5 MiB/s')
    assert render.download_progress('img', 0, 0, 0) == (
        'img: 0.0 MiB of 0.0 MiB (0%), 0.0 MiB/s')


def test_demo_host():
    summary = demo.Summary(
        path='/tmp/demo', config_file='/tmp/demo/cachekeeper.conf',
        instances_path='/tmp/demo/instances', state_path='/tmp/demo/state',
        cache_dir='/tmp/demo/instances/_base',
        cache_entries=(demo.CacheEntry('x' * 40, facts.ORIGINAL, 1, 2 * DAY,
                                       'cirros'),
                       demo.CacheEntry('swap_7', facts.SWAP, 1, None,
                                       'a swap file'),
                       demo.CacheEntry('y', facts.FOREIGN, 1, 90,
                                       'a stranger')),
        instances=demo.INSTANCES[:1], rebuilt=False, seconds=1.25)
    lines = render.demo_host(summary)
    assert lines[:9] == [
        'Built the cachekeeper demo host in /tmp/demo (1.2 s).',
        '',
        'Image cache /tmp/demo/instances/_base (3 entries):',
        '  2 days  original   ' + 'x' * 40,
        '                     cirros; unused',
        '  -       swap       swap_7',
        '                     a swap file; unused',
        '  1 min   foreign    y',
        '                     a stranger; unused',
    ]
    assert lines[-2:] == ['Run the daemon on it (Ctrl-C stops it):',
                          '  cachekeeper --config-file '
                          '/tmp/demo/cachekeeper.conf']
