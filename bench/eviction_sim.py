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

"""Replay spawns and deletes against the image cache's eviction policies.

A simulated clock runs a trace of spawns and deletes of instances through
the real rules: cachekeeper.cache.plan (the aging of unused files) and
cachekeeper.cache.budget (the size budget and the watermarks, in the order
of cachekeeper.cache.eviction), with the daemon's option defaults read
through plan.policy_from_conf and budget.Limits.from_conf, and the real
ledger (cachekeeper.state.ledger, in a state database of its own in a
temporary directory) for the history the ``cost`` policy weighs, read as
the manager reads it (manager.file_history). What is simulated: the clock,
the cache directory (one original per image; nova's Qcow2 backend touches
it at every spawn, a pass touches the files in use), the instances that
use it, nova's downloads and the scrub queue's quarantine.

Policies:

``nova``
    nova's own image cache manager: the aging rules every
    ``manager_interval``, unused files deleted at once; no budget, no
    pressure checks.
``lru``, ``cost``
    cachekeeper with ``[image_cache] eviction_policy`` set so: a pass every
    ``manager_interval`` (aging, then the budget; removed files wait
    ``scrub_delay`` in quarantine, evicted ones are deleted at once; the
    ledger records the pass, comebacks are counted as thrash.detect counts
    them), the scrub queue drained every ``drain_interval``, and a pressure
    check every ``--pressure-check-interval`` seconds between passes: over
    the high watermark or the size budget, an eviction pass at once (plan
    and budget.apply on the cache as it is then, the quarantine expedited;
    no bookkeeping), as issue 18 has the daemon do.
``belady``
    Belady's offline optimum for the same budget, the lower bound: no
    aging (a file stays until the budget needs its room), then the unused
    file whose next use is farthest away goes first. It is the same
    machinery as ``lru`` and ``cost`` with one function replaced: the
    eviction order given to budget.apply is BeladyOrder, fed with the
    future of the trace.

Traces (generated with ``--seed``; ``--trace FILE`` replays JSON lines
``{"t": s, "op": "spawn"|"delete", "instance": id, "image": id,
"bytes": n}`` instead):

``daily`` (the default trace)
    ``--days`` days of spawns of ``--images`` images, Zipf popularity
    (exponent ZIPF_EXPONENT), sizes log-normal around 1 GiB clipped to
    50 MiB - 20 GiB, ``--spawns-per-day`` spawns on average in a daily
    cycle (DAILY_SWING around the mean, busiest at 15:00), instance
    lifetimes log-normal around LIFETIME_MEDIAN.
``burst``
    ``daily`` and, on its middle day at 10:00, BURST_IMAGES new images
    spawned 1 to 4 times each within BURST_SECONDS.
``scan``
    ``daily`` and, from 08:00 of its third day, SCAN_IMAGES one-off images
    spawned once each over SCAN_SECONDS, for SCAN_LIFETIME each (a
    validation job booting every image of a batch).

Per trace and policy: misses (spawns whose image was not in the cache:
nova downloaded it), bytes downloaded, bytes re-downloaded (misses of
images that had been in the cache before), peak cache bytes (the cache
directory, not the quarantine), seconds over the high watermark (the
filesystem holds the cache and the quarantine and is sized so that its
low watermark is the budget) and spawns that found the cache over budget.
See bench/README.rst.
"""

import argparse
import bisect
import dataclasses
import json
import math
import os
import random
import sys
import tempfile
import time

from oslo_config import cfg
from oslo_utils import units

from cachekeeper.cache import budget
from cachekeeper.cache import eviction
from cachekeeper.cache import facts
from cachekeeper.cache import names
from cachekeeper.cache import plan
import cachekeeper.conf
from cachekeeper import fmt
from cachekeeper import manager
from cachekeeper.state import db
from cachekeeper.state import ledger

HOUR = 3600
DAY = 24 * HOUR

SPAWN = 'spawn'
DELETE = 'delete'

