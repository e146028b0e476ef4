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

"""How long an image cache pass takes, against nova's and the disk's floor.

For each tree family and size it builds a host tree and measures, on that
same tree:

- the floor: scandir and lstat of every _base file and every instance
  disk, and a read of the first 4 KiB of every disk;
- cachekeeper's cold pass (dry run, empty state database) and its warm
  passes (nothing changed): the passes a daemon runs, timed inside one
  process, and a warm pass in a process of its own on the kept state
  database (warm-new, as cachekeeper-manage runs it);
- nova's real image cache manager on a copy of the tree, when a Python
  with nova and the oracle (../shared/tools/nova_oracle.py) are there;
- the daemon (cachekeeper, a subprocess) on a copy of the tree: its first
  real pass (touches, queueing), its memory between passes, its next,
  warm, real pass and its CPU time while idle.

Then the daemon's idle memory on the trees of --memory-sizes, against the
memory of its imports (footprint.py) and of the daemon on an empty cache.

Tree families: make_tree (bench/make_tree.py: disk.info and libvirt.xml in
every instance directory) and make_host (../shared/tools/make_host.py:
only the disks). cachekeeper's dry runs leave the tree as built; qemu-img
calls are counted by a wrapper first on PATH. See bench/README.rst.
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)
import footprint  # noqa: E402
import make_tree  # noqa: E402

SHARED_TOOLS = os.path.join(REPO_DIR, '..', 'shared', 'tools')
DEFAULT_ORACLE = os.path.join(SHARED_TOOLS, 'nova_oracle.py')
DEFAULT_MAKE_HOST = os.path.join(SHARED_TOOLS, 'make_host.py')
# Made by tools/install.sh when it makes nova's virtualenv.
DEFAULT_NOVA_VENV = os.path.join(REPO_DIR, '.venv-nova')

MAKE_TREE = 'make_tree'
MAKE_HOST = 'make_host'
FAMILIES = (MAKE_TREE, MAKE_HOST)
# _base files per instance in the default trees.
FILES_PER_INSTANCE = 5
# make_host's host of 10,000 originals (as its documentation runs it);
# these counts scale with the size, the others do not.
MAKE_HOST_SCALED = {'instances': 2000, 'resized': 1000,
                    'kernel-ramdisk': 200, 'backing-mismatch': 100,
                    'resize-dirs': 40, 'multi-ephemeral': 20,
                    'orphan-dirs': 100, 'deleted-instances': 100}
MAKE_HOST_SCALE = 10000
MAKE_HOST_FIXED = {'in-use-fraction': 0.15, 'swap': 4, 'ephemeral': 4,
                   'junk': 5, 'seed': 3}

DISK_PREFIX = 'disk'
METADATA = ('disk.info',)
NOT_INSTANCES = ('_base', 'locks')
READ_BYTES = 4096
PASS_TIMEOUT = 3600
RACY_WAIT = 3
# The daemon's interval while it is watched idle: no pass comes by itself.
IDLE_INTERVAL = 3600
# After a pass, how long the daemon is left alone before it is measured.
SETTLE_S = 1.0
SAMPLE_S = 0.05


def floor(instances_path):
    """The least a pass must do: list and lstat, read each disk's header."""
    started = time.perf_counter()
    with os.scandir(os.path.join(instances_path, '_base')) as entries:
        for entry in entries:
            entry.stat(follow_symlinks=False)
    with os.scandir(instances_path) as directories:
        for directory in directories:
            if (directory.name in NOT_INSTANCES or
                    not directory.is_dir(follow_symlinks=False)):
                continue
            with os.scandir(directory.path) as files:
                for entry in files:
                    if (entry.name.startswith(DISK_PREFIX) and
                            entry.name not in METADATA):
                        entry.stat(follow_symlinks=False)
                        fd = os.open(entry.path, os.O_RDONLY)
                        try:
                            os.read(fd, READ_BYTES)
                        finally:
                            os.close(fd)
    return time.perf_counter() - started


def write_config(path, instances_path, state_path, log_file=None,
                 **image_cache):
    lines = ['[DEFAULT]',
             'instances_path = %s' % instances_path,
             'state_path = %s' % state_path,
             'host = %s' % make_tree.HOST]
    if log_file:
        lines.append('log_file = %s' % log_file)
    lines.append('[image_cache]')
    lines += ['%s = %s' % item for item in sorted(image_cache.items())]
    # Written whole and renamed: the daemon may read it at any time.
    with open(path + '.new', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    os.rename(path + '.new', path)


def fresh_directory(path):
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path, mode=0o700)
    return path


