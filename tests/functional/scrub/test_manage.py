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

"""cachekeeper-manage scrub ..., run as a real command on real files."""

import json
import os
import re
import sqlite3
import subprocess
import sys

import fixtures

from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.state import db
from tests.functional.scrub import base

MANAGE = os.path.join(os.path.dirname(sys.executable), 'cachekeeper-manage')


class ManageScrubTestCase(base.ScrubTestCase):

    def setUp(self):
        super().setUp()
        self.write_config()

    def start(self, *args):
        return subprocess.Popen(
            [MANAGE, '--config-file', self.config_file, 'scrub'] + list(args),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def manage(self, *args):
        process = self.start(*args)
        stdout, stderr = process.communicate(timeout=60)
        return process.returncode, stdout, stderr

    def assert_succeeds(self, stdout, *args):
        code, out, err = self.manage(*args)
        self.assertEqual((0, stdout), (code, out), err)
        self.assertEqual([], self.problems(err))

    def assert_fails(self, status, pattern, *args):
        """The command exits with ``status`` and says why in one line."""
        code, stdout, stderr = self.manage(*args)
        self.assertEqual(status, code, stderr)
        [problem] = self.problems(stderr)
        self.assertRegex(problem, pattern)
        self.assertNotIn('Traceback', stderr)
        return stdout

    def problems(self, stderr):
        """What the command itself printed on stderr (not log lines)."""
        return [line[len('cachekeeper-manage: '):]
                for line in stderr.splitlines()
                if line.startswith('cachekeeper-manage: ')]

    def queue_files(self, count):
        return [self.quarantine(self.make_file(base.image_name(number)))
                for number in range(count)]

    def test_list_is_a_table(self):
        entries = self.queue_files(2)
        self.set_entry(entries[1].id, state=scrub_entries.PARKED, attempts=5,
                       last_error='cannot delete: EPERM')
        code, stdout, stderr = self.manage('list')
        self.assertEqual(0, code, stderr)
        lines = stdout.splitlines()
        self.assertEqual(['ID', 'PATH', 'KIND', 'SIZE', 'STATE', 'QUEUED',
                          'AT', 'ATTEMPTS', 'LAST', 'ERROR'],
                         lines[0].split())
        self.assertEqual(3, len(lines))
        self.assertEqual(['1', entries[0].path, 'original', '0.0', 'MiB',
                          'queued', '2027-01-15T08:00:00+00:00', '0'],
                         lines[1].split())
        self.assertEqual(['parked', '2027-01-15T08:00:00+00:00', '5',
                          'cannot', 'delete:', 'EPERM'],
                         lines[2].split()[-6:])

    def test_list_json(self):
        [entry] = self.queue_files(1)
        code, stdout, stderr = self.manage('list', '--json')
        self.assertEqual(0, code, stderr)
        self.assertEqual({'entries': [entry.to_dict()]}, json.loads(stdout))
        self.assertEqual(
            {'id', 'path', 'kind', 'size', 'state', 'queued_at', 'attempts',
             'last_error'} - set(entry.to_dict()), set())

    def test_list_shows_finished_entries_with_all(self):
        [entry] = self.queue_files(1)
        self.queue.drain(base.NOW, 0, 3)
        self.assert_succeeds('The scrub queue is empty.\n', 'list')
        code, stdout, stderr = self.manage('list', '--all', '--json')
        [listed] = json.loads(stdout)['entries']
        self.assertEqual((entry.id, scrub_entries.DRAINED),
                         (listed['id'], listed['state']))

    def test_drain_ignores_the_delay(self):
        entries = self.queue_files(3)
        code, stdout, stderr = self.manage('drain')
        self.assertEqual(0, code, stderr)
        self.assertRegex(stdout, r'^Drained 3 entries, ')
        self.assertEqual([], self.quarantined_names())
        self.assertEqual([scrub_entries.DRAINED] * 3, [
            self.queue.entry(e.id).state for e in entries])

    def test_two_drains_at_once_drain_every_entry_exactly_once(self):
        count = 200
        self.queue_files(count)
        first, second = self.start('drain'), self.start('drain')
        drained = 0
        for process in (first, second):
            stdout, stderr = process.communicate(timeout=60)
            self.assertEqual(0, process.returncode, stderr)
            drained += int(re.match(r'Drained (\d+) entries', stdout)[1])
        self.assertEqual(count, drained)
        self.assertEqual({scrub_entries.DRAINED: count}, self.queue.counts())
        self.assertEqual([], self.quarantined_names())

    def test_restore(self):
        [entry] = self.queue_files(1)
        self.assert_succeeds('Restored entry 1: %s\n' % entry.path,
                             'restore', str(entry.id))
        self.assertEqual([entry.name], self.cache_names())

    def test_restore_refused_when_the_path_exists_again(self):
        [entry] = self.queue_files(1)
        self.make_file(entry.name, b'new')
        self.assert_fails(1, '^refusing to restore entry 1: .* exists again; '
                             'nothing changed$', 'restore', '1')
        self.assertEqual(scrub_entries.QUEUED,
                         self.queue.entry(entry.id).state)
        self.assertTrue(os.path.exists(entry.quarantine_path))

    def test_restore_drained_entry_is_an_error(self):
        self.queue_files(1)
        self.queue.drain(base.NOW, 0, 3)
        self.assert_fails(1, 'entry 1 was drained', 'restore', '1')

    def test_unknown_id(self):
        for command in ('restore', 'retry'):
            with self.subTest(command=command):
                self.assert_fails(1, '^no scrub queue entry with ID 7$',
                                  command, '7')

    def test_id_must_be_a_number(self):
        code, stdout, stderr = self.manage('restore', 'x')
        self.assertEqual(2, code)

    def test_retry(self):
        [entry] = self.queue_files(1)
        self.assert_fails(1, 'entry 1 is queued, not parked', 'retry', '1')
        self.set_entry(entry.id, state=scrub_entries.PARKED, attempts=5)
        self.assert_succeeds('Queued entry 1 again: %s\n' % entry.path,
                             'retry', '1')
        retried = self.queue.entry(entry.id)
        self.assertEqual((scrub_entries.QUEUED,
                         0), (retried.state, retried.attempts))

    def test_newer_database_is_a_configuration_error(self):
        connection = sqlite3.connect(os.path.join(self.state_path,
                                                  db.DATABASE_FILE))
        connection.execute('PRAGMA user_version = 99')
        connection.close()
        self.assert_fails(2, 'state database .* has schema version 99',
                          'list')

    def test_missing_state_path_is_a_configuration_error(self):
        os.rename(self.state_path, self.state_path + '.moved')
        self.assert_fails(2, r'\[DEFAULT\] state_path: .* does not exist',
                          'list')

    def test_quarantine_on_another_file_system_is_a_configuration_error(self):
        other = self.useFixture(fixtures.TempDir(rootdir='/dev/shm')).path
        if os.stat(other).st_dev == os.stat(self.cache_dir).st_dev:
            self.skipTest('/dev/shm is on the file system of the test '
                          'directory here')
        self.write_config(quarantine_dir=other)
        self.assert_fails(2, r'\[scrubber\] quarantine_dir .* is not on the '
                             'file system of the image cache', 'drain')
