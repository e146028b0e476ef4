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

"""Carry out a plan: refresh files in use, remove the unused ones.

A removal happens under nova's lock for the file, and only after the facts
the plan rested on were checked again inside that lock: the file is still
the one the scan saw, nobody touched it since, and no instance has started
to use it. Any doubt keeps the file. One file's failure never ends the
pass.

A removal moves the file into the scrub queue through the ``quarantine``
callable the caller gives (the manager's, over scrub.queue): this library
knows the step only by the two exceptions below.
"""

import contextlib
import dataclasses
import os
import stat
import threading
import time

from oslo_concurrency import lockutils
from oslo_log import log as logging

from cachekeeper.cache import facts
from cachekeeper.cache import locks
from cachekeeper.cache import names
from cachekeeper.cache import plan
from cachekeeper.cache import qemu_locks
from cachekeeper import fmt
from cachekeeper import progress as pass_progress

LOG = logging.getLogger(__name__)

# A pass yields to other green threads (and so to a SIGTERM) at least this
# often, in seconds; a yield costs about 0.1 ms, too much for every file.
YIELD_INTERVAL = 0.01
# Removals are re-checked in batches: nova's locks for up to BATCH_LOCKS
# files to remove among the next BATCH_WINDOW decisions are taken, and one
# inventory recheck serves them all (it costs a few stats per instance
# directory, however many files it is for). A batch holds its locks for
# about BATCH_LOCKS quarantines (a fraction of a second) and as many open
# lock files.
BATCH_WINDOW = 1024
BATCH_LOCKS = 256


class Retouched(Exception):
    """Raised by ``quarantine``: the file was touched while being moved.

    It is back in the cache, where the pass keeps it; not an error.
    """


class QuarantineFailed(Exception):
    """Raised by ``quarantine``: the file could not be moved; one line.

    It is still in the cache: an error of the pass.
    """


@dataclasses.dataclass
class ExecuteResult:
    """What carrying out a plan did, for the PassReport.

    ``files`` holds one FileReport per decision, in the same order;
    ``bytes_queued`` counts the disk space (allocated blocks) of the files
    moved into the scrub queue and ``bytes_removed`` that of the download
    residue deleted, so both are 0 in a dry run.
    """

    files: list = dataclasses.field(default_factory=list)
    errors: list = dataclasses.field(default_factory=list)
    bytes_queued: int = 0
    bytes_removed: int = 0
    interrupted: bool = False

    def add_error(self, path, message):
        self.errors.append({'path': path, 'message': message})


def execute(decisions, inventory, instances_path, policy, quarantine,
            now_fn=time.time, dry_run=False, stop_event=None,
            removal_hold=None, progress=None):
    """Carry out ``decisions`` (from plan.plan) and return an ExecuteResult.

    ``inventory`` re-checks the references to a file inside its lock;
    ``quarantine(base_file, reason, now, drain_at)`` takes a file out of
    the cache, inside that lock and after the recheck, and returns the
    disk space (allocated bytes) it moved; it raises Retouched or
    QuarantineFailed when the file stays. ``drain_at`` is None, or ``now``
    when the file should be deleted at once (the disk-space budget).
    ``stop_event`` (a threading.Event) ends the pass between two files,
    never between taking a lock and removing the file. ``removal_hold``,
    if given, is asked inside the lock just before each removal: it returns
    why this host may no longer remove (e.g. it lost the leadership of a
    shared cache), or None. ``progress`` (a progress.PassProgress) is told
    each file.
    """
    if progress is None:
        progress = pass_progress.PassProgress()
    result = ExecuteResult()
    executor = _Executor(result, inventory, instances_path, policy,
                         quarantine, now_fn, dry_run, removal_hold)
    yielded_at = time.monotonic()
    try:
        for index, decision in enumerate(decisions):
            # Under eventlet nothing else runs while a pass works through
            # its files: yield, so that a SIGTERM is handled between two
            # files.
            if time.monotonic() - yielded_at >= YIELD_INTERVAL:
                time.sleep(0)
                yielded_at = time.monotonic()
            if stop_event is not None and stop_event.is_set():
                result.interrupted = True
                result.files.extend(
                    _interrupted(d) for d in decisions[index:])
                break
            progress.file(decision.base_file.path)
            executor.lock_ahead(decisions, index)
            result.files.append(executor.carry_out(decision))
    finally:
        executor.release()
    return result


def _queues_for_removal(decision):
    return (decision.verdict == facts.REMOVABLE and
            decision.base_file.kind != facts.RESIDUE)