def counting_qemu_img(workdir):
    """A qemu-img that records each call, then runs the real one."""
    real = shutil.which('qemu-img')
    bin_dir = os.path.join(workdir, 'bin')
    os.makedirs(bin_dir, exist_ok=True)
    record = os.path.join(workdir, 'qemu-img-calls')
    with open(os.path.join(bin_dir, 'qemu-img'), 'w') as f:
        f.write('#!/bin/sh\necho "$*" >> %s\nexec %s "$@"\n' % (record, real))
    os.chmod(os.path.join(bin_dir, 'qemu-img'), 0o755)
    return bin_dir, record


def count_lines(path):
    try:
        with open(path) as f:
            return sum(1 for _line in f)
    except FileNotFoundError:
        return 0


def run_passes(config_file, passes, workdir):
    """Run ``passes`` dry runs in one new process; return what it measured."""
    bin_dir, record = counting_qemu_img(workdir)
    env = dict(os.environ, PATH='%s:%s' % (bin_dir, os.environ['PATH']))
    command = [sys.executable, os.path.abspath(__file__), '--child',
               config_file, '--passes', str(passes), '--record', record]
    process = subprocess.run(command, capture_output=True, text=True,
                             env=env, timeout=PASS_TIMEOUT)
    if process.returncode != 0:
        raise SystemExit('pass failed:\n%s' % process.stderr[-3000:])
    return json.loads(process.stdout.splitlines()[-1])


def child(config_file, passes, record):
    """Run dry runs as the daemon does (one CacheManager); print JSON."""
    from oslo_log import log as logging

    from cachekeeper import config
    from cachekeeper import manager
    from cachekeeper.scrub import queue

    conf = config.CONF
    logging.register_options(conf)
    conf.set_default('use_stderr', True)
    config.parse_args([sys.argv[0], '--config-file', config_file])
    logging.set_defaults(default_log_levels=(
        logging.get_default_log_levels() + ['cachekeeper=WARNING']))
    logging.setup(conf, 'pass_bench')
    cache_manager = manager.CacheManager(conf, queue.from_conf(conf))
    results = []
    for _index in range(passes):
        calls = count_lines(record)
        started = time.monotonic()
        report = cache_manager.run_pass(dry_run=True)
        results.append({
            'duration_s': time.monotonic() - started,
            'qemu_img_calls': count_lines(record) - calls,
            'summary': report.summary,
            'errors': len(report.errors)})
    print(json.dumps({'passes': results, 'peak_rss_mb': peak_rss_mb()}))


def peak_rss_mb(pid='self'):
    with open('/proc/%s/status' % pid) as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    return None


# The trees.

def make_host_command(args, root, size, instances):
    """make_host.py's command for a host of ``size`` originals."""
    scaled = {name: round(count * size / MAKE_HOST_SCALE)
              for name, count in MAKE_HOST_SCALED.items()}
    scaled['instances'] = instances
    command = [sys.executable, args.make_host, root, '--bases', str(size),
               '--host', make_tree.HOST, '--force',
               '--jobs', str(2 * (os.cpu_count() or 1))]
    for name, value in sorted({**scaled, **MAKE_HOST_FIXED}.items()):
        command += ['--%s' % name, str(value)]
    return command


def build_tree(args, family, size, instances, tree_root):
    started = time.monotonic()
    if family == MAKE_TREE:
        make_tree.build(tree_root, size, instances, seed=size)
    else:
        if not os.path.isfile(args.make_host):
            raise SystemExit('no make_host.py at %s (--make-host)'
                             % args.make_host)
        subprocess.run(make_host_command(args, tree_root, size, instances),
                       check=True, stdout=subprocess.DEVNULL)
    return round(time.monotonic() - started, 1)


def tree_counts(tree_root):
    """_base files, listed instances, directories and disks of a tree."""
    instances_path = os.path.join(tree_root, 'instances')
    directories = disks = 0
    with os.scandir(instances_path) as entries:
        for entry in entries:
            if (entry.name in NOT_INSTANCES or entry.name.startswith('.') or
                    not entry.is_dir(follow_symlinks=False)):
                continue
            directories += 1
            disks += sum(1 for name in os.listdir(entry.path)
                         if name.startswith(DISK_PREFIX) and
                         name not in METADATA)
    listed = 0
    listing = os.path.join(tree_root, 'instances.json')
    if os.path.isfile(listing):
        with open(listing) as f:
            data = json.load(f)
        listed = sum(1 for record in data['instances']
                     if not record.get('deleted') and
                     record.get('host') == data.get('host'))
    return {'files': len(os.listdir(os.path.join(instances_path, '_base'))),
            'instances': listed, 'directories': directories, 'disks': disks}