NOVA = 'nova'
BELADY = 'belady'
POLICIES = (NOVA, eviction.LRU, eviction.COST, BELADY)
BUDGETED = (eviction.LRU, eviction.COST, BELADY)

DAILY = 'daily'
BURST = 'burst'
SCAN = 'scan'
TRACES = (DAILY, BURST, SCAN)

RESULT_KEYS = ('trace', 'policy', 'misses', 'bytes_downloaded',
               'bytes_redownloaded', 'peak_cache_bytes',
               'seconds_over_high_watermark', 'spawns_over_budget')

DEFAULT_DAYS = 14
DEFAULT_IMAGES = 300
DEFAULT_SPAWNS_PER_DAY = 480
DEFAULT_MAX_CACHE_GB = 150
DEFAULT_SEED = 1
# Item 1 of issue 18 checks "every few seconds".
DEFAULT_PRESSURE_CHECK_INTERVAL = 5

ZIPF_EXPONENT = 1.0
SIZE_MEDIAN = 1 * units.Gi
# One sigma of the log-normal sizes: three of them reach the bounds.
SIZE_SIGMA = 1.0
SIZE_MIN = 50 * units.Mi
SIZE_MAX = 20 * units.Gi
DAILY_SWING = 0.8
BUSIEST_HOUR = 15
LIFETIME_MEDIAN = 2 * HOUR
LIFETIME_SIGMA = 1.5
LIFETIME_MIN = 300
LIFETIME_MAX = 7 * DAY
BURST_IMAGES = 40
BURST_SECONDS = 1800
SCAN_IMAGES = 200
SCAN_SECONDS = 8 * HOUR
SCAN_LIFETIME = 600


@dataclasses.dataclass(frozen=True)
class Event:
    t: float
    op: str
    instance: str
    image: str
    nbytes: int

    def to_dict(self):
        return {'t': self.t, 'op': self.op, 'instance': self.instance,
                'image': self.image, 'bytes': self.nbytes}


# Traces

def _sizes(rng, count):
    return [int(min(max(rng.lognormvariate(math.log(SIZE_MEDIAN),
                                           SIZE_SIGMA), SIZE_MIN), SIZE_MAX))
            for _ in range(count)]


def _lifetime(rng):
    return min(max(rng.lognormvariate(math.log(LIFETIME_MEDIAN),
                                      LIFETIME_SIGMA), LIFETIME_MIN),
               LIFETIME_MAX)


