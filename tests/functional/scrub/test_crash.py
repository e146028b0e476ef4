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

"""SIGKILL at every step of quarantine, drain and restore, then restart.

cachekeeper-manage (a pass, scrub drain, scrub restore) works on real
files and is killed at the named step by the crash hook that
tests/lib/crash.py installs; the test process then reconciles, as the
daemon does at start-up, and checks that every file is in exactly one
place: in the cache, in quarantine with one active entry, or deleted with
one drained entry.
"""

import os
import signal
import subprocess
import sys

from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.scrub import queue
from cachekeeper.scrub import reconcile
from tests.functional.scrub import base

FILES = 3
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
MANAGE = os.path.join(os.path.dirname(sys.executable), 'cachekeeper-manage')


class CrashTestCase(base.ScrubTestCase):

    def setUp(self):
        super().setUp()
        self.write_config()
        self.contents = {}
        for number in range(FILES):
            content = os.urandom(4096 + number)
            base_file = self.make_file(base.image_name(number), content)
            self.contents[base_file.ino] = content

    def run_child(self, action, crash_at=None):
        """Run cachekeeper-manage for ``action``, killed at ``crash_at``.

        quarantine: a pass (it quarantines every file, all unused and
        old); drain: scrub drain; restore: scrub restore of the oldest
        queued entry.
        """
        if action == 'quarantine':
            command = ['cache', 'pass']
        elif action == 'drain':
            command = ['scrub', 'drain']
        else:
            [oldest, *_] = self.queue.entries([scrub_entries.QUEUED])
            command = ['scrub', 'restore', str(oldest.id)]
        argv = ['--config-file', self.config_file] + command
        if crash_at:
            argv = [sys.executable, '-m', 'tests.lib.crash', crash_at] + argv
        else:
            argv = [MANAGE] + argv
        child = subprocess.run(argv, cwd=ROOT,
                               env=dict(os.environ, PYTHONPATH=ROOT),
                               capture_output=True, text=True, timeout=60)
        expected = -signal.SIGKILL if crash_at else 0
        self.assertEqual(expected, child.returncode, child.stderr)

    def restart(self):
        """A fresh queue on the same state, reconciled as at start-up."""
        scrub_queue = self.make_queue()
        scrub_queue.reconcile(base.NOW)
        return scrub_queue

    def assert_consistent(self, scrub_queue):
        entries = scrub_queue.entries()
        in_cache = self.inodes(self.cache_dir)
        in_quarantine = self.inodes(self.host_dir())
        for ino, content in self.contents.items():
            with self.subTest(ino=ino):
                active = [e for e in entries if e.ino == ino
                          and e.state in scrub_entries.ACTIVE_STATES]
                drained = [e for e in entries if e.ino == ino
                           and e.state == scrub_entries.DRAINED]
                if ino in in_cache:
                    self.assertNotIn(ino, in_quarantine)
                    self.assertEqual(([], []), (active, drained))
                    self.assertEqual(content, self.read(in_cache[ino]))
                elif ino in in_quarantine:
                    self.assertEqual([], drained)
                    [entry] = active
                    self.assertIn(entry.state,
                                  (scrub_entries.QUEUED, scrub_entries.PARKED))
                    self.assertEqual(in_quarantine[ino],
                                     entry.quarantine_path)
                    self.assertEqual(content, self.read(entry.quarantine_path))
                else:
                    self.assertEqual([], active)
                    self.assertEqual(1, len(drained))
        # Nothing in quarantine that the queue does not know, and no entry
        # left in a transitional state.
        self.assertLessEqual(set(in_cache) | set(in_quarantine),
                             set(self.contents))
        self.assertEqual([], [e for e in entries if e.state in (
            scrub_entries.QUARANTINING, scrub_entries.DRAINING,
            scrub_entries.RESTORING)])

    def assert_completes(self, scrub_queue):
        """After the restart, the work can be finished and is done once."""
        self.run_child('quarantine')
        scrub_queue.drain(base.NOW, 0, 3, ignore_delay=True)
        self.assertEqual([], os.listdir(self.cache_dir))
        self.assertEqual([], os.listdir(self.host_dir()))
        entries = scrub_queue.entries()
        for ino in self.contents:
            self.assertEqual(1, len([
                e for e in entries
                if e.ino == ino and e.state == scrub_entries.DRAINED]))

    def inodes(self, directory):
        found = {}
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            found[os.lstat(path).st_ino] = path
        return found

    def read(self, path):
        with open(path, 'rb') as f:
            return f.read()

    def test_crash_steps_are_documented(self):
        for step in queue.CRASH_STEPS:
            self.assertIn('``%s``' % step, queue.__doc__)

    def test_quarantine_recorded(self):
        self.run_child('quarantine', 'quarantine-recorded')
        self.assertEqual(FILES, len(os.listdir(self.cache_dir)))
        scrub_queue = self.restart()
        [entry] = scrub_queue.entries()
        self.assertEqual(scrub_entries.ROLLED_BACK, entry.state)
        self.assert_consistent(scrub_queue)
        self.assert_completes(scrub_queue)

    def test_quarantine_renamed(self):
        self.run_child('quarantine', 'quarantine-renamed')
        self.assertEqual(FILES - 1, len(os.listdir(self.cache_dir)))
        scrub_queue = self.restart()
        [entry] = scrub_queue.entries()
        self.assertEqual(scrub_entries.QUEUED, entry.state)
        self.assert_consistent(scrub_queue)
        self.assert_completes(scrub_queue)

    def test_drain_claimed(self):
        self.run_child('quarantine')
        self.run_child('drain', 'drain-claimed')
        scrub_queue = self.restart()
        self.assertEqual([scrub_entries.QUEUED] * FILES,
                         [e.state for e in scrub_queue.entries()])
        self.assert_consistent(scrub_queue)
        self.assert_completes(scrub_queue)

    def test_drain_unlinked(self):
        self.run_child('quarantine')
        self.run_child('drain', 'drain-unlinked')
        scrub_queue = self.restart()
        self.assertEqual(
            [scrub_entries.DRAINED] + [scrub_entries.QUEUED] * (FILES - 1),
            [e.state for e in scrub_queue.entries()])
        self.assert_consistent(scrub_queue)
        self.assert_completes(scrub_queue)

    def test_restore_recorded(self):
        self.run_child('quarantine')
        self.run_child('restore', 'restore-recorded')
        scrub_queue = self.restart()
        entries = scrub_queue.entries()
        # An interrupted restore keeps the file, waiting for the operator.
        self.assertEqual(
            [scrub_entries.PARKED] + [scrub_entries.QUEUED] * (FILES - 1),
            [e.state for e in entries])
        self.assert_consistent(scrub_queue)
        self.assertEqual(scrub_entries.RESTORED,
                         scrub_queue.restore(entries[0].id, base.NOW).state)
        self.assert_consistent(scrub_queue)

    def test_restore_renamed(self):
        self.run_child('quarantine')
        self.run_child('restore', 'restore-renamed')
        scrub_queue = self.restart()
        entries = scrub_queue.entries()
        self.assertEqual(
            [scrub_entries.RESTORED] + [scrub_entries.QUEUED] * (FILES - 1),
            [e.state for e in entries])
        self.assertEqual(base.OLD_MTIME_NS,
                         os.lstat(entries[0].path).st_mtime_ns)
        self.assert_consistent(scrub_queue)

    def test_reconcile_twice_changes_nothing_more(self):
        self.run_child('quarantine', 'quarantine-renamed')
        scrub_queue = self.restart()
        before = scrub_queue.entries()
        self.assertEqual(reconcile.ReconcileResult(),
                         scrub_queue.reconcile(base.NOW + 1))
        self.assertEqual(before, scrub_queue.entries())