def prepare_tree(args, family, size, instances):
    """Build (or, with --reuse, keep) a tree; (workdir, tree root, built s)."""
    workdir = os.path.join(args.workdir, '%s-%d' % (family, size))
    tree_root = os.path.join(workdir, 'tree')
    put_back(tree_root)
    built = None
    # instances.json is written last by both generators.
    if not (args.reuse and
            os.path.isfile(os.path.join(tree_root, 'instances.json'))):
        built = build_tree(args, family, size, instances, tree_root)
        # A file changed within the last two seconds cannot be proven
        # unchanged by its times: every pass would read it again.
        time.sleep(RACY_WAIT)
    return workdir, tree_root, built


def _pristine(tree_root):
    return os.path.join(tree_root, 'instances.pristine')


def put_back(tree_root):
    """Put back the tree that copy_in_place set aside, if it is aside."""
    pristine = _pristine(tree_root)
    if os.path.isdir(pristine):
        instances_path = os.path.join(tree_root, 'instances')
        if os.path.lexists(instances_path):
            shutil.rmtree(instances_path)
        os.rename(pristine, instances_path)


@contextlib.contextmanager
def copy_in_place(tree_root):
    """A copy of the tree's instances_path, at its path; the original after.

    The overlays name their backing files by absolute path, as nova writes
    them: in a copy made elsewhere they would name the original's files,
    which are outside the copy's cache. So the original is set aside (a
    rename) and the copy made where it was.
    """
    instances_path = os.path.join(tree_root, 'instances')
    os.rename(instances_path, _pristine(tree_root))
    try:
        subprocess.run(['cp', '-a', '--sparse=always', _pristine(tree_root),
                        instances_path], check=True)
        yield instances_path
    finally:
        put_back(tree_root)


# nova.

def nova_pass(python, oracle, tree_root, workdir):
    """Run nova's pass on a copy of the tree; (seconds, qemu-img calls)."""
    output = os.path.join(workdir, 'nova.json')
    process = subprocess.run(
        [python, oracle, os.path.join(tree_root, 'instances'),
         os.path.join(tree_root, 'instances.json'),
         '--work-copy', os.path.join(workdir, 'nova-copy'),
         '--summary', '--output', output],
        capture_output=True, text=True, timeout=PASS_TIMEOUT)
    if process.returncode != 0:
        raise SystemExit('nova pass failed:\n%s' % process.stderr[-3000:])
    with open(output) as f:
        result = json.load(f)
    shutil.rmtree(os.path.join(workdir, 'nova-copy'))
    methods = result['breakdown']['methods']
    calls = methods.get('qemu_img_info (subprocess)', {}).get('calls')
    return result['elapsed_s'], calls


def default_nova_python():
    venv = os.environ.get('NOVA_VENV')
    if not venv and os.path.isdir(DEFAULT_NOVA_VENV):
        venv = DEFAULT_NOVA_VENV
    return venv and os.path.join(venv, 'bin', 'python')


def nova_available(args):
    if not args.nova_python:
        return 'no nova Python (--nova-python, $NOVA_VENV or .venv-nova)'
    if not os.path.isfile(args.nova_oracle):
        return 'no oracle at %s' % args.nova_oracle
    check = subprocess.run([args.nova_python, '-c', 'import nova'],
                           capture_output=True)
    if check.returncode != 0:
        return '%s cannot import nova' % args.nova_python
    return None


# The daemon.

def process_group(pgid):
    """The pids of a process group."""
    pids = []
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                with open('/proc/%s/stat' % name) as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(name))
    return pids


def group_rss_mb(pgid):
    total = 0
    for pid in process_group(pgid):
        try:
            with open('/proc/%d/status' % pid) as f:
                for line in f:
                    if line.startswith('VmRSS:'):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def group_cpu_s(pgid):
    ticks = os.sysconf('SC_CLK_TCK')
    total = 0
    for pid in process_group(pgid):
        try:
            with open('/proc/%d/stat' % pid) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


_PASS_LINE = re.compile(r'Pass (done|interrupted) in')


