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

"""Every text table and line cachekeeper-manage prints for a person.

The domain modules hand over documents and objects (status.collect, a pass
report, scrub queue entries, the verdict of a file); the functions here
turn them into lines, reading nothing but their arguments. Escaping what a
file name may smuggle in is left to the caller (printable.escape), which
prints. The ``--json`` outputs are the documents themselves.
"""

from cachekeeper.cache import eviction
from cachekeeper.cache import facts
from cachekeeper import demo
from cachekeeper import fmt
from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.state import ledger

# The width of the titles of ``cache status``.
TITLE_WIDTH = 13

# The words monitoring plugins start their line with, by exit status.
CHECK_WORDS = ('OK', 'WARNING', 'CRITICAL')

EMPTY_SCRUB_QUEUE = 'The scrub queue is empty.'


def table(rows, right_aligned=False):
    """Lines of ``rows`` (lists of strings, the header first) in columns.

    Columns are two spaces apart, as wide as their widest cell; the first
    is aligned left, the others too or, with ``right_aligned``, right.
    """
    widths = [max(len(row[column]) for row in rows)
              for column in range(len(rows[0]))]
    return ['  '.join(cell.rjust(width) if column and right_aligned
                      else cell.ljust(width)
                      for column, (cell, width)
                      in enumerate(zip(row, widths))).rstrip()
            for row in rows]


# cache status

def status(document):
    """The status document (status.collect) as compact lines."""
    cache = document['cache']
    bound = ('max %s' % fmt.size(cache['max_bytes'])
             if cache['max_bytes'] else 'no size bound')
    lines = [_row('Image cache', '%s: %d files, %s apparent, %s allocated '
                  '(%s)' % (cache['path'], cache['files'],
                            fmt.size(cache['apparent_bytes']),
                            fmt.size(cache['allocated_bytes']),
                            bound))]
    filesystem = document['filesystem']
    if filesystem is None:
        lines.append(_row('Filesystem', 'unknown (statvfs failed)'))
    else:
        lines.append(_row('Filesystem', '%.1f%% used, %s of %s (high '
                          'watermark %d%%, low %d%%)' % (
                              filesystem['used_percent'],
                              fmt.size(filesystem['used_bytes']),
                              fmt.size(filesystem['size_bytes']),
                              filesystem['high_watermark_percent'],
                              filesystem['low_watermark_percent'])))
    lines.extend(_last_pass_lines(document['last_pass']))
    entries = document['queue']['entries']
    quarantined = document['queue']['quarantined_bytes']
    lines.append(_row('Scrub queue', '%d queued, %d parked (%s in '
                      'quarantine); %d drained, %d restored' % (
                          entries[scrub_entries.QUEUED],
                          entries[scrub_entries.PARKED],
                          fmt.size(quarantined),
                          entries[scrub_entries.DRAINED],
                          entries[scrub_entries.RESTORED])))
    running = document['totals']
    lines.append(_row('Totals', '%s reclaimed, %d errors, %d files came '
                      'back within %s of their removal' % (
                          fmt.size(running['reclaimed_bytes']),
                          running['errors'], running['comebacks'],
                          fmt.duration(document['thrash_window_seconds']))))
    lines.extend(_row(title, text) for title, text in
                 coordination_rows(document['coordination']))
    if 'nova' in document:
        lines.append(_row('nova.conf', _nova_text(document['nova'])))
    if 'orphans' in document:
        lines.append(_row('Orphans', _orphans_text(document['orphans'])))
    if document.get('pins'):
        lines.append(_row('Pins', ', '.join(
            '%s %s' % (pin['image_id'] or pin['name'], _pin_end(pin))
            for pin in document['pins'])))
    if document['last_pass'] is not None:
        lines.append('')
        lines.extend(_files_table(document['last_pass']))
    if document['warnings']:
        lines.append('')
        lines.append('Warnings:')
        lines.extend('  - %s' % warning for warning in document['warnings'])
    return lines


def coordination_rows(document):
    """(title, text) rows of the coordination part of the status document.

    ``document`` comes from coordination.status.
    """
    leader = document['leader']
    if leader is None:
        leader_text = 'none recorded'
    else:
        leader_text = '%s (pid %d) since %s' % (
            leader['host'], leader['pid'], fmt.utc(leader['since']))
    storage = document['registry']
    if storage['problem'] is not None:
        hosts_text = 'unreadable'
    elif not storage['hosts']:
        hosts_text = 'no host registered'
    else:
        hosts_text = ', '.join(
            '%s (%ds ago%s)' % (host, entry['age_s'],
                                ', stale' if entry['stale'] else '')
            for host, entry in storage['hosts'].items())
    return [('Coordination', '%s (lock %s)' % (document['backend'],
                                                document['lock'])),
            ('Leader', leader_text),
            ('Registry', '%s: %s' % (storage['path'], hosts_text))]


