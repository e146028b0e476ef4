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

import inspect
import json
import os
import re
import sys
import time

from oslo_config import cfg
from oslo_log import log as logging

from cachekeeper.cache import domains
from cachekeeper.cache import facts
from cachekeeper.cache import locks
from cachekeeper.cache import names
from cachekeeper.cache import qemu_locks
from cachekeeper.cmd import render
from cachekeeper.conf import paths
from cachekeeper import config
from cachekeeper import coordination
from cachekeeper import demo
from cachekeeper.glance import client as glance_client
from cachekeeper.glance import downloads
from cachekeeper import listing
from cachekeeper import manager
from cachekeeper import novaconf
from cachekeeper import pins
from cachekeeper import printable
from cachekeeper import redownload
from cachekeeper import report
from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.scrub import quarantine
from cachekeeper.scrub import queue
from cachekeeper.state import db
from cachekeeper.state import ledger
from cachekeeper import status

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
        CONF, paths.cache_dir(CONF),
        wants_leadership=lambda: CONF.image_cache.remove_unused_base_images)


# A duration of cache pin --for: a number and a unit.
_DURATION = re.compile(r'^(\d+)([smhd]?)$')
_UNIT_SECONDS = {'': 1, 's': 1, 'm': 60, 'h': 3600, 'd': 86400}