def pass_lines(log_file):
    try:
        with open(log_file, errors='replace') as f:
            return [line.strip() for line in f if _PASS_LINE.search(line)]
    except FileNotFoundError:
        return []


class Daemon:
    """The daemon on a tree, watched from outside: its log and /proc."""

    def __init__(self, args, workdir, instances_path):
        self.workdir = workdir
        self.instances_path = instances_path
        self.inspect_method = args.inspect_method
        self.state = fresh_directory(os.path.join(workdir, 'daemon-state'))
        self.config_file = os.path.join(workdir, 'daemon.conf')
        self.log_file = os.path.join(workdir, 'daemon.log')
        if os.path.exists(self.log_file):
            os.unlink(self.log_file)
        bin_dir, self.record = counting_qemu_img(workdir)
        self.env = dict(os.environ,
                        PATH='%s:%s' % (bin_dir, os.environ['PATH']))
        self.process = None
        self.deadline = time.monotonic() + PASS_TIMEOUT

    def configure(self, interval):
        write_config(self.config_file, self.instances_path, self.state,
                     log_file=self.log_file, manager_interval=interval,
                     inspect_method=self.inspect_method)

    def start(self):
        self.configure(IDLE_INTERVAL)
        self.process = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), 'cachekeeper'),
             '--config-file', self.config_file],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=self.env, start_new_session=True)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)

    def rss_mb(self):
        return group_rss_mb(self.process.pid)

    def _check(self, what):
        if time.monotonic() > self.deadline or self.process.poll() is not None:
            raise SystemExit('the daemon did not %s: see %s'
                             % (what, self.log_file))

    def until_passes(self, count):
        """Sample RSS until ``count`` passes are done; the peak (MB)."""
        peak = 0
        while len(pass_lines(self.log_file)) < count:
            self._check('run %d passes' % count)
            peak = max(peak, self.rss_mb())
            time.sleep(SAMPLE_S)
        return round(peak, 1)

    def last_pass(self):
        from cachekeeper import report
        with open(os.path.join(self.state, report.REPORT_FILE)) as f:
            return json.load(f)

    def idle(self, seconds):
        """Leave it alone a moment, then sample RSS and CPU for ``seconds``.

        Returns (median RSS MB, CPU percent).
        """
        passes = len(pass_lines(self.log_file))
        time.sleep(SETTLE_S)
        samples = []
        cpu_before = group_cpu_s(self.process.pid)
        started = time.monotonic()
        while time.monotonic() < started + seconds:
            self._check('stay up')
            samples.append(self.rss_mb())
            time.sleep(SAMPLE_S)
        cpu = group_cpu_s(self.process.pid) - cpu_before
        elapsed = time.monotonic() - started
        if len(pass_lines(self.log_file)) != passes:
            raise SystemExit('a pass ran while the daemon was to be idle: '
                             'see %s' % self.log_file)
        return (round(statistics.median(samples), 1),
                round(100 * cpu / elapsed, 2))

    def next_pass_now(self, first_pass):
        """Make the next pass due now, and the one after it far away.

        The interval runs from the start of the last pass, and a reload
        (SIGHUP) plans the next pass with the new interval.
        """
        since = time.time() - first_pass['started_at']
        self.configure(round(since + 0.5, 1))
        os.kill(self.process.pid, signal.SIGHUP)

    def no_more_passes(self):
        self.configure(IDLE_INTERVAL)
        os.kill(self.process.pid, signal.SIGHUP)


def run_daemon(args, workdir, tree_root):
    """Run the daemon on a copy of the tree; what it did and used.

    Its first (real) pass on a fresh state database, RSS sampled every
    50 ms from its start to the end of that pass; then ``--idle-seconds``
    left alone (RSS, CPU time); then, made due by a reload, its second
    pass (warm, real) and as long idle again.
    """
    with copy_in_place(tree_root) as instances_path:
        daemon = Daemon(args, workdir, instances_path)
        calls = count_lines(daemon.record)
        daemon.start()
        try:
            rss_first = daemon.until_passes(1)
            first = daemon.last_pass()
            calls_first = count_lines(daemon.record) - calls
            idle_rss, idle_cpu = daemon.idle(args.idle_seconds)
            daemon.next_pass_now(first)
            calls = count_lines(daemon.record)
            rss_warm = daemon.until_passes(2)
            warm = daemon.last_pass()
            calls_warm = count_lines(daemon.record) - calls
            daemon.no_more_passes()
            idle_after_warm, _cpu = daemon.idle(args.idle_seconds)
        finally:
            daemon.stop()
    return {
        'real_pass_s': first['duration_s'],
        'real_pass_summary': first['summary'],
        'real_pass_errors': len(first['errors']),
        'qemu_img_calls_real': calls_first,
        'daemon_warm_s': warm['duration_s'],
        'daemon_warm_summary': warm['summary'],
        'qemu_img_calls_daemon_warm': calls_warm,
        'rss_first_pass_mb': rss_first,
        'idle_rss_mb': idle_rss,
        'rss_warm_pass_mb': rss_warm,
        'idle_rss_after_warm_mb': idle_after_warm,
        'idle_cpu_percent': idle_cpu,
        'idle_window_s': args.idle_seconds,
        'daemon_passes': pass_lines(daemon.log_file)}