class _TraceBuilder:
    """Spawns, each with the delete its lifetime brings."""

    def __init__(self, rng):
        self.rng = rng
        self.events = []

    def spawn(self, t, image, nbytes, lifetime=None):
        instance = 'i-%06d' % (len(self.events) // 2)
        if lifetime is None:
            lifetime = _lifetime(self.rng)
        self.events.append(Event(t, SPAWN, instance, image, nbytes))
        self.events.append(Event(t + lifetime, DELETE, instance, image,
                                 nbytes))

    def trace(self, end):
        """The events before ``end``: instances alive then stay alive."""
        return sorted((e for e in self.events if e.t < end),
                      key=lambda e: (e.t, e.op != DELETE))


def _daily(builder, days, images, spawns_per_day):
    """Spawn Zipf-popular images in a daily cycle.

    The arrivals are a Poisson process whose rate follows the day, drawn
    by thinning: candidates at the peak rate, each kept with the ratio of
    the rate at its time to the peak.
    """
    rng = builder.rng
    catalog = list(zip(['image-%03d' % n for n in range(images)],
                       _sizes(rng, images)))
    weights = [1 / (rank + 1) ** ZIPF_EXPONENT for rank in range(images)]
    peak_rate = spawns_per_day / DAY * (1 + DAILY_SWING)
    t = 0.0
    while True:
        t += rng.expovariate(peak_rate)
        if t >= days * DAY:
            return
        phase = 2 * math.pi * (t / DAY - (BUSIEST_HOUR - 6) / 24)
        if rng.random() * (1 + DAILY_SWING) < 1 + DAILY_SWING * math.sin(
                phase):
            image, nbytes = rng.choices(catalog, weights)[0]
            builder.spawn(t, image, nbytes)


def generate(kind, days, images, spawns_per_day, seed):
    """The documented trace ``kind`` (TRACES), as a sorted list of Events."""
    rng = random.Random('%s-%d' % (kind, seed))
    builder = _TraceBuilder(rng)
    _daily(builder, days, images, spawns_per_day)
    if kind == BURST:
        start = days // 2 * DAY + 10 * HOUR
        for n, nbytes in enumerate(_sizes(rng, BURST_IMAGES)):
            for _ in range(rng.randint(1, 4)):
                builder.spawn(start + rng.uniform(0, BURST_SECONDS),
                              'burst-%03d' % n, nbytes)
    elif kind == SCAN:
        start = min(2, days - 1) * DAY + 8 * HOUR
        for n, nbytes in enumerate(_sizes(rng, SCAN_IMAGES)):
            builder.spawn(start + rng.uniform(0, SCAN_SECONDS),
                          'scan-%03d' % n, nbytes, SCAN_LIFETIME)
    return builder.trace(days * DAY)


def read_trace(path):
    """The Events of a JSON lines file, sorted by time."""
    events = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                events.append(Event(float(item['t']), item['op'],
                                    str(item['instance']),
                                    str(item['image']), int(item['bytes'])))
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit('%s:%d: not a trace event: %s'
                                 % (path, number, e))
            if events[-1].op not in (SPAWN, DELETE):
                raise SystemExit('%s:%d: op must be spawn or delete'
                                 % (path, number))
    return sorted(events, key=lambda e: (e.t, e.op != DELETE))


def write_trace(path, events):
    with open(path, 'w') as f:
        for event in events:
            f.write(json.dumps(event.to_dict(), sort_keys=True) + '\n')


# The offline optimum

class BeladyOrder:
    """Belady's eviction order: the file next used farthest away first.

    Called as eviction.eviction_order is, with the future of the trace
    (the spawn times of every cache file) known in advance.
    """

    def __init__(self, events):
        self.spawns = {}
        for event in events:
            if event.op == SPAWN:
                self.spawns.setdefault(names.image_cache_name(event.image),
                                       []).append(event.t)

    def next_use(self, name, now):
        times = self.spawns.get(name, ())
        index = bisect.bisect_right(times, now)
        return times[index] if index < len(times) else math.inf

    def __call__(self, candidates, policy, now):
        return sorted(
            (eviction.Ranked(base_file, BELADY,
                             eviction.last_use(base_file, history), history,
                             -self.next_use(base_file.name, now))
             for base_file, history in candidates),
            key=lambda ranked: (ranked.priority, ranked.base_file.name))


# The simulation

def options(max_cache_bytes, policy):
    """The daemon's options: its defaults, the budget and the policy."""
    conf = cfg.ConfigOpts()
    cachekeeper.conf.register_opts(conf)
    conf([], project='cachekeeper-eviction-sim', default_config_files=[])
    conf.set_override('max_cache_size_mb', max_cache_bytes // units.Mi,
                      group='image_cache')
    if policy in eviction.POLICIES:
        conf.set_override('eviction_policy', policy, group='image_cache')
    return conf


@dataclasses.dataclass
class _File:
    size: int
    mtime: float
    ino: int


@dataclasses.dataclass
class Result:
    """What one policy did on one trace (the module says what each is)."""

    trace: str
    policy: str
    misses: int = 0
    bytes_downloaded: int = 0
    bytes_redownloaded: int = 0
    peak_cache_bytes: int = 0
    seconds_over_high_watermark: float = 0.0
    spawns_over_budget: int = 0
    # (t, cache bytes, bytes re-downloaded so far), for --plot.
    samples: list = dataclasses.field(default_factory=list, repr=False)

    def to_dict(self):
        values = {key: getattr(self, key) for key in RESULT_KEYS}
        values['seconds_over_high_watermark'] = round(
            self.seconds_over_high_watermark)
        return values


class Replay:
    """One policy over one trace; run() returns its Result."""

    def __init__(self, trace_name, events, policy, max_cache_bytes,
                 state_db, pressure_check_interval):
        conf = options(max_cache_bytes, policy)
        self.events = events
        self.end = events[-1].t if events else 0
        self.policy = policy
        self.budgeted = policy in BUDGETED
        self.rules = plan.policy_from_conf(conf)
        if policy == BELADY:
            # Nothing ages: a file stays until the budget needs its room.
            forever = int(self.end) + DAY
            self.rules = dataclasses.replace(
                self.rules, original_min_age=forever, resized_min_age=forever,
                swap_min_age=forever, ephemeral_min_age=forever)
            self.order = BeladyOrder(events)
        else:
            self.order = eviction.eviction_order
        self.limits = budget.Limits.from_conf(conf)
        self.filesystem_size = (max_cache_bytes * 100 //
                                self.limits.low_percent)
        self.manager_interval = conf.image_cache.manager_interval
        self.scrub_delay = conf.scrubber.scrub_delay
        self.drain_interval = conf.scrubber.drain_interval
        self.check_interval = (pressure_check_interval if self.budgeted
                               else 0)
        self.state_db = state_db
        self.result = Result(trace_name, policy)
        self.now = 0.0
        self.cache = {}
        self.cache_bytes = 0
        self.ever_cached = set()
        self.instances = {}
        self.users = {}
        # Removed files not seen back yet, for the comebacks.
        self.removed = set()
        # Scrub queue entry id -> (allocated, queued_at).
        self.quarantine = {}
        self.next_entry_id = 1
        self.next_ino = 1
        self.next_pass = self.manager_interval
        self.next_drain = self.drain_interval
        self.next_check = math.inf

    def run(self):
        for event in self.events:
            self._advance(event.t)
            if event.op == SPAWN:
                self._spawn(event)
            else:
                self._delete(event)
        self._advance(self.end)
        return self.result

    # The clock

    def _advance(self, until):
        """Run the passes, drains and pressure checks due until then."""
        while True:
            when = min(self.next_pass, self.next_drain, self.next_check)
            if when > until:
                break
            self._tick(when)
            if when == self.next_pass:
                self.next_pass += self.manager_interval
                self._pass()
            elif when == self.next_check:
                self.next_check = math.inf
                self._pressure_check()
            else:
                self.next_drain += self.drain_interval
                self._drain()
        self._tick(until)

    def _tick(self, until):
        if self._filesystem_over():
            self.result.seconds_over_high_watermark += until - self.now
        self.now = until

    # What the trace does

    def _spawn(self, event):
        result = self.result
        name = names.image_cache_name(event.image)
        if self._size_excess():
            result.spawns_over_budget += 1
        cached = self.cache.get(name)
        if cached is None:
            result.misses += 1
            result.bytes_downloaded += event.nbytes
            if name in self.ever_cached:
                result.bytes_redownloaded += event.nbytes
            self.cache[name] = _File(event.nbytes, self.now, self.next_ino)
            self.next_ino += 1
            self.cache_bytes += event.nbytes
            self.ever_cached.add(name)
            result.peak_cache_bytes = max(result.peak_cache_bytes,
                                          self.cache_bytes)
            self._sample()
        else:
            # nova's Qcow2 backend touches the image it boots from.
            cached.mtime = self.now
        self.instances[event.instance] = name
        self.users[name] = self.users.get(name, 0) + 1
        if self.check_interval:
            self._schedule_check()

    def _delete(self, event):
        name = self.instances.pop(event.instance, None)
        if name is None:
            return
        self.users[name] -= 1
        if not self.users[name]:
            del self.users[name]
            if self.check_interval:
                self._schedule_check(self.cache[name].mtime +
                                     self.limits.eviction_min_age)

    # The daemon

    def _schedule_check(self, after=0.0):
        """Check at the first tick after ``after`` if over the budget.

        The checks in between would find what the last one found: what
        is over the budget is in use or used too recently to go.
        """
        if after < math.inf and self._over():
            after = max(after, self.now)
            self.next_check = min(
                self.next_check,
                (math.floor(after / self.check_interval) + 1) *
                self.check_interval)

    def _pass(self):
        base_files, usage = self._scan()
        decisions = plan.plan(base_files, usage, self.rules, self.now)
        if not self.budgeted:
            self._execute(decisions, delete=True)
            return
        decisions = self._budget(decisions, usage)
        returned = self.removed & self.cache.keys()
        if returned:
            with self.state_db.transaction() as connection:
                ledger.add_comebacks(connection, returned)
            self.removed -= returned
        self._execute(decisions)
        ledger.record_usage(
            self.state_db,
            {d.base_file.name: self.users[d.base_file.name]
             for d in decisions if d.verdict == facts.IN_USE},
            [d.base_file.name for d in decisions
             if d.verdict in (facts.TOO_YOUNG, facts.REMOVABLE)],
            self.now, present_names=[b.name for b in base_files])
        self._drain()

    def _pressure_check(self):
        if not self._over():
            return
        base_files, usage = self._scan()
        decisions = plan.plan(base_files, usage, self.rules, self.now)
        self._execute(self._budget(decisions, usage), touch=False)
        self._drain()
        # Still over: when the next unused file may go.
        history = manager.file_history(self.state_db)
        self._schedule_check(min(
            (eviction.last_use(b, history.get(b.name, facts.NO_HISTORY)) +
             self.limits.eviction_min_age
             for b in base_files
             if b.name in self.cache and b.name not in self.users),
            default=math.inf))

    def _budget(self, decisions, usage):
        decisions, outcome = budget.apply(
            decisions, usage, manager.file_history(self.state_db),
            self.limits, self._filesystem(),
            [budget.Waiting(entry_id, allocated, queued_at)
             for entry_id, (allocated, queued_at)
             in self.quarantine.items()],
            self.now, order=self.order)
        for entry_id in outcome.expedited:
            del self.quarantine[entry_id]
        return decisions

    def _scan(self):
        base_files = [facts.BaseFile(name, '/sim/_base/' + name,
                                     facts.ORIGINAL, 'file', f.size, f.size,
                                     f.mtime, 1, f.ino)
                      for name, f in self.cache.items()]
        usage = facts.Usage()
        for instance, name in self.instances.items():
            usage.add_reference(facts.Reference(
                name, '/sim/%s/disk' % instance))
        return base_files, usage

    def _execute(self, decisions, delete=False, touch=True):
        """Touch the files in use, remove the removable ones.

        Removed files wait in quarantine unless ``delete`` or drained now.
        """
        for d in decisions:
            name = d.base_file.name
            if d.verdict == facts.IN_USE and touch:
                self.cache[name].mtime = self.now
            elif d.verdict == facts.REMOVABLE:
                removed = self.cache.pop(name)
                self.cache_bytes -= removed.size
                self.removed.add(name)
                if not (delete or d.drain_now):
                    self.quarantine[self.next_entry_id] = (removed.size,
                                                           self.now)
                    self.next_entry_id += 1
        self._sample()

    def _drain(self):
        for entry_id, (_, queued_at) in list(self.quarantine.items()):
            if queued_at + self.scrub_delay <= self.now:
                del self.quarantine[entry_id]

    # Space

    def _filesystem(self):
        return budget.Filesystem(
            self.filesystem_size,
            self.cache_bytes + sum(allocated for allocated, _
                                   in self.quarantine.values()))

    def _size_excess(self):
        return budget.excess(self.limits, self.cache_bytes, None)[0]

    def _filesystem_over(self):
        return budget.excess(self.limits, 0, self._filesystem())[1] > 0

    def _over(self):
        return self._size_excess() > 0 or self._filesystem_over()

    def _sample(self):
        self.result.samples.append((self.now, self.cache_bytes,
                                    self.result.bytes_redownloaded))


def replay(trace_name, events, policy, max_cache_bytes,
           pressure_check_interval):
    """Run ``policy`` over ``events`` on a state database of its own."""
    with tempfile.TemporaryDirectory(prefix='cachekeeper-sim-') as state:
        os.chmod(state, 0o700)
        state_db = db.open_state(state)
        try:
            return Replay(trace_name, events, policy, max_cache_bytes,
                          state_db, pressure_check_interval).run()
        finally:
            state_db.close()


# Output

def table(results):
    rows = [('trace', 'policy', 'misses', 'downloaded', 're-downloaded',
             'peak cache', 'over high wm', 'spawns over budget')]
    rows.extend((r.trace, r.policy, str(r.misses),
                 fmt.size(r.bytes_downloaded),
                 fmt.size(r.bytes_redownloaded),
                 fmt.size(r.peak_cache_bytes),
                 fmt.duration(r.seconds_over_high_watermark),
                 str(r.spawns_over_budget)) for r in results)
    widths = [max(len(row[column]) for row in rows)
              for column in range(len(rows[0]))]
    return ['  '.join(cell.ljust(width) if column < 2 else cell.rjust(width)
                      for column, (cell, width)
                      in enumerate(zip(row, widths))).rstrip()
            for row in rows]


def targets(results, no_checks=None):
    """Issue 18's targets, one line each, from ``results``.

    ``no_checks`` is the burst trace's ``cost`` Result without pressure
    checks, when it was run.
    """
    by_key = {(r.trace, r.policy): r for r in results}
    lines = []
    for trace in dict.fromkeys(r.trace for r in results):
        lru = by_key.get((trace, eviction.LRU))
        cost = by_key.get((trace, eviction.COST))
        best = by_key.get((trace, BELADY))
        if lru is None or cost is None or best is None:
            continue
        gap = lru.bytes_redownloaded - best.bytes_redownloaded
        if gap > 0:
            closed = 'closes %.0f%% of the gap between lru and belady' % (
                100 * (lru.bytes_redownloaded - cost.bytes_redownloaded) /
                gap)
        else:
            closed = 'no gap between lru and belady'
        worse = (cost.bytes_redownloaded / lru.bytes_redownloaded - 1
                 if lru.bytes_redownloaded else 0.0)
        lines.append('%s: bytes re-downloaded: cost %s; %+.1f%% against lru'
                     % (trace, closed, 100 * worse))
    burst = by_key.get((BURST, eviction.COST))
    if burst is not None and no_checks is not None:
        ratio = (no_checks.seconds_over_high_watermark /
                 burst.seconds_over_high_watermark
                 if burst.seconds_over_high_watermark else math.inf)
        lines.append('burst: %s over the high watermark with pressure '
                     'checks, %s with checks only at passes (%.0fx)' % (
                         fmt.duration(burst.seconds_over_high_watermark),
                         fmt.duration(no_checks.seconds_over_high_watermark),
                         ratio))
    return lines


def plot(path, results, max_cache_bytes):
    """Cache bytes over time against the budget, and bytes re-downloaded."""
    # Only here: matplotlib is a requirement of the benchmark alone.
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot

    figure, (space, downloads) = pyplot.subplots(
        2, 1, sharex=True, figsize=(10, 7))
    for result in results:
        days = [t / DAY for t, _, _ in result.samples]
        space.step(days, [b / units.Gi for _, b, _ in result.samples],
                   where='post', label=result.policy, linewidth=0.8)
        downloads.step(days, [b / units.Gi for _, _, b in result.samples],
                       where='post', label=result.policy)
    space.axhline(max_cache_bytes / units.Gi, color='black',
                  linestyle='--', linewidth=0.8, label='budget')
    space.set_ylabel('cache (GiB)')
    space.set_title('trace %s' % results[0].trace)
    space.legend(loc='upper left', ncol=5)
    downloads.set_ylabel('re-downloaded so far (GiB)')
    downloads.set_xlabel('day')
    downloads.legend(loc='upper left')
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--trace', action='append', metavar='FILE',
                        help='replay this JSON lines trace instead of the '
                             'generated ones (repeatable)')
    parser.add_argument('--traces', default=','.join(TRACES),
                        help='the generated traces to replay '
                             '(default %(default)s)')
    parser.add_argument('--policies', default=','.join(POLICIES),
                        help='default %(default)s')
    parser.add_argument('--max-cache-gb', type=float,
                        default=DEFAULT_MAX_CACHE_GB,
                        help='the size budget in GiB (default %(default)s)')
    parser.add_argument('--pressure-check-interval', type=float,
                        default=DEFAULT_PRESSURE_CHECK_INTERVAL,
                        help='seconds between pressure checks; 0: checks '
                             'only at passes (default %(default)s)')
    parser.add_argument('--days', type=int, default=DEFAULT_DAYS)
    parser.add_argument('--images', type=int, default=DEFAULT_IMAGES)
    parser.add_argument('--spawns-per-day', type=int,
                        default=DEFAULT_SPAWNS_PER_DAY)
    parser.add_argument('--seed', type=int, default=DEFAULT_SEED)
    parser.add_argument('--save-traces', metavar='DIR',
                        help='write each generated trace to DIR/NAME.jsonl')
    parser.add_argument('--plot', metavar='FILE.png',
                        help='draw the first trace (needs matplotlib)')
    parser.add_argument('--json', action='store_true',
                        help='end with one line of JSON: {"results": [...]}')
    args = parser.parse_args(argv)
    args.policies = args.policies.split(',')
    unknown = set(args.policies) - set(POLICIES)
    if unknown:
        parser.error('unknown policies: %s' % ', '.join(sorted(unknown)))
    args.traces = [t for t in args.traces.split(',') if t]
    unknown = set(args.traces) - set(TRACES)
    if unknown:
        parser.error('unknown traces: %s' % ', '.join(sorted(unknown)))
    return args


