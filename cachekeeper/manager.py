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

"""One pass over the image cache, as a script: evaluate -> execute ->
bookkeeping.

evaluate: scan, inventory (inspect), plan, the disk-space budget;
execute: touch what is in use, move what may go into the scrub queue (the
cache library's execute, with the queue as its quarantine step);
bookkeeping: the scrub queue, the ledger, the totals, the report file,
the metrics, each best effort. A dry run evaluates, executes dry and
reports, and keeps no books. The pass's drain of the scrub queue follows
execute.

This is the one module that ties the cache library (cachekeeper.cache) to
what lies beside it (scrub, glance, coordination, thrash) and to the
documents (report, status, metrics). It keeps what must outlive one pass:
which warnings were already given, what need not be read again.
"""

import contextlib
import dataclasses
import gc
import os
import time

from oslo_log import log as logging

from cachekeeper.cache import budget
from cachekeeper.cache import domains
from cachekeeper.cache import evidence
from cachekeeper.cache import execute
from cachekeeper.cache import facts
from cachekeeper.cache import inspect
from cachekeeper.cache import inspect_cache
from cachekeeper.cache import inventory
from cachekeeper.cache import plan
from cachekeeper.cache import registry
from cachekeeper.cache import residue
from cachekeeper.cache import scan
from cachekeeper.conf import paths
from cachekeeper import coordination
from cachekeeper.glance import catalog as glance_catalog
from cachekeeper import pins
from cachekeeper import progress as pass_progress
from cachekeeper import report
from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.scrub import queue
from cachekeeper.state import db
from cachekeeper.state import ledger
from cachekeeper.state import totals
from cachekeeper import status
from cachekeeper import thrash

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Evaluation:
    """The facts and verdicts of a pass before anything is carried out."""

    base_files: list
    usage: facts.Usage
    decisions: list
    inventory: inventory.Inventory
    policy: facts.Policy
    catalog: facts.ImageCatalog = None
    # None when the state database could not be read for it.
    budget_outcome: budget.Outcome = None
    # The files found unused that this host may not remove this pass.
    held: tuple = ()


@dataclasses.dataclass
class Eviction:
    """What cachekeeper-manage cache evict did.

    ``files`` are the FileReports of the files it tried to queue (QUEUED
    when they were, or would be in a dry run); ``refused`` maps the names
    it would not queue to why.
    """

    files: list = dataclasses.field(default_factory=list)
    refused: dict = dataclasses.field(default_factory=dict)
    errors: list = dataclasses.field(default_factory=list)


