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
from tests.lib import scrubtree

FILES = 3
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
MANAGE = os.path.join(os.path.dirname(sys.executable), 'cachekeeper-manage')


class CrashTree(scrubtree.ScrubTree):

    def __init__(self, root):
        super().__init__(root)
        self.write_config()
        self.contents = {}
        for number in range(FILES):
            content = os.urandom(4096 + number)
            base_file = self.make_file(scrubtree.image_name(number), content)
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
        assert expected == child.returncode, child.stderr

    def restart(self):
        """A fresh queue on the same state, reconciled as at start-up."""
        scrub_queue = self.make_queue()
        scrub_queue.reconcile(scrubtree.NOW)
        return scrub_queue

    def assert_consistent(self, scrub_queue):
        entries = scrub_queue.entries()
        in_cache = self.inodes(self.cache_dir)
        in_quarantine = self.inodes(self.host_dir())
        for ino, content in self.contents.items():
            active = [e for e in entries if e.ino == ino and
                      e.state in scrub_entries.ACTIVE_STATES]
            drained = [e for e in entries if e.ino == ino and
                       e.state == scrub_entries.DRAINED]
            if ino in in_cache:
                assert ino not in in_quarantine
                assert (active, drained) == ([], [])
                assert content == self.read(in_cache[ino])
            elif ino in in_quarantine:
                assert drained == []
                [entry] = active
                assert entry.state in (
                    scrub_entries.QUEUED, scrub_entries.PARKED)
                assert in_quarantine[ino] == entry.quarantine_path
                assert content == self.read(entry.quarantine_path)
            else:
                assert active == []
                assert len(drained) == 1
        # Nothing in quarantine that the queue does not know, and no entry
        # left in a transitional state.
        assert set(in_cache) | set(in_quarantine) <= set(self.contents)
        assert [e for e in entries if e.state in (
            scrub_entries.QUARANTINING, scrub_entries.DRAINING,
            scrub_entries.RESTORING)] == []

    def assert_completes(self, scrub_queue):
        """After the restart, the work can be finished and is done once."""
        self.run_child('quarantine')
        scrub_queue.drain(scrubtree.NOW, 0, 3, ignore_delay=True)
        assert os.listdir(self.cache_dir) == []
        assert os.listdir(self.host_dir()) == []
        entries = scrub_queue.entries()
        for ino in self.contents:
            assert len([
                e for e in entries
                if e.ino == ino and e.state == scrub_entries.DRAINED]) == 1

    def inodes(self, directory):
        found = {}
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            found[os.lstat(path).st_ino] = path
        return found

    def read(self, path):
        with open(path, 'rb') as f:
            return f.read()


scrub = scrubtree.tree_fixture(CrashTree)


def test_crash_steps_are_documented(scrub):
    for step in queue.CRASH_STEPS:
        assert '``%s``' % step in queue.__doc__


def test_quarantine_recorded(scrub):
    scrub.run_child('quarantine', 'quarantine-recorded')
    assert len(os.listdir(scrub.cache_dir)) == FILES
    scrub_queue = scrub.restart()
    [entry] = scrub_queue.entries()
    assert entry.state == scrub_entries.ROLLED_BACK
    scrub.assert_consistent(scrub_queue)
    scrub.assert_completes(scrub_queue)


def test_quarantine_renamed(scrub):
    scrub.run_child('quarantine', 'quarantine-renamed')
    assert FILES - 1 == len(os.listdir(scrub.cache_dir))
    scrub_queue = scrub.restart()
    [entry] = scrub_queue.entries()
    assert entry.state == scrub_entries.QUEUED
    scrub.assert_consistent(scrub_queue)
    scrub.assert_completes(scrub_queue)


def test_drain_claimed(scrub):
    scrub.run_child('quarantine')
    scrub.run_child('drain', 'drain-claimed')
    scrub_queue = scrub.restart()
    assert [scrub_entries.QUEUED] * FILES == (
        [e.state for e in scrub_queue.entries()])
    scrub.assert_consistent(scrub_queue)
    scrub.assert_completes(scrub_queue)


def test_drain_unlinked(scrub):
    scrub.run_child('quarantine')
    scrub.run_child('drain', 'drain-unlinked')
    scrub_queue = scrub.restart()
    assert [scrub_entries.DRAINED] + [scrub_entries.QUEUED] * (FILES - 1) == (
        [e.state for e in scrub_queue.entries()])
    scrub.assert_consistent(scrub_queue)
    scrub.assert_completes(scrub_queue)


def test_restore_recorded(scrub):
    scrub.run_child('quarantine')
    scrub.run_child('restore', 'restore-recorded')
    scrub_queue = scrub.restart()
    entries = scrub_queue.entries()
    # An interrupted restore keeps the file, waiting for the operator.
    assert [scrub_entries.PARKED] + [scrub_entries.QUEUED] * (FILES - 1) == (
        [e.state for e in entries])
    scrub.assert_consistent(scrub_queue)
    assert scrub_queue.restore(entries[0].id, scrubtree.NOW).state == (
        scrub_entries.RESTORED)
    scrub.assert_consistent(scrub_queue)


def test_restore_renamed(scrub):
    scrub.run_child('quarantine')
    scrub.run_child('restore', 'restore-renamed')
    scrub_queue = scrub.restart()
    entries = scrub_queue.entries()
    assert [scrub_entries.RESTORED] + [scrub_entries.QUEUED] * (FILES - 1) == (
        [e.state for e in entries])
    assert os.lstat(entries[0].path).st_mtime_ns == scrubtree.OLD_MTIME_NS
    scrub.assert_consistent(scrub_queue)


def test_reconcile_twice_changes_nothing_more(scrub):
    scrub.run_child('quarantine', 'quarantine-renamed')
    scrub_queue = scrub.restart()
    before = scrub_queue.entries()
    assert scrub_queue.reconcile(scrubtree.NOW + 1) == (
        reconcile.ReconcileResult())
    assert before == scrub_queue.entries()
