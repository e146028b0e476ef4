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

"""Where the daemon's memory between passes goes, file by line.

On a copy of a pass_bench tree (built if needed) one process sets up as
the daemon does (its backend, scrub queue and CacheManager; no
coordinator, see setup()), starts tracemalloc, runs two passes (real
ones, unless --dry-run: the first, cold, then a warm one) and, after
each, collects garbage and compares what is still allocated with what was
before the first pass:

- by the innermost cachekeeper frame that led to the allocation (what to
  change in cachekeeper), with the allocation sites under it;
- by allocation site (file:line of the innermost frame);
- by what the CacheManager keeps from pass to pass, attribute by
  attribute (the objects reachable from each, counted once per attribute);
- by type of object (those the garbage collector tracks).

RSS and pass times come from another process that does the same without
tracemalloc (and with the daemon's coordinator), on another copy; after
malloc_trim too, which gives back to the system what the allocator keeps
without a use. Run with the project's virtualenv::

    .venv/bin/python bench/mem_profile.py --size 10000
"""

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import pass_bench  # noqa: E402

MB = 1024 * 1024
PACKAGE = os.sep + 'cachekeeper' + os.sep


def rss_mb(field='VmRSS'):
    """This process's resident memory (MB), or its peak with VmHWM."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return round(int(line.split()[1]) / 1024, 1)
    return None


_PYMALLOC = {
    'arenas': re.compile(r'^# arenas allocated current\s+=\s+([\d,]+)', re.M),
    'arena_bytes': re.compile(r'^\d+ arenas \* \d+ bytes/arena\s+=\s+([\d,]+)',
                              re.M),
    'in_blocks': re.compile(r'^# bytes in allocated blocks\s+=\s+([\d,]+)',
                            re.M),
    'free_blocks': re.compile(
        r'^# bytes in available blocks\s+=\s+([\d,]+)', re.M),
    'free_pools': re.compile(r'^\d+ unused pools \* \d+ bytes\s+=\s+([\d,]+)',
                             re.M),
}


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
        'fsmblks', 'uordblks', 'fordblks', 'keepcost')]


def allocators():
    """MB in Python's object allocator and in the C library's malloc.

    pymalloc: its arenas, the bytes of live blocks in them, and what is
    free in them (free blocks of used pools, unused pools): an arena goes
    back to the system only when all of it is free. malloc (glibc's
    mallinfo2): in use, free but kept in the heap, and mmapped.
    """
    out = {}
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode='w+') as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read()
    for key, pattern in _PYMALLOC.items():
        match = pattern.search(text)
        value = int(match.group(1).replace(',', '')) if match else 0
        out['pymalloc_%s' % key] = (value if key == 'arenas'
                                    else round(value / MB, 1))
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallinfo2.restype = _Mallinfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return out
    out.update(malloc_in_use=round(info.uordblks / MB, 1),
               malloc_free=round(info.fordblks / MB, 1),
               malloc_mmapped=round(info.hblkhd / MB, 1))
    return out


def deep_size(root, seen):
    """Bytes and objects reachable from ``root`` not in ``seen``.

    Classes, modules, functions and code are not followed: they are
    there before any pass.
    """
    import gc
    import types
    skip = (type, types.ModuleType, types.FunctionType, types.CodeType,
            types.BuiltinFunctionType, types.MethodType, types.FrameType)
    size = count = 0
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        size += sys.getsizeof(obj)
        count += 1
        stack.extend(gc.get_referents(obj))
    return size, count


def _attributes(obj):
    names = getattr(obj, '__dict__', None)
    if names is not None:
        return dict(names)
    return {name: getattr(obj, name) for name in
            getattr(type(obj), '__slots__', ()) if hasattr(obj, name)}


def retained(obj, prefix, depth):
    """{dotted attribute: (bytes, objects, len)} below ``obj``."""
    out = {}
    for name, value in _attributes(obj).items():
        path = '%s.%s' % (prefix, name)
        size, count = deep_size(value, set())
        try:
            length = len(value)
        except TypeError:
            length = None
        out[path] = (size, count, length)
        if depth > 1 and (hasattr(value, '__dict__') or
                          getattr(type(value), '__slots__', None)):
            out.update(retained(value, path, depth - 1))
    return out


def type_counts():
    import collections
    import gc
    counts = collections.Counter()
    sizes = collections.Counter()
    for obj in gc.get_objects():
        name = '%s.%s' % (type(obj).__module__, type(obj).__qualname__)
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    return counts, sizes


def _site(frame):
    return '%s:%d' % (_short(frame.filename), frame.lineno)


def _short(filename):
    for marker in (PACKAGE, os.sep + 'site-packages' + os.sep,
                   os.sep + 'lib' + os.sep + 'python'):
        index = filename.rfind(marker)
        if index >= 0:
            return filename[index + 1:]
    return filename


def setup(config_file, coordinated=True):
    """A CacheManager set up as the daemon sets it up.

    Without ``coordinated``, it has no coordinator: under tracemalloc a
    pass is so slow that the coordinator's heartbeat, a green thread,
    would go unanswered for longer than its lease and hold every removal
    back.
    """
    from oslo_log import log as logging

    from cachekeeper import concurrency
    from cachekeeper import config

    conf = config.CONF
    config.parse_args([sys.argv[0], '--config-file', config_file])
    concurrency.init_backend(conf.service_backend)
    logging.setup(conf, 'mem_profile')
    from cachekeeper.conf import paths
    from cachekeeper import coordination
    from cachekeeper import manager
    from cachekeeper import service

    scrub_queue = service.open_scrub_queue()
    coordinator = None
    if coordinated:
        coordinator = coordination.Coordinator.from_conf(
            conf, paths.cache_dir(conf))
        coordinator.start()
        coordinator.wait_for_first_beat()
    return manager.CacheManager(conf, scrub_queue, coordinator)


PASSES = ('after the first (cold) pass', 'after the second (warm) pass')


def plain_child(config_file, dry_run):
    """RSS before and after the passes, without tracemalloc."""
    import gc
    cache_manager = setup(config_file)
    stages = []
    files = []
    summaries = []

    def stage(name, duration=None):
        gc.collect()
        stages.append({'stage': name, 'rss_mb': rss_mb(),
                       'peak_rss_mb': rss_mb('VmHWM'), 'pass_s': duration,
                       **allocators()})

    stage('set up, before any pass')
    for name in PASSES:
        started = time.monotonic()
        result = cache_manager.run_pass(dry_run=dry_run)
        duration = round(time.monotonic() - started, 2)
        files.append(len(result.files))
        summaries.append(result.summary)
        del result
        stage(name, duration)
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
        stage('after malloc_trim')
    except OSError:
        pass
    print(json.dumps({'files_reported': files, 'stages': stages,
                      'summaries': summaries}))


def child(config_file, frames, top, dry_run):
    import gc
    import tracemalloc

    cache_manager = setup(config_file, coordinated=False)
    # Only now: what the set-up allocates is there before any pass, and
    # tracing the imports would take half a minute.
    tracemalloc.start(frames)
    stages = []

    def stage(name, duration=None):
        current, peak = tracemalloc.get_traced_memory()
        gc.collect()
        current = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        stages.append({'stage': name, 'traced_mb': round(current / MB, 2),
                       'traced_peak_mb': round(peak / MB, 2),
                       'pass_s': duration})

    stage('set up, before any pass')
    summaries = []
    before = tracemalloc.take_snapshot()
    kept_before = retained(cache_manager, 'CacheManager', 3)
    types_before = type_counts()
    for name in PASSES:
        started = time.monotonic()
        result = cache_manager.run_pass(dry_run=dry_run)
        duration = round(time.monotonic() - started, 2)
        summaries.append(result.summary)
        del result
        stage(name, duration)
    after = tracemalloc.take_snapshot()
    kept_after = retained(cache_manager, 'CacheManager', 3)
    types_after = type_counts()

    filters = [tracemalloc.Filter(False, tracemalloc.__file__),
               tracemalloc.Filter(False, os.path.abspath(__file__))]
    before = before.filter_traces(filters)
    after = after.filter_traces(filters)
    by_line = [
        {'site': _site(s.traceback[-1]), 'kib': round(s.size_diff / 1024),
         'count': s.count_diff}
        for s in after.compare_to(before, 'lineno')[:top]]

    # Grouped by the innermost cachekeeper frame of each traceback.
    groups = {}
    for s in after.compare_to(before, 'traceback'):
        if s.size_diff <= 0:
            continue
        ours = [f for f in s.traceback if PACKAGE in f.filename]
        key = _site(ours[-1]) if ours else '(no cachekeeper frame)'
        group = groups.setdefault(key, {'size': 0, 'count': 0, 'inner': {}})
        group['size'] += s.size_diff
        group['count'] += s.count_diff
        inner = _site(s.traceback[-1])
        group['inner'][inner] = group['inner'].get(inner, 0) + s.size_diff
    by_cachekeeper = []
    for key, group in sorted(groups.items(), key=lambda kv: -kv[1]['size'])[
            :top]:
        inner = sorted(group['inner'].items(), key=lambda kv: -kv[1])[:3]
        by_cachekeeper.append({
            'site': key, 'kib': round(group['size'] / 1024),
            'count': group['count'],
            'allocated_at': ['%s %d KiB' % (site, size // 1024)
                             for site, size in inner]})

    kept = []
    for path, (size, count, length) in kept_after.items():
        size0, count0, _length0 = kept_before.get(path, (0, 0, None))
        if size - size0 >= 64 * 1024:
            kept.append({'attribute': path,
                         'kib': round((size - size0) / 1024),
                         'objects': count - count0, 'len': length})
    kept.sort(key=lambda k: k['attribute'])

    counts0, sizes0 = types_before
    counts1, sizes1 = types_after
    by_type = sorted(
        ({'type': name, 'count': counts1[name] - counts0[name],
          'kib': round((sizes1[name] - sizes0[name]) / 1024)}
         for name in counts1 if counts1[name] != counts0[name]),
        key=lambda t: -t['kib'])[:top]

    print(json.dumps({
        'traced_stages': stages, 'traced_summaries': summaries,
        'traced_growth_mb': round(
            (stages[-1]['traced_mb'] - stages[0]['traced_mb']), 2),
        'by_line': by_line, 'by_cachekeeper_frame': by_cachekeeper,
        'kept_by_manager': kept, 'by_type': by_type}))


def print_report(result, files):
    print('Tree: %(family)s, %(files)d _base files, %(directories)d '
          'instance directories, %(disks)d disks' % files)
    print('Passes (%s) reported %s files' % (
        'dry runs' if result['dry_run'] else 'real',
        ', '.join(str(n) for n in result['files_reported'])))
    for what, key in (('without', 'summaries'),
                      ('with', 'traced_summaries')):
        print('  %s tracemalloc: %s' % (what, '; '.join(
            ' '.join('%s=%d' % (k, v) for k, v in summary.items() if v)
            for summary in result[key])))
    print()
    traced = {s['stage']: s for s in result['traced_stages']}
    print('%-32s %7s %8s %7s %10s %11s %9s' % (
        'stage', 'RSS MB', 'peak MB', 'pass s', 'traced MB', 'traced peak',
        'traced s'))
    for s in result['stages']:
        t = traced.get(s['stage'], {})
        print('%-32s %7.1f %8.1f %7s %10s %11s %9s' % (
            s['stage'], s['rss_mb'], s['peak_rss_mb'],
            '-' if s['pass_s'] is None else '%.2f' % s['pass_s'],
            '-' if not t else '%.2f' % t['traced_mb'],
            '-' if not t else '%.2f' % t['traced_peak_mb'],
            '-' if t.get('pass_s') is None else '%.2f' % t['pass_s']))
    print('(RSS, its peak so far and pass times in a process without '
          'tracemalloc; traced: in one with it, %d frames, from its start '
          'after the set-up; traced peak: the most allocated at once since '
          'the stage before)' % result['frames'])
    print('traced growth over the two passes: %.2f MB'
          % result['traced_growth_mb'])
    print()
    print('Allocators, MB (same process as RSS): pymalloc arenas (live '
          'blocks, free blocks, unused pools); malloc in use, free in its '
          'heap, mmapped:')
    for s in result['stages']:
        if 'pymalloc_arena_bytes' in s:
            print('  %-32s %6.1f (%5.1f, %4.1f, %4.1f)   %5.1f %5.1f %5.1f'
                  % (s['stage'], s['pymalloc_arena_bytes'],
                     s['pymalloc_in_blocks'], s['pymalloc_free_blocks'],
                     s['pymalloc_free_pools'], s.get('malloc_in_use', 0),
                     s.get('malloc_free', 0), s.get('malloc_mmapped', 0)))
    print()
    print('Still allocated after the passes, by the innermost cachekeeper '
          'frame:')
    for g in result['by_cachekeeper_frame']:
        print('  %7d KiB %8d blocks  %s' % (g['kib'], g['count'], g['site']))
        for inner in g['allocated_at']:
            print('  %28s %s' % ('', inner))
    print()
    print('By allocation site (innermost frame):')
    for line in result['by_line']:
        print('  %7d KiB %8d blocks  %s' % (line['kib'], line['count'],
                                           line['site']))
    print()
    print('Kept by the CacheManager (reachable from the attribute; growth):')
    for k in result['kept_by_manager']:
        print('  %7d KiB %8d objects  %s%s' % (
            k['kib'], k['objects'], k['attribute'],
            '' if k['len'] is None else ' (len %d)' % k['len']))
    print()
    print('Objects the garbage collector tracks, by type (growth):')
    for t in result['by_type']:
        print('  %7d KiB %8d objects  %s' % (t['kib'], t['count'], t['type']))


def run_child(args, workdir, tree_root, options):
    """Run a child on a fresh copy of the tree and state; its JSON."""
    with pass_bench.copy_in_place(tree_root) as instances_path:
        state = pass_bench.fresh_directory(
            os.path.join(workdir, 'profile-state'))
        config_file = os.path.join(workdir, 'profile.conf')
        pass_bench.write_config(
            config_file, instances_path, state,
            log_file=os.path.join(workdir, 'profile.log'),
            manager_interval=pass_bench.IDLE_INTERVAL)
        command = [sys.executable, os.path.abspath(__file__), '--child',
                   config_file] + options
        if args.dry_run:
            command.append('--dry-run')
        process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        raise SystemExit('profile failed:\n%s' % process.stderr[-3000:])
    return json.loads(process.stdout.splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0])
    parser.add_argument('--size', type=int, default=10000,
                        help='tree size, as pass_bench.py --sizes')
    parser.add_argument('--family', default=pass_bench.MAKE_TREE,
                        choices=pass_bench.FAMILIES)
    parser.add_argument('--instances', type=int, default=None)
    parser.add_argument('--workdir', default=os.path.join(
        os.environ.get('TMPDIR', '/tmp'), 'cachekeeper-bench'),
        help='as pass_bench.py\'s: its trees are used')
    parser.add_argument('--reuse', action='store_true',
                        help='keep a tree already built in --workdir')
    parser.add_argument('--make-host', default=pass_bench.DEFAULT_MAKE_HOST)
    parser.add_argument('--dry-run', action='store_true',
                        help='dry runs (the daemon runs real passes)')
    parser.add_argument('--frames', type=int, default=30,
                        help='frames kept per allocation')
    parser.add_argument('--top', type=int, default=15)
    parser.add_argument('--json', action='store_true')
    parser.add_argument('--child', metavar='CONFIG', help=argparse.SUPPRESS)
    parser.add_argument('--plain', action='store_true',
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain:
        return plain_child(args.child, args.dry_run)
    if args.child:
        return child(args.child, args.frames, args.top, args.dry_run)

    os.makedirs(args.workdir, exist_ok=True)
    instances = args.instances or args.size // pass_bench.FILES_PER_INSTANCE
    workdir, tree_root, _built = pass_bench.prepare_tree(
        args, args.family, args.size, instances)
    files = {'family': args.family, **pass_bench.tree_counts(tree_root)}
    result = {'frames': args.frames}
    for command in (['--plain'], ['--frames', str(args.frames),
                                  '--top', str(args.top)]):
        result.update(run_child(args, workdir, tree_root, command))
    result['dry_run'] = args.dry_run
    print_report(result, files)
    if args.json:
        print(json.dumps({'tree': files, **result}))


if __name__ == '__main__':
    sys.exit(main())
