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

"""bench/eviction_sim.py run as a person runs it, on small traces."""

import json
import os
import subprocess
import sys

import pytest

SIM = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'bench', 'eviction_sim.py')
GiB = 1024 ** 3
BUDGET_GB = 60
# Three days of 60 images: seconds to replay, and the budget still binds.
SMALL = ('--days', '3', '--images', '60', '--spawns-per-day', '200',
         '--max-cache-gb', str(BUDGET_GB))
KEYS = {'trace', 'policy', 'misses', 'bytes_downloaded',
        'bytes_redownloaded', 'peak_cache_bytes',
        'seconds_over_high_watermark', 'spawns_over_budget'}


def simulate(*args):
    """Run the simulator with --json; return (its lines, its results)."""
    process = subprocess.run([sys.executable, SIM, '--json'] + list(args),
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    lines = process.stdout.splitlines()
    return lines, json.loads(lines[-1])['results']


@pytest.fixture(scope='module')
def generated():
    return simulate(*SMALL)


def by_trace(results):
    traces = {}
    for result in results:
        traces.setdefault(result['trace'], {})[result['policy']] = result
    return traces


def test_every_trace_and_policy_is_reported(generated):
    lines, results = generated
    assert lines[0].split()[:3] == ['trace', 'policy', 'misses']
    assert all(set(result) == KEYS for result in results)
    assert {trace: list(policies)
            for trace, policies in by_trace(results).items()} == {
        trace: ['nova', 'lru', 'cost', 'belady']
        for trace in ('daily', 'burst', 'scan')}


def test_belady_is_the_lower_bound_within_the_budget(generated):
    _, results = generated
    for trace, policies in by_trace(results).items():
        best = policies['belady']['misses']
        assert policies['lru']['misses'] >= best, trace
        assert policies['cost']['misses'] >= best, trace
        # nova has no budget: it misses less only by keeping more.
        nova = policies['nova']
        assert (nova['misses'] >= best or
                nova['peak_cache_bytes'] > BUDGET_GB * GiB), trace


def test_a_saved_trace_replays_as_generated(tmp_path):
    traces = str(tmp_path / 'traces')
    _, generated = simulate('--traces', 'daily', '--save-traces', traces,
                            *SMALL)

    _, replayed = simulate('--trace', os.path.join(traces, 'daily.jsonl'),
                           '--max-cache-gb', str(BUDGET_GB))

    assert replayed == generated


def test_a_trace_of_its_own(tmp_path):
    trace = tmp_path / 'mine.jsonl'
    events = [(0, 'spawn', 'i1', 'a'), (60, 'spawn', 'i2', 'b'),
              (120, 'delete', 'i1', 'a'), (180, 'spawn', 'i3', 'a'),
              (240, 'delete', 'i2', 'b'), (300, 'delete', 'i3', 'a')]
    trace.write_text(''.join(
        json.dumps({'t': t, 'op': op, 'instance': instance, 'image': image,
                    'bytes': GiB}) + '\n'
        for t, op, instance, image in events))

    lines, results = simulate('--trace', str(trace), '--policies', 'nova')

    assert results == [{
        'trace': 'mine', 'policy': 'nova', 'misses': 2,
        'bytes_downloaded': 2 * GiB, 'bytes_redownloaded': 0,
        'peak_cache_bytes': 2 * GiB, 'seconds_over_high_watermark': 0,
        'spawns_over_budget': 0}]
    assert 'traces %s' % trace in lines[-2]


@pytest.mark.parametrize('line, error', [
    ('{"t": 0, "op": "boot", "instance": "i1", "image": "a", "bytes": 1}',
     'op must be spawn or delete'),
    ('{"t": 0, "op": "spawn", "instance": "i1"}',
     "not a trace event: 'image'"),
])
def test_a_bad_trace_is_refused(tmp_path, line, error):
    trace = tmp_path / 'bad.jsonl'
    trace.write_text(line + '\n')
    process = subprocess.run([sys.executable, SIM, '--trace', str(trace)],
                             capture_output=True, text=True, timeout=60)
    assert process.returncode == 1
    assert process.stderr == '%s:1: %s\n' % (trace, error)


def test_the_plot(tmp_path):
    # matplotlib is a bench requirement, which tools/install.sh installs.
    picture = tmp_path / 'daily.png'
    simulate('--traces', 'daily', '--plot', str(picture), *SMALL)
    assert picture.read_bytes().startswith(b'\x89PNG')