# Measuring.

def median(values):
    return statistics.median(values) if values else None


def measure(args, family, size, instances):
    workdir, tree_root, built = prepare_tree(args, family, size, instances)
    instances_path = os.path.join(tree_root, 'instances')
    result = {'family': family, 'size': size, **tree_counts(tree_root),
              'build_s': built}

    # The best of several runs: a floor.
    result['floor_s'] = min(floor(instances_path)
                            for _ in range(3 * args.repeat))

    config_file = os.path.join(workdir, 'cachekeeper.conf')
    state_path = os.path.join(workdir, 'state')
    write_config(config_file, instances_path, state_path,
                 inspect_method=args.inspect_method)
    cold, warm, rss = [], [], []
    for _index in range(args.repeat):
        fresh_directory(state_path)
        run = run_passes(config_file, 1 + args.warm_passes, workdir)
        cold.append(run['passes'][0])
        warm.extend(run['passes'][1:])
        rss.append(run['peak_rss_mb'])
    # Each in a new process on the state database the last one kept.
    alone = [run_passes(config_file, 1, workdir)['passes'][0]
             for _index in range(args.repeat)]
    result.update(
        cold_s=median([p['duration_s'] for p in cold]),
        warm_s=median([p['duration_s'] for p in warm]),
        warm_new_process_s=median([p['duration_s'] for p in alone]),
        qemu_img_calls_cold=max(p['qemu_img_calls'] for p in cold),
        qemu_img_calls_warm=max(p['qemu_img_calls'] for p in warm + alone),
        peak_rss_mb=round(max(rss), 1),
        summary=cold[0]['summary'], errors=cold[0]['errors'])

    result['nova_s'] = result['nova_qemu_img_calls'] = None
    if args.nova_skipped is None:
        result['nova_s'], result['nova_qemu_img_calls'] = nova_pass(
            args.nova_python, args.nova_oracle, tree_root, workdir)

    result.update(run_daemon(args, workdir, tree_root))
    return result


def empty_cache_daemon(args):
    """The daemon's memory on an empty cache (no instance either)."""
    workdir = os.path.join(args.workdir, 'empty')
    tree_root = os.path.join(workdir, 'tree')
    put_back(tree_root)
    os.makedirs(os.path.join(tree_root, 'instances', '_base'),
                exist_ok=True)
    return run_daemon(args, workdir, tree_root)


def memory(args, results):
    """The daemon's idle RSS by tree size, against the import floor."""
    sizes = [int(s) for s in args.memory_sizes.split(',') if s]
    if not sizes:
        return None
    family = args.memory_family
    rows = []
    for size in sizes:
        known = [r for r in results
                 if r['family'] == family and r['size'] == size]
        if known:
            row = known[0]
        else:
            workdir, tree_root, built = prepare_tree(
                args, family, size, instances_for(args, size))
            row = {'family': family, 'size': size, **tree_counts(tree_root),
                   'build_s': built}
            row.update(run_daemon(args, workdir, tree_root))
        rows.append(row)
    floor_rss = round(footprint.floor_rss_mb(), 1)
    empty = empty_cache_daemon(args)['idle_rss_mb']
    table = []
    for row in rows:
        files = row['files']
        table.append({
            'size': row['size'], 'files': files,
            'rss_first_pass_mb': row['rss_first_pass_mb'],
            'idle_rss_mb': row['idle_rss_mb'],
            'idle_rss_after_warm_mb': row['idle_rss_after_warm_mb'],
            'mb_per_1000_files': round(
                (row['idle_rss_mb'] - floor_rss) / files * 1000, 2),
            'mb_per_1000_files_above_empty': round(
                (row['idle_rss_mb'] - empty) / files * 1000, 2)})
    reference = max(table, key=lambda t: (t['size'] == 10000, t['files']))
    return {'family': family, 'backend': 'eventlet',
            'floor_rss_mb': floor_rss, 'empty_idle_rss_mb': empty,
            'sizes': table,
            'mb_per_1000_files': reference['mb_per_1000_files'],
            'mb_per_1000_files_at': reference['files'],
            'mb_per_1000_files_slope': slope(
                [(t['files'], t['idle_rss_mb']) for t in table])}


