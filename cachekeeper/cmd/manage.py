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

"""cachekeeper-manage: ask the cache what it did and why, or act on it.

Commands are grouped in categories (``cachekeeper-manage cache pass``).
A category is a class; each public method is one command, its arguments
declared with @args. Exit status: 0 done, 1 done with errors, 2 bad
configuration or usage.
"""

import datetime
import inspect
import json
import os
import sys
import time

from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import units

from cachekeeper.cache import domains
from cachekeeper.cache import facts
from cachekeeper.cache import locks
from cachekeeper.cache import manager
from cachekeeper.cache import plan
from cachekeeper.cache import qemu_locks
from cachekeeper import config
from cachekeeper import coordination
from cachekeeper import demo
from cachekeeper import glance
from cachekeeper import printable
from cachekeeper import status
from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.scrub import quarantine
from cachekeeper.scrub import queue
from cachekeeper.state import db
from cachekeeper.state import ledger

CONF = config.CONF


def args(*args, **kwargs):
    """Declare one argparse argument of a command."""
    def decorate(func):
        func.__dict__.setdefault('args', []).insert(0, (args, kwargs))
        return func
    return decorate


class ConfigCommands:
    """Check configuration files."""

    def check(self):
        """Validate the configuration; print every problem."""
        # parse_args has already validated it: reaching this point means
        # there was nothing to report.
        print('Configuration is valid.')
        return 0


def _with_scrub_queue(action, moves_files=False):
    """Run action(scrub_queue) on this host's queue; return the status.

    A state database or quarantine directory that cannot be used is a
    configuration problem (2); a refused or failed action is 1.
    """
    try:
        scrub_queue = queue.from_conf(CONF)
    except db.StateError as e:
        print('cachekeeper-manage: %s' % e, file=sys.stderr)
        return config.EXIT_CONFIG
    try:
        if moves_files:
            scrub_queue.check_quarantine_dir()
    except quarantine.QuarantineError as e:
        scrub_queue.close()
        print('cachekeeper-manage: %s' % e, file=sys.stderr)
        return config.EXIT_CONFIG
    try:
        return action(scrub_queue)
    except (scrub_entries.ScrubError, db.StateError, OSError) as e:
        print('cachekeeper-manage: %s' % e, file=sys.stderr)
        return 1
    finally:
        scrub_queue.close()


def _coordinator():
    """Take part in electing the cache's remover, for one pass.

    The pass starts it when it has decided what it would remove.
    """
    return coordination.Coordinator.from_conf(
        CONF, manager.cache_dir(CONF),
        wants_leadership=lambda: CONF.image_cache.remove_unused_base_images)


class CacheCommands:
    """Run a pass over the image cache, explain one file, or show status."""

    @args('--dry-run', action='store_true',
          help='Decide, but change nothing on disk: no touch, no removal, '
               'no lock file.')
    @args('--json', action='store_true', dest='as_json',
          help='Print the pass report as one JSON object.')
    def pass_(self, dry_run=False, as_json=False):
        """Run one pass now, as the daemon would."""
        return _with_scrub_queue(
            lambda scrub_queue: self._pass(scrub_queue, dry_run, as_json),
            moves_files=not dry_run)

    @staticmethod
    def _pass(scrub_queue, dry_run, as_json):
        # A dry run removes nothing, so it does not need the leadership.
        coordinator = None if dry_run else _coordinator()
        try:
            result = manager.CacheManager(
                CONF, scrub_queue, coordinator).run_pass(dry_run=dry_run)
        finally:
            if coordinator is not None:
                coordinator.stop()
        if as_json:
            print(result.to_json())
        else:
            for line in _file_table(result.files):
                print(printable.escape(line))
            print(result.summary_line())
        return result.exit_code

    @args('--json', action='store_true', dest='as_json',
          help='Print the status as one JSON object.')
    def status(self, as_json=False):
        """Show the cache's size and budget, the last pass and the queue."""
        return _with_scrub_queue(
            lambda scrub_queue: self._status(scrub_queue, as_json))

    @staticmethod
    def _status(scrub_queue, as_json):
        try:
            document = status.collect(CONF, scrub_queue)
        except ValueError as e:
            print('cachekeeper-manage: cannot read the last pass report: %s'
                  % e, file=sys.stderr)
            return 1
        try:
            orphans = status.orphans_document(
                manager.CacheManager(CONF, scrub_queue).orphans())
        except domains.DomainsUnavailable as e:
            orphans = status.orphans_document(error=str(e))
        status.add_host_checks(
            document,
            status.nova_manager_interval(status.config_files(CONF)),
            orphans)
        if as_json:
            print(json.dumps(document, indent=2, sort_keys=True))
        else:
            print('\n'.join(map(printable.escape, status.render(document))))
        return 0

    @args('path', metavar='PATH',
          help='A file of the image cache: its path, or its name.')
    def explain(self, path):
        """Show the verdict a pass would give one file, and why."""
        cache_dir = manager.cache_dir(CONF)
        if os.sep not in path:
            path = os.path.join(cache_dir, path)
        path = os.path.abspath(path)
        if os.path.dirname(path) != os.path.abspath(cache_dir):
            print('cachekeeper-manage: %s is not in the image cache %s'
                  % (path, cache_dir), file=sys.stderr)
            return config.EXIT_CONFIG
        return _with_scrub_queue(
            lambda scrub_queue: self._explain(scrub_queue, path))

    @staticmethod
    def _explain(scrub_queue, path):
        evaluation = manager.CacheManager(CONF, scrub_queue).evaluate()
        for decision in evaluation.decisions:
            if decision.base_file.path == path:
                print('\n'.join(map(printable.escape,
                                    _explanation(decision, evaluation))))
                print('\n'.join(_ledger_lines(
                    ledger.lookup(scrub_queue.state_db,
                                  decision.base_file.name))))
                return 0
        print('cachekeeper-manage: no entry %s in the image cache' % path,
              file=sys.stderr)
        return 1


