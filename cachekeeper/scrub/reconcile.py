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

"""Crash recovery: the scrub queue and the disk brought back to agreement.

Every step of the queue commits its intent before the file system step it
describes (see cachekeeper.scrub.queue), so an entry a crash left in a
transitional state says what may have happened, and where its inode is
now says whether it did. reconcile, at start-up, settles each such entry
from that, and adopts the files in quarantine that have no entry as queued
entries, never deleting them on the spot. Settling only moves entries
forward from what is on disk, so a crash during reconcile is settled by
the next one.

The queue uses the same code where it meets the same question while it
runs: a drain that finds a file gone from quarantine settles its entry,
adopt_orphans serves the daemon between start-ups, and every restore ends
with finish_restore, as reconcile ends one a crash interrupted.
"""

import dataclasses
import os
import stat

from oslo_log import log as logging

from cachekeeper.cache import locks
from cachekeeper.cache import scan
from cachekeeper import fmt
from cachekeeper.scrub import entries
from cachekeeper.scrub import quarantine

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class ReconcileResult:
    """What reconcile changed: entry counts by outcome, and errors."""

    queued: int = 0
    parked: int = 0
    drained: int = 0
    restored: int = 0
    rolled_back: int = 0
    adopted: int = 0
    errors: list = dataclasses.field(default_factory=list)

    def add_error(self, path, message):
        self.errors.append({'path': path, 'message': message})


def reconcile(state_db, files, now):
    """Bring the queue and the disk back into agreement after a crash.

    ``files`` is this host's quarantine.Quarantine; the caller holds the
    queue's drain lock. Each entry in a transitional state is settled from
    where its inode is now: still (or back) in the cache, in quarantine,
    or nowhere (then it is drained). Files in quarantine without an entry
    are adopted as queued entries. Returns a ReconcileResult.
    """
    result = ReconcileResult()
    for entry in entries.find(state_db, entries.ACTIVE_STATES):
        try:
            _reconcile_entry(state_db, files, entry, now, result)
        except (OSError, entries.ScrubError) as e:
            message = 'cannot reconcile scrub queue entry %d: %s' % (
                entry.id, e)
            LOG.error('%s', message)
            result.add_error(entry.path, message)
    adopt_orphans(state_db, files, now, result)
    return result


def _reconcile_entry(state_db, files, entry, now, result):
    if entry.state in (entries.QUARANTINING, entries.RESTORING):
        # The process that was moving the file may still be at it.
        with locks.nova_lock(files.instances_path, entry.name):
            settle(state_db, files, entries.get(state_db, entry.id), now,
                   result)
    else:
        settle(state_db, files, entry, now, result)


def settle(state_db, files, entry, now, result):
    """Settle ``entry`` from where its inode is now; count it in result."""
    place = files.locate(entry)
    if place == quarantine.IN_QUARANTINE:
        if entry.state in (entries.QUARANTINING, entries.DRAINING):
            if entries.transition(state_db, entry.id, (entry.state,),
                                  entries.QUEUED, now):
                result.queued += 1
                LOG.info('Scrub queue entry %d (%s) was %s when it was '
                         'interrupted; queued again', entry.id, entry.path,
                         entry.state)
        elif entry.state == entries.RESTORING:
            if entries.transition(
                    state_db, entry.id, (entries.RESTORING,), entries.PARKED,
                    now, last_error='restore interrupted; run scrub restore '
                                    'again'):
                result.parked += 1
                LOG.warning('Restore of scrub queue entry %d (%s) was '
                            'interrupted; parked', entry.id, entry.path)
    elif place == quarantine.IN_CACHE:
        if entry.state == entries.RESTORING:
            finish_restore(state_db, entry, files.set_mtime_back(entry), now)
            result.restored += 1
        elif entries.transition(state_db, entry.id, (entry.state,),
                                entries.ROLLED_BACK, now):
            result.rolled_back += 1
            LOG.info('Scrub queue entry %d rolled back: %s is in the image '
                     'cache', entry.id, entry.path)
    else:
        # After an interrupted drain the unlink may have happened just
        # before the crash: how much it reclaimed is unknown.
        if entries.transition(state_db, entry.id, (entry.state,),
                              entries.DRAINED, now):
            result.drained += 1
            log = LOG.info if entry.state == entries.DRAINING else LOG.warning
            log('Quarantined %s (scrub queue entry %d) is neither in '
                'quarantine nor in the image cache; marked drained',
                entry.quarantine_path, entry.id)


def finish_restore(state_db, entry, problem, now):
    """Mark a file that is back in the cache restored.

    ``problem`` is what went wrong giving it back its mtime, or None.
    """
    entries.transition(state_db, entry.id, (entries.RESTORING,),
                       entries.RESTORED, now, last_error=problem)
    LOG.info('Restored %s from quarantine (scrub queue entry %d)',
             entry.path, entry.id)


def adopt_orphans(state_db, files, now, result):
    """Queue the files in quarantine that have no entry; count them.

    The caller holds the queue's drain lock. A quarantine directory that
    cannot be listed is an error in ``result``.
    """
    # List first, read the entries second: a file renamed into
    # quarantine meanwhile had its entry committed before the rename.
    try:
        names = files.names()
    except OSError as e:
        message = 'cannot list quarantine directory %s: %s' % (
            files.host_dir, fmt.errno_text(e))
        result.add_error(files.host_dir, message)
        return
    known = {(os.path.basename(quarantine_path), ino)
             for quarantine_path, ino in entries.quarantined_files(state_db)}
    for quarantine_name in names:
        st = files.lstat(quarantine_name)
        if st is None or (quarantine_name, st.st_ino) in known:
            continue
        if not stat.S_ISREG(st.st_mode):
            LOG.warning('Left alone %s in quarantine: it is a %s, not a '
                        'file', os.path.join(files.host_dir, quarantine_name),
                        scan.file_type(st.st_mode))
            continue
        _adopt(state_db, files, quarantine_name, st, now)
        result.adopted += 1


def _adopt(state_db, files, quarantine_name, st, now):
    name = quarantine.original_name(quarantine_name)
    quarantine_path = os.path.join(files.host_dir, quarantine_name)
    entry_id = entries.adopt(
        state_db, name, os.path.join(files.cache_dir, name), quarantine_path,
        scan.classify(name, st.st_mode), st,
        'adopted: found in quarantine without a queue entry', now)
    LOG.warning('Adopted %s into the scrub queue as entry %d: it was in '
                'quarantine without an entry', quarantine_path, entry_id)
