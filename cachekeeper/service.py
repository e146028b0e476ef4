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

"""The daemon's oslo.service Service: one cache pass every interval.

Between passes it drains the scrub queue, and checks every
``pressure_check_interval`` whether the cache is over its budget: if it is,
a pass runs at once (trigger=pressure). One thread runs the passes, the
drains and the checks, one after the other, so that two passes never run
at once. It notifies systemd's watchdog while passes make progress, and its
Guru Meditation Reports say where the running pass is.
"""

import dataclasses
import os
import signal
import threading
import time

from oslo_log import log as logging
from oslo_reports import guru_meditation_report as gmr
from oslo_reports.models import with_default_views
from oslo_service import service
from oslo_utils import units

from cachekeeper.cache import pressure
import cachekeeper.conf
from cachekeeper.conf import paths
from cachekeeper import coordination
from cachekeeper import fmt
from cachekeeper import manager
from cachekeeper import printable
from cachekeeper import progress
from cachekeeper import report
from cachekeeper.scrub import queue
from cachekeeper import version

CONF = cachekeeper.conf.CONF
LOG = logging.getLogger(__name__)

# The first pass waits a moment so that start-up messages come first.
FIRST_PASS_DELAY = 1.0
# nova's meaning of manager_interval = 0.
DEFAULT_INTERVAL = 60
# How long stop() lets a running pass reach the end of its current file.
STOP_TIMEOUT = 4.0
# What the file names of Guru Meditation Reports in [oslo_reports] log_dir
# begin with. Left to oslo.reports, it would be the name of the script, or
# in a thread of the threading backend's worker, "threading.py".
REPORT_NAME = 'cachekeeper'
# The longest the loop sleeps at once. Under eventlet a signal is handled
# only when the hub wakes up, so long sleeps would delay SIGTERM and SIGHUP.
MAX_SLEEP = 0.5


def open_scrub_queue():
    """Open this host's scrub queue and bring it in line with the disk.

    Raises db.StateError when the state database cannot be used, and
    quarantine.QuarantineError when the quarantine directory cannot.
    """
    scrub_queue = queue.from_conf(CONF)
    try:
        scrub_queue.check_quarantine_dir()
        result = scrub_queue.reconcile(time.time())
    except Exception:
        scrub_queue.close()
        raise
    for error in result.errors:
        LOG.warning('Scrub queue reconciliation: %s', error['message'])
    changes = {outcome: count
               for outcome, count in dataclasses.asdict(result).items()
               if outcome != 'errors' and count}
    if changes:
        LOG.info('Scrub queue brought in line with the disk: %s', ', '.join(
            '%d %s' % (count, outcome) for outcome, count in changes.items()))
    return scrub_queue


def _seconds(value):
    """A number of seconds as written: 2400, 0.2 (not 2400.0, 2.4e+03)."""
    return ('%f' % value).rstrip('0').rstrip('.')


def setup_reports(cachekeeper_service):
    """Make SIGUSR2 write a Guru Meditation Report, with a Cache pass section.

    Called in the main process before the launcher starts, since a signal
    handler can only be set there; [oslo_reports] file_event_handler is
    watched from start(). Unlike oslo.reports alone, SIGUSR2 still writes a
    report when that option is set: a daemon must not die of it.
    """
    gmr.TextGuruMeditation.register_section(
        'Cache pass', cachekeeper_service.report_section)
    gmr.TextGuruMeditation.setup_autorun(
        version, service_name=REPORT_NAME,
        log_dir=CONF.oslo_reports.log_dir, signum=signal.SIGUSR2)


def _since(moment, now):
    """A time.monotonic() ``moment`` as UTC and how long ago it was."""
    return '%s (%s ago)' % (fmt.utc(time.time() - (now - moment)),
                            fmt.duration(now - moment))