def slope(points):
    """MB per 1,000 files of the least-squares line through the points."""
    if len(points) < 2:
        return None
    mean_x = statistics.mean(x for x, _y in points)
    mean_y = statistics.mean(y for _x, y in points)
    spread = sum((x - mean_x) ** 2 for x, _y in points)
    if not spread:
        return None
    return round(1000 * sum((x - mean_x) * (y - mean_y)
                            for x, y in points) / spread, 2)


def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None


def add_ratios(results):
    for r in results:
        for what, key in (('cold', 'cold_s'), ('warm', 'warm_s'),
                          ('warm_new', 'warm_new_process_s'),
                          ('real', 'real_pass_s'),
                          ('daemon_warm', 'daemon_warm_s')):
            r['%s_over_floor' % what] = ratio(r[key], r['floor_s'])
        r['nova_over_cold'] = ratio(r['nova_s'], r['cold_s'])
        r['nova_over_real'] = ratio(r['nova_s'], r['real_pass_s'])
    for family in FAMILIES:
        mine = [r for r in results if r['family'] == family]
        if not mine:
            continue
        smallest = min(mine, key=lambda r: r['files'])
        for r in mine:
            for what in ('cold', 'warm'):
                r['%s_per_file_us' % what] = round(
                    r['%s_s' % what] / r['files'] * 1e6, 2)
                r['%s_scaling' % what] = ratio(
                    r['%s_per_file_us' % what],
                    smallest['%s_per_file_us' % what])


def targets(results, mem):
    """The issue's targets, on each family's largest tree."""
    rows = []

    def add(target, family, measured, met):
        rows.append({'target': target, 'family': family,
                     'measured': measured, 'met': met})

    for family in FAMILIES:
        mine = [r for r in results if r['family'] == family]
        if not mine:
            continue
        r = max(mine, key=lambda r: r['files'])
        at = ' at %d files' % r['files']
        nova = r['nova_over_cold']
        add('cold pass >= 50x faster than nova' + at, family,
            times(nova), None if nova is None else nova >= 50)
        add('warm-new <= 5x the floor' + at, family,
            times(r['warm_new_over_floor']), r['warm_new_over_floor'] <= 5)
        add('warm pass (daemon\'s CacheManager, dry run) <= 3x the '
            'floor' + at, family, times(r['warm_over_floor']),
            r['warm_over_floor'] <= 3)
        add('daemon\'s warm real pass <= 3x the floor' + at, family,
            times(r['daemon_warm_over_floor']),
            r['daemon_warm_over_floor'] <= 3)
        if len(mine) > 1:
            scaling = max(r['cold_scaling'], r['warm_scaling'])
            add('cost per file, %d -> %d files, <= 1.3x' % (
                min(m['files'] for m in mine), r['files']), family,
                'cold %s, warm %s' % (times(r['cold_scaling']),
                                      times(r['warm_scaling'])),
                scaling <= 1.3)
    if mem:
        add('idle RSS <= 1.5 MB per 1,000 files above the import floor, at '
            '%d files' % mem['mb_per_1000_files_at'], mem['family'],
            '%.2f MB (slope %s)' % (mem['mb_per_1000_files'], '-'
                                    if mem['mb_per_1000_files_slope'] is None
                                    else '%.2f MB'
                                    % mem['mb_per_1000_files_slope']),
            mem['mb_per_1000_files'] <= 1.5)
    return rows


# Printing.

def seconds(value):
    return '-' if value is None else '%.3f' % value


def times(value):
    return '-' if value is None else '%.1fx' % value


def print_rows(columns, rows):
    print(' '.join('%*s' % (width, name) for name, width, _get in columns))
    for r in rows:
        print(' '.join('%*s' % (width, get(r))
                       for _name, width, get in columns))


