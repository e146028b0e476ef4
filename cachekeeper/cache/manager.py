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

"""One pass over the image cache, from scan to report.

scan -> inventory (inspect) -> plan -> execute -> report. The manager keeps
what must outlive one pass: which warnings were already given.
"""

import contextlib
import dataclasses
import gc
import os
import time

from oslo_log import log as logging

from cachekeeper.cache import budget
from cachekeeper.cache import execute
from cachekeeper.cache import domains
from cachekeeper.cache import evidence
from cachekeeper.cache import facts
from cachekeeper.cache import inspect
from cachekeeper.cache import inspect_cache
from cachekeeper.cache import inventory
from cachekeeper.cache import plan
from cachekeeper.cache import registry
from cachekeeper.cache import residue
from cachekeeper.cache import scan
from cachekeeper import coordination
from cachekeeper import glance
from cachekeeper import report
from cachekeeper import status
from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.scrub import queue
from cachekeeper.state import db
from cachekeeper.state import ledger
from cachekeeper.state import totals
from cachekeeper import thrash

LOG = logging.getLogger(__name__)


def cache_dir(conf):
    return os.path.join(conf.instances_path,
                        conf.image_cache.subdirectory_name)


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


class CacheManager:
    """Runs passes and gives each warning once, when its subject changes.

    ``coordinator`` (a coordination.Coordinator) decides whether
    this process may remove files; without one it may, unless nova's
    storage registry says other hosts share the cache.
    """

    def __init__(self, conf, scrub_queue, coordinator=None):
        self.conf = conf
        self.scrub_queue = scrub_queue
        self.coordinator = coordinator
        self._warnings = {}
        # What the running pass could not do with its state (the state
        # database, the report), by what it tried: warned once.
        self._state_problems = {}
        self.images = glance.ImageService(conf)
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
        directory = cache_dir(self.conf)
        base_files = scan.scan(directory, previous=self._last_scan)
        self._last_scan = {b.name: b for b in base_files}
        instance_inventory = self._inventory()
        usage = instance_inventory.collect(b.name for b in base_files)
        # Hosts that share the cache and cannot be known hold removals back.
        storage = registry.read(self.conf.instances_path, create_lock=False)
        for doubt in storage.doubts():
            usage.add_doubt(doubt)
        policy = plan.policy_from_conf(self.conf)
        catalog = self.images.catalog(b.name for b in base_files)
        now = time.time()
        decisions = plan.plan(base_files, usage, policy, now, catalog)
        decisions, outcome = self._apply_budget(decisions, usage, now)
        return Evaluation(base_files, usage, decisions, instance_inventory,
                          policy, catalog, outcome)

    def _apply_budget(self, decisions, usage, now):
        """Evict what the disk-space budget asks for (see budget)."""
        try:
            last_used = ledger.last_uses(self.scrub_queue.state_db)
            waiting = [budget.Waiting(*queued)
                       for queued in self.scrub_queue.queued()]
        except db.StateError as e:
            # Without the ledger a file's last use is unknown: evict nothing.
            LOG.error('Cannot read the state database to apply the '
                      'disk-space budget: %s', e)
            return decisions, None
        return budget.apply(decisions, usage, last_used,
                            budget.Limits.from_conf(self.conf),
                            self._filesystem(), waiting, now)

    def _filesystem(self):
        """The budget.Filesystem of the cache (None if unknown)."""
        cache = cache_dir(self.conf)
        # A cache nova has not made yet will be made there.
        return status.filesystem_of(
            cache if os.path.isdir(cache) else self.conf.instances_path)

    def _inventory(self):
        # Built per pass so that a reloaded configuration applies.
        return inventory.Inventory(
            self.conf.instances_path, cache_dir(self.conf),
            inspect.Inspector.from_conf(self.conf,
                                        cache=self._inspection_cache),
            excluded=(self.conf.scrubber.quarantine_dir,),
            domain_source=domains.LibvirtSource.from_conf(self.conf),
            memory=self._inventory_memory)

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

    def run_pass(self, dry_run=False, stop_event=None):
        with _cyclic_gc_paused():
            return self._run_pass(dry_run, stop_event)

    def _run_pass(self, dry_run, stop_event):
        started = time.monotonic()
        result = report.PassReport(dry_run=dry_run, started_at=time.time())
        warnings = {}
        self._state_problems = {}
        leftovers = residue.remove(
            self.conf, time.time(), report.TEMPORARY_PREFIX,
            coordination.file_backend_dir(self.conf.coordination.backend_url),
            dry_run=dry_run)
        result.files.extend(leftovers.files)
        result.errors.extend(leftovers.errors)
        removed_bytes = leftovers.bytes_removed
        evaluation = None
        if not dry_run:
            self._adopt_orphans()
        storage = None if dry_run else self._register(warnings)
        try:
            evaluation = self.evaluate()
        except OSError as e:
            message = 'cannot read the image cache %s: %s' % (
                cache_dir(self.conf), e.strerror or e)
            result.add_error(cache_dir(self.conf), message)
            warnings[('cache', cache_dir(self.conf))] = message
        else:
            if not dry_run:
                result.comebacks = self._detect_comebacks(evaluation)
                self._expedite(evaluation.budget_outcome)
            hold = None if dry_run else self._pass_hold(storage, warnings)
            if hold is not None:
                evaluation.decisions, evaluation.held = plan.hold_removals(
                    evaluation.decisions, hold)
            outcome = execute.execute(
                evaluation.decisions, evaluation.inventory,
                self.conf.instances_path, evaluation.policy,
                self.scrub_queue, dry_run=dry_run, stop_event=stop_event,
                removal_hold=self.removal_hold)
            result.files.extend(outcome.files)
            removed_bytes += outcome.bytes_removed
            # What could not be read held removals back: a per-file error.
            result.errors.extend(
                {'path': doubt.source,
                 'message': 'cannot read %s: %s; files it could use are '
                            'kept' % (doubt.source, doubt.message)}
                for doubt in evaluation.usage.doubts)
            result.errors.extend(outcome.errors)
            result.bytes_queued = outcome.bytes_queued
            result.interrupted = outcome.interrupted
            if not dry_run:
                self._record_usage(evaluation, outcome)
            warnings.update(_warnings_of(evaluation, result.errors))
            warnings.update(self._deleted_in_glance_warnings(evaluation))
            if not dry_run:
                self.images.precache_pinned(
                    {b.name for b in evaluation.base_files}, stop_event)
        if not dry_run:
            drained = self.drain(stop_event=stop_event)
            result.bytes_reclaimed = drained.bytes_reclaimed + removed_bytes
            result.parked = drained.parked
            result.errors.extend(drained.errors)
        # A dry run changed nothing: the cache is as the pass found it.
        after = (evaluation.base_files if dry_run and evaluation is not None
                 else self._scan_after())
        if after is not None:
            result.cache = status.cache_usage(after)
        if evaluation is not None and evaluation.budget_outcome is not None:
            result.budget = self._budget_report(
                evaluation, result, dry_run)
            warnings.update(self._budget_warnings(evaluation.budget_outcome))
        result.duration_s = time.monotonic() - started
        result.finished_at = time.time()
        if not dry_run:
            self._write_report(result)
            self._add_to_totals(result, removed_bytes)
            warnings.update(self._write_metrics(result, after))
        warnings.update((('state', what), message)
                        for what, message in self._state_problems.items())
        self._warn_on_change(warnings)
        return result

    def _state_problem(self, what, error):
        """Note that ``what`` failed: told once, not at every pass."""
        self._state_problems[what] = '%s: %s' % (what, error)

    def _adopt_orphans(self):
        try:
            self.scrub_queue.adopt_orphans(time.time())
        except (OSError, db.StateError, scrub_entries.ScrubError) as e:
            self._state_problem('Cannot look for files in quarantine '
                                'without a scrub queue entry', e)

    def _detect_comebacks(self, evaluation):
        """Count and report removed files that came back; return how many."""
        try:
            comebacks = thrash.detect(
                self.scrub_queue.state_db, evaluation.base_files,
                time.time(), self.conf.image_cache.thrash_window_seconds)
        except db.StateError as e:
            self._state_problem('Cannot look for removed files that came '
                                'back', e)
            return 0
        for comeback in comebacks:
            # Each comeback is an event of its own, reported once.
            LOG.warning('%s', comeback.warning())
        return len(comebacks)

    def _expedite(self, outcome):
        """Make the queued files the budget needs deleted due now."""
        if outcome is None or not outcome.expedited:
            return
        try:
            self.scrub_queue.expedite(outcome.expedited, time.time())
        except db.StateError as e:
            self._state_problem('Cannot make scrub queue entries due now',
                                e)

    def _scan_after(self):
        try:
            return scan.scan(cache_dir(self.conf), previous=self._last_scan)
        except OSError:
            # The pass has reported the unreadable cache already.
            return None

    def _budget_report(self, evaluation, result, dry_run):
        """The budget part of the pass report (see report.PassReport)."""
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
        within = (budget.excess(limits, cache_after, after) == (0, 0)
                  and not dry_run)
        return {
            'max_cache_bytes': limits.max_cache_bytes,
            'high_watermark_percent': limits.high_percent,
            'low_watermark_percent': limits.low_percent,
            'over_size': outcome.over_size,
            'over_watermark': outcome.over_watermark,
            'cache_bytes_before': outcome.cache_bytes,
            'cache_bytes_after': cache_after,
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
        key = ('budget', cache_dir(self.conf))
        message = outcome.shortfall_message()
        if message is None:
            return {}
        # The numbers move from pass to pass; the condition is what counts.
        return {key: self._warnings.get(key, message)}

    def _add_to_totals(self, result, removed_bytes):
        try:
            totals.increase(self.scrub_queue.state_db,
                            reclaimed_bytes=removed_bytes,
                            errors=len(result.errors))
        except db.StateError as e:
            self._state_problem('Cannot add the pass to the totals in the '
                                'state database', e)

    def _write_metrics(self, result, base_files):
        """Write the metrics file if configured; return warnings."""
        path = self.conf.metrics_file
        if not path or base_files is None:
            return {}
        # Only now: prometheus_client is a megabyte of the daemon's memory.
        from cachekeeper import metrics
        try:
            metrics.write(path, status.collect(
                self.conf, self.scrub_queue, last_pass=result.to_dict(),
                base_files=base_files))
        except (OSError, db.StateError) as e:
            return {('metrics', path): 'Cannot write the metrics file %s: %s'
                                       % (path, e)}
        return {}

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
            warnings[('coordination', cache_dir(self.conf))] = (
                'Image cache %s: %s; no removal' % (cache_dir(self.conf),
                                                     hold))
        return hold

    def drain(self, ignore_delay=False, stop_event=None):
        """Delete the quarantined files that are due; a DrainResult.

        Only the leader of a shared cache drains.
        """
        hold = self.removal_hold()
        if hold is not None:
            LOG.debug('Scrub queue not drained: %s', hold)
            return queue.DrainResult()
        try:
            return self.scrub_queue.drain(
                time.time(), self.conf.scrubber.scrub_delay,
                self.conf.scrubber.max_attempts, ignore_delay=ignore_delay,
                stop_event=stop_event)
        except db.StateError as e:
            result = queue.DrainResult()
            result.errors.append({'path': self.conf.state_path,
                                  'message': 'cannot drain the scrub queue: '
                                             '%s' % e})
            return result

    def _record_usage(self, evaluation, outcome):
        """Remember when each file was last in use and first unused."""
        in_use = [f.path for f in outcome.files if f.verdict == facts.IN_USE]
        held = set(evaluation.held)
        unused = [f.path for f in outcome.files
                  if f.verdict in (facts.TOO_YOUNG, facts.QUEUED)
                  or os.path.basename(f.path) in held]
        try:
            ledger.record_usage(
                self.scrub_queue.state_db,
                [os.path.basename(p) for p in in_use],
                [os.path.basename(p) for p in unused], time.time(),
                present_names=[b.name for b in evaluation.base_files])
        except db.StateError as e:
            self._state_problem('Cannot record file usage in the state '
                                'database', e)

    def _write_report(self, result):
        try:
            report.write(result, self.conf.state_path)
        except OSError as e:
            self._state_problem('Cannot write the pass report into %s'
                                % self.conf.state_path, e)

    def _deleted_in_glance_warnings(self, evaluation):
        """Files in use whose image Glance no longer has, keyed by path.

        Without a current listing nothing is known to be deleted: the
        files reported before stay reported while they are in use.
        """
        in_use = [d.base_file for d in evaluation.decisions
                  if d.verdict == facts.IN_USE]
        catalog = evaluation.catalog
        if catalog is not None and catalog.listed_at is None:
            paths = {b.path for b in in_use}
            return {key: message for key, message in self._warnings.items()
                    if key[0] == 'deleted_in_glance' and key[1] in paths}
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
