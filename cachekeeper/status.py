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

"""The state of the image cache, for ``cache status`` and the metrics.

collect() reads it from the disk (a fresh scan of the cache, statvfs of its
filesystem), the last pass report and the state database. Both
``cachekeeper-manage cache status --json`` and the metrics file are made
from its document, so they cannot disagree. Its keys are a stable
contract: new keys may be added, none renamed or removed.
"""

import os
import time

from cachekeeper.cache import budget
from cachekeeper.cache import facts
from cachekeeper.cache import scan
from cachekeeper import coordination
from cachekeeper import fmt
from cachekeeper import pins
from cachekeeper import report
from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.state import totals

# A last pass older than this many intervals means passes stopped.
OVERDUE_INTERVALS = 2
# ... and older than this many, for a monitoring probe, that the cache is
# no longer looked after (cache status --check).
CRITICAL_INTERVALS = 3

# The exit statuses of cache status --check, as monitoring plugins use
# them (Nagios, Sensu, Icinga).
CHECK_OK = 0
CHECK_WARNING = 1
CHECK_CRITICAL = 2


def cache_usage(base_files):
    """Count the files and bytes of a scan of the cache, in all and by kind.

    Bytes are those of regular files: apparent (st_size) and allocated
    (st_blocks); other entries are counted as files only.
    """
    by_kind = {}
    for base_file in base_files:
        counts = by_kind.get(base_file.kind)
        if counts is None:
            counts = by_kind[base_file.kind] = _no_bytes()
        counts['files'] += 1
        if base_file.is_regular:
            counts['apparent_bytes'] += base_file.size
            counts['allocated_bytes'] += base_file.allocated
    usage = _no_bytes()
    for counts in by_kind.values():
        for key in usage:
            usage[key] += counts[key]
    usage['kinds'] = {kind: by_kind[kind]
                      for kind in facts.KINDS if kind in by_kind}
    return usage


def _no_bytes():
    return {'files': 0, 'apparent_bytes': 0, 'allocated_bytes': 0}


def filesystem_of(directory):
    """Return the budget.Filesystem holding ``directory``, or None."""
    try:
        return budget.Filesystem.from_statvfs(os.statvfs(directory))
    except OSError:
        return None


def collect(conf, scrub_queue, last_pass=None, base_files=None, now=None):
    """Return the status document (a dict of plain values).

    ``last_pass`` is a pass report as a dict (read from state_path when
    None); ``base_files`` a scan of the cache just made (scanned when
    None). Raises OSError when the cache cannot be listed, ValueError when
    the report is unreadable and db.StateError when the state database is.
    """
    now = time.time() if now is None else now
    cache_dir = scrub_queue.cache_dir
    if base_files is None:
        base_files = scan.scan(cache_dir)
    if last_pass is None:
        last_pass = report.read(conf.state_path)
    limits = budget.Limits.from_conf(conf)
    cache = dict(cache_usage(base_files), path=cache_dir,
                 max_bytes=limits.max_cache_bytes)
    # A cache nova has not made yet will be made there.
    filesystem = filesystem_of(cache_dir if os.path.isdir(cache_dir)
                               else conf.instances_path)
    counts = scrub_queue.counts()
    waiting = scrub_queue.entries((scrub_entries.QUEUED,
                                   scrub_entries.PARKED))
    running = scrub_queue.totals()
    document = {
        'schema_version': report.SCHEMA_VERSION,
        'cache': cache,
        'filesystem': _filesystem(filesystem, limits, cache_dir),
        'last_pass': _last_pass(last_pass),
        'queue': {
            'entries': {state: counts.get(state, 0)
                        for state in scrub_entries.ACTIVE_STATES +
                        scrub_entries.FINAL_STATES},
            'quarantined_bytes': sum(e.allocated for e in waiting),
            'parked': [{'id': e.id, 'path': e.path,
                        'last_error': e.last_error}
                       for e in waiting if e.state == scrub_entries.PARKED],
        },
        'totals': {
            'reclaimed_bytes': running[totals.RECLAIMED_BYTES],
            'errors': running[totals.ERRORS],
            'comebacks': running[totals.COMEBACKS],
        },
        'thrash_window_seconds': conf.image_cache.thrash_window_seconds,
    }
    document['coordination'] = coordination.status(conf, cache_dir, now)
    document['warnings'] = _warnings(document, limits, filesystem, conf,
                                     now)
    try:
        document['pins'] = [pin.to_dict() for pin in
                            pins.read(conf, scrub_queue.state_db, now)]
    except pins.PinsError as e:
        document['pins'] = None
        document['warnings'].append(
            'cannot read the shared pins %s: %s; no removal until they can '
            'be read' % (pins.pins_path(conf.instances_path), e))
    document['warnings'].extend(coordination.status_warnings(
        document['coordination']))
    return document


def _filesystem(filesystem, limits, path):
    if filesystem is None:
        return None
    return {
        'path': path,
        'size_bytes': filesystem.size,
        'used_bytes': filesystem.used,
        'available_bytes': filesystem.available,
        'used_percent': round(filesystem.percent, 1),
        'high_watermark_percent': limits.high_percent,
        'low_watermark_percent': limits.low_percent,
        'over_high_watermark': budget.excess(limits, 0, filesystem)[1] > 0,
    }