def _row(title, text):
    return '%-*s%s' % (TITLE_WIDTH, title, text)


def check(code, reasons, document, now):
    """The one line of cache status --check, for a monitoring probe.

    ``code`` and ``reasons`` come from status.check of ``document``.
    """
    if reasons:
        return '%s: %s' % (CHECK_WORDS[code], '; '.join(reasons))
    cache = document['cache']
    return 'OK: %d files, %s allocated, last pass %s ago' % (
        cache['files'], fmt.size(cache['allocated_bytes']),
        fmt.duration(max(now - document['last_pass']['finished_at'], 0)))


# cache list

def cache_list(rows):
    """The rows of listing.rows as a table."""
    if not rows:
        return ['No file in the image cache matches.']
    table_rows = [('NAME', 'KIND', 'IMAGE', 'SIZE', 'USERS', 'LAST USED',
                   'LAST VERDICT', 'REMOVABLE AT')]
    table_rows.extend((
        row['name'], row['kind'], _image_text(row),
        '' if row['allocated_bytes'] is None
        else fmt.mib(row['allocated_bytes']),
        ', '.join(row['users']) or '-', _when(row['last_used']),
        _verdict_text(row), _when(row['removable_at']))
        for row in rows)
    return table(table_rows)


def _image_text(row):
    if row['image_id'] is None:
        return '-'
    if row['image_name']:
        return '%s (%s)' % (row['image_id'], row['image_name'])
    return row['image_id']


def _verdict_text(row):
    verdict = row['verdict'] or '-'
    if row['pinned_until'] is not None:
        return '%s, pinned until %s' % (verdict, fmt.utc(row['pinned_until']))
    return verdict


def _when(timestamp):
    return '-' if timestamp is None else fmt.utc(timestamp)


# cache evict

def evicted(eviction, dry_run):
    """A line per file of a manager.Eviction: queued, or why not."""
    lines = ['%s %s' % ('Would queue' if dry_run else 'Queued', f.path)
             if f.verdict == facts.QUEUED else
             'Not queued %s: %s' % (f.path, f.reason)
             for f in eviction.files]
    lines.extend('Refused %s: %s' % item
                 for item in sorted(eviction.refused.items()))
    return lines


# cache pin, unpin, pins

def pinned(pin):
    return 'Pinned %s%s %s%s' % (
        pin.name, ' (image %s)' % pin.image_id if pin.image_id else '',
        _pin_end(pin.to_dict()),
        ', for every host sharing the cache' if pin.shared else '')


def pins(pin_list):
    """facts.Pin as a table."""
    if not pin_list:
        return ['No pins.']
    rows = [('NAME', 'IMAGE', 'UNTIL', 'WHERE', 'REASON')]
    rows.extend((pin.name, pin.image_id or '-',
                 _when(pin.expires_at) if pin.expires_at else 'no end',
                 'shared' if pin.shared else 'this host', pin.reason)
                for pin in pin_list)
    return table(rows)


def _pin_end(pin):
    if pin['expires_at'] is None:
        return 'without end'
    return 'until %s' % fmt.utc(pin['expires_at'])


def _last_pass_lines(last_pass):
    if last_pass is None:
        return [_row('Last pass', 'none yet')]
    started = last_pass['started_at']
    when = 'at an unknown time' if started is None else fmt.utc(started)
    lines = [_row('Last pass', '%s, %.2f s, %s' % (
        when, last_pass['duration_s'] or 0, last_pass['result'] or 'done'))]
    lines.append(_row('', '%s queued for removal, %s reclaimed, %d errors, '
                      '%d came back' % (
                          fmt.size(last_pass['bytes_queued'] or 0),
                          fmt.size(last_pass['bytes_reclaimed'] or 0),
                          last_pass['errors'], last_pass['comebacks'])))
    budget_report = last_pass['budget']
    # Reports from before max_cache_files have no over_files.
    if budget_report and (budget_report['over_size'] or
                          budget_report['over_watermark'] or
                          budget_report.get('over_files')):
        lines.append(_row('', 'over budget: evicted %d files (%s); %s' % (
            budget_report['evicted_files'],
            fmt.size(budget_report['evicted_bytes']),
            'within budget after it' if budget_report['within']
            else 'still over budget after it')))
    return lines


def _files_table(last_pass):
    verdicts = [v for v in facts.VERDICTS if v in last_pass['verdicts']]
    rows = [['KIND', 'FILES', 'SIZE'] + verdicts]
    for kind in facts.KINDS:
        counted = last_pass['kinds'].get(kind)
        if counted is None:
            continue
        by_verdict = last_pass['files'][kind]
        rows.append([kind, str(counted['files']), fmt.size(counted['bytes'])] +
                    [str(by_verdict.get(v, {}).get('files', 0))
                       for v in verdicts])
    return table(rows, right_aligned=True)


