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

"""Spawn/remove races: nova-computes against cache passes.

Several novasim processes spawn, rescue, resize and delete instances on
one host while a passloop process runs cache passes back to back with
minimum ages of 1 s and no scrub delay, so that unused bases really go
within seconds. Meanwhile this process checks the invariant (every
instance disk's backing chain is complete, and made on the download of
its base that is still there) over and over; once the simulators are
done, passes go on over the instances they left, and the invariant is
checked once more with everything quiet. Lock files must keep their
inodes throughout.

With ``--nova-real`` the workers are novareal processes instead, run by
the python of ``.venv-nova``: they spawn, rescue and delete instances
through nova's real libvirt image code, and the passes are the real
daemon's (``cachekeeper``, a pass every 0.2 s), which must exit 0 on
SIGTERM with no traceback in its log.

The short versions run in CI (tests/stress/test_race.py,
tests/stress/test_nova_race.py); the long ones by hand::

    .venv/bin/python -m tests.stress.race --cycles 5000 [--nova-real]

It prints the report as JSON and exits 1 on any violation or if nothing
was removed.
"""

import argparse
import collections
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from tests.lib import daemon as system_daemon
from tests.lib import nova
from tests.stress import invariant

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

MIN_AGE = 1
# Passes over the instances the simulators leave, with nothing changing.
SETTLE_SECONDS = 4
# Between two runs of qemu-img info on every disk; the token check runs
# in between, as often as it can.
CHAIN_CHECK_INTERVAL = 1.0
STOP_TIMEOUT = 60
# The daemon's pass interval, for the real daemon.
DAEMON_INTERVAL = 0.2

# The programs that play nova-compute (modules of tests.stress, with the
# same arguments and report): a simulation, and nova's own image code,
# which runs in a virtualenv of its own (tools/install.sh makes it).
NOVASIM = 'novasim'
NOVAREAL = 'novareal'
WORKER_PYTHON = {NOVASIM: sys.executable, NOVAREAL: nova.PYTHON}
# Images for novareal: more than the instances alive at a time, so that
# most of them fall unused now and then.
NOVA_REAL_IMAGES = 12


@dataclasses.dataclass
class RaceResult:
    cycles: int = 0
    spawned: int = 0
    failed_spawns: dict = dataclasses.field(default_factory=dict)
    removed: int = 0
    passes: int = 0
    violations: list = dataclasses.field(default_factory=list)
    checks: int = 0
    disks_at_end: int = 0
    counts: dict = dataclasses.field(default_factory=dict)
    pass_loop: dict = dataclasses.field(default_factory=dict)
    log_problems: list = dataclasses.field(default_factory=list)
    duration_s: float = 0.0
    worker: str = NOVASIM

    def summary(self):
        return ('%s: %d cycles (%d spawned, failed spawns %s), %d passes, '
                '%d files removed, %d invariant checks, %d disks at the '
                'end, %d violations, %.0fs' % (
                    self.worker, self.cycles, self.spawned,
                    self.failed_spawns or 'none',
                    self.passes, self.removed, self.checks,
                    self.disks_at_end, len(self.violations),
                    self.duration_s))


class Host:
    """instances_path, state_path, the simulators' records, the config.

    With ``daemon``, the config sets the daemon's pass interval too.
    """

    def __init__(self, root, daemon=False):
        self.root = root
        self.instances_path = os.path.join(root, 'instances')
        self.state_path = os.path.join(root, 'state')
        self.records = os.path.join(root, 'records')
        self.config_file = os.path.join(root, 'cachekeeper.conf')
        self.log_file = os.path.join(
            root, 'cachekeeper.log' if daemon else 'passloop.log')
        os.makedirs(os.path.join(self.instances_path, '_base'))
        os.makedirs(os.path.join(self.instances_path, 'locks'))
        os.mkdir(self.state_path, 0o700)
        os.mkdir(self.records)
        image_cache = [
            'remove_unused_%s_minimum_age_seconds = %d' % (kind, MIN_AGE)
            for kind in ('original', 'resized', 'swap', 'ephemeral')]
        if daemon:
            image_cache.append('manager_interval = %s' % DAEMON_INTERVAL)
        with open(self.config_file, 'w') as f:
            f.write('[DEFAULT]\ninstances_path = %s\nstate_path = %s\n'
                    'host = race\nlog_file = %s\n'
                    '[image_cache]\n%s\n[scrubber]\nscrub_delay = 0\n' % (
                        self.instances_path, self.state_path,
                        self.log_file, '\n'.join(image_cache)))