class CacheManager:
    """Runs passes and gives each warning once, when its subject changes.

    ``coordinator`` (a coordination.Coordinator) decides whether
    this process may remove files; without one it may, unless nova's
    storage registry says other hosts share the cache. ``progress`` (a
    progress.PassProgress) is told each step of a pass and each file.
    """

    def __init__(self, conf, scrub_queue, coordinator=None, progress=None):
        self.conf = conf
        self.scrub_queue = scrub_queue
        self.coordinator = coordinator
        self.progress = (pass_progress.PassProgress() if progress is None
                         else progress)
        self._warnings = {}
        # What the running pass could not do with its books (the state
        # database, the scrub queue, the report and metrics files), by
        # what it tried: warned once.
        self._state_problems = {}
        self.images = glance_catalog.ImageService(conf)
        # These survive from pass to pass: unchanged cache entries, disks
        # and instance directories are not read again.
        self._inspection_cache = inspect_cache.InspectionCache(
            scrub_queue.state_db)
        self._inventory_memory = evidence.Memory()
        self._last_scan = {}

    def evaluate(self):
        """Scan, inventory and plan; touch nothing.

        Raises OSError when the cache directory itself cannot be listed.
        """
        directory = paths.cache_dir(self.conf)
        self.progress.step('scan')
        base_files = scan.scan(directory, previous=self._last_scan)
        self._last_scan = {b.name: b for b in base_files}
        self.progress.step('inventory')
        instance_inventory = self._inventory()
        usage = instance_inventory.collect(b.name for b in base_files)
        # Hosts that share the cache and cannot be known hold removals back.
        storage = registry.read(self.conf.instances_path, create_lock=False)
        for doubt in storage.doubts():
            usage.add_doubt(doubt)
        policy = dataclasses.replace(plan.policy_from_conf(self.conf),
                                     pins=tuple(self._pins(usage)))
        self.progress.step('catalog')
        catalog = self.images.catalog(b.name for b in base_files)
        self.progress.step('plan')
        now = time.time()
        decisions = plan.plan(base_files, usage, policy, now, catalog)
        decisions, outcome = self._apply_budget(decisions, usage, now)
        return Evaluation(base_files, usage, decisions, instance_inventory,
                          policy, catalog, outcome)

    def _pins(self, usage):
        """The operator's pins; pins that cannot be read are a doubt.

        A pin only ever keeps a file: while some cannot be read, nothing
        is removed.
        """
        try:
            return pins.read(self.conf, self.scrub_queue.state_db,
                             time.time())
        except pins.PinsError as e:
            source = pins.pins_path(self.conf.instances_path)
            message = str(e)
        except db.StateError as e:
            source, message = self.scrub_queue.state_db.path, str(e)
        usage.add_doubt(facts.Doubt(
            source=source, message='%s; the pins on cache files are unknown'
                                   % message))
        return []

    def _apply_budget(self, decisions, usage, now):
        """Evict what the disk-space budget asks for (see budget)."""
        try:
            history = file_history(self.scrub_queue.state_db)
            waiting = [budget.Waiting(*queued)
                       for queued in self.scrub_queue.queued()]
        except db.StateError as e:
            # Without the ledger a file's last use is unknown: evict nothing.
            LOG.error('Cannot read the state database to apply the '
                      'disk-space budget: %s', e)
            return decisions, None
        return budget.apply(decisions, usage, history,
                            budget.Limits.from_conf(self.conf),
                            self._filesystem(), waiting, now)

    def _filesystem(self):
        """The budget.Filesystem of the cache (None if unknown)."""
        cache = paths.cache_dir(self.conf)
        # A cache nova has not made yet will be made there.
        return status.filesystem_of(
            cache if os.path.isdir(cache) else self.conf.instances_path)

    def _inventory(self):
        # Built per pass so that a reloaded configuration applies.
        return inventory.Inventory(
            self.conf.instances_path, paths.cache_dir(self.conf),
            inspect.Inspector.from_conf(self.conf,
                                        cache=self._inspection_cache),
            excluded=(self.conf.scrubber.quarantine_dir,),
            domain_source=domains.LibvirtSource.from_conf(self.conf),
            memory=self._inventory_memory, progress=self.progress)

    def orphans(self):
        """Match instance directories and libvirt domains.

        Returns the domains.Orphans, or None when [inventory] libvirt_uri
        is not set. Raises domains.DomainsUnavailable when libvirt
        cannot be asked.
        """
        source = domains.LibvirtSource.from_conf(self.conf)
        if source is None:
            return None
        return domains.orphans(self._inventory().instance_directories(),
                               source.domains())

    def run_pass(self, dry_run=False, stop_event=None,
                 trigger=report.TRIGGER_COMMAND):
        """Run one pass; return its report.PassReport.

        A pass evaluates (scan, inventory, plan), executes (touches the
        files in use, queues the unused ones for removal) and keeps the
        books: the scrub queue, the ledger, the totals, the report file,
        the metrics. A dry run evaluates, executes dry and reports: it
        keeps no books. ``stop_event`` ends a pass between two files;
        ``trigger`` (report.TRIGGER_*) is what started it, for its report.
        """
        with _cyclic_gc_paused():
            if dry_run:
                return self._dry_run(stop_event, trigger)
            return self._pass(stop_event, trigger)

    def pressure(self):
        """Check the budget between passes; return (Outcome, new files).

        Cheap enough for every few seconds: the filesystem's usage, and
        the cache as the last pass's scan found it plus the files that
        appeared since (scan.size_since), nothing inspected. The
        budget.Outcome says what is over; the number is of the regular
        files the last pass has not seen.
        """
        size = scan.size_since(paths.cache_dir(self.conf), self._last_scan)
        outcome = budget.measure(budget.Limits.from_conf(self.conf),
                                 size.allocated, size.files,
                                 self._filesystem())
        return outcome, size.new_files

    def _pass(self, stop_event, trigger):
        """evaluate -> execute -> bookkeeping."""
        run = self._begin(dry_run=False, trigger=trigger)
        self._best_effort('Cannot look for files in quarantine without a '
                          'scrub queue entry',
                          self.scrub_queue.adopt_orphans, time.time())
        self.progress.step('registry')
        storage = self._register(run.warnings)
        evaluation = self._evaluate(run)
        if evaluation is not None:
            self.progress.step('bookkeeping')
            # Before this pass queues anything, which would look as if
            # it had come back.
            run.result.comebacks = self._best_effort(
                'Cannot look for removed files that came back',
                self._detect_comebacks, evaluation) or 0
            self._best_effort('Cannot make scrub queue entries due now',
                              self._expedite, evaluation.budget_outcome)
            self.progress.step('coordination')
            self._hold_removals(evaluation, storage, run.warnings)
            outcome = self._execute(run, evaluation, stop_event)
            self.progress.step('bookkeeping')
            self._best_effort('Cannot record file usage in the state '
                              'database',
                              self._record_usage, evaluation, outcome)
            self.progress.step('precache')
            # Never raises: the catalog tells Glance's problems itself.
            self.images.precache_pinned(
                {b.name for b in evaluation.base_files}, stop_event,
                self.progress, operator_pinned=[
                    pin.image_id for pin in evaluation.policy.pins
                    if pin.image_id])
        # Not bookkeeping: a file the queue cannot delete stays on disk, an
        # error of the pass.
        self._drain(run, stop_event)
        self.progress.step('bookkeeping')
        after = self._scan_after()
        self._summarise(run, evaluation, after)
        self._best_effort('Cannot write the pass report into %s'
                          % self.conf.state_path,
                          report.write, run.result, self.conf.state_path)
        self._best_effort('Cannot add the pass to the totals in the state '
                          'database',
                          totals.increase, self.scrub_queue.state_db,
                          reclaimed_bytes=run.removed_bytes,
                          errors=len(run.result.errors))
        if self.conf.metrics_file and after is not None:
            self._best_effort('Cannot write the metrics file %s'
                              % self.conf.metrics_file,
                              self._write_metrics, run.result, after)
        return self._end(run)

    def _dry_run(self, stop_event, trigger):
        """evaluate -> execute (dry) -> report: no bookkeeping."""
        run = self._begin(dry_run=True, trigger=trigger)
        evaluation = self._evaluate(run)
        if evaluation is None:
            after = self._scan_after()
        else:
            self._execute(run, evaluation, stop_event)
            # Nothing changed: the cache is as the pass found it.
            after = evaluation.base_files
        self._summarise(run, evaluation, after)
        return self._end(run)

    def _begin(self, dry_run, trigger):
        """Start a pass with the leftovers of cachekeeper's own writes."""
        run = _Run(dry_run, trigger)
        self._state_problems = {}
        self.progress.step('leftovers')
        leftovers = residue.remove(
            self.conf, time.time(), report.TEMPORARY_PREFIX,
            coordination.file_backend_dir(self.conf.coordination.backend_url),
            dry_run=dry_run)
        run.result.files.extend(leftovers.files)
        run.result.errors.extend(leftovers.errors)
        run.removed_bytes = leftovers.bytes_removed
        return run

    def _evaluate(self, run):
        """evaluate(), or None when the cache cannot be listed (an error)."""
        try:
            return self.evaluate()
        except OSError as e:
            directory = paths.cache_dir(self.conf)
            message = 'cannot read the image cache %s: %s' % (
                directory, e.strerror or e)
            run.result.add_error(directory, message)
            run.warnings[('cache', directory)] = message
            return None

    def _execute(self, run, evaluation, stop_event):
        """Carry out the evaluation, into the report; an ExecuteResult."""
        result = run.result
        self.progress.step('execute')
        outcome = execute.execute(
            evaluation.decisions, evaluation.inventory,
            self.conf.instances_path, evaluation.policy,
            quarantine_into(self.scrub_queue), dry_run=run.dry_run,
            stop_event=stop_event, removal_hold=self.removal_hold,
            progress=self.progress)
        result.files.extend(outcome.files)
        run.removed_bytes += outcome.bytes_removed
        # What could not be read held removals back: a per-file error.
        result.errors.extend(
            {'path': doubt.source,
             'message': 'cannot read %s: %s; files it could use are '
                        'kept' % (doubt.source, doubt.message)}
            for doubt in evaluation.usage.doubts)
        result.errors.extend(outcome.errors)
        result.bytes_queued = outcome.bytes_queued
        result.interrupted = outcome.interrupted
        run.warnings.update(_warnings_of(evaluation, result.errors))
        run.warnings.update(self._deleted_in_glance_warnings(evaluation))
        return outcome

    def _summarise(self, run, evaluation, after):
        """Add the cache ``after`` the pass, the budget and the duration.

        ``after`` are the base files of the cache, None when unknown.
        """
        result = run.result
        if after is not None:
            result.cache = status.cache_usage(after)
        if evaluation is not None and evaluation.budget_outcome is not None:
            result.budget = self._budget_report(
                evaluation, result, after, run.dry_run)
            run.warnings.update(
                self._budget_warnings(evaluation.budget_outcome))
        result.duration_s = time.monotonic() - run.started
        result.finished_at = time.time()

    def _end(self, run):
        """Warn what changed since the last pass; return the report."""
        run.warnings.update((('state', what), message)
                            for what, message in self._state_problems.items())
        self._warn_on_change(run.warnings)
        return run.result

    def _best_effort(self, what, step, *args, **kwargs):
        """Run the bookkeeping ``step(*args, **kwargs)``; its result or None.

        No bookkeeping is worth a failed pass: when the state database, the
        scrub queue or a file a step writes fails it, the pass goes on and
        ``what`` ('Cannot ...') is warned once, with the error, until a
        pass gets through that step again.
        """
        try:
            return step(*args, **kwargs)
        except (OSError, db.StateError, scrub_entries.ScrubError) as e:
            self._state_problems[what] = '%s: %s' % (what, e)
            return None

    def _detect_comebacks(self, evaluation):
        """Count and report removed files that came back; return how many."""
        comebacks = thrash.detect(
            self.scrub_queue.state_db, evaluation.base_files,
            time.time(), self.conf.image_cache.thrash_window_seconds)
        for comeback in comebacks:
            # Each comeback is an event of its own, reported once.
            LOG.warning('%s', comeback.warning())
        return len(comebacks)

    def _expedite(self, outcome):
        """Make the queued files the budget needs deleted due now."""
        if outcome is not None and outcome.expedited:
            self.scrub_queue.expedite(outcome.expedited, time.time())

    def _hold_removals(self, evaluation, storage, warnings):
        """Keep the removals this host may not do (see _pass_hold)."""
        hold = self._pass_hold(storage, warnings)
        if hold is not None:
            evaluation.decisions, evaluation.held = plan.hold_removals(
                evaluation.decisions, hold)

    def _record_usage(self, evaluation, outcome):
        """Remember when each file was last in use and first unused.

        And how many instances use it, each known by the directory of the
        disks or metadata that name the file.
        """
        users = {}
        for f in outcome.files:
            if f.verdict == facts.IN_USE:
                name = os.path.basename(f.path)
                # A file found in use only by the re-check inside nova's
                # lock (a new instance, a running guest) has no reference
                # in the evaluation: one user.
                users[name] = len({
                    os.path.dirname(reference.source) for reference
                    in evaluation.usage.references_to(name)}) or 1
        held = set(evaluation.held)
        unused = [f.path for f in outcome.files
                  if f.verdict in (facts.TOO_YOUNG, facts.QUEUED) or
                  os.path.basename(f.path) in held]
        ledger.record_usage(
            self.scrub_queue.state_db, users,
            [os.path.basename(p) for p in unused], time.time(),
            present_names=[b.name for b in evaluation.base_files])
        ledger.record_images(self.scrub_queue.state_db, image_ids(
            evaluation.usage))

    def _drain(self, run, stop_event):
        """Drain the scrub queue into the report (see drain)."""
        drained = self.drain(stop_event=stop_event)
        run.result.bytes_reclaimed = (drained.bytes_reclaimed +
                                      run.removed_bytes)
        run.result.parked = drained.parked
        run.result.errors.extend(drained.errors)

    def _write_metrics(self, result, base_files):
        """Write [DEFAULT] metrics_file for the cache of ``base_files``."""
        # Only now: prometheus_client is a megabyte of the daemon's memory.
        from cachekeeper import metrics
        metrics.write(self.conf.metrics_file, status.collect(
            self.conf, self.scrub_queue, last_pass=result.to_dict(),
            base_files=base_files))

    def _scan_after(self):
        try:
            return scan.scan(paths.cache_dir(self.conf),
                             previous=self._last_scan)
        except OSError:
            # The pass has reported the unreadable cache already.
            return None

    def _budget_report(self, evaluation, result, base_files_after,
                       dry_run):
        """The budget part of the pass report (see report.PassReport).

        ``base_files_after`` are the cache's base files after the pass,
        None when unknown.
        """
        outcome = evaluation.budget_outcome
        limits = outcome.limits
        gone = {os.path.basename(f.path) for f in result.files
                if f.verdict == facts.QUEUED}
        evicted = [b for b in evaluation.base_files
                   if b.name in outcome.evicted and b.name in gone]
        before = outcome.filesystem
        after = None if dry_run else self._filesystem()
        cache_after = (result.cache['allocated_bytes'] if result.cache
                       else outcome.cache_bytes)
        files_after = (outcome.files if base_files_after is None else
                       sum(b.is_regular for b in base_files_after))
        within = (not budget.measure(limits, cache_after, files_after,
                                     after).over and not dry_run)
        return {
            'max_cache_bytes': limits.max_cache_bytes,
            'max_cache_files': limits.max_cache_files,
            'high_watermark_percent': limits.high_percent,
            'low_watermark_percent': limits.low_percent,
            'over_size': outcome.over_size,
            'over_files': outcome.over_files,
            'over_watermark': outcome.over_watermark,
            'cache_bytes_before': outcome.cache_bytes,
            'cache_bytes_after': cache_after,
            'cache_files_before': outcome.files,
            'cache_files_after': files_after,
            'filesystem_percent_before': (
                None if before is None else round(before.percent, 1)),
            'filesystem_percent_after': (
                None if after is None else round(after.percent, 1)),
            'evicted_files': len(evicted),
            'evicted_bytes': sum(b.allocated for b in evicted),
            'expedited_entries': len(outcome.expedited),
            'within': within,
        }

    def _budget_warnings(self, outcome):
        """Warn once while the budget cannot be met."""
        key = ('budget', paths.cache_dir(self.conf))
        message = outcome.shortfall_message()
        if message is None:
            return {}
        # The numbers move from pass to pass; the condition is what counts.
        return {key: self._warnings.get(key, message)}

    def removal_hold(self):
        """Why this process may not remove files now, or None if it may."""
        if self.coordinator is None:
            return None
        return self.coordinator.removal_hold()

    def _register(self, warnings):
        """Record this host in nova's storage registry; return a Registry."""
        instances_path = self.conf.instances_path
        try:
            return registry.register(instances_path, self.conf.host,
                                     time.time())
        except OSError as e:
            path = registry.registry_path(instances_path)
            warnings[('registry', path)] = (
                'Cannot register host %s in %s: %s; nova on the hosts that '
                'share it may not count this host\'s instances'
                % (self.conf.host, path, e.strerror or e))
            return registry.read(instances_path)

    def _pass_hold(self, storage, warnings):
        """Why this pass may not remove, or None; ``storage`` a Registry."""
        others = storage.other_hosts(self.conf.host)
        if self.coordinator is None:
            if others:
                return ('the image cache is shared with %s and this pass is '
                        'not coordinated' % ', '.join(others))
            return None
        # A one-off pass starts its coordinator only now, when it knows
        # what it would remove.
        self.coordinator.start()
        self.coordinator.wait_for_first_beat()
        hold = self.coordinator.removal_hold()
        problem = self.coordinator.reach_problem() if others else None
        if hold is None and problem is not None:
            hold = ('the image cache is shared with %s, but [coordination] '
                    'backend_url cannot keep them from removing at the same '
                    'time: %s' % (', '.join(others), problem))
            warnings[('coordination', paths.cache_dir(self.conf))] = (
                'Image cache %s: %s; no removal' % (paths.cache_dir(self.conf),
                                                     hold))
        return hold

    def evict(self, names, reason, dry_run=False):
        """Queue the cache files ``names`` for removal now; an Eviction.

        Through the steps of a pass: evaluate, then the executor, under
        nova's lock and after its re-check, into the scrub queue (where
        the file can be restored until it is drained). Only the minimum
        age is waived: a file in use, pinned, that something unreadable
        could use, or that is no image cache file is refused, and so is
        every file when this host may not remove now.
        """
        evaluation = self.evaluate()
        wanted = set(names)
        eviction = Eviction()
        found = {d.base_file.name: d for d in evaluation.decisions
                 if d.base_file.name in wanted}
        eviction.refused.update((name, 'not in the image cache')
                                for name in wanted - set(found))
        text = 'evicted by cachekeeper-manage cache evict' + (
            ': %s' % reason if reason else '')
        chosen = []
        for name, decision in sorted(found.items()):
            refusal = _eviction_refusal(decision, evaluation.usage)
            if refusal is None:
                chosen.append(dataclasses.replace(
                    decision, verdict=facts.REMOVABLE, min_age=0,
                    reason=text))
            else:
                eviction.refused[name] = refusal
        hold, removal_hold = (None, None) if dry_run or not chosen else (
            self._eviction_hold())
        if hold is not None:
            eviction.refused.update((d.base_file.name, 'not removed: %s'
                                     % hold) for d in chosen)
            return eviction
        outcome = execute.execute(
            chosen, evaluation.inventory, self.conf.instances_path,
            evaluation.policy, quarantine_into(self.scrub_queue),
            dry_run=dry_run, removal_hold=removal_hold)
        eviction.files, eviction.errors = outcome.files, outcome.errors
        return eviction

    def _eviction_hold(self):
        """(why this host may not evict now or None, what to ask again
        inside nova's lock).
        """
        leader = coordination.read_leader(self.conf.instances_path,
                                          paths.cache_dir(self.conf))
        if leader is not None and leader.host == self.conf.host:
            # This host's daemon leads: it drains the queue the files go
            # into.
            return None, None
        storage = registry.read(self.conf.instances_path, create_lock=False)
        return self._pass_hold(storage, {}), self.removal_hold

    def drain(self, ignore_delay=False, stop_event=None):
        """Delete the quarantined files that are due; a DrainResult.

        Only the leader of a shared cache drains.
        """
        self.progress.step('drain')
        hold = self.removal_hold()
        if hold is not None:
            LOG.debug('Scrub queue not drained: %s', hold)
            return queue.DrainResult()
        try:
            return self.scrub_queue.drain(
                time.time(), self.conf.scrubber.scrub_delay,
                self.conf.scrubber.max_attempts, ignore_delay=ignore_delay,
                stop_event=stop_event, progress=self.progress)
        except db.StateError as e:
            result = queue.DrainResult()
            result.errors.append({'path': self.conf.state_path,
                                  'message': 'cannot drain the scrub queue: '
                                             '%s' % e})
            return result

    def _deleted_in_glance_warnings(self, evaluation):
        """Files in use whose image Glance no longer has, keyed by path.

        Without a current listing nothing is known to be deleted: the
        files reported before stay reported while they are in use.
        """
        in_use = [d.base_file for d in evaluation.decisions
                  if d.verdict == facts.IN_USE]
        catalog = evaluation.catalog
        if catalog is not None and catalog.listed_at is None:
            in_use_paths = {b.path for b in in_use}
            return {key: message for key, message in self._warnings.items()
                    if key[0] == 'deleted_in_glance' and
                    key[1] in in_use_paths}
        return {('deleted_in_glance', b.path): (
                    'Image cache file %s is in use, but its image no longer '
                    'exists in Glance; kept' % b.path)
                for b in in_use if plan.deleted_in_glance(b, catalog)}

    def _warn_on_change(self, warnings):
        for key, message in sorted(warnings.items()):
            if self._warnings.get(key) != message:
                LOG.warning('%s', message)
        for key in sorted(set(self._warnings) - set(warnings)):
            LOG.info('Resolved: %s', self._warnings[key])
        self._warnings = warnings