def _ledger_lines(entry):
    def when(timestamp):
        if timestamp is None:
            return 'never seen'
        return datetime.datetime.fromtimestamp(
            timestamp, datetime.timezone.utc).isoformat(timespec='seconds')

    entry = entry or ledger.LedgerEntry(name=None)
    return ['first seen unused: %s' % when(entry.first_seen_unused),
            'last seen in use:  %s' % when(entry.last_seen_in_use)]


def _size(nbytes):
    return '%.1f MiB' % (nbytes / units.Mi)


def _file_table(files):
    for entry in files:
        yield '%-10s %-9s %10s %9s  %s  (%s)' % (
            entry.verdict, entry.kind, plan.format_duration(entry.age_s),
            _size(entry.size), entry.path, entry.reason)


def _explanation(decision, evaluation):
    base_file = decision.base_file
    name = base_file.name
    modified = datetime.datetime.fromtimestamp(
        base_file.mtime, datetime.timezone.utc).isoformat(timespec='seconds')
    verdict = decision.verdict
    if verdict == facts.REMOVABLE:
        verdict = 'removable (a pass would remove it)'
    lines = [
        'path:     %s' % base_file.path,
        'kind:     %s (%s, %s, %s allocated)' % (
            base_file.kind, base_file.file_type, _size(base_file.size),
            _size(base_file.allocated)),
        'verdict:  %s' % verdict,
        'reason:   %s' % decision.reason,
        'modified: %s, %s ago' % (modified,
                                  plan.format_duration(max(decision.age, 0))),
    ]
    min_age = decision.min_age
    if min_age is None:
        min_age = evaluation.policy.min_age(base_file.kind)
    if min_age is not None:
        lines.append('minimum age when unused: %s'
                     % plan.format_duration(min_age))
    references = evaluation.usage.references_to(name)
    lines.append('used by:  %s' % ('' if references else 'nothing found'))
    for reference in references:
        lines.append('  %s' % reference.reason)
        if reference.chain:
            lines.append('    chain: %s' % ' -> '.join(reference.chain))
    doubts = evaluation.usage.doubts_about(name)
    if doubts:
        lines.append('unread, so removal is held back:')
        lines.extend('  %s: %s (%s)' % (d.source, d.message, _doubt_scope(d))
                     for d in doubts)
    holder = locks.lock_holder(CONF.instances_path, name)
    lock_path = locks.lock_file_path(CONF.instances_path, name)
    if holder is None:
        lock_state = 'not held' if os.path.exists(lock_path) else 'no file'
    else:
        lock_state = 'held by pid %d' % holder.pid
    lines.append('lock:     %s (%s)' % (lock_path, lock_state))
    lines.append('QEMU lock probe: %s' % _qemu_lock_state(base_file))
    return lines


def _doubt_scope(doubt):
    if doubt.names is None:
        return 'holds back every file'
    return 'holds back only the %d file(s) its directory uses' % len(
        doubt.names)