def pass_interval():
    """Seconds between passes, or None when passes are disabled.

    nova's -1 disables passes; as a fraction is allowed, so does any
    other negative interval.
    """
    interval = CONF.image_cache.manager_interval
    if interval < 0:
        return None
    return interval or DEFAULT_INTERVAL


def pressure_check_interval():
    """Seconds between two budget checks, or None when there are none.

    No check runs while passes are disabled: a check only starts a pass.
    """
    interval = CONF.image_cache.pressure_check_interval
    if interval <= 0 or pass_interval() is None:
        return None
    return interval


def _usage_text(outcome):
    text = 'cache %s in %d files' % (fmt.size(outcome.cache_bytes),
                                     outcome.files)
    if outcome.filesystem is not None:
        text += ', filesystem %.1f%% used' % outcome.filesystem.percent
    return text


class CacheKeeperService(service.Service):

    def __init__(self, notifier):
        super().__init__()
        self._notifier = notifier
        # Made in start(): under the threading backend start() runs in the
        # forked worker, and threads or events made before the fork are lost.
        self._stopping = None
        self._wakeup = None
        self._loop_done = None
        self._manager = None
        self._scrub_queue = None
        self._coordinator = None
        self._first_pass_at = None
        self._last_drain = None
        self._last_pressure_check = None
        # The budget.Outcome of the check that found the cache over its
        # budget, until one finds it within: said once each way.
        self._pressure = None
        self._reloaded = False
        # Where the running pass is (a progress.PassProgress), and the
        # summary of the last one: for the watchdog and the reports.
        self._progress = None
        self._last_pass = None
        self._watchdog_withheld = False

    def start(self):
        super().start()
        self._stopping = threading.Event()
        self._wakeup = threading.Event()
        self._loop_done = threading.Event()
        self._progress = progress.PassProgress()
        self._scrub_queue = open_scrub_queue()
        self._coordinator = coordination.Coordinator.from_conf(
            CONF, paths.cache_dir(CONF),
            wants_leadership=self._wants_leadership)
        self._coordinator.start()
        self._manager = manager.CacheManager(CONF, self._scrub_queue,
                                             self._coordinator,
                                             progress=self._progress)
        self._first_pass_at = time.monotonic() + FIRST_PASS_DELAY
        self._last_drain = time.monotonic()
        # None before the first pass, which applies the budget anyway.
        self._last_pressure_check = self._first_pass_at
        CONF.register_mutate_hook(self._config_changed)
        self.tg.add_thread(self._run)
        self._watch_report_trigger()
        self._log_interval('Started')
        self._notifier.ready()
        self._notifier.status('Waiting for the first pass')
        self._start_watchdog()

    def _start_watchdog(self):
        interval = self._notifier.watchdog_interval
        if interval is None:
            return
        # A timer thread of its own goes on deciding while a pass waits:
        # under eventlet too, as waiting for a child process (qemu-img) or
        # the network yields to the hub.
        self.tg.add_timer(interval, self._watchdog)
        LOG.info('systemd watchdog: notified every %s s, unless a pass '
                 'makes no progress for %d s ([DEFAULT] pass_stall_timeout)',
                 _seconds(interval), CONF.pass_stall_timeout)

    def _watch_report_trigger(self):
        # Here rather than in setup_reports(): under the threading backend
        # start() runs in the worker, which runs the passes, and a thread
        # started before the fork would not be in it.
        try:
            gmr.TextGuruMeditation.setup_autorun(
                version, service_name=REPORT_NAME, conf=CONF,
                setup_signal=False)
        except OSError as e:
            LOG.error('Guru Meditation Reports cannot be triggered by '
                      '[oslo_reports] file_event_handler: %s', e)

    def reset(self):
        # Called after SIGHUP (eventlet backend): re-plan the next pass
        # with the new interval instead of sleeping out the old one.
        super().reset()
        if self._wakeup is not None:
            self._wakeup.set()

    def stop(self, graceful=False):
        self._notifier.stopping()
        if self._stopping is not None:
            self._stopping.set()
            self._wakeup.set()
            # The pass checks _stopping between two files; let it get there.
            if not self._loop_done.wait(STOP_TIMEOUT):
                LOG.warning('The running pass did not stop within %.0fs',
                            STOP_TIMEOUT)
            else:
                self._scrub_queue.close()
                # After the pass: the next leader must not start before
                # this one's last removal.
                self._coordinator.stop()
        super().stop(graceful)

    @staticmethod
    def _wants_leadership():
        # A host that would never remove must leave the removing to others.
        return (pass_interval() is not None and
                CONF.image_cache.remove_unused_base_images)

    def _config_changed(self, conf, fresh):
        # Read by the loop: mutate hooks run in no set order, and values
        # are good only once config.ReloadGuard's has run.
        self._reloaded = True
        if self._wakeup is not None:
            self._wakeup.set()

    def _log_interval(self, what):
        interval = pass_interval()
        if interval is None:
            LOG.info('%s: passes are disabled '
                     '([image_cache] manager_interval = %s)',
                     what, _seconds(CONF.image_cache.manager_interval))
        elif pressure_check_interval() is None:
            LOG.info('%s: a pass every %s s; no budget checks between '
                     'passes ([image_cache] pressure_check_interval = 0)',
                     what, _seconds(interval))
        else:
            LOG.info('%s: a pass every %s s; the budget checked every %s s '
                     'between passes', what, _seconds(interval),
                     _seconds(pressure_check_interval()))

    def _watchdog(self):
        """Notify systemd's watchdog, unless the loop ended or a pass is
        stuck.
        """
        if self._loop_done.is_set():
            return
        position = self._progress.position()
        stalled = time.monotonic() - position.moved_at
        if position.step is None or stalled <= CONF.pass_stall_timeout:
            if self._watchdog_withheld:
                self._watchdog_withheld = False
                LOG.info('The cache pass moved on after all: notifying the '
                         'systemd watchdog again')
            self._notifier.watchdog()
        elif not self._watchdog_withheld:
            self._watchdog_withheld = True
            where = 'step %s, file %s' % (
                position.step, position.path or '(none)')
            LOG.warning('The cache pass has made no progress for %s, more '
                        'than [DEFAULT] pass_stall_timeout (%d s), in %s: '
                        'the systemd watchdog is no longer notified, so '
                        'that systemd restarts the service',
                        fmt.duration(stalled), CONF.pass_stall_timeout,
                        where)
            self._notifier.status('Pass stuck in %s' % where)

    def report_section(self):
        """The Cache pass section of a Guru Meditation Report."""
        if self._progress is None:
            return with_default_views.ModelWithDefaultViews({
                'process': 'no pass runs in this process (pid %d): under '
                           'the threading backend the passes run in a '
                           'worker process, which [oslo_reports] '
                           'file_event_handler makes write a report'
                           % os.getpid()})
        position = self._progress.position()
        section = {'last pass': self._last_pass or 'none yet'}
        if position.step is None:
            section['step'] = 'none: no pass is running'
        else:
            now = time.monotonic()
            section.update({
                'step': position.step,
                'file': ('(none)' if position.path is None
                         else printable.escape(position.path)),
                'last moved on': _since(position.moved_at, now),
                'pass started': _since(position.started_at, now),
            })
        return with_default_views.ModelWithDefaultViews(section)

    def _run(self):
        try:
            last_pass = None
            while not self._stopping.is_set():
                try:
                    last_pass = self._step(last_pass)
                except Exception:
                    # The loop must outlive anything: under the threading
                    # backend a reload races with it, and a value read
                    # before config.ReloadGuard restores it may be bad.
                    LOG.exception('Unexpected error in the service loop')
                    self._wakeup.wait(MAX_SLEEP)
        finally:
            self._loop_done.set()

    def _step(self, last_pass):
        """Run a pass or a drain if one is due, or sleep until one is.

        Returns when the last pass started (monotonic).
        """
        if self._reloaded:
            self._reloaded = False
            # Read again, not necessarily taken: values that do not
            # validate keep their running ones.
            self._log_interval('Configuration read again')
        now = time.monotonic()
        if self._pass_is_due(last_pass, now):
            last_pass = self._last_drain = now
            self._run_pass(report.TRIGGER_INTERVAL)
        elif now >= self._last_drain + CONF.scrubber.drain_interval:
            self._last_drain = now
            self._drain()
        elif self._pressure_check_is_due(now):
            self._last_pressure_check = now
            if self._under_pressure():
                # A whole pass, as at its interval, which it restarts: the
                # pass re-checks each file inside nova's lock and drains
                # what it evicts.
                last_pass = self._last_drain = now
                self._run_pass(report.TRIGGER_PRESSURE)
        else:
            self._wakeup.wait(self._sleep_time(last_pass, now))
            self._wakeup.clear()
        return last_pass

    def _pass_is_due(self, last_pass, now):
        due = self._next_pass_at(last_pass)
        return due is not None and now >= due

    def _next_pass_at(self, last_pass):
        """When the next pass is due (monotonic), or None if never."""
        interval = pass_interval()
        if interval is None:
            return None
        if last_pass is None:
            return self._first_pass_at
        return last_pass + interval

    def _pressure_check_is_due(self, now):
        interval = pressure_check_interval()
        return (interval is not None and
                now >= self._last_pressure_check + interval)

    def _sleep_time(self, last_pass, now):
        """How long the loop may sleep before it has something to do."""
        due = [self._last_drain + CONF.scrubber.drain_interval]
        next_pass = self._next_pass_at(last_pass)
        if next_pass is not None:
            due.append(next_pass)
        check_interval = pressure_check_interval()
        if check_interval is not None:
            due.append(self._last_pressure_check + check_interval)
        return max(0, min(MAX_SLEEP, min(due) - now))

    def _under_pressure(self):
        """Check the budget between passes; whether a pass must run now."""
        try:
            outcome, new_files = self._manager.pressure()
        except OSError as e:
            # The passes report a cache that cannot be listed.
            LOG.debug('Cannot check the image cache against its budget: '
                      '%s', e)
            return False
        before = self._pressure
        run_pass, self._pressure = pressure.decide(before, outcome,
                                                   new_files)
        if before is None and self._pressure is not None:
            LOG.info('The image cache is over its budget between passes '
                     '(%s): a pass evicts now', outcome.over_text())
        elif before is not None and self._pressure is None:
            LOG.info('The image cache is within its budget again: %s',
                     _usage_text(outcome))
        return run_pass

    def _drain(self):
        """Drain the scrub queue between passes (a pass drains it too)."""
        try:
            result = self._manager.drain(stop_event=self._stopping)
        finally:
            self._progress.end()
        if result.drained:
            LOG.info('Scrub queue: deleted %d files, %.1f MiB reclaimed on '
                     'disk; %d parked', result.drained,
                     result.bytes_reclaimed / units.Mi, result.parked)
        for error in result.errors:
            LOG.warning('%s', error['message'])

    def _run_pass(self, trigger):
        try:
            result = self._manager.run_pass(stop_event=self._stopping,
                                            trigger=trigger)
        except Exception:
            # A failed pass must never end the loop: the next one may work.
            LOG.exception('Cache pass failed')
            self._last_pass = 'failed at %s; see the log' % fmt.utc(
                time.time())
            self._notifier.status('Last pass failed; see the log')
            return
        finally:
            self._progress.end()
            # The pass has just applied the budget: the next check is due
            # an interval after its end.
            self._last_pressure_check = time.monotonic()
        line = result.summary_line()
        self._last_pass = '%s (ended %s)' % (line, fmt.utc(time.time()))
        LOG.info('%s', line)
        self._notifier.status(line)
