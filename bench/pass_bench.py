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

For each size it builds a host tree (make_tree.py) and measures, on that
same tree:

- the floor: scandir and lstat of every _base file and every instance
  disk, and a read of the first 4 KiB of every disk;
- cachekeeper's cold pass (empty state database) and its warm passes
  (nothing changed): the passes a daemon runs, timed inside one process,
  and a warm pass in a process of its own (as cachekeeper-manage runs it);
- nova's real image cache manager on a copy of the tree, when a Python
  with nova and the oracle (../shared/tools/nova_oracle.py) are there;
- with --real-pass, a pass that removes (on a copy of the tree);
- with --daemon, the daemon's memory during and between passes and its
  CPU time while idle (on a copy of the largest tree).

cachekeeper's passes are dry runs, so the tree is reusable; qemu-img calls
are counted by a wrapper first on PATH. See bench/README.rst.
"""

import argparse
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
sys.path.insert(0, BENCH_DIR)
import make_tree  # noqa: E402

DEFAULT_ORACLE = os.path.join(BENCH_DIR, '..', '..', 'shared', 'tools',
                              'nova_oracle.py')
# _base files per instance in the default trees.
FILES_PER_INSTANCE = 5
DISK_PREFIX = 'disk'
METADATA = ('disk.info',)
READ_BYTES = 4096
PASS_TIMEOUT = 3600
RACY_WAIT = 3


def floor(instances_path):
    """The least a pass must do: list and lstat, read each disk's header."""
    started = time.perf_counter()
    with os.scandir(os.path.join(instances_path, '_base')) as entries:
        for entry in entries:
            entry.stat(follow_symlinks=False)
    with os.scandir(instances_path) as directories:
        for directory in directories:
            if (directory.name in ('_base', 'locks') or
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


def write_config(path, instances_path, state_path, **image_cache):
    lines = ['[DEFAULT]',
             'instances_path = %s' % instances_path,
             'state_path = %s' % state_path,
             'host = %s' % make_tree.HOST,
             '[image_cache]']
    lines += ['%s = %s' % item for item in sorted(image_cache.items())]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


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


def run_passes(config_file, passes, workdir, dry_run=True):
    """Run ``passes`` passes in one new process; return what it measured."""
    bin_dir, record = counting_qemu_img(workdir)
    env = dict(os.environ, PATH='%s:%s' % (bin_dir, os.environ['PATH']))
    command = [sys.executable, os.path.abspath(__file__), '--child',
               config_file, '--passes', str(passes), '--record', record]
    if not dry_run:
        command.append('--remove')
    process = subprocess.run(command, capture_output=True, text=True,
                             env=env, timeout=PASS_TIMEOUT)
    if process.returncode != 0:
        raise SystemExit('pass failed:\n%s' % process.stderr[-3000:])
    return json.loads(process.stdout.splitlines()[-1])


def child(config_file, passes, record, remove):
    """Run passes as the daemon does (one CacheManager); print JSON."""
    from oslo_log import log as logging

    from cachekeeper import config
    from cachekeeper.cache import manager
    from cachekeeper.scrub import queue

    conf = config.CONF
    logging.register_options(conf)
    conf.set_default('use_stderr', True)
    config.parse_args([sys.argv[0], '--config-file', config_file])
    logging.set_defaults(default_log_levels=(
        logging.get_default_log_levels() + ['cachekeeper=WARNING']))
    logging.setup(conf, 'pass_bench')
    scrub_queue = queue.from_conf(conf)
    if remove:
        scrub_queue.check_quarantine_dir()
    cache_manager = manager.CacheManager(conf, scrub_queue)
    results = []
    for _index in range(passes):
        calls = count_lines(record)
        started = time.monotonic()
        report = cache_manager.run_pass(dry_run=not remove)
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


def nova_available(args):
    if not args.nova_python:
        return 'no nova Python (--nova-python or $NOVA_VENV)'
    if not os.path.isfile(args.nova_oracle):
        return 'no oracle at %s' % args.nova_oracle
    check = subprocess.run([args.nova_python, '-c', 'import nova'],
                           capture_output=True)
    if check.returncode != 0:
        return '%s cannot import nova' % args.nova_python
    return None


def copy_tree(source, destination):
    if os.path.exists(destination):
        shutil.rmtree(destination)
    subprocess.run(['cp', '-a', '--sparse=always', source, destination],
                   check=True)


def median(values):
    return statistics.median(values) if values else None


def measure(args, files, instances):
    workdir = os.path.join(args.workdir, 'tree-%d' % files)
    tree_root = os.path.join(workdir, 'tree')
    built = None
    if not (args.reuse and os.path.isdir(tree_root)):
        built = make_tree.build(tree_root, files, instances, seed=files)
        # A file changed within the last two seconds cannot be proven
        # unchanged by its times: every pass would read it again.
        time.sleep(RACY_WAIT)
    instances_path = os.path.join(tree_root, 'instances')
    tree = make_tree.Tree(tree_root, files, instances, seed=files)
    result = {'files': files, 'instances': instances,
              'disks': tree.disk_count,
              'build_s': built and built['build_s']}

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
    alone = run_passes(config_file, 1, workdir)['passes'][0]
    result.update(
        cold_s=median([p['duration_s'] for p in cold]),
        warm_s=median([p['duration_s'] for p in warm]),
        warm_new_process_s=alone['duration_s'],
        qemu_img_calls_cold=max(p['qemu_img_calls'] for p in cold),
        qemu_img_calls_warm=max(p['qemu_img_calls'] for p in warm + [alone]),
        peak_rss_mb=round(max(rss), 1),
        summary=cold[0]['summary'], errors=cold[0]['errors'])

    result['nova_s'] = result['nova_qemu_img_calls'] = None
    if args.nova_skipped is None:
        result['nova_s'], result['nova_qemu_img_calls'] = nova_pass(
            args.nova_python, args.nova_oracle, tree_root, workdir)

    if args.real_pass:
        copy = os.path.join(workdir, 'real-copy')
        copy_tree(instances_path, copy)
        real_config = os.path.join(workdir, 'real.conf')
        write_config(real_config, copy, fresh_directory(
            os.path.join(workdir, 'real-state')),
            inspect_method=args.inspect_method)
        run = run_passes(real_config, 2, workdir, dry_run=False)
        result.update(real_pass_s=run['passes'][0]['duration_s'],
                      real_pass_summary=run['passes'][0]['summary'],
                      real_warm_pass_s=run['passes'][1]['duration_s'])
        shutil.rmtree(copy)
    return result


def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None


def add_ratios(results):
    smallest = min(results, key=lambda r: r['files'])
    for r in results:
        r['cold_over_floor'] = ratio(r['cold_s'], r['floor_s'])
        r['warm_over_floor'] = ratio(r['warm_s'], r['floor_s'])
        r['nova_over_cold'] = ratio(r['nova_s'], r['cold_s'])
        for what in ('cold', 'warm'):
            r['%s_per_file_us' % what] = round(
                r['%s_s' % what] / r['files'] * 1e6, 2)
            r['%s_scaling' % what] = ratio(
                r['%s_per_file_us' % what],
                smallest['%s_per_file_us' % what])


def seconds(value):
    return '-' if value is None else '%.3f' % value


def times(value):
    return '-' if value is None else '%.1fx' % value


def print_table(results, nova_skipped):
    columns = [
        ('files', 7, lambda r: r['files']),
        ('inst', 5, lambda r: r['instances']),
        ('disks', 6, lambda r: r['disks']),
        ('floor s', 8, lambda r: seconds(r['floor_s'])),
        ('cold s', 8, lambda r: seconds(r['cold_s'])),
        ('warm s', 8, lambda r: seconds(r['warm_s'])),
        ('warm-new', 8, lambda r: seconds(r['warm_new_process_s'])),
        ('nova s', 8, lambda r: seconds(r['nova_s'])),
        ('nova/cold', 9, lambda r: times(r['nova_over_cold'])),
        ('cold/floor', 10, lambda r: times(r['cold_over_floor'])),
        ('warm/floor', 10, lambda r: times(r['warm_over_floor'])),
        ('qemu-img', 9, lambda r: '%s/%s' % (r['qemu_img_calls_cold'],
                                             r['qemu_img_calls_warm'])),
        ('RSS MB', 7, lambda r: '%.0f' % r['peak_rss_mb']),
    ]
    print(' '.join('%*s' % (width, name) for name, width, _get in columns))
    for r in results:
        print(' '.join('%*s' % (width, get(r))
                       for _name, width, get in columns))
    if len(results) > 1:
        largest = max(results, key=lambda r: r['files'])
        print('cost per file, %d -> %d files: cold %s, warm %s' % (
            min(r['files'] for r in results), largest['files'],
            times(largest['cold_scaling']), times(largest['warm_scaling'])))
    if nova_skipped:
        print('nova: skipped (%s)' % nova_skipped)
    for r in results:
        if 'real_pass_s' in r:
            print('%d files: real pass (removing) %s s, %s; then warm %s s'
                  % (r['files'], seconds(r['real_pass_s']),
                     ' '.join('%s=%d' % (k, v) for k, v in
                              r['real_pass_summary'].items() if v),
                     seconds(r['real_warm_pass_s'])))
        if 'daemon' in r:
            d = r['daemon']
            print('%d files: daemon RSS %s MB in the first pass, %s MB in '
                  'warm passes, %s MB idle; idle CPU %s%% over %s s'
                  % (r['files'], d['rss_first_pass_mb'],
                     d['rss_warm_pass_mb'], d['rss_idle_mb'],
                     d['idle_cpu_percent'], d['idle_window_s']))


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


def daemon(args, result):
    """Run the daemon on a copy of the tree: memory and idle CPU.

    RSS (of the daemon's process group) is sampled every 50 ms: until the
    first pass ends (start-up and the cold pass), then until the second
    ends (idle, then a warm pass); CPU time is measured over
    ``--idle-seconds`` starting a second after the second pass.
    """
    workdir = os.path.join(args.workdir, 'tree-%d' % result['files'])
    copy = os.path.join(workdir, 'daemon-copy')
    copy_tree(os.path.join(workdir, 'tree', 'instances'), copy)
    state = fresh_directory(os.path.join(workdir, 'daemon-state'))
    config_file = os.path.join(workdir, 'daemon.conf')
    log_file = os.path.join(workdir, 'daemon.log')
    write_config(config_file, copy, state,
                 manager_interval=args.daemon_interval,
                 inspect_method=args.inspect_method)
    with open(config_file, 'a') as f:
        f.write('[DEFAULT]\nlog_file = %s\n' % log_file)
    if os.path.exists(log_file):
        os.unlink(log_file)
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), 'cachekeeper'),
         '--config-file', config_file],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    rss = {0: [], 1: [], 'idle': []}
    idle_from = cpu_before = None
    deadline = time.monotonic() + PASS_TIMEOUT
    try:
        while True:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit('the daemon did not run two passes: %s'
                                 % log_file)
            done = len(pass_lines(log_file))
            now = time.monotonic()
            if done >= 2 and idle_from is None:
                idle_from = now + 1
            if idle_from is not None and now >= idle_from:
                if cpu_before is None:
                    cpu_before = group_cpu_s(process.pid)
                elif now >= idle_from + args.idle_seconds:
                    idle_cpu = group_cpu_s(process.pid) - cpu_before
                    break
                rss['idle'].append(group_rss_mb(process.pid))
            elif done < 2:
                rss[done].append(group_rss_mb(process.pid))
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        shutil.rmtree(copy)
    result['daemon'] = {
        'rss_first_pass_mb': round(max(rss[0]), 1),
        'rss_warm_pass_mb': round(max(rss[1]), 1),
        'rss_idle_mb': round(statistics.median(rss['idle']), 1),
        'idle_cpu_percent': round(100 * idle_cpu / args.idle_seconds, 3),
        'idle_window_s': args.idle_seconds,
        'passes': pass_lines(log_file)}