def _qemu_lock_state(base_file):
    if not base_file.is_regular:
        return 'not probed (%s)' % base_file.file_type
    try:
        image_lock = qemu_locks.probe(base_file.path)
    except OSError as e:
        return 'cannot probe: %s' % (e.strerror or e)
    if image_lock is None:
        return 'not open'
    return '%s (%s)' % (image_lock.reason(), image_lock.meaning())


class PrecacheCommands:
    """Download images into the image cache, verified, as nova would."""

    @args('image_ids', metavar='IMAGE_ID', nargs='+',
          help='The Glance id of an image to cache.')
    def __call__(self, image_ids):
        """Cache images now; an image cached already is only touched."""
        if not glance.is_configured(CONF):
            print('cachekeeper-manage: Glance is not configured: set '
                  '[glance] endpoint_override or [glance] auth_type',
                  file=sys.stderr)
            return config.EXIT_CONFIG
        precacher = glance.Precacher.from_conf(CONF, glance.make_client(CONF))
        failed = 0
        for image_id in image_ids:
            progress = _Progress(image_id) if sys.stderr.isatty() else None
            try:
                result = precacher.precache(image_id, progress=progress)
            except glance.PrecacheError as e:
                failed += 1
                print('cachekeeper-manage: %s' % e, file=sys.stderr)
                continue
            except KeyboardInterrupt:
                print('cachekeeper-manage: interrupted; nothing of image %s '
                      'was left behind' % image_id, file=sys.stderr)
                return 1
            finally:
                if progress is not None:
                    progress.finish()
            print(result.summary())
        return 1 if failed else 0