def print_table(results, nova_skipped, mem, goals):
    print('Seconds:')
    print_rows([
        ('family', 9, lambda r: r['family']),
        ('files', 6, lambda r: r['files']),
        ('inst', 5, lambda r: r['instances']),
        ('disks', 6, lambda r: r['disks']),
        ('floor', 7, lambda r: seconds(r['floor_s'])),
        ('cold', 7, lambda r: seconds(r['cold_s'])),
        ('warm', 7, lambda r: seconds(r['warm_s'])),
        ('warm-new', 8, lambda r: seconds(r['warm_new_process_s'])),
        ('real', 7, lambda r: seconds(r['real_pass_s'])),
        ('d-warm', 7, lambda r: seconds(r['daemon_warm_s'])),
        ('nova', 8, lambda r: seconds(r['nova_s'])),
        ('qemu-img c/w/r', 14, lambda r: '%s/%s/%s' % (
            r['qemu_img_calls_cold'], r['qemu_img_calls_warm'],
            r['qemu_img_calls_real'])),
        ('RSS MB', 6, lambda r: '%.0f' % r['peak_rss_mb']),
    ], results)
    print()
    print('Ratios (to the floor of the same tree, nova to cold):')
    print_rows([
        ('family', 9, lambda r: r['family']),
        ('files', 6, lambda r: r['files']),
        ('cold', 7, lambda r: times(r['cold_over_floor'])),
        ('warm', 7, lambda r: times(r['warm_over_floor'])),
        ('warm-new', 8, lambda r: times(r['warm_new_over_floor'])),
        ('real', 7, lambda r: times(r['real_over_floor'])),
        ('d-warm', 7, lambda r: times(r['daemon_warm_over_floor'])),
        ('nova/cold', 9, lambda r: times(r['nova_over_cold'])),
        ('cold/file', 9, lambda r: times(r['cold_scaling'])),
        ('warm/file', 9, lambda r: times(r['warm_scaling'])),
    ], results)
    if nova_skipped:
        print('nova: skipped (%s)' % nova_skipped)
    print()
    for r in results:
        print('%s %d files: real pass %s; then warm %s; daemon RSS %s MB '
              'in the first pass, %s MB idle, %s MB in the warm pass, %s MB '
              'idle after it; idle CPU %s%% over %s s' % (
                  r['family'], r['files'],
                  ' '.join('%s=%d' % (k, v) for k, v in
                           r['real_pass_summary'].items() if v),
                  ' '.join('%s=%d' % (k, v) for k, v in
                           r['daemon_warm_summary'].items() if v),
                  r['rss_first_pass_mb'], r['idle_rss_mb'],
                  r['rss_warm_pass_mb'], r['idle_rss_after_warm_mb'],
                  r['idle_cpu_percent'], r['idle_window_s']))
    if mem:
        print()
        print('Daemon memory, %s trees (%s backend): import floor %.1f MB '
              '(footprint.py), idle on an empty cache %.1f MB:' % (
                  mem['family'], mem['backend'], mem['floor_rss_mb'],
                  mem['empty_idle_rss_mb']))
        print_rows([
            ('files', 6, lambda t: t['files']),
            ('first pass', 10, lambda t: '%.1f' % t['rss_first_pass_mb']),
            ('idle', 6, lambda t: '%.1f' % t['idle_rss_mb']),
            ('after warm', 10, lambda t: '%.1f' %
             t['idle_rss_after_warm_mb']),
            ('MB/1000 over floor', 18, lambda t: '%.2f' %
             t['mb_per_1000_files']),
            ('over empty', 10, lambda t: '%.2f' %
             t['mb_per_1000_files_above_empty']),
        ], mem['sizes'])
        if mem['mb_per_1000_files_slope'] is not None:
            print('slope of idle RSS: %.2f MB per 1,000 files'
                  % mem['mb_per_1000_files_slope'])
    print()
    print('Targets:')
    for goal in goals:
        met = {True: 'yes', False: 'NO', None: '-'}[goal['met']]
        print('  %-3s %-9s %-72s %s' % (met, goal['family'], goal['target'],
                                        goal['measured']))


def instances_for(args, size):
    if args.instances:
        return dict(sizes_and_instances(args))[size]
    return size // FILES_PER_INSTANCE


def source_state():
    """Where cachekeeper is imported from, and its commit and changes.

    The commit and changes are those of this repository, when cachekeeper
    is imported from it.
    """
    import importlib.util
    package = os.path.dirname(importlib.util.find_spec('cachekeeper').origin)
    if os.path.dirname(package) != REPO_DIR:
        return {'path': package, 'commit': None, 'changed': []}

    def git(*command):
        process = subprocess.run(['git', '-C', REPO_DIR] + list(command),
                                 capture_output=True, text=True)
        return process.stdout.strip() if process.returncode == 0 else None
    changed = git('status', '--porcelain', '--', 'cachekeeper')
    return {'path': package, 'commit': git('rev-parse', '--short', 'HEAD'),
            'changed': [line[3:] for line in (changed or '').splitlines()]}