def _nova_text(nova):
    if nova is None:
        return ('not given: pass nova.conf with --config-file to check '
                "nova's manager_interval")
    if nova['error']:
        return nova['error']
    where = nova['source'] or "nova's default"
    state = ('disabled' if nova['manager_interval'] == -1
             else "nova's image cache manager runs too")
    return 'manager_interval = %d (%s): %s' % (nova['manager_interval'],
                                               where, state)


def _orphans_text(orphans):
    if orphans is None:
        return 'not checked: [inventory] libvirt_uri is not set'
    if orphans['error']:
        return 'cannot ask libvirt: %s' % orphans['error']
    return ('%d instance directories without a domain, %d disks of '
            'domains missing' % (len(orphans['directories']),
                                 len(orphans['missing_disks'])))


# cache pass

def pass_lines(report):
    """A pass report (report.PassReport): a line per file, then its summary.
    """
    lines = ['%-10s %-9s %10s %9s  %s  (%s)' % (
        entry.verdict, entry.kind, fmt.duration(entry.age_s),
        fmt.mib(entry.size), entry.path, entry.reason)
        for entry in report.files]
    lines.append(report.summary_line())
    return lines


# cache explain

def explanation(decision, evaluation, lock, qemu_lock, ledger_entry):
    """Why a pass gives one file its verdict, and what else is known of it.

    ``decision`` is the file's facts.Decision in ``evaluation`` (the
    manager's Evaluation of a pass); ``lock`` its nova lock as (path of the
    lock file, whether it exists, the locks.LockHolder or None);
    ``qemu_lock`` what qemu_locks.probe found (None: not open), or the
    OSError it raised, for a regular file; ``ledger_entry`` its
    ledger.LedgerEntry or None. The last line says where the file stands
    in the eviction order, when the budget could be applied.
    """
    base_file = decision.base_file
    name = base_file.name
    verdict = decision.verdict
    if verdict == facts.REMOVABLE:
        verdict = 'removable (a pass would remove it)'
    lines = [
        'path:     %s' % base_file.path,
        'kind:     %s (%s, %s, %s allocated)' % (
            base_file.kind, base_file.file_type, fmt.mib(base_file.size),
            fmt.mib(base_file.allocated)),
        'verdict:  %s' % verdict,
        'reason:   %s' % decision.reason,
        'modified: %s, %s ago' % (fmt.utc(base_file.mtime),
                                  fmt.duration(max(decision.age, 0))),
    ]
    min_age = decision.min_age
    if min_age is None:
        min_age = evaluation.policy.min_age(base_file.kind)
    if min_age is not None:
        lines.append('minimum age when unused: %s' % fmt.duration(min_age))
    references = evaluation.usage.references_to(name)
    lines.append('used by:  %s' % ('' if references else 'nothing found'))
    for reference in references:
        lines.append('  %s' % reference.reason)
        if reference.chain:
            lines.append('    chain: %s' % ' -> '.join(reference.chain))
    doubts = evaluation.usage.doubts_about(name)
    if doubts:
        lines.append('unread, so removal is held back:')
        lines.extend('  %s: %s (%s)' % (d.source, d.message, _doubt_scope(d))
                     for d in doubts)
    lock_path, lock_file_exists, holder = lock
    if holder is not None:
        lock_state = 'held by pid %d' % holder.pid
    else:
        lock_state = 'not held' if lock_file_exists else 'no file'
    lines.append('lock:     %s (%s)' % (lock_path, lock_state))
    lines.append('QEMU lock probe: %s' % _qemu_lock_text(base_file,
                                                         qemu_lock))
    lines.extend(_ledger_lines(ledger_entry))
    if evaluation.budget_outcome is not None:
        lines.append('eviction: %s' % _eviction_text(
            decision, evaluation.usage, evaluation.budget_outcome))
    return lines


def _doubt_scope(doubt):
    if doubt.names is None:
        return 'holds back every file'
    return 'holds back only the %d file(s) its directory uses' % len(
        doubt.names)


def _qemu_lock_text(base_file, qemu_lock):
    if not base_file.is_regular:
        return 'not probed (%s)' % base_file.file_type
    if isinstance(qemu_lock, OSError):
        return 'cannot probe: %s' % (qemu_lock.strerror or qemu_lock)
    if qemu_lock is None:
        return 'not open'
    return '%s (%s)' % (qemu_lock.reason(), qemu_lock.meaning())