def _last_pass(document):
    """Summarise a pass report: files and bytes by kind and verdict."""
    if document is None:
        return None
    files = {}
    kinds = {}
    verdicts = {}
    for entry in document['files']:
        for table, key in ((files.setdefault(entry['kind'], {}),
                            entry['verdict']),
                           (kinds, entry['kind']),
                           (verdicts, entry['verdict'])):
            counted = table.setdefault(key, {'files': 0, 'bytes': 0})
            counted['files'] += 1
            counted['bytes'] += entry['size']
    return {
        'started_at': document.get('started_at'),
        'finished_at': document.get('finished_at'),
        'duration_s': document.get('duration_s'),
        'result': document.get('result'),
        'errors': len(document.get('errors', ())),
        'bytes_queued': document.get('bytes_queued'),
        'bytes_reclaimed': document.get('bytes_reclaimed'),
        'comebacks': document.get('comebacks', 0),
        'budget': document.get('budget'),
        'files': files,
        'kinds': kinds,
        'verdicts': verdicts,
    }


def _warnings(document, limits, filesystem, conf, now):
    warnings = []
    cache = document['cache']
    if limits.max_cache_bytes and cache['allocated_bytes'] > (
            limits.max_cache_bytes):
        warnings.append('the image cache allocates %s, more than its '
                        '[image_cache] max_cache_size_mb of %s' % (
                            fmt.size(cache['allocated_bytes']),
                            fmt.size(limits.max_cache_bytes)))
    if document['filesystem'] and document['filesystem'][
            'over_high_watermark']:
        warnings.append('the filesystem of the image cache is %.1f%% full, '
                        'over its high watermark of %d%%' % (
                            filesystem.percent, limits.high_percent))
    parked = document['queue']['entries'][scrub_entries.PARKED]
    if parked:
        warnings.append('%d scrub queue entries are parked: see '
                        'cachekeeper-manage scrub list' % parked)
    last_pass = document['last_pass']
    interval = conf.image_cache.manager_interval
    if last_pass is None:
        warnings.append('no pass has written a report into %s yet'
                        % conf.state_path)
        return warnings
    if last_pass['errors']:
        warnings.append('the last pass had %d errors: see %s' % (
            last_pass['errors'],
            os.path.join(conf.state_path, report.REPORT_FILE)))
    if last_pass['comebacks']:
        warnings.append('%d files removed by passes came back within '
                        '[image_cache] thrash_window_seconds in the last '
                        'pass: see the log' % last_pass['comebacks'])
    overdue = _overdue(last_pass, interval, now, OVERDUE_INTERVALS)
    if overdue:
        warnings.append(overdue + ': is the daemon running?')
    return warnings


def _overdue(last_pass, interval, now, intervals):
    """Say that the last pass is older than ``intervals``, or None."""
    finished = last_pass['finished_at']
    if (finished is None or interval <= 0 or
            now - finished <= intervals * interval):
        return None
    return 'the last pass finished %s ago, more than %d intervals of %s' % (
        fmt.duration(now - finished), intervals, fmt.duration(interval))


def orphans_document(found=None, error=None):
    """The orphans part of the document from a domains.Orphans or an error.

    None (libvirt_uri not set) when there is neither.
    """
    if found is None and error is None:
        return None
    return {
        'error': error,
        'directories': list(found.directories) if found else [],
        'missing_disks': [{'domain': d.domain, 'role': d.role,
                           'path': d.path}
                          for d in (found.missing_disks if found else ())],
    }


def add_host_checks(document, nova, orphans):
    """Add nova's manager_interval and the orphans, with their warnings.

    ``nova`` comes from novaconf.manager_interval, ``orphans`` from
    orphans_document.
    """
    document['nova'] = nova
    document['orphans'] = orphans
    warnings = document['warnings']
    warning = nova_warning(nova)
    if warning:
        warnings.append(warning)
    if nova is not None and nova['error']:
        warnings.append(nova['error'])
    if orphans is None:
        return document
    if orphans['error']:
        warnings.append('cannot ask libvirt for its domains: %s'
                        % orphans['error'])
    if orphans['directories']:
        warnings.append('instance directories no defined domain uses: %s'
                        % ', '.join(orphans['directories']))
    for disk in orphans['missing_disks']:
        warnings.append('libvirt domain %s: its %s %s does not exist'
                        % (disk['domain'], disk['role'], disk['path']))
    return document


def nova_warning(nova):
    """The warning about nova's image cache manager, or None."""
    if nova is None or nova['error'] or nova['manager_interval'] == -1:
        return None
    where = nova['source'] or "nova's default; %s does not set it" % (
        ', '.join(nova['config_files']))
    return ("nova's own image cache manager also runs, every %d s (%s): set "
            "[image_cache] manager_interval = -1 in nova.conf so that only "
            "cachekeeper ages the cache" % (nova['manager_interval'], where))


def check(document, interval, now):
    """(CHECK_* status, its reasons) of a status document, for a probe.

    Critical: no pass report, a last pass that finished with errors or
    was interrupted, or one older than CRITICAL_INTERVALS of
    ``interval`` (cachekeeper's manager_interval); a warning: any other
    warning of the document (nova's own manager runs, the registry cannot
    be read, parked entries, thrash...). The reasons are lines of text.
    """
    last_pass = document['last_pass']
    critical = []
    if last_pass is None:
        critical.append('no pass report yet')
    else:
        if last_pass['result'] != report.RESULT_DONE:
            critical.append('the last pass %s (%d errors)' % (
                last_pass['result'], last_pass['errors']))
        overdue = _overdue(last_pass, interval, now, CRITICAL_INTERVALS)
        if overdue:
            critical.append(overdue)
    if critical:
        return CHECK_CRITICAL, critical
    if document['warnings']:
        return CHECK_WARNING, list(document['warnings'])
    return CHECK_OK, []
