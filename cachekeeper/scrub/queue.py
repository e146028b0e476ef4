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

"""The scrub queue: removed cache files wait in quarantine, then go.

A pass never unlinks a cache file. Under nova's lock for it, the file is
recorded in the queue and renamed into this host's quarantine directory
(cachekeeper.scrub.quarantine) on the image cache's file system. A drain
deletes the files that have waited ``scrub_delay``; until then ``restore``
puts a file back where it was.

This module is the order of the steps; each kind of step has a module of
its own: the entries and their states in the state database
(cachekeeper.scrub.entries), the files (cachekeeper.scrub.quarantine) and
the crash recovery at start-up (cachekeeper.scrub.reconcile). ScrubQueue
is what the rest of cachekeeper uses.

Crash safety: each step commits its intent to the state database before
the file system step it describes, and every step can be replayed.
``reconcile`` (at start-up) settles what a crash interrupted by looking
for the recorded inode in quarantine and in the image cache.

Crash steps, for the crash tests: at each, the queue calls
``crash_hook(step)`` when it is set. Production code never sets it; the
crash tests start cachekeeper-manage through tests/lib/crash.py, which
sets a hook that kills the process with SIGKILL at the step named.

- ``quarantine-recorded``: entry committed, file not renamed yet.
- ``quarantine-renamed``: file in quarantine, entry not queued yet.
- ``drain-claimed``: claim committed, file not unlinked yet.
- ``drain-unlinked``: file unlinked, entry not drained yet.
- ``restore-recorded``: claim committed, file not renamed back yet.
- ``restore-renamed``: file back in the cache, mtime and entry not yet
  restored.
"""

import dataclasses

from oslo_concurrency import lockutils
from oslo_log import log as logging

from cachekeeper.cache import locks
from cachekeeper.conf import paths
from cachekeeper import fmt
from cachekeeper import progress as pass_progress
from cachekeeper.scrub import entries
from cachekeeper.scrub import quarantine
from cachekeeper.scrub import reconcile
from cachekeeper.state import db
from cachekeeper.state import totals

LOG = logging.getLogger(__name__)

CRASH_STEPS = ('quarantine-recorded', 'quarantine-renamed', 'drain-claimed',
               'drain-unlinked', 'restore-recorded', 'restore-renamed')
# Called as crash_hook(step) at each of CRASH_STEPS when set (tests only).
crash_hook = None

# A failed deletion is retried after 1, 2, 4... minutes, at most 6 hours.
RETRY_BACKOFF_BASE = 60
RETRY_BACKOFF_MAX = 6 * 3600

_DRAIN_BATCH = 100
# Serialises drains and reconcile across processes (a lock file in
# state_path).
_DRAIN_LOCK = 'cachekeeper-scrub-drain'


class TouchedMeanwhile(entries.ScrubError):
    """A file touched while being quarantined; it is back in the cache."""


@dataclasses.dataclass
class DrainResult:
    """What one drain did.

    ``failed`` counts deletions that failed and will be retried, ``parked``
    the entries parked after the drain (all of them, not only new ones);
    ``errors`` are {'path', 'message'} like a pass report's.
    """

    drained: int = 0
    bytes_reclaimed: int = 0
    failed: int = 0
    parked: int = 0
    errors: list = dataclasses.field(default_factory=list)
    interrupted: bool = False

    def add_error(self, path, message):
        self.errors.append({'path': path, 'message': message})


def from_conf(conf):
    """Open this host's scrub queue as ``conf`` describes it.

    Raises db.StateError when the state database cannot be used.
    """
    return ScrubQueue(
        db.open_state(conf.state_path),
        conf.instances_path,
        paths.cache_dir(conf),
        conf.scrubber.quarantine_dir,
        conf.host)


def _crash_point(step):
    if crash_hook is not None:
        crash_hook(step)


def _backoff(attempts):
    return min(RETRY_BACKOFF_BASE * 2 ** min(attempts - 1, 30),
               RETRY_BACKOFF_MAX)