def traces_of(args):
    """[(name, events)] to replay."""
    if args.trace:
        return [(os.path.splitext(os.path.basename(path))[0],
                 read_trace(path)) for path in args.trace]
    traces = [(kind, generate(kind, args.days, args.images,
                              args.spawns_per_day, args.seed))
              for kind in args.traces]
    if args.save_traces:
        os.makedirs(args.save_traces, exist_ok=True)
        for kind, events in traces:
            write_trace(os.path.join(args.save_traces, kind + '.jsonl'),
                        events)
    return traces


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    max_cache_bytes = int(args.max_cache_gb * units.Gi)
    started = time.monotonic()
    results = []
    no_checks = None
    for name, events in traces_of(args):
        for policy in args.policies:
            results.append(replay(name, events, policy, max_cache_bytes,
                                  args.pressure_check_interval))
        if (name == BURST and not args.trace and
                eviction.COST in args.policies and
                args.pressure_check_interval):
            no_checks = replay(name, events, eviction.COST,
                               max_cache_bytes, 0)
    print('\n'.join(table(results)))
    print()
    if args.trace:
        source = 'traces %s' % ', '.join(args.trace)
    else:
        source = ('generated traces: %d days, %d images, %d spawns a day, '
                  'seed %d' % (args.days, args.images, args.spawns_per_day,
                               args.seed))
    print('%s; budget %s, pressure checks every %gs; %.0f s' % (
        source, fmt.size(max_cache_bytes), args.pressure_check_interval,
        time.monotonic() - started))
    for line in targets(results, no_checks):
        print(line)
    if args.plot:
        first = results[0].trace
        plot(args.plot, [r for r in results if r.trace == first],
             max_cache_bytes)
    if args.json:
        print(json.dumps({'results': [r.to_dict() for r in results]}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