class _Run:
    """A pass under way: its report, and what the end of the pass needs."""

    def __init__(self, dry_run, trigger):
        self.started = time.monotonic()
        self.result = report.PassReport(dry_run=dry_run, trigger=trigger,
                                        started_at=time.time())
        # What the pass deleted itself (download residue, its own
        # leftovers), reclaimed on top of what draining the queue frees.
        self.removed_bytes = 0
        # The conditions to warn about, by subject (see _warn_on_change).
        self.warnings = {}

    @property
    def dry_run(self):
        return self.result.dry_run


def file_history(state_db):
    """{name: facts.FileHistory} of the files the ledger knows.

    Raises db.StateError.
    """
    return {name: facts.FileHistory(
                entry.last_seen_in_use, entry.first_seen_in_use, entry.uses,
                entry.comebacks)
            for name, entry in ledger.entries(state_db).items()}


def image_ids(usage):
    """{cache file name: Glance image id} as nova's metadata names them."""
    return {reference.name: reference.image_id
            for references in usage.references.values()
            for reference in references if reference.image_id}


def _eviction_refusal(decision, usage):
    """Why cache evict may not queue the file of ``decision``, or None."""
    base_file = decision.base_file
    if decision.verdict in (facts.IN_USE, facts.PINNED, facts.IGNORED):
        return '%s: %s' % (decision.verdict.replace('_', ' '),
                           decision.reason)
    if base_file.kind == facts.RESIDUE:
        return 'download residue, not an image: passes remove it'
    doubts = usage.doubts_about(base_file.name)
    if doubts:
        return plan.doubts_reason(doubts)
    return None