def _duration(text):
    """Seconds from 90, 90s, 30m, 12h or 7d (an argparse type)."""
    match = _DURATION.match(text.strip().lower())
    if match is None or not int(match.group(1)):
        raise ValueError(text)
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


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
            _print_lines(render.pass_lines(result))
        return result.exit_code

    @args('--check', action='store_true',
          help='Print one line for a monitoring probe and exit 0 when all '
               'is well, 1 on a warning, 2 when the last pass failed or is '
               'older than three intervals.')
    @args('--json', action='store_true', dest='as_json',
          help='Print the status as one JSON object.')
    def status(self, as_json=False, check=False):
        """Show the cache's size and budget, the last pass and the queue."""
        return _with_scrub_queue(
            lambda scrub_queue: self._status(scrub_queue, as_json, check))

    @staticmethod
    def _status(scrub_queue, as_json, check):
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
            novaconf.manager_interval(novaconf.config_files(CONF)),
            orphans)
        if check:
            now = time.time()
            code, reasons = status.check(
                document, CONF.image_cache.manager_interval, now)
            _print_lines([render.check(code, reasons, document, now)])
            return code
        if as_json:
            print(json.dumps(document, indent=2, sort_keys=True))
        else:
            _print_lines(render.status(document))
        return 0

    @args('--image', dest='image_id', metavar='ID',
          help='Only the files of this Glance image.')
    @args('--unused', action='store_true',
          help='Only the files no instance uses.')
    @args('--kind', choices=facts.KINDS,
          help='Only the files of this kind.')
    @args('--json', action='store_true', dest='as_json',
          help='Print the files as a JSON list of objects.')
    def list(self, as_json=False, kind=None, unused=False, image_id=None):
        """List the cache files with their image, users and verdicts."""
        return _with_scrub_queue(lambda scrub_queue: self._list(
            scrub_queue, as_json, kind, unused, image_id))

    @staticmethod
    def _list(scrub_queue, as_json, kind, unused, image_id):
        try:
            last_pass = report.read(CONF.state_path)
        except ValueError as e:
            print('cachekeeper-manage: cannot read the last pass report: %s'
                  % e, file=sys.stderr)
            last_pass = None
        evaluation = manager.CacheManager(CONF, scrub_queue).evaluate()
        rows = [row for row in listing.rows(
                    evaluation.decisions, evaluation.policy,
                    evaluation.catalog,
                    ledger.entries(scrub_queue.state_db), last_pass)
                if listing.matches(row, kind, unused, image_id)]
        if as_json:
            print(json.dumps(rows, indent=2))
        else:
            _print_lines(render.cache_list(rows))
        return 0

    @args('--dry-run', action='store_true',
          help='Check what would be queued; change nothing.')
    @args('--reason', default='',
          help='Why, for the log and the scrub queue entry.')
    @args('target', metavar='NAME|IMAGE_ID',
          help='A cache file, or a Glance image id: its original and its '
               'resized copies.')
    def evict(self, target, reason='', dry_run=False):
        """Queue unused cache files for removal now, restorable."""
        return _with_scrub_queue(
            lambda scrub_queue: self._evict(scrub_queue, target, reason,
                                            dry_run),
            moves_files=not dry_run)

    @staticmethod
    def _evict(scrub_queue, target, reason, dry_run):
        coordinator = None if dry_run else _coordinator()
        try:
            eviction = manager.CacheManager(
                CONF, scrub_queue, coordinator).evict(
                    _cache_names_of(target), reason, dry_run=dry_run)
        finally:
            if coordinator is not None:
                coordinator.stop()
        _print_lines(render.evicted(eviction, dry_run))
        for error in eviction.errors:
            print('cachekeeper-manage: %s' % error['message'],
                  file=sys.stderr)
        done = eviction.files and all(f.verdict == facts.QUEUED
                                      for f in eviction.files)
        return 0 if done and not eviction.refused else 1

    @args('--reason', default='',
          help='Why, shown with the pin.')
    @args('--for', dest='duration', metavar='DURATION', type=_duration,
          help='How long the pin lasts: 90s, 30m, 12h or 7d; without it, '
               'until cache unpin.')
    @args('target', metavar='NAME|IMAGE_ID',
          help='A cache file, or a Glance image id (its original and its '
               'resized copies).')
    def pin(self, target, duration=None, reason=''):
        """Keep a cache file, or an image's, whatever its age."""
        return _with_scrub_queue(
            lambda scrub_queue: self._pin(scrub_queue, target, duration,
                                          reason))

    @staticmethod
    def _pin(scrub_queue, target, duration, reason):
        name, image_id = _pin_target(scrub_queue.state_db, target)
        now = time.time()
        pin = facts.Pin(name, image_id, now,
                        None if duration is None else now + duration, reason)
        try:
            pin = pins.put(CONF, scrub_queue.state_db, pin)
        except pins.PinsError as e:
            return _shared_pins_unreadable(e)
        _print_lines([render.pinned(pin)])
        return 0

    @args('target', metavar='NAME|IMAGE_ID',
          help='What cache pin pinned.')
    def unpin(self, target):
        """Remove the pin of a cache file or image."""
        return _with_scrub_queue(
            lambda scrub_queue: self._unpin(scrub_queue, target))

    @staticmethod
    def _unpin(scrub_queue, target):
        name, _image_id = _pin_target(scrub_queue.state_db, target)
        try:
            removed = pins.delete(CONF, scrub_queue.state_db, name)
        except pins.PinsError as e:
            return _shared_pins_unreadable(e)
        if not removed:
            print('cachekeeper-manage: %s is not pinned' % target,
                  file=sys.stderr)
            return 1
        print('Unpinned %s' % name)
        return 0

    @args('--json', action='store_true', dest='as_json',
          help='Print the pins as a JSON list of objects.')
    def pins(self, as_json=False):
        """List the pins that hold now, on this host and shared."""
        return _with_scrub_queue(
            lambda scrub_queue: self._pins(scrub_queue, as_json))

    @staticmethod
    def _pins(scrub_queue, as_json):
        try:
            found = pins.read(CONF, scrub_queue.state_db, time.time())
        except pins.PinsError as e:
            return _shared_pins_unreadable(e)
        if as_json:
            print(json.dumps([dict(pin.to_dict(),
                                   schema_version=report.SCHEMA_VERSION)
                              for pin in found], indent=2))
        else:
            _print_lines(render.pins(found))
        return 0

    @args('path', metavar='PATH',
          help='A file of the image cache: its path, or its name.')
    def explain(self, path):
        """Show the verdict a pass would give one file, and why."""
        cache_dir = paths.cache_dir(CONF)
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
            base_file = decision.base_file
            if base_file.path == path:
                _print_lines(render.explanation(
                    decision, evaluation, _nova_lock(base_file.name),
                    _qemu_lock(base_file),
                    ledger.lookup(scrub_queue.state_db, base_file.name)))
                return 0
        print('cachekeeper-manage: no entry %s in the image cache' % path,
              file=sys.stderr)
        return 1


def _cache_names_of(target):
    """The cache files a NAME|IMAGE_ID argument stands for.

    A Glance image id stands for its original and the resized copies of
    it in the cache; the original is named even when it is not there.
    """
    if names.kind_of(target) != facts.FOREIGN:
        return [target]
    original = names.image_cache_name(target)
    try:
        present = os.listdir(paths.cache_dir(CONF))
    except FileNotFoundError:
        present = []
    return [original] + sorted(
        name for name in present
        if names.kind_of(name) in names.IMAGE_VARIANT_KINDS and
        names.original_of(name) == original)