def sizes_and_instances(args):
    sizes = [int(s) for s in args.sizes.split(',') if s]
    if args.instances:
        instances = [int(i) for i in args.instances.split(',')]
        if len(instances) != len(sizes):
            raise SystemExit('--instances needs one count per size')
    else:
        instances = [s // FILES_PER_INSTANCE for s in sizes]
    return list(zip(sizes, instances))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        epilog='See bench/README.rst.')
    parser.add_argument('--sizes', default='1000,2500,10000',
                        help='_base files per tree (make_host: originals), '
                        'comma-separated')
    parser.add_argument('--instances', default=None,
                        help='instances per tree (default: files / %d)'
                        % FILES_PER_INSTANCE)
    parser.add_argument('--families', default=','.join(FAMILIES),
                        help='tree families, comma-separated (default: '
                        '%(default)s)')
    parser.add_argument('--make-host', default=DEFAULT_MAKE_HOST,
                        help='make_host.py (default: '
                        '../shared/tools/make_host.py next to the '
                        'repository)')
    parser.add_argument('--workdir', default=os.path.join(
        os.environ.get('TMPDIR', '/tmp'), 'cachekeeper-bench'))
    parser.add_argument('--reuse', action='store_true',
                        help='keep trees already built in --workdir')
    parser.add_argument('--repeat', type=int, default=3,
                        help='cold passes, each on an empty state database '
                        '(their median is reported); the floor is the '
                        'fastest of three times as many runs')
    parser.add_argument('--warm-passes', type=int, default=3,
                        help='warm passes after each cold one')
    parser.add_argument('--inspect-method', default='auto',
                        choices=('auto', 'qemu-img'))
    parser.add_argument('--nova-python', default=default_nova_python(),
                        help='a Python with nova installed (default: '
                        '$NOVA_VENV/bin/python, else .venv-nova/bin/python)')
    parser.add_argument('--nova-oracle', default=DEFAULT_ORACLE)
    parser.add_argument('--no-nova', action='store_true')
    parser.add_argument('--idle-seconds', type=int, default=10,
                        help='how long the daemon is watched idle after '
                        'each of its two passes')
    parser.add_argument('--memory-sizes', default='1000,10000,30000',
                        help='tree sizes of the daemon memory table '
                        '(empty: none)')
    parser.add_argument('--memory-family', default=MAKE_TREE,
                        choices=FAMILIES)
    parser.add_argument('--json', action='store_true',
                        help='end with one line of JSON: {"results": [...], '
                        '"memory": {...}, "targets": [...], ...}')
    parser.add_argument('--child', metavar='CONFIG', help=argparse.SUPPRESS)
    parser.add_argument('--passes', type=int, default=1,
                        help=argparse.SUPPRESS)
    parser.add_argument('--record', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.passes, args.record)

    families = [f for f in args.families.split(',') if f]
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise SystemExit('unknown families: %s' % ', '.join(sorted(unknown)))
    args.nova_skipped = ('--no-nova' if args.no_nova
                         else nova_available(args))
    os.makedirs(args.workdir, exist_ok=True)
    load = {'before': os.getloadavg()}
    source = source_state()
    results = []
    for family in families:
        for size, instances in sizes_and_instances(args):
            results.append(measure(args, family, size, instances))
    add_ratios(results)
    mem = memory(args, results)
    goals = targets(results, mem)
    load['after'] = os.getloadavg()
    print_table(results, args.nova_skipped, mem, goals)
    print('load average (1, 5, 15 min) before: %.1f %.1f %.1f; after: '
          '%.1f %.1f %.1f; %d CPUs' % (load['before'] + load['after'] +
                                       (os.cpu_count(),)))
    print('cachekeeper from %s%s%s' % (
        source['path'],
        ' at %s' % source['commit'] if source['commit'] else '',
        ', changed: %s' % ' '.join(source['changed'])
        if source['changed'] else ''))
    if args.json:
        print(json.dumps({'results': results, 'memory': mem,
                          'targets': goals, 'load_average': load,
                          'cpus': os.cpu_count(), 'source': source}))


if __name__ == '__main__':
    sys.exit(main())