class _Progress:
    """A download's bytes and rate, redrawn on one terminal line."""

    INTERVAL = 0.2

    def __init__(self, image_id, stream=sys.stderr):
        self.image_id = image_id
        self.stream = stream
        self.started = time.monotonic()
        self.shown_at = None
        self.width = 0

    def __call__(self, done, total):
        now = time.monotonic()
        if (self.shown_at is not None and done < total
                and now - self.shown_at < self.INTERVAL):
            return
        self.shown_at = now
        rate = done / max(now - self.started, 1e-3)
        text = '%s: %s of %s (%d%%), %s/s' % (
            self.image_id, _size(done), _size(total),
            100 * done // max(total, 1), _size(rate))
        self.width = max(self.width, len(text))
        self.stream.write('\r' + text.ljust(self.width))
        self.stream.flush()

    def finish(self):
        if self.shown_at is not None:
            self.stream.write('\n')
            self.stream.flush()


class DemoCommands:
    """Build a demo compute host to try the daemon on."""

    # It makes the configuration it will be run with.
    uses_configuration = False

    @args('path', metavar='DIR',
          help='Where to build it: a new or empty directory, or an earlier '
               'demo to rebuild.')
    def create(self, path):
        """Build a small compute host tree and a config file for it."""
        try:
            summary = demo.create(path)
        except demo.NotADemoDirectory as e:
            print('cachekeeper-manage: %s' % e, file=sys.stderr)
            return config.EXIT_CONFIG
        except demo.DemoError as e:
            print('cachekeeper-manage: %s' % e, file=sys.stderr)
            return 1
        print('\n'.join(demo.describe(summary)))
        return 0


class ScrubCommands:
    """List, drain, restore or retry this host's scrub queue."""

    @args('--json', action='store_true', dest='as_json',
          help='Print the entries as one JSON object.')
    @args('--all', action='store_true', dest='show_all',
          help='Also list finished entries: drained, restored, rolled back.')
    def list(self, as_json=False, show_all=False):
        """List quarantined files, oldest first."""
        states = None if show_all else scrub_entries.ACTIVE_STATES
        return _with_scrub_queue(lambda scrub_queue: self._list(
            scrub_queue.entries(states), as_json))

    def drain(self):
        """Delete every queued file now, without waiting for scrub_delay."""
        return _with_scrub_queue(self._drain, moves_files=True)

    @args('entry_id', metavar='ID', type=int,
          help='The ID of a queued or parked entry (see scrub list).')
    def restore(self, entry_id):
        """Move a quarantined file back into the image cache."""
        return _with_scrub_queue(
            lambda scrub_queue: self._restore(scrub_queue, entry_id),
            moves_files=True)

    @args('entry_id', metavar='ID', type=int,
          help='The ID of a parked entry (see scrub list).')
    def retry(self, entry_id):
        """Queue a parked entry again, with a fresh count of attempts."""
        return _with_scrub_queue(
            lambda scrub_queue: self._retry(scrub_queue, entry_id))

    def _list(self, entries, as_json):
        if as_json:
            print(json.dumps({'entries': [e.to_dict() for e in entries]},
                             indent=2))
            return 0
        if not entries:
            print('The scrub queue is empty.')
            return 0
        rows = [('ID', 'PATH', 'KIND', 'SIZE', 'STATE', 'QUEUED AT',
                 'ATTEMPTS', 'LAST ERROR')]
        rows.extend((str(e.id), e.path, e.kind, _size(e.size), e.state,
                     self._utc(e.queued_at), str(e.attempts),
                     e.last_error or '')
                    for e in entries)
        widths = [max(len(row[column]) for row in rows)
                  for column in range(len(rows[0]))]
        for row in rows:
            print('  '.join(cell.ljust(width)
                            for cell, width in zip(row, widths)).rstrip())
        return 0

    @staticmethod
    def _drain(scrub_queue):
        result = scrub_queue.drain(
            time.time(), CONF.scrubber.scrub_delay,
            CONF.scrubber.max_attempts, ignore_delay=True)
        print('Drained %d entries, %s reclaimed; %d failed and will be '
              'retried; %d parked.' % (
                  result.drained, _size(result.bytes_reclaimed),
                  result.failed, result.parked))
        for error in result.errors:
            print('cachekeeper-manage: %s' % error['message'],
                  file=sys.stderr)
        return 1 if result.errors else 0

    @staticmethod
    def _restore(scrub_queue, entry_id):
        entry = scrub_queue.restore(entry_id, time.time())
        print('Restored entry %d: %s' % (entry.id, entry.path))
        if entry.last_error:
            print('cachekeeper-manage: %s %s' % (entry.path,
                                                 entry.last_error),
                  file=sys.stderr)
            return 1
        return 0

    @staticmethod
    def _retry(scrub_queue, entry_id):
        entry = scrub_queue.retry(entry_id, time.time())
        print('Queued entry %d again: %s' % (entry.id, entry.path))
        return 0

    @staticmethod
    def _utc(timestamp):
        return datetime.datetime.fromtimestamp(
            timestamp, datetime.timezone.utc).isoformat(timespec='seconds')


CATEGORIES = {
    'cache': CacheCommands,
    'config': ConfigCommands,
    'demo': DemoCommands,
    'precache': PrecacheCommands,
    'scrub': ScrubCommands,
}


def _commands(category):
    for name, method in inspect.getmembers(category, inspect.isfunction):
        if not name.startswith('_'):
            yield name, method


def _add_command(parser, category, method):
    parser.set_defaults(action_fn=method, command_class=category)
    for arg_args, arg_kwargs in getattr(method, 'args', []):
        parser.add_argument(*arg_args, **arg_kwargs)


def add_command_parsers(subparsers):
    for category_name, category in CATEGORIES.items():
        parser = subparsers.add_parser(category_name, help=category.__doc__)
        if '__call__' in vars(category):
            # A category that is itself the command: precache IMAGE_ID...
            _add_command(parser, category, category.__call__)
            continue
        commands = parser.add_subparsers(dest='action', metavar='COMMAND')
        commands.required = True
        for name, method in _commands(category):
            # A trailing underscore keeps names like pass_ legal Python.
            command = commands.add_parser(
                name.rstrip('_').replace('_', '-'), help=method.__doc__)
            _add_command(command, category, method)


category_opt = cfg.SubCommandOpt('category',
                                 title='Command categories',
                                 handler=add_command_parsers)


def _action_kwargs(method):
    parameters = list(inspect.signature(method).parameters)[1:]
    return {name: getattr(CONF.category, name) for name in parameters}


def main():
    CONF.register_cli_opt(category_opt)
    logging.register_options(CONF)
    # Output is for stdout (scripts parse --json); log lines go to stderr.
    CONF.set_default('use_stderr', True)
    try:
        config.parse_args(sys.argv, check=False)
        # A category that makes its own configuration (demo) sets
        # uses_configuration = False: the defaults need not be usable yet.
        command_class = CONF.category.command_class
        problems = (config.validate(CONF)
                    if getattr(command_class, 'uses_configuration', True)
                    else [])
        if problems:
            raise config.ConfigError(problems)
    except config.ConfigError as e:
        for problem in e.problems:
            print('cachekeeper-manage: %s' % problem, file=sys.stderr)
        return config.EXIT_CONFIG
    logging.set_defaults(default_log_levels=(
        logging.get_default_log_levels() + ['cachekeeper=WARNING']))
    logging.setup(CONF, 'cachekeeper-manage')
    printable.escape_log_messages()
    method = CONF.category.action_fn
    return method(CONF.category.command_class(), **_action_kwargs(method)) or 0