_PASS_LINE = re.compile(r'Pass (done|interrupted) in')


def pass_lines(log_file):
    try:
        with open(log_file, errors='replace') as f:
            return [line.strip() for line in f if _PASS_LINE.search(line)]
    except FileNotFoundError:
        return []


def sizes_and_instances(args):
    sizes = [int(s) for s in args.sizes.split(',')]
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
                        help='_base files per tree, comma-separated')
    parser.add_argument('--instances', default=None,
                        help='instances per tree (default: files / %d)'
                        % FILES_PER_INSTANCE)
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
    venv = os.environ.get('NOVA_VENV')
    parser.add_argument('--nova-python', default=venv and os.path.join(
        venv, 'bin', 'python'), help='a Python with nova installed '
        '(default: $NOVA_VENV/bin/python)')
    parser.add_argument('--nova-oracle', default=DEFAULT_ORACLE)
    parser.add_argument('--no-nova', action='store_true')
    parser.add_argument('--real-pass', action='store_true',
                        help='also time a pass that removes, on a copy')
    parser.add_argument('--daemon', action='store_true',
                        help='also run the daemon on a copy of the largest '
                        'tree: memory and idle CPU')
    parser.add_argument('--daemon-interval', type=int, default=30)
    parser.add_argument('--idle-seconds', type=int, default=20)
    parser.add_argument('--json', action='store_true',
                        help='end with one line of JSON: {"results": [...]}')
    parser.add_argument('--child', metavar='CONFIG', help=argparse.SUPPRESS)
    parser.add_argument('--passes', type=int, default=1,
                        help=argparse.SUPPRESS)
    parser.add_argument('--record', help=argparse.SUPPRESS)
    parser.add_argument('--remove', action='store_true',
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.passes, args.record, args.remove)

    args.nova_skipped = ('--no-nova' if args.no_nova
                         else nova_available(args))
    os.makedirs(args.workdir, exist_ok=True)
    results = []
    for files, instances in sizes_and_instances(args):
        results.append(measure(args, files, instances))
    if args.daemon:
        daemon(args, max(results, key=lambda r: r['files']))
    add_ratios(results)
    print_table(results, args.nova_skipped)
    if args.json:
        print(json.dumps({'results': results}))


if __name__ == '__main__':
    sys.exit(main())
