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

"""Prometheus metrics, as a file for node_exporter's textfile collector.

After each pass the manager writes ``[DEFAULT] metrics_file`` from the
status document (cachekeeper.status), so the metrics say what
``cachekeeper-manage cache status --json`` says. The totals come from the
state database and never go back, across restarts too.
"""

from prometheus_client import core
from prometheus_client import exposition
from prometheus_client import registry


class _StatusCollector(registry.Collector):
    """Yields the metric families of one status document."""

    def __init__(self, document):
        self.document = document

    def collect(self):
        return families(self.document)


def families(document):
    """Return the metric families of a status document (status.collect)."""
    last_pass = document['last_pass'] or {}
    found = [
        core.GaugeMetricFamily(
            'cachekeeper_cache_bytes',
            'Disk space the files of the image cache allocate.',
            value=document['cache']['allocated_bytes']),
    ]
    files = core.GaugeMetricFamily(
        'cachekeeper_files',
        'Entries of the image cache (and cachekeeper temporary files) by '
        'kind and verdict in the last pass.',
        labels=('kind', 'verdict'))
    for kind, verdicts in sorted(last_pass.get('files', {}).items()):
        for verdict, counted in sorted(verdicts.items()):
            files.add_metric((kind, verdict), counted['files'])
    found.append(files)
    if last_pass:
        found.append(core.GaugeMetricFamily(
            'cachekeeper_pass_duration_seconds',
            'How long the last pass took.', value=last_pass['duration_s']))
    if last_pass.get('finished_at') is not None:
        found.append(core.GaugeMetricFamily(
            'cachekeeper_last_pass_timestamp_seconds',
            'When the last pass finished, in seconds since the epoch.',
            value=last_pass['finished_at']))
    entries = core.GaugeMetricFamily(
        'cachekeeper_queue_entries', 'Scrub queue entries by state.',
        labels=('state',))
    for state, count in sorted(document['queue']['entries'].items()):
        entries.add_metric((state,), count)
    found.append(entries)
    running = document['totals']
    found.extend([
        core.CounterMetricFamily(
            'cachekeeper_reclaimed_bytes',
            'Disk space reclaimed by deleting files for good.',
            value=running['reclaimed_bytes']),
        core.CounterMetricFamily(
            'cachekeeper_errors', 'Per-file errors of the passes.',
            value=running['errors']),
        core.CounterMetricFamily(
            'cachekeeper_comebacks',
            'Removed image cache files that came back within '
            '[image_cache] thrash_window_seconds.',
            value=running['comebacks']),
    ])
    return found


def write(path, document):
    """Write the metrics of a status document to ``path`` atomically.

    Raises OSError when the file cannot be written.
    """
    metrics = registry.CollectorRegistry()
    metrics.register(_StatusCollector(document))
    exposition.write_to_textfile(path, metrics)