def _ledger_lines(entry):
    def when(timestamp):
        return 'never seen' if timestamp is None else fmt.utc(timestamp)

    if entry is None:
        entry = ledger.LedgerEntry(name=None)
    return ['first seen unused: %s' % when(entry.first_seen_unused),
            'last seen in use:  %s' % when(entry.last_seen_in_use),
            'first seen in use: %s' % when(entry.first_seen_in_use),
            'uses:     %d (instances passes saw starting to use it), '
            'comebacks: %d' % (entry.uses, entry.comebacks)]


def _eviction_text(decision, usage, outcome):
    """Why the budget (its budget.Outcome) evicted a file or spared it."""
    name = decision.base_file.name
    policy = outcome.limits.eviction_policy
    ranking = [r.base_file.name for r in outcome.ranking]
    if name not in ranking:
        if decision.verdict == facts.REMOVABLE:
            return 'not needed, it goes by age'
        if decision.verdict != facts.TOO_YOUNG:
            return 'never, a file %s is not evicted' % decision.verdict
        if usage.doubts_about(name):
            return 'not while disks that could use it are unread'
        return 'not yet, used within eviction_minimum_age_seconds (%s)' % (
            fmt.duration(outcome.limits.eviction_min_age))
    index = ranking.index(name)
    place = '%d of %d to go under eviction_policy = %s (%s)' % (
        index + 1, len(ranking), policy, eviction.order_text(policy))
    # When the pass measured the ages.
    now = decision.base_file.mtime + decision.age
    parts = outcome.ranking[index].parts(now)
    if name in outcome.evicted:
        return 'evicted, %s: %s' % (place, parts)
    if outcome.over:
        return ('spared, %s: evicting the %d before it was enough: %s'
                % (place, len(outcome.evicted), parts))
    return 'none needed, the cache is within its budget; %s: %s' % (
        place, parts)


# scrub

def scrub_list(entries):
    """Scrub queue entries (entries.Entry) as a table, in their order."""
    if not entries:
        return [EMPTY_SCRUB_QUEUE]
    rows = [('ID', 'PATH', 'KIND', 'SIZE', 'STATE', 'QUEUED AT',
             'ATTEMPTS', 'LAST ERROR')]
    rows.extend((str(e.id), e.path, e.kind, fmt.mib(e.size), e.state,
                 fmt.utc(e.queued_at), str(e.attempts), e.last_error or '')
                for e in entries)
    return table(rows)


def drained(result):
    """The line for a drain of the scrub queue (a queue.DrainResult)."""
    return ('Drained %d entries, %s reclaimed; %d failed and will be '
            'retried; %d parked.' % (result.drained,
                                     fmt.mib(result.bytes_reclaimed),
                                     result.failed, result.parked))


def restored(entry):
    return 'Restored entry %d: %s' % (entry.id, entry.path)


def downloaded_again(entry, result):
    """A drained entry restored from Glance (a downloads.PrecacheResult)."""
    return 'Restored entry %d from Glance: %s' % (entry.id, result.summary())


def queued_again(entry):
    return 'Queued entry %d again: %s' % (entry.id, entry.path)


# precache

def download_progress(image_id, done, total, rate):
    """One download's bytes so far of ``total``, at ``rate`` bytes/s."""
    return '%s: %s of %s (%d%%), %s/s' % (
        image_id, fmt.mib(done), fmt.mib(total), 100 * done // max(total, 1),
        fmt.mib(rate))


# demo create

def demo_host(summary):
    """What ``demo create`` built (a demo.Summary), for a newcomer."""
    lines = [
        '%s the cachekeeper demo host in %s (%.1f s).' % (
            'Rebuilt' if summary.rebuilt else 'Built', summary.path,
            summary.seconds),
        '',
        'Image cache %s (%d entries):' % (
            summary.cache_dir, len(summary.cache_entries)),
    ]
    for entry in summary.cache_entries:
        used_by = demo.users(entry.name)
        lines += [
            '  %-7s %-10s %s' % (_demo_age(entry.age), entry.kind,
                                 entry.name),
            '  %-18s %s; %s' % ('', entry.about,
                                'used by ' + ', '.join(used_by)
                                if used_by else 'unused'),
        ]
    lines += ['', 'Instances in %s (%d):' % (
        summary.instances_path, len(summary.instances))]
    for instance in summary.instances:
        lines.append('  %-9s %s%s' % (
            instance.name, instance.uuid,
            ' (and its _resize directory)'
            if instance.resize_source_disks else ''))
    lines += [
        '',
        'State:  %s' % summary.state_path,
        'Config: %s' % summary.config_file,
        '',
        'Run the daemon on it (Ctrl-C stops it):',
        '  cachekeeper --config-file %s' % summary.config_file,
    ]
    return lines


def _demo_age(age):
    if age is None:
        return '-'
    if age >= 24 * 3600:
        return '%d days' % (age // (24 * 3600))
    if age >= 3600:
        return '%d h' % (age // 3600)
    return '%d min' % (age // 60)