def quarantine_into(scrub_queue):
    """The quarantine step of execute.execute: into ``scrub_queue``.

    The queue's refusals become the executor's: a file touched meanwhile
    is back in the cache (execute.Retouched); any other failure leaves it
    there too and is an error (execute.QuarantineFailed).
    """
    def quarantine(base_file, reason, now, drain_at):
        try:
            entry = scrub_queue.quarantine(base_file, reason, now,
                                           drain_at=drain_at)
        except queue.TouchedMeanwhile as e:
            raise execute.Retouched(str(e)) from e
        except (scrub_entries.ScrubError, db.StateError) as e:
            raise execute.QuarantineFailed(str(e)) from e
        return entry.allocated
    return quarantine


@contextlib.contextmanager
def _cyclic_gc_paused():
    """Pause the cyclic garbage collector for the duration of a pass.

    A pass makes objects for every cache file and frees them by reference
    counting; meanwhile the collector would walk all the objects kept from
    pass to pass again and again, a fifth of a warm pass. Cycles made
    during the pass are left to the collections after it.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _warnings_of(evaluation, errors):
    """The conditions an operator should hear about, keyed by subject."""
    warnings = {}
    for base_file in evaluation.base_files:
        if base_file.kind == facts.FOREIGN:
            warnings[('foreign', base_file.path)] = (
                'Unexpected entry in the image cache, never removed: %s (%s)'
                % (base_file.path,
                   'unrecognised name' if base_file.is_regular
                   else base_file.file_type))
    for error in errors:
        warnings[('error', error['path'])] = error['message']
    return warnings
