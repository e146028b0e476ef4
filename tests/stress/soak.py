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

"""Soak: the daemon on a small, ever-changing host for a fixed time.

A pass every 0.2 s while the host changes: instances are made and
deleted, and now and then an old unused base appears (and goes in a
pass soon after), so that passes inspect, remove, quarantine, drain
and record. The daemon's processes are sampled twice a second: resident
memory, open file descriptors and threads must stay flat after a
warm-up, and the log must hold no traceback. The samples are kept in
samples.json beside the daemon's log.

The short soak runs in CI (tests/stress/test_soak.py); the long one by
hand, for each backend::

    .venv/bin/python -m tests.stress.soak --seconds 1800
"""

import argparse
import concurrent.futures
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

from tests.lib import daemon as system_daemon
from tests.lib import hosttree

BACKENDS = ('eventlet', 'threading')
WARM_UP = 10
SAMPLE_INTERVAL = 0.5
# Faster than the passes: each pass finds the host changed.
CHURN_INTERVAL = 0.1
# One change in this many makes an old unused base, which the next pass
# removes. Each removal stays in the scrub queue's history for 30 days:
# a removal at every change would grow the state database, and the
# memory that reads it, faster than any host does.
UNUSED_EVERY = 18
# Of the samples after the warm-up, the first and the last this many
# seconds are compared.
WINDOW = 15
# Growth allowed from the first window to the last: Python's allocator
# and SQLite's page cache settle for a while.
RSS_ALLOWANCE = 4 * 1024 * 1024
# Open file descriptors and threads between passes may differ by this
# much from the first window to the last.
FD_ALLOWANCE = 2
THREAD_ALLOWANCE = 2
PASS_LINE = r'INFO cachekeeper.service .* Pass done'
OLD = 2 * hosttree.DAY
IN_USE = hosttree.image('soak-in-use')
UUID = '6f1c4a52-2d0e-4c36-9a51-%012d'


@dataclasses.dataclass
class Sample:
    at: float
    rss: int
    fds: int
    threads: int


@dataclasses.dataclass
class SoakResult:
    backend: str
    seconds: float
    passes: int = 0
    samples: list = dataclasses.field(default_factory=list)
    problems: list = dataclasses.field(default_factory=list)
    churn: int = 0

    def window(self, first):
        settled = [s for s in self.samples if s.at >= WARM_UP]
        if first:
            return [s for s in settled if s.at < WARM_UP + WINDOW]
        return [s for s in settled if s.at >= self.seconds - WINDOW]

    def summary(self):
        first, last = self.window(True), self.window(False)
        if not first or not last:
            return '%s: too few samples' % self.backend

        def span(key, scale=1):
            before = [getattr(s, key) / scale for s in first]
            after = [getattr(s, key) / scale for s in last]
            return ('%s %.1f -> %.1f (median), %.1f -> %.1f (least), '
                    '%.1f -> %.1f (peak)' % (
                        key, statistics.median(before),
                        statistics.median(after), min(before), min(after),
                        max(before), max(after)))

        return '%s: %d passes in %.0fs, %d changes; %s MiB; %s; %s' % (
            self.backend, self.passes, self.seconds, self.churn,
            span('rss', 1024 * 1024), span('fds'), span('threads'))


def _read_status(pid):
    rss = threads = 0
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                rss = int(line.split()[1]) * 1024
            elif line.startswith('Threads:'):
                threads = int(line.split()[1])
    return rss, threads


# What reading /proc of a process raises once the process is gone.
_GONE = (FileNotFoundError, ProcessLookupError)


def _children(pid):
    """The children of every thread of ``pid``."""
    children = []
    try:
        tasks = os.listdir('/proc/%d/task' % pid)
    except _GONE:
        return children
    for task in tasks:
        try:
            with open('/proc/%d/task/%s/children' % (pid, task)) as f:
                children.extend(int(child) for child in f.read().split())
        except _GONE:
            continue
    return children


def _age(pid):
    """Seconds since process ``pid`` started."""
    with open('/proc/%d/stat' % pid) as f:
        # Field 22, counted after the command name, which may hold spaces.
        started = int(f.read().rsplit(')', 1)[1].split()[19])
    with open('/proc/uptime') as f:
        uptime = float(f.read().split()[0])
    return uptime - started / os.sysconf('SC_CLK_TCK')


def daemon_processes(pid):
    """The daemon and its forked workers.

    Not the qemu-img they run, nor a fork on its way to exec qemu-img,
    which for a moment looks like the daemon.
    """
    found = [pid]
    for child in _children(pid):
        try:
            with open('/proc/%d/cmdline' % child, 'rb') as f:
                if b'cachekeeper' in f.read() and _age(child) > 1:
                    found.append(child)
        except _GONE:
            continue
    return found


def sample(pid, started):
    """One Sample summed over the daemon's processes, or None if gone."""
    rss = fds = threads = 0
    for process in daemon_processes(pid):
        try:
            process_rss, process_threads = _read_status(process)
            process_fds = len(os.listdir('/proc/%d/fd' % process))
        except _GONE:
            if process == pid:
                return None
            # A worker replaced meanwhile: the next sample has the new one.
            continue
        rss += process_rss
        threads += process_threads
        fds += process_fds
    return Sample(time.monotonic() - started, rss, fds, threads)


