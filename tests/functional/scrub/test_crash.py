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

A child process works on real files and kills itself at the named step
(CACHEKEEPER_CRASH_AT); the test process then reconciles, as the daemon
does at start-up, and checks that every file is in exactly one place: in
the cache, in quarantine with one active entry, or deleted with one
drained entry.
"""

import json
import os
import signal
import subprocess
import sys

from cachekeeper.scrub import queue
from tests.functional.scrub import base

FILES = 3

CHILD = '''
import json
import sys

from cachekeeper.cache import locks
from cachekeeper.cache import scan
from cachekeeper.scrub import db
from cachekeeper.scrub import queue

args = json.loads(sys.argv[1])
scrub_queue = queue.ScrubQueue(
    db.open_state(args['state_path']), args['instances_path'],
    args['cache_dir'], args['quarantine_dir'], args['host'])
if args['action'] == 'quarantine':
    for base_file in scan.scan(args['cache_dir']):
        with locks.nova_lock(args['instances_path'], base_file.name):
            scrub_queue.quarantine(base_file, 'crash test', args['now'])
elif args['action'] == 'drain':
    scrub_queue.drain(args['now'], 0, 3)
elif args['action'] == 'restore':
    for entry in scrub_queue.entries([queue.QUEUED]):
        scrub_queue.restore(entry.id, args['now'])
'''


class CrashTestCase(base.ScrubTestCase):

    def setUp(self):
        super().setUp()
        self.contents = {}
        for number in range(FILES):
            content = os.urandom(4096 + number)
            base_file = self.make_file(base.image_name(number), content)
            self.contents[base_file.ino] = content

    def run_child(self, action, crash_at=None):
        env = dict(os.environ)
        env.pop(queue.CRASH_AT_ENV, None)
        if crash_at:
            env[queue.CRASH_AT_ENV] = crash_at
        args = json.dumps({
            'action': action, 'state_path': self.state_path,
            'instances_path': self.instances_path,
            'cache_dir': self.cache_dir,
            'quarantine_dir': self.quarantine_dir, 'host': base.HOST,
            'now': base.NOW})
        child = subprocess.run([sys.executable, '-c', CHILD, args], env=env,
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
                active = [e for e in entries
                          if e.ino == ino and e.state in queue.ACTIVE_STATES]
                drained = [e for e in entries
                           if e.ino == ino and e.state == queue.DRAINED]
                if ino in in_cache:
                    self.assertNotIn(ino, in_quarantine)
                    self.assertEqual(([], []), (active, drained))
                    self.assertEqual(content, self.read(in_cache[ino]))
                elif ino in in_quarantine:
                    self.assertEqual([], drained)
                    [entry] = active
                    self.assertIn(entry.state, (queue.QUEUED, queue.PARKED))
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
            queue.QUARANTINING, queue.DRAINING, queue.RESTORING)])

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
                if e.ino == ino and e.state == queue.DRAINED]))

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
        self.assertEqual(queue.ROLLED_BACK, entry.state)
        self.assert_consistent(scrub_queue)
        self.assert_completes(scrub_queue)

    def test_quarantine_renamed(self):
        self.run_child('quarantine', 'quarantine-renamed')
        self.assertEqual(FILES - 1, len(os.listdir(self.cache_dir)))
        scrub_queue = self.restart()
        [entry] = scrub_queue.entries()
        self.assertEqual(queue.QUEUED, entry.state)
        self.assert_consistent(scrub_queue)
        self.assert_completes(scrub_queue)

    def test_drain_claimed(self):
        self.run_child('quarantine')
        self.run_child('drain', 'drain-claimed')
        scrub_queue = self.restart()
        self.assertEqual([queue.QUEUED] * FILES,
                         [e.state for e in scrub_queue.entries()])
        self.assert_consistent(scrub_queue)
        self.assert_completes(scrub_queue)

    def test_drain_unlinked(self):
        self.run_child('quarantine')
        self.run_child('drain', 'drain-unlinked')
        scrub_queue = self.restart()
        self.assertEqual([queue.DRAINED] + [queue.QUEUED] * (FILES - 1),
                         [e.state for e in scrub_queue.entries()])
        self.assert_consistent(scrub_queue)
        self.assert_completes(scrub_queue)

    def test_restore_recorded(self):
        self.run_child('quarantine')
        self.run_child('restore', 'restore-recorded')
        scrub_queue = self.restart()
        entries = scrub_queue.entries()
        # An interrupted restore keeps the file, waiting for the operator.
        self.assertEqual([queue.PARKED] + [queue.QUEUED] * (FILES - 1),
                         [e.state for e in entries])
        self.assert_consistent(scrub_queue)
        self.assertEqual(queue.RESTORED,
                         scrub_queue.restore(entries[0].id, base.NOW).state)
        self.assert_consistent(scrub_queue)

    def test_restore_renamed(self):
        self.run_child('quarantine')
        self.run_child('restore', 'restore-renamed')
        scrub_queue = self.restart()
        entries = scrub_queue.entries()
        self.assertEqual([queue.RESTORED] + [queue.QUEUED] * (FILES - 1),
                         [e.state for e in entries])
        self.assertEqual(base.OLD_MTIME_NS,
                         os.lstat(entries[0].path).st_mtime_ns)
        self.assert_consistent(scrub_queue)

    def test_reconcile_twice_changes_nothing_more(self):
        self.run_child('quarantine', 'quarantine-renamed')
        scrub_queue = self.restart()
        before = scrub_queue.entries()
        self.assertEqual(queue.ReconcileResult(),
                         scrub_queue.reconcile(base.NOW + 1))
        self.assertEqual(before, scrub_queue.entries())
