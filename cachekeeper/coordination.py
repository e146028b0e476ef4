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

"""One remover per image cache, elected through tooz.

Hosts whose instances_path is on shared storage share one image cache.
Each of them touches the files its instances use, but only the leader of
the cache queues files for removal and drains its scrub queue.

Leadership is a tooz lock named ``cachekeeper-leader-<id>``, where <id> is
derived from the real path of the cache directory: hosts that share a
cache (and see it under the same path, as nova's live migration needs
anyway) compete for one lock, and per-host caches (``_base_$my_ip``) each
have their own. It works alike on every tooz backend that has locks: the
file backend (a POSIX lock, which excludes other hosts when its directory
is on the shared file system and NFS locking works), redis, etcd or
zookeeper. A host whose passes may remove tries to take the lock, without
waiting, at every heartbeat; the holder keeps it from one pass to the next
until it stops, resigns (removal disabled) or loses it.

Heartbeats run in a thread of their own, the only one that talks to the
backend: a pass asks removal_hold(), which never waits on the network.
They keep the lock's lease alive (redis and etcd expire the lock of a
holder that stopped beating, so a leader killed with SIGKILL is replaced
within the lease; the kernel drops a file lock at once), take the lock
when it is free and check that it is still held. A leader counts on its
lock only for two thirds of the lease after the start of the heartbeat
that last confirmed it: a backend that stops answering (a call that hangs,
a lost connection, a restarted redis that forgot the lock) ends removals
before another host can take the lock over. Losing the backend is said
once (WARNING), its return once (INFO); the files in use are touched all
along. A backend that comes back having forgotten the lock (a redis
restarted without persistence) may let another host take it while the
old leader still counts on its last confirmation, for less than two
thirds of the lease: nova's lock and the re-check inside it, which every
removal goes through, keep the two from removing the same file.

The leader writes ``$instances_path/locks/cachekeeper-leader-<id>.json``
(its host, pid and since when) so that the other hosts and
``cache status`` can name it, whatever the backend.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import threading
import time
import urllib.parse

from oslo_log import log as logging
import tooz

from cachekeeper.cache import locks
from cachekeeper.cache import registry
from cachekeeper import masking
from cachekeeper import smallfile

LOG = logging.getLogger(__name__)

LEADER_PREFIX = 'cachekeeper-leader-'
LEADER_RECORD_SUFFIX = '.json'
# A record is a host name, a pid and a time.
MAX_LEADER_RECORD_BYTES = 64 * 1024
FILE_SCHEME = 'file'
# What tooz's file driver makes in its directory besides the lock files.
FILE_BACKEND_DIRS = ('groups', 'tmp')
FILE_BACKEND_DRIVER_LOCK = '.driver_lock'
# Backends whose locks only exclude the processes of one host.
HOST_LOCAL_SCHEMES = ('ipc',)

# A leader beats this many times per lease, and counts on its lock for
# this part of the lease after the heartbeat that last confirmed it.
BEATS_PER_LEASE = 3
CONFIRMED_PART = 2 / 3
# The lease assumed until a backend says what it is.
DEFAULT_LEASE = 30
MIN_BEAT = 0.2
MAX_BEAT = 10
# After a failed heartbeat: the backend may be back soon.
RETRY_DELAY = 1.0
# How long stop() waits for a heartbeat that is talking to the backend.
STOP_TIMEOUT = 2.0
# How long a pass waits for the first heartbeat of a coordinator that has
# just started before it goes on without leadership.
FIRST_BEAT_TIMEOUT = 10.0


def cache_id(cache_dir):
    """Identify the image cache by the real path of its directory."""
    real_path = os.path.realpath(cache_dir)
    return hashlib.sha256(
        real_path.encode('utf-8', 'surrogateescape')).hexdigest()[:16]


def lock_name(cache_dir):
    return LEADER_PREFIX + cache_id(cache_dir)


def leader_record_path(instances_path, cache_dir):
    return os.path.join(locks.locks_dir(instances_path),
                        lock_name(cache_dir) + LEADER_RECORD_SUFFIX)


def reach_problem(backend_url, cache_dir):
    """Why the backend cannot keep out a remover on another host, or None.

    A file backend reaches the hosts that share the cache when its
    directory is on the cache's file system (and NFS locking works, which
    cannot be seen from here).
    """
    parsed = urllib.parse.urlsplit(backend_url)
    if parsed.scheme in HOST_LOCAL_SCHEMES:
        return 'the %s backend reaches only this host' % parsed.scheme
    if parsed.scheme != FILE_SCHEME:
        return None
    directory = parsed.path
    while not os.path.exists(directory) and directory != os.sep:
        directory = os.path.dirname(directory)
    try:
        same = os.stat(directory).st_dev == os.stat(cache_dir).st_dev
    except OSError as e:
        return 'cannot compare file systems: %s' % (e.strerror or e)
    if not same:
        return ('its directory %s is not on the file system of the image '
                'cache, so the other hosts do not see its locks'
                % parsed.path)
    return None


def file_backend_dir(backend_url):
    """The directory of a file backend, or None for another backend."""
    parsed = urllib.parse.urlsplit(backend_url)
    if parsed.scheme != FILE_SCHEME:
        return None
    return os.path.normpath(parsed.path)


def prepare_file_backend(backend_url, lock_name):
    """Make the tree of a file backend, owned like the directory it is in.

    tooz would make it with the owner of this process: under nova's
    ``locks/`` (the default), what cachekeeper makes there stays nova's.
    A tree whose parent directory is missing is left to tooz.
    """
    directory = file_backend_dir(backend_url)
    if directory is None or not os.path.isdir(os.path.dirname(directory)):
        return
    locks.ensure_directory(directory)
    for reserved in FILE_BACKEND_DIRS:
        locks.ensure_directory(os.path.join(directory, reserved))
    for lock_file in (FILE_BACKEND_DRIVER_LOCK, lock_name):
        locks.ensure_lock_file(os.path.join(directory, lock_file))


@dataclasses.dataclass(frozen=True)
class LeaderRecord:
    """Who became the leader of a cache, and when (seconds since epoch)."""

    host: str
    pid: int
    since: float

    def to_dict(self):
        return dataclasses.asdict(self)


def read_leader(instances_path, cache_dir):
    """The LeaderRecord of the cache, or None when there is none to read.

    A leader killed without a chance to clear its record stays named until
    the next leader writes its own.
    """
    try:
        record = json.loads(smallfile.read(
            leader_record_path(instances_path, cache_dir),
            MAX_LEADER_RECORD_BYTES))
        return LeaderRecord(host=str(record['host']), pid=int(record['pid']),
                            since=float(record['since']))
    except (OSError, RecursionError, ValueError, TypeError, KeyError):
        return None


def status(conf, cache_dir, now):
    """The coordination part of ``cache status``, as a dict.

    Read from files only: the backend, the leader's record and nova's
    storage registry (read without creating its lock file). ``now`` is
    the wall-clock time the registry ages are measured at.
    """
    storage = registry.read(conf.instances_path, create_lock=False)
    backend_url = conf.coordination.backend_url
    shared_with = storage.other_hosts(conf.host)
    leader = read_leader(conf.instances_path, cache_dir)
    return {
        'backend': masking.mask(backend_url),
        'lock': lock_name(cache_dir),
        'leader': leader.to_dict() if leader is not None else None,
        'shared_with': shared_with,
        'reach_problem': (reach_problem(backend_url, cache_dir)
                          if shared_with else None),
        'registry': storage.to_dict(now),
    }


def status_warnings(document):
    """What in ``document`` (from status) stops removals, one line each."""
    warnings = []
    storage = document['registry']
    if storage['problem'] is not None:
        warnings.append("nova's storage registry %s %s: no removal until it "
                        "is repaired" % (storage['path'], storage['problem']))
    if document['reach_problem'] is not None:
        warnings.append('the image cache is shared with %s, but '
                        '[coordination] backend_url cannot reach them: %s; '
                        'no removal' % (', '.join(document['shared_with']),
                                        document['reach_problem']))
    return warnings


class Coordinator:
    """This process's part in electing the remover of one image cache.

    ``wants_leadership`` is called at every heartbeat: a process whose
    passes would not remove anything must not hold the lock.
    """

    def __init__(self, backend_url, instances_path, cache_dir, host,
                 wants_leadership=lambda: True, clock=time.monotonic):
        self.backend_url = backend_url
        self.instances_path = instances_path
        self.cache_dir = cache_dir
        self.host = host
        self.lock_name = lock_name(cache_dir)
        self.member_id = ('%s-%d' % (host, os.getpid())).encode('utf-8')
        self._wants_leadership = wants_leadership
        self._clock = clock
        self._get_coordinator = None
        self._driver = None
        self._lock = None
        self._record = None
        self._lease = DEFAULT_LEASE
        # Shared with the passes; the rest belongs to the heartbeat thread.
        self._state = threading.Lock()
        self._held = False
        # When the last backend call that answered was made (monotonic).
        self._answered_at = None
        self._problem = None
        self._thread = None
        self._stopping = threading.Event()
        self._first_beat = threading.Event()

    @classmethod
    def from_conf(cls, conf, cache_dir, wants_leadership=lambda: True):
        return cls(conf.coordination.backend_url, conf.instances_path,
                   cache_dir, conf.host, wants_leadership)

    @property
    def backend(self):
        """The backend URL as it may be shown: its secrets masked."""
        return masking.mask(self.backend_url)

    def start(self):
        """Start heartbeating, in a thread made here; again, do nothing.

        Under oslo.service's threading backend, call it in the worker
        process: a thread made before the fork does not run in it.
        """
        if self._thread is not None:
            return
        # Imported here, in the caller's thread: tooz.coordination loads
        # eventlet (through futurist), which breaks threading.Event in a
        # thread that imports it first; and a command that does not
        # coordinate need not spend the half second it takes.
        from tooz import coordination as tooz_coordination
        self._get_coordinator = tooz_coordination.get_coordinator
        locks.ensure_locks_dir(self.instances_path)
        self._thread = threading.Thread(
            target=self._run, name='cachekeeper-coordination', daemon=True)
        self._thread.start()

    def wait_for_first_beat(self, timeout=FIRST_BEAT_TIMEOUT):
        return self._first_beat.wait(timeout)

    def stop(self):
        """Stop heartbeating; give the leadership up if it is held.

        A backend that does not answer is left alone: the lock then lapses
        with its lease.
        """
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive():
                LOG.warning('Coordination backend %s did not answer at '
                            'stop; the leadership of %s lapses with its '
                            'lease', self.backend, self.cache_dir)
                return
        if self._driver is None:
            return
        failure = None
        try:
            if self._held:
                self._give_up('this process stops')
            self._driver.stop()
        except Exception as e:
            failure = e
        self._driver = None
        if failure is not None:
            # Out of the except clause, as in _beat.
            LOG.warning('Cannot leave coordination backend %s cleanly: %s',
                        self.backend, masking.mask(str(failure)))

    def is_leader(self):
        with self._state:
            return self._held and self._answering()

    def removal_hold(self):
        """Why this process may not remove now, or None if it may."""
        with self._state:
            if self._answered_at is None and self._problem is None:
                return 'coordination not started yet'
            if self._problem is None and not self._answering():
                self._problem = 'no answer for %.0fs' % (
                    self._clock() - self._answered_at)
                LOG.warning('Coordination backend %s: %s; no removal until '
                            'it answers', self.backend, self._problem)
            if self._problem is not None:
                return 'coordination unavailable: %s' % self._problem
            if self._held:
                return None
        leader = read_leader(self.instances_path, self.cache_dir)
        return 'not the leader for this cache (leader: %s)' % (
            leader.host if leader is not None else 'unknown')

    def reach_problem(self):
        return reach_problem(self.backend_url, self.cache_dir)

    def _run(self):
        delay = 0
        while not self._stopping.wait(delay):
            delay = self._beat()
            self._first_beat.set()

    def _answering(self):
        """Whether the backend answered recently enough to count on it.

        A held lock's lease runs from the call that last renewed it, which
        started at ``_answered_at`` or later.
        """
        return (self._answered_at is not None and self._clock() <
                self._answered_at + self._lease * CONFIRMED_PART)

    def _beat(self):
        """One heartbeat; return the seconds until the next one."""
        try:
            if self._driver is None:
                self._connect()
            if self._held and not self._lock.is_still_owner():
                self._lose('the lock expired or was taken over')
            asked_at = self._clock()
            self._lease = self._driver.heartbeat() or DEFAULT_LEASE
            wanted = self._wants_leadership()
            if self._held and not wanted:
                self._give_up('removal is disabled')
            elif not self._held and wanted:
                acquiring_at = self._clock()
                if self._lock.acquire(blocking=False):
                    asked_at = acquiring_at
                    self._win(asked_at)
            self._answered(asked_at)
        except tooz.ToozError as e:
            failure = e
        except Exception as e:
            LOG.exception('Unexpected error talking to coordination backend '
                          '%s', self.backend)
            failure = e
        else:
            return min(MAX_BEAT, max(MIN_BEAT, self._lease / BEATS_PER_LEASE))
        # Out of the except clauses: oslo.log appends the exception being
        # handled to a warning, in its own words, which may echo the URL.
        self._failed(failure)
        return RETRY_DELAY

    def _connect(self):
        try:
            driver = self._get_coordinator(self.backend_url, self.member_id)
        except (RuntimeError, ImportError) as e:
            # stevedore: no driver of that name, or its library is missing.
            raise tooz.ToozError('no usable tooz driver: %s' % e)
        try:
            prepare_file_backend(self.backend_url, self.lock_name)
        except OSError as e:
            raise tooz.ToozError('cannot prepare %s: %s' % (self.backend, e))
        driver.start(start_heart=False)
        self._driver = driver
        self._lock = driver.get_lock(self.lock_name.encode('utf-8'))

    def _win(self, asked_at):
        record = LeaderRecord(host=self.host, pid=os.getpid(),
                              since=time.time())
        with self._state:
            self._held = True
            self._answered_at = asked_at
        self._record = record
        try:
            smallfile.replace_json(
                leader_record_path(self.instances_path, self.cache_dir),
                record.to_dict(), '.' + LEADER_PREFIX)
        except OSError as e:
            LOG.warning('Cannot record the leader of %s: %s', self.cache_dir,
                        e)
        LOG.info('This host (%s) is now the leader of image cache %s: it '
                 'alone removes files', self.host, self.cache_dir)

    def _lose(self, reason):
        with self._state:
            self._held = False
        self._record = None
        # The lock is no longer ours; releasing it only forgets it.
        self._lock.release()
        LOG.warning('No longer the leader of image cache %s: %s; no removal '
                    'until the leadership is won again', self.cache_dir,
                    reason)

    def _give_up(self, reason):
        with self._state:
            self._held = False
        path = leader_record_path(self.instances_path, self.cache_dir)
        if read_leader(self.instances_path, self.cache_dir) == self._record:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._record = None
        self._lock.release()
        LOG.info('Gave up the leadership of image cache %s: %s',
                 self.cache_dir, reason)

    def _answered(self, asked_at):
        with self._state:
            self._answered_at = asked_at
            problem, self._problem = self._problem, None
        if problem is not None:
            LOG.info('Coordination backend %s answers again', self.backend)

    def _failed(self, error):
        # The problem goes into log lines, pass reports and cache status.
        problem = masking.mask(str(error) or error.__class__.__name__)
        with self._state:
            first = self._problem is None
            self._problem = problem
        if first:
            LOG.warning('Coordination backend %s unavailable: %s; no removal '
                        'until it is back (files in use are still touched)',
                        self.backend, problem)