class Churn:
    """Changes the host between passes, as nova and users do."""

    def __init__(self, host):
        self.host = host
        self.changes = 0
        self.instances = []
        self.stop = threading.Event()
        host.instance(UUID % 0, {'disk': host.base(IN_USE, OLD)})

    def step(self):
        self.changes += 1
        number = self.changes
        if number % UNUSED_EVERY == 0:
            self.host.base(hosttree.image('soak-unused-%d' % number), OLD)
        if len(self.instances) < 4:
            self.instances.append(self.host.instance(
                UUID % number, {'disk': self.host.cache_path(IN_USE)}))
        else:
            directory = self.instances.pop(0)
            # nova's delete_instance_files: rename, then remove.
            os.rename(directory, directory + '_del')
            shutil.rmtree(directory + '_del')

    def run(self):
        while not self.stop.wait(CHURN_INTERVAL):
            self.step()


def _odd_entries(host):
    # Entries every pass reports (once) and must never follow.
    os.mkfifo(host.cache_path(hosttree.image('soak-fifo')))
    os.symlink('/', host.cache_path(hosttree.image('soak-symlink')))
    with open(os.path.join(os.fsencode(host.cache_dir), b'\xff not utf-8'),
              'wb'):
        pass


def _write_config(host, backend):
    system_daemon.write_config(
        host.config_file,
        DEFAULT={'instances_path': host.instances_path,
                 'state_path': host.state_path, 'host': 'soak',
                 'service_backend': backend},
        image_cache={'manager_interval': 0.2,
                     'remove_unused_original_minimum_age_seconds':
                         hosttree.DAY,
                     # Every disk goes to qemu-img, however it may be read.
                     'inspect_method': 'qemu-img'},
        scrubber={'scrub_delay': 0, 'drain_interval': 1})


def _log_problems(log):
    return [line for line in log.splitlines()
            if 'Traceback' in line or 'Logging error' in line or
            ' ERROR ' in line][:20]


def _flatness_problems(result):
    first, last = result.window(True), result.window(False)
    if not first or not last:
        return ['too few samples: %d' % len(result.samples)]
    problems = []
    growth = (statistics.median(s.rss for s in last) -
              statistics.median(s.rss for s in first))
    if growth > RSS_ALLOWANCE:
        problems.append('resident memory grew by %d KiB' % (growth // 1024))
    for key, allowance in (('fds', FD_ALLOWANCE),
                           ('threads', THREAD_ALLOWANCE)):
        # What a pass holds for a moment varies with when the sample falls;
        # what is held between passes is what a leak raises.
        before = min(getattr(s, key) for s in first)
        after = min(getattr(s, key) for s in last)
        if after > before + allowance:
            problems.append('%s grew from %d to %d' % (key, before, after))
    return problems


def run_soak(root, backend, seconds):
    """Soak the daemon on ``backend`` for ``seconds``; a SoakResult."""
    host = hosttree.HostTree(root)
    os.chmod(host.state_path, 0o700)
    _write_config(host, backend)
    _odd_entries(host)
    churn = Churn(host)
    result = SoakResult(backend, seconds)
    started = time.monotonic()
    daemon = system_daemon.Daemon(host.root, host.config_file)
    churner = threading.Thread(target=churn.run)
    churner.start()
    try:
        while time.monotonic() - started < seconds:
            found = sample(daemon.process.pid, started)
            if found is None or daemon.process.poll() is not None:
                result.problems.append('the daemon died')
                break
            result.samples.append(found)
            time.sleep(SAMPLE_INTERVAL)
        churn.stop.set()
        churner.join()
        status, _took = daemon.stop(timeout=20)
        if status != 0:
            result.problems.append('the daemon exited with %s' % status)
    finally:
        churn.stop.set()
        daemon.kill()
    with open(os.path.join(root, 'samples.json'), 'w') as f:
        json.dump([dataclasses.asdict(s) for s in result.samples], f)
    log = daemon.log()
    result.passes = len(daemon.lines(PASS_LINE))
    result.churn = churn.changes
    result.problems.extend(_log_problems(log))
    result.problems.extend(_flatness_problems(result))
    if result.passes < seconds / 2:
        result.problems.append('only %d passes' % result.passes)
    return result


def run_soaks(root, backends, seconds):
    """Soak each backend at the same time; return their SoakResults."""
    with concurrent.futures.ThreadPoolExecutor(len(backends)) as pool:
        futures = [pool.submit(run_soak, os.path.join(root, backend),
                               backend, seconds)
                   for backend in backends]
        return [future.result() for future in futures]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=1800)
    parser.add_argument('--backend', choices=BACKENDS, action='append',
                        help='Soak this backend (default: both at once).')
    parser.add_argument('--dir', help='Where to build the hosts (kept); '
                                      'default: a temporary directory.')
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    root = args.dir or tempfile.mkdtemp(prefix='cachekeeper-soak-')
    results = run_soaks(root, args.backend or BACKENDS, args.seconds)
    for result in results:
        print(json.dumps({'summary': result.summary(),
                          'problems': result.problems}))
    return 1 if any(result.problems for result in results) else 0


if __name__ == '__main__':
    sys.exit(main())