def _interrupted(decision):
    if decision.verdict == facts.REMOVABLE:
        return facts.FileReport.from_decision(decision, facts.KEPT,
                                              'pass interrupted')
    return facts.FileReport.from_decision(decision)


def _changed_since_scan(base_file, st):
    """Return why ``st`` is not the file the scan saw, or None."""
    if not stat.S_ISREG(st.st_mode):
        return 'replaced by a non-regular file since scan'
    if (st.st_dev, st.st_ino) != (base_file.dev, base_file.ino):
        return 'replaced by another file since scan'
    return None


class _Executor:
    """Carries out the decision for one file and records its errors."""

    def __init__(self, result, inventory, instances_path, policy,
                 quarantine, now_fn, dry_run, removal_hold=None):
        self.result = result
        self.inventory = inventory
        self.instances_path = instances_path
        self.policy = policy
        self.quarantine = quarantine
        self.now_fn = now_fn
        self.dry_run = dry_run
        self.removal_hold = removal_hold
        # The current batch: its end, the names it holds nova's locks
        # for, those not rechecked yet, and the recheck of the others.
        self._batch_end = 0
        self._batch_locks = contextlib.ExitStack()
        self._batch_locked = set()
        self._unrechecked = set()
        self._rechecked = {}

    def lock_ahead(self, decisions, index):
        """Start a batch of removals at ``decisions[index]`` if one is due.

        The locks of the files the batch removes are taken without waiting.
        The batch ends before a file whose lock is busy (nova may be
        downloading it): that file's lock is waited for alone, with no
        other lock held, so that nova never waits for a lock this pass
        holds while the pass waits for nova.
        """
        if self.dry_run or index < self._batch_end:
            return
        self.release()
        end = index
        while (end < len(decisions) and end - index < BATCH_WINDOW and
               len(self._batch_locked) < BATCH_LOCKS):
            if _queues_for_removal(decisions[end]):
                name = decisions[end].base_file.name
                try:
                    self._batch_locks.enter_context(locks.nova_lock(
                        self.instances_path, name, blocking=False))
                except (lockutils.AcquireLockFailedException, OSError):
                    if end == index:
                        end += 1
                    break
                self._batch_locked.add(name)
            end += 1
        self._batch_end = end
        self._unrechecked = set(self._batch_locked)

    def release(self):
        """Release the locks of the current batch."""
        self._batch_locks.close()
        self._batch_locked = set()
        self._unrechecked = set()
        self._rechecked = {}

    def _recheck_references(self, name):
        """Return (references, doubts) of ``name`` from a recheck under
        its lock: the batch's, made for all of it when first needed.
        """
        if name in self._unrechecked:
            pending, self._unrechecked = sorted(self._unrechecked), set()
            self._rechecked = self.inventory.recheck_many(pending)
        found = self._rechecked.pop(name, None)
        return self.inventory.recheck(name) if found is None else found

    def _nova_lock(self, name, blocking=True):
        if name in self._batch_locked:
            return contextlib.nullcontext()
        return locks.nova_lock(self.instances_path, name, blocking=blocking)

    def carry_out(self, decision):
        path = decision.base_file.path
        try:
            if decision.verdict == facts.IN_USE:
                return self._refresh(decision)
            if (decision.verdict == facts.REMOVABLE and
                    decision.base_file.kind == facts.RESIDUE):
                return self._remove_residue(decision)
            if decision.verdict == facts.REMOVABLE:
                return self._remove_if_unused(decision)
            return facts.FileReport.from_decision(decision)
        except (OSError, threading.ThreadError) as exc:
            message = 'could not carry out the decision for %s: %s' % (
                path, exc)
        except Exception as exc:
            LOG.exception('Unexpected error on image cache file %s', path)
            message = 'unexpected error on %s: %s' % (path, exc)
        self.result.add_error(path, message)
        # A file in use stays in use whatever went wrong around it.
        verdict = (facts.IN_USE if decision.verdict == facts.IN_USE
                   else facts.ERROR)
        return facts.FileReport.from_decision(decision, verdict, message)

    def _refresh(self, decision):
        """Refresh the mtime of a file in use, as nova's spawn does."""
        if self.dry_run:
            return facts.FileReport.from_decision(decision)
        return facts.FileReport.from_decision(
            decision, reason=self._touch(decision.base_file, decision.reason))

    def _touch(self, base_file, reason):
        """Touch ``base_file``; return ``reason`` plus what got in the way."""
        path = base_file.path
        try:
            changed = _changed_since_scan(base_file, os.lstat(path))
            if changed:
                return '%s; not touched: %s' % (reason, changed)
            # A symlink swapped in after the lstat gets its own time set,
            # never its target's.
            os.utime(path, follow_symlinks=False)
        except OSError as exc:
            message = ('could not refresh the modification time of %s: %s'
                       % (path, fmt.errno_text(exc)))
            self.result.add_error(path, message)
            return '%s; %s' % (reason, message)
        return reason

    def _remove_if_unused(self, decision):
        base_file = decision.base_file
        if self.dry_run:
            return facts.FileReport.from_decision(
                decision, facts.QUEUED,
                'dry run: would queue for removal: %s' % decision.reason)
        with self._nova_lock(base_file.name):
            refusal = self._recheck(decision) or self._held(decision)
            if refusal is None:
                return self._remove_rechecked(decision)
        verdict, reason = refusal
        LOG.info('Kept image cache file %s: %s', base_file.path, reason)
        return facts.FileReport.from_decision(decision, verdict, reason)

    def _remove_residue(self, decision):
        """Delete stale download residue under the lock of its target.

        Residue is not a cache file: nova never uses a partial download,
        so a quarantine could only ever give back garbage. It is deleted
        on the spot. A held lock means a download is running: the file is
        left alone without waiting.
        """
        base_file = decision.base_file
        if self.dry_run:
            return facts.FileReport.from_decision(
                decision, facts.REMOVED,
                'dry run: would remove: %s' % decision.reason)
        target = names.download_target(base_file.name)
        try:
            with self._nova_lock(target, blocking=False):
                refusal = self._recheck(decision)
                if refusal is None:
                    os.unlink(base_file.path)
                    self.result.bytes_removed += base_file.allocated
                    LOG.info('Removed download residue %s: %s',
                             base_file.path, decision.reason)
                    return facts.FileReport.from_decision(decision,
                                                          facts.REMOVED)
        except lockutils.AcquireLockFailedException:
            refusal = facts.KEPT, (
                'not removed: the lock %s is held, a download of %s may be '
                'running' % (locks.lock_file_path(self.instances_path,
                                                  target), target))
        verdict, reason = refusal
        LOG.info('Kept download residue %s: %s', base_file.path, reason)
        return facts.FileReport.from_decision(decision, verdict, reason)

    def _remove_rechecked(self, decision):
        base_file = decision.base_file
        now = self.now_fn()
        # The only way a pass takes a file out of the cache: into the
        # scrub queue, which deletes it later and can restore it until then.
        try:
            moved = self.quarantine(
                base_file, decision.reason, now,
                now if decision.drain_now else None)
        except Retouched as exc:
            LOG.info('Kept image cache file %s: %s', base_file.path, exc)
            return facts.FileReport.from_decision(
                decision, facts.KEPT, 're-touched while being removed')
        except QuarantineFailed as exc:
            message = 'could not queue %s for removal: %s' % (
                base_file.path, exc)
            self.result.add_error(base_file.path, message)
            return facts.FileReport.from_decision(decision, facts.ERROR,
                                                  message)
        self.result.bytes_queued += moved
        return facts.FileReport.from_decision(decision, facts.QUEUED)

    def _held(self, decision):
        """Return (KEPT, reason) if this host may no longer remove, or None."""
        hold = self.removal_hold() if self.removal_hold else None
        if hold is None:
            return None
        return facts.KEPT, '%s; not removed: %s' % (decision.reason, hold)

    def _recheck(self, decision):
        """Check again, under the lock, that the file may go.

        Returns None if it may, else the (verdict, reason) to report.
        """
        base_file = decision.base_file
        try:
            st = os.lstat(base_file.path)
        except FileNotFoundError:
            return facts.KEPT, 'no longer exists'
        changed = _changed_since_scan(base_file, st)
        if changed:
            return facts.KEPT, changed
        # The age the plan applied, which may not be the kind's (an image
        # deleted in Glance ages faster).
        min_age = decision.min_age
        age = self.now_fn() - st.st_mtime
        if st.st_mtime != base_file.mtime:
            return facts.KEPT, 're-touched since scan'
        if age < min_age:
            return facts.KEPT, 'unused for only %s of %s at re-check' % (
                fmt.duration(max(age, 0)),
                fmt.duration(min_age))
        references, doubts = self._recheck_references(base_file.name)
        if references:
            reason = plan.references_reason(references)
            return facts.IN_USE, self._touch(base_file, reason)
        # A running guest may use an image no instance directory names.
        image_lock = qemu_locks.probe(base_file.path)
        if image_lock is not None:
            return facts.IN_USE, self._touch(base_file, image_lock.reason())
        if doubts:
            return facts.KEPT, plan.doubts_reason(doubts)
        return None