def _python(log_path, module, *args, python=sys.executable):
    """Start ``python -m module args``; its stderr goes to ``log_path``."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    with open(log_path, 'wb') as log:
        return subprocess.Popen([python, '-m', module] + list(args),
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=log)


def _stop(process, log_path, timeout=STOP_TIMEOUT):
    """SIGTERM ``process``; return the end of its stderr."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with open(log_path, errors='replace') as f:
        return f.read()[-2000:]


def _read_report(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class Checker:
    """Checks the invariant while things change; collects violations."""

    def __init__(self, host):
        self.host = host
        self.violations = collections.OrderedDict()
        self.checks = 0
        self._next_chain_check = 0.0

    def add(self, messages):
        for message in messages:
            self.violations.setdefault(message, None)

    def check_once(self):
        self.add(invariant.check_tokens(self.host.instances_path,
                                         self.host.records))
        if time.monotonic() >= self._next_chain_check:
            self.add(invariant.check_chains(self.host.instances_path,
                                             self.host.records))
            self._next_chain_check = time.monotonic() + CHAIN_CHECK_INTERVAL
        self.checks += 1

    def check_until(self, done):
        while not done():
            self.check_once()
            time.sleep(0.02)


def _lock_file_violations(lock_inodes):
    violations = []
    for path, ino in sorted(lock_inodes.items()):
        try:
            now = os.stat(path).st_ino
        except FileNotFoundError:
            violations.append('lock file %s was removed' % path)
            continue
        if now != ino:
            violations.append('lock file %s was replaced' % path)
    return violations


def _log_lines(log_file):
    try:
        with open(log_file, errors='replace') as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _log_problems(log_file):
    return [line for line in _log_lines(log_file)
            if 'Traceback' in line or ' ERROR ' in line][:20]


class PassLoop:
    """Cache passes back to back, in a passloop process."""

    def __init__(self, root, host, inspect_methods=()):
        self.report_path = os.path.join(root, 'passloop.json')
        self.log_path = os.path.join(root, 'passloop.stderr')
        self.process = _python(
            self.log_path, 'tests.stress.passloop',
            '--config-file', host.config_file, '--report', self.report_path,
            *['--inspect-method=%s' % method for method in inspect_methods])
        self.error = None

    def stop(self):
        self.error = _stop(self.process, self.log_path)

    def report(self, checker):
        """What the passes did; a violation if the loop failed."""
        loop = _read_report(self.report_path)
        if loop is None or self.process.returncode != 0:
            checker.add(['pass loop failed (exit %s): %s' % (
                self.process.returncode, self.error)])
            loop = {}
        return loop


# The daemon's line after each pass, with its counts by verdict, and its
# line for each queued file it deleted.
PASS_LINE = re.compile(r'INFO cachekeeper\.service .*Pass (done|interrupted)'
                       r' in .*\((?P<counts>[^)]*)\)')
DRAINED_LINE = re.compile(r' INFO cachekeeper\.scrub\.queue .*Deleted '
                          r'quarantined .* \(scrub queue entry \d+\)')


class DaemonPasses:
    """The real daemon, a pass every DAEMON_INTERVAL, until SIGTERM."""

    def __init__(self, root, host, inspect_methods=()):
        if inspect_methods:
            raise ValueError('the daemon has one inspect_method')
        self.host = host
        self.daemon = system_daemon.Daemon(root, host.config_file)
        self.status = None
        self.notifications = 0
        self._stopping = threading.Event()
        self._reader = threading.Thread(target=self._read_notifications,
                                        daemon=True)
        self._reader.start()

    def _read_notifications(self):
        # As systemd would: unread, they fill the socket's queue.
        while not self._stopping.wait(0.1):
            self.notifications += len(self.daemon.read_notifications())
            del self.daemon.notifications[:]

    def stop(self):
        self._stopping.set()
        self._reader.join()
        try:
            self.status, _seconds = self.daemon.stop(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.status = 'nothing: still running after %ds' % STOP_TIMEOUT
        finally:
            self.daemon.kill()

    def report(self, checker):
        """What the passes did, from the daemon's log.

        ``removed`` counts the files passes queued for removal, ``drained``
        the queued files deleted for good. A violation unless the daemon
        exited 0 on SIGTERM with no traceback in its output.
        """
        output = self.daemon.log()
        if self.status != 0 or 'Traceback' in output:
            checker.add(['the daemon exited with %s on SIGTERM: %s' % (
                self.status, output[-2000:])])
        verdicts = collections.Counter()
        passes = drained = 0
        for line in _log_lines(self.host.log_file):
            match = PASS_LINE.search(line)
            if match:
                passes += 1
                verdicts.update({
                    name: int(number) for name, number in (
                        item.split('=') for item in
                        match.group('counts').split())})
            elif DRAINED_LINE.search(line):
                drained += 1
        return {'passes': passes, 'removed': verdicts['queued'],
                'drained': drained, 'verdicts': dict(verdicts),
                'exit_status': self.status,
                'notifications': self.notifications}


def _start_simulators(root, host, cycles, workers, seed, images, max_live,
                      mean_life, time_limit, worker=NOVASIM):
    """Start the workers; return [(report, log, process)]."""
    simulators = []
    for number in range(workers):
        report = os.path.join(root, '%s-%d.json' % (worker, number))
        log = os.path.join(root, '%s-%d.log' % (worker, number))
        share = cycles // workers + (1 if number < cycles % workers else 0)
        simulators.append((report, log, _python(
            log, 'tests.stress.' + worker,
            '--instances-path', host.instances_path,
            '--records', host.records, '--report', report,
            '--seed', str(seed * 1000 + number), '--cycles', str(share),
            '--max-live', str(max_live), '--mean-life', str(mean_life),
            '--min-age', str(MIN_AGE), '--images', str(images),
            '--time-limit', str(time_limit),
            python=WORKER_PYTHON[worker])))
    return simulators


def _kill_a_nova_in_disk_info(root, host):
    """Leave the directory of a spawn killed with disk.info created empty.

    A nova-compute killed there leaves an empty disk.info for good; it must
    hold back nothing. Returns violations.
    """
    log = os.path.join(root, 'novareal-killed.log')
    process = _python(
        log, 'tests.stress.novareal', '--instances-path', host.instances_path,
        '--records', host.records, '--report', os.devnull,
        '--killed-in-disk-info', python=nova.PYTHON)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
    if process.returncode == -signal.SIGKILL:
        return []
    error = _stop(process, log)
    return ['the spawn to be killed in disk.info ended with %s: %s' % (
        process.returncode, error)]


def _collect_simulators(simulators, errors, checker, result):
    """Add up the simulators' reports into ``result``."""
    counts = collections.Counter()
    failed = collections.Counter()
    lock_inodes = {}
    for (report_path, _log, process), error in zip(simulators, errors):
        report = _read_report(report_path)
        if report is None or process.returncode != 0:
            checker.add(['simulator %s failed (exit %s): %s' % (
                report_path, process.returncode, error)])
            continue
        result.cycles += report['cycles']
        counts.update(report['counts'])
        failed.update(report['failed_spawns'])
        checker.add(report['violations'])
        for path, ino in report['lock_inodes'].items():
            if lock_inodes.setdefault(path, ino) != ino:
                checker.add(['lock file %s has two inodes' % path])
    checker.add(_lock_file_violations(lock_inodes))
    result.spawned = counts['spawned']
    result.counts = dict(counts)
    result.failed_spawns = dict(failed)


def run_race(root, cycles, workers=4, seed=1, images=6, max_live=3,
             mean_life=0.8, time_limit=3600, inspect_methods=(),
             worker=NOVASIM, daemon=False):
    """Run the race in directory ``root``; return a RaceResult.

    ``worker`` names the program that plays nova-compute (NOVASIM or
    NOVAREAL). The passes are passloop's, back to back, or with
    ``daemon`` the real daemon's. passloop's passes take turns with the
    [image_cache] inspect_method values in ``inspect_methods``; with
    none, they use the default.
    """
    started = time.monotonic()
    # nova names backing files by absolute path.
    root = os.path.abspath(root)
    host = Host(root, daemon=daemon)
    checker = Checker(host)
    if worker == NOVAREAL:
        checker.add(_kill_a_nova_in_disk_info(root, host))
    passes = (DaemonPasses if daemon else PassLoop)(root, host,
                                                    inspect_methods)
    simulators = _start_simulators(root, host, cycles, workers, seed, images,
                                   max_live, mean_life, time_limit, worker)
    try:
        checker.check_until(lambda: all(p.poll() is not None
                                        for _r, _l, p in simulators))
        settle_until = time.monotonic() + SETTLE_SECONDS
        checker.check_until(lambda: time.monotonic() >= settle_until)
    finally:
        passes.stop()
        simulator_errors = [_stop(p, log) for _r, log, p in simulators]
    # Everything is quiet now: the last check is exact.
    checker.add(invariant.check_chains(host.instances_path, host.records))
    checker.add(invariant.check_tokens(host.instances_path, host.records))
    result = RaceResult(worker=worker)
    result.disks_at_end = sum(1 for _ in invariant.instance_disks(
        host.instances_path))
    _collect_simulators(simulators, simulator_errors, checker, result)
    loop = passes.report(checker)
    result.pass_loop = loop
    result.passes = loop.get('passes', 0)
    result.removed = loop.get('removed', 0)
    result.violations = list(checker.violations)
    result.checks = checker.checks
    result.log_problems = _log_problems(host.log_file)
    result.duration_s = time.monotonic() - started
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cycles', type=int, default=5000)
    parser.add_argument('--workers', type=int, default=4)
    parser.add_argument('--seed', type=int, default=int(time.time()))
    parser.add_argument('--images', type=int,
                        help='Images the workers spawn from (default: 6, '
                             'or %d with --nova-real).' % NOVA_REAL_IMAGES)
    parser.add_argument('--max-live', type=int, default=3)
    parser.add_argument('--mean-life', type=float, default=0.8)
    parser.add_argument('--inspect-method', action='append', default=[],
                        choices=('auto', 'qemu-img'), dest='inspect_methods',
                        help='[image_cache] inspect_method of the passes; '
                             'given more than once, the passes take turns.')
    parser.add_argument('--nova-real', action='store_true',
                        help="Spawn through nova's real image code (in "
                             '.venv-nova) against the real daemon.')
    parser.add_argument('--time-limit', type=float, default=3600,
                        help='Seconds after which the workers stop '
                             'spawning, whatever the cycles.')
    parser.add_argument('--dir', help='Where to build the host (kept); '
                                      'default: a temporary directory.')
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    root = args.dir or tempfile.mkdtemp(prefix='cachekeeper-race-')
    images = args.images or (NOVA_REAL_IMAGES if args.nova_real else 6)
    result = run_race(root, args.cycles, workers=args.workers,
                      seed=args.seed, images=images,
                      max_live=args.max_live, mean_life=args.mean_life,
                      time_limit=args.time_limit,
                      inspect_methods=args.inspect_methods,
                      worker=NOVAREAL if args.nova_real else NOVASIM,
                      daemon=args.nova_real)
    print(json.dumps(dataclasses.asdict(result), indent=2))
    print('seed %d, host in %s: %s' % (args.seed, root, result.summary()),
          file=sys.stderr)
    return 1 if result.violations or not result.removed else 0


if __name__ == '__main__':
    sys.exit(main())