def _pin_target(state_db, target):
    """(cache file name, Glance image id or None) of a pin's argument.

    The image of a cache file named is the one the ledger remembers.
    """
    if names.kind_of(target) == facts.FOREIGN:
        return names.image_cache_name(target), target
    entry = ledger.lookup(state_db, target)
    return target, None if entry is None else entry.image_id


def _shared_pins_unreadable(error):
    """Say that the shared pins cannot be read (a pins.PinsError); 1."""
    print('cachekeeper-manage: cannot read the shared pins %s: %s'
          % (pins.pins_path(CONF.instances_path), error), file=sys.stderr)
    return 1


def _print_lines(lines):
    """Print lines for a terminal, with what it must not show escaped."""
    print('\n'.join(map(printable.escape, lines)))


def _nova_lock(name):
    """(lock file, whether it exists, its locks.LockHolder or None)."""
    lock_path = locks.lock_file_path(CONF.instances_path, name)
    return (lock_path, os.path.exists(lock_path),
            locks.lock_holder(CONF.instances_path, name))


def _qemu_lock(base_file):
    """What qemu_locks.probe finds on a regular file, or the OSError."""
    if not base_file.is_regular:
        return None
    try:
        return qemu_locks.probe(base_file.path)
    except OSError as e:
        return e


class PrecacheCommands:
    """Download images into the image cache, verified, as nova would."""

    @args('image_ids', metavar='IMAGE_ID', nargs='+',
          help='The Glance id of an image to cache.')
    def __call__(self, image_ids):
        """Cache images now; an image cached already is only touched."""
        if not glance_client.is_configured(CONF):
            print('cachekeeper-manage: Glance is not configured: set '
                  '[glance] endpoint_override or [glance] auth_type',
                  file=sys.stderr)
            return config.EXIT_CONFIG
        precacher = downloads.Precacher.from_conf(
            CONF, glance_client.make_client(CONF))
        failed = 0
        for image_id in image_ids:
            progress = _Progress(image_id) if sys.stderr.isatty() else None
            try:
                result = precacher.precache(image_id, progress=progress)
            except downloads.PrecacheError as e:
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
        if (self.shown_at is not None and done < total and
                now - self.shown_at < self.INTERVAL):
            return
        self.shown_at = now
        rate = done / max(now - self.started, 1e-3)
        text = render.download_progress(self.image_id, done, total, rate)
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
        print('\n'.join(render.demo_host(summary)))
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
          help='The ID of a queued, parked or drained entry (see scrub '
               'list --all).')
    def restore(self, entry_id):
        """Move a quarantined file back, or download a deleted original."""
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
            print(json.dumps({'schema_version': report.SCHEMA_VERSION,
                              'entries': [e.to_dict() for e in entries]},
                             indent=2))
            return 0
        print('\n'.join(render.scrub_list(entries)))
        return 0

    @staticmethod
    def _drain(scrub_queue):
        result = scrub_queue.drain(
            time.time(), CONF.scrubber.scrub_delay,
            CONF.scrubber.max_attempts, ignore_delay=True)
        print(render.drained(result))
        for error in result.errors:
            print('cachekeeper-manage: %s' % error['message'],
                  file=sys.stderr)
        return 1 if result.errors else 0

    @staticmethod
    def _restore(scrub_queue, entry_id):
        entry = scrub_queue.entry(entry_id)
        if entry.state == scrub_entries.DRAINED:
            known = ledger.entries(scrub_queue.state_db).get(entry.name)
            result = redownload.download_again(
                CONF, entry, known.image_id if known else None)
            print(render.downloaded_again(entry, result))
            return 0
        entry = scrub_queue.restore(entry_id, time.time())
        print(render.restored(entry))
        if entry.last_error:
            print('cachekeeper-manage: %s %s' % (entry.path,
                                                 entry.last_error),
                  file=sys.stderr)
            return 1
        return 0

    @staticmethod
    def _retry(scrub_queue, entry_id):
        entry = scrub_queue.retry(entry_id, time.time())
        print(render.queued_again(entry))
        return 0


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