class ScrubQueue:
    """This host's scrub queue and quarantine directory.

    ``cache_dir`` is the image cache (``$instances_path/_base``); files go
    into ``<quarantine_dir>/<host>``. The queue owns ``state_db`` and closes
    it in close().
    """

    def __init__(self, state_db, instances_path, cache_dir, quarantine_dir,
                 host):
        self.state_db = state_db
        self.instances_path = instances_path
        self.cache_dir = cache_dir
        self.quarantine_dir = quarantine_dir
        self.host = host
        self._files = quarantine.Quarantine(instances_path, cache_dir,
                                            quarantine_dir, host)
        self.host_dir = self._files.host_dir

    def close(self):
        self.state_db.close()

    def check_quarantine_dir(self):
        """Create this host's quarantine directory and check it is usable.

        Raises quarantine.QuarantineError when it cannot be created or is
        not on the image cache's file system (quarantining must be a
        rename).
        """
        self._files.check()

    def entry(self, entry_id):
        """Return the Entry with ``entry_id``; ScrubError if unknown."""
        return entries.get(self.state_db, entry_id)

    def entries(self, states=None):
        """Return the entries (in ``states`` if given), oldest first."""
        return entries.find(self.state_db, states)

    def queued(self):
        """Return (id, allocated, queued_at) of each queued entry, oldest
        first: what the disk-space budget needs of them at every pass.
        """
        return entries.queued(self.state_db)

    def counts(self):
        """Return {state: number of entries} for every state present."""
        return entries.counts(self.state_db)

    def quarantine(self, base_file, reason, now, drain_at=None):
        """Move cache file ``base_file`` into quarantine; return its Entry.

        The caller holds nova's lock for the file and has checked that it
        may go. ``drain_at`` makes the entry due then rather than after
        scrub_delay. Raises ScrubError, with the file left in the cache,
        when the file changed since the scan or cannot be moved, and
        TouchedMeanwhile when its mtime is no longer the scan's.
        """
        st = self._files.scanned_file(base_file)
        entry_id, quarantine_path = entries.record(
            self.state_db, base_file.name, base_file.path, base_file.kind,
            st, reason, now, drain_at,
            lambda entry_id: self._files.path_for(entry_id, base_file.name))
        _crash_point('quarantine-recorded')
        try:
            self._files.move_in(base_file.path, quarantine_path)
        except OSError as e:
            message = 'cannot move %s into quarantine: %s' % (
                base_file.path, fmt.errno_text(e))
            self._transition(entry_id, (entries.QUARANTINING,),
                             entries.ROLLED_BACK, now, last_error=message)
            raise entries.ScrubError(message) from e
        _crash_point('quarantine-renamed')
        # nova touches a base outside its lock just before it uses it. A
        # touch that landed after the caller's checks shows on the moved
        # inode: the file goes back while the caller still holds nova's
        # lock, so nova finds it when it takes the lock to use it.
        if self._files.mtime(quarantine_path) != base_file.mtime:
            self._put_back(entry_id, quarantine_path, base_file.path, now)
            raise TouchedMeanwhile('%s was touched while it was being '
                                   'quarantined; put back' % base_file.path)
        self._transition(entry_id, (entries.QUARANTINING,), entries.QUEUED,
                         now)
        LOG.info('Quarantined %s as %s (scrub queue entry %d): %s',
                 base_file.path, quarantine_path, entry_id, reason)
        return self.entry(entry_id)

    def _put_back(self, entry_id, quarantine_path, path, now):
        try:
            self._files.put_back(quarantine_path, path)
        except OSError as e:
            # Left to reconcile, which finds where the file is.
            raise entries.ScrubError(
                '%s was touched while it was being quarantined and cannot '
                'be put back: %s' % (path, fmt.errno_text(e))) from e
        self._transition(entry_id, (entries.QUARANTINING,),
                         entries.ROLLED_BACK, now,
                         last_error='touched while being quarantined')

    def drain(self, now, scrub_delay, max_attempts, ignore_delay=False,
              stop_event=None, progress=None):
        """Delete the quarantined files that are due; return a DrainResult.

        Due are queued entries at least ``scrub_delay`` seconds old (or
        past their drain_at) whose retry backoff is over; ``ignore_delay``
        makes every queued entry due. After ``max_attempts`` failed
        deletions an entry is parked. ``stop_event`` (a threading.Event)
        ends the drain between two files; ``progress`` (a
        progress.PassProgress) is told each file. Concurrent drains (other
        threads or processes) wait for each other.
        """
        if progress is None:
            progress = pass_progress.PassProgress()
        result = DrainResult()
        with self._drain_lock():
            last_id = 0
            while not result.interrupted:
                batch = entries.due(self.state_db, now, scrub_delay,
                                    ignore_delay, last_id, _DRAIN_BATCH)
                if not batch:
                    break
                for entry in batch:
                    if stop_event is not None and stop_event.is_set():
                        result.interrupted = True
                        break
                    last_id = entry.id
                    progress.file(entry.quarantine_path)
                    self._drain_entry(entry, now, max_attempts, result)
            entries.forget_old(self.state_db, now)
        result.parked = self.counts().get(entries.PARKED, 0)
        return result

    def _drain_lock(self):
        return lockutils.lock(_DRAIN_LOCK, external=True,
                              lock_path=self.state_db.directory)

    def _drain_entry(self, entry, now, max_attempts, result):
        if not self._transition(entry.id, (entries.QUEUED,),
                                entries.DRAINING, now):
            # A restore or another drain got it first.
            return
        _crash_point('drain-claimed')
        try:
            reclaimed = self._files.unlink(entry)
        except entries.ScrubError as e:
            # Not the file we queued: never delete what we do not know.
            result.add_error(entry.path, str(e))
            self._park(entry, now, str(e), entry.attempts)
            return
        except OSError as e:
            message = 'cannot delete quarantined %s: %s' % (
                entry.quarantine_path, fmt.errno_text(e))
            result.add_error(entry.path, message)
            attempts = entry.attempts + 1
            if attempts >= max_attempts:
                self._park(entry, now, message, attempts)
            else:
                result.failed += 1
                self._retry_later(entry, now, message, attempts,
                                  max_attempts)
            return
        if reclaimed is None:
            LOG.warning('Quarantined %s (scrub queue entry %d) vanished '
                        'before the drain deleted it', entry.quarantine_path,
                        entry.id)
            reconcile.settle(self.state_db, self._files,
                             self.entry(entry.id), now,
                             reconcile.ReconcileResult())
            return
        _crash_point('drain-unlinked')
        self._transition(entry.id, (entries.DRAINING,), entries.DRAINED, now,
                         bytes_reclaimed=reclaimed)
        result.drained += 1
        result.bytes_reclaimed += reclaimed
        LOG.info('Deleted quarantined %s (scrub queue entry %d), %d bytes '
                 'reclaimed', entry.quarantine_path, entry.id, reclaimed)

    def _retry_later(self, entry, now, message, attempts, max_attempts):
        retry_at = now + _backoff(attempts)
        self._transition(entry.id, (entries.DRAINING,), entries.QUEUED, now,
                         attempts=attempts, next_attempt_at=retry_at,
                         last_error=message)
        # Warn when an entry starts failing, not at every retry.
        log = LOG.warning if attempts == 1 else LOG.info
        log('%s; attempt %d of %d, next one in %d s', message, attempts,
            max_attempts, retry_at - now)

    def _park(self, entry, now, message, attempts):
        self._transition(entry.id, (entries.DRAINING,), entries.PARKED, now,
                         attempts=attempts, next_attempt_at=None,
                         last_error=message)
        LOG.warning('Parked scrub queue entry %d (%s): %s; see '
                    'cachekeeper-manage scrub list, then scrub retry or '
                    'scrub restore', entry.id, entry.path, message)

    def expedite(self, entry_ids, now):
        """Make queued entries due now; return how many were made due."""
        return entries.expedite(self.state_db, entry_ids, now)

    def totals(self):
        """Return the running totals (state.totals.NAMES).

        The reclaimed bytes include those of the drained entries the queue
        still keeps.
        """
        result = totals.read(self.state_db)
        result[totals.RECLAIMED_BYTES] += entries.reclaimed_bytes(
            self.state_db)
        return result

    def restore(self, entry_id, now):
        """Move a quarantined file back into the cache; return its Entry.

        Takes nova's lock for the file. The file gets back its recorded
        mtime. Raises ScrubError, with nothing changed, when the entry is
        not in quarantine, something exists at its original path, or the
        quarantined file is not the one recorded.
        """
        entry = self.entry(entry_id)
        if entry.state == entries.DRAINED:
            raise entries.ScrubError(
                'entry %d was drained: %s is deleted and cannot be restored'
                % (entry.id, entry.path))
        if entry.state in (entries.RESTORED, entries.ROLLED_BACK):
            raise entries.ScrubError('entry %d is %s: %s is not in quarantine'
                                     % (entry.id, entry.state, entry.path))
        if entry.state not in (entries.QUEUED, entries.PARKED):
            raise entries.ScrubError('entry %d is %s right now; try again '
                                     'later' % (entry.id, entry.state))
        self._files.check_cache_path(entry)
        quarantine_name = self._files.name_of(entry)
        try:
            with locks.nova_lock(self.instances_path, entry.name), \
                    self._files.opened() as directories:
                self._move_back(entry, quarantine_name, directories, now)
        except OSError as e:
            raise entries.ScrubError(
                'cannot restore entry %d: %s; nothing changed'
                % (entry.id, fmt.errno_text(e))) from e
        return self.entry(entry_id)

    def _move_back(self, entry, quarantine_name, directories, now):
        """Restore ``entry``; the caller holds nova's lock for the file."""
        if directories.cache_has(entry.name):
            raise entries.ScrubError(
                'refusing to restore entry %d: %s exists again; nothing '
                'changed' % (entry.id, entry.path))
        if not directories.holds(quarantine_name, entry.ino):
            raise entries.ScrubError(
                'cannot restore entry %d: %s is missing or not the file '
                'queued; nothing changed' % (entry.id, entry.quarantine_path))
        if not self._transition(entry.id, (entry.state,), entries.RESTORING,
                                now):
            raise entries.ScrubError('entry %d changed while restoring it; '
                                     'nothing changed, try again' % entry.id)
        _crash_point('restore-recorded')
        try:
            directories.move_back(quarantine_name, entry.name)
        except OSError:
            self._transition(entry.id, (entries.RESTORING,), entry.state, now)
            raise
        _crash_point('restore-renamed')
        reconcile.finish_restore(self.state_db, entry,
                                 directories.set_mtime_back(entry), now)

    def retry(self, entry_id, now):
        """Queue a parked entry again, with a fresh count of attempts."""
        entry = self.entry(entry_id)
        if entry.state != entries.PARKED:
            raise entries.ScrubError(
                'entry %d is %s, not parked: only parked entries can be '
                'retried' % (entry.id, entry.state))
        if not self._transition(entry.id, (entries.PARKED,), entries.QUEUED,
                                now, attempts=0, next_attempt_at=None):
            raise entries.ScrubError('entry %d changed meanwhile; try again'
                                     % entry.id)
        LOG.info('Queued parked scrub queue entry %d (%s) again',
                 entry.id, entry.path)
        return self.entry(entry_id)

    def reconcile(self, now):
        """Bring the queue and the disk back into agreement after a crash.

        See reconcile.reconcile; returns a ReconcileResult.
        """
        with self._drain_lock():
            return reconcile.reconcile(self.state_db, self._files, now)

    def adopt_orphans(self, now):
        """Queue the files in quarantine that have no entry.

        What reconcile does for them at start-up, for a process that runs
        on: returns how many were adopted. Raises ScrubError when the
        quarantine directory cannot be listed.
        """
        result = reconcile.ReconcileResult()
        with self._drain_lock():
            reconcile.adopt_orphans(self.state_db, self._files, now, result)
        if result.errors:
            raise entries.ScrubError(result.errors[0]['message'])
        return result.adopted

    def _transition(self, entry_id, from_states, to_state, now, **changes):
        """See entries.transition; committed when it returns."""
        return entries.transition(self.state_db, entry_id, from_states,
                                  to_state, now, **changes)
