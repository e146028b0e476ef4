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

import pytest

from cachekeeper.scrub import entries as scrub_entries
from cachekeeper.state import db
from tests.lib import scrubtree

MANAGE = os.path.join(os.path.dirname(sys.executable), 'cachekeeper-manage')


class ManageTree(scrubtree.ScrubTree):
    """A ScrubTree with a config file, for cachekeeper-manage scrub."""

    def __init__(self, root):
        super().__init__(root)
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
        assert (0, stdout) == (code, out), err
        assert self.problems(err) == []

    def assert_fails(self, status, pattern, *args):
        """The command exits with ``status`` and says why in one line."""
        code, stdout, stderr = self.manage(*args)
        assert status == code, stderr
        [problem] = self.problems(stderr)
        assert re.search(pattern, problem)
        assert 'Traceback' not in stderr
        return stdout

    def problems(self, stderr):
        """What the command itself printed on stderr (not log lines)."""
        return [line[len('cachekeeper-manage: '):]
                for line in stderr.splitlines()
                if line.startswith('cachekeeper-manage: ')]

    def queue_files(self, count):
        return [self.quarantine(self.make_file(scrubtree.image_name(number)))
                for number in range(count)]


scrub = scrubtree.tree_fixture(ManageTree)


def test_list_is_a_table(scrub):
    entries = scrub.queue_files(2)
    scrub.set_entry(entries[1].id, state=scrub_entries.PARKED, attempts=5,
                    last_error='cannot delete: EPERM')
    code, stdout, stderr = scrub.manage('list')
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0].split() == (
        ['ID', 'PATH', 'KIND', 'SIZE', 'STATE', 'QUEUED',
         'AT', 'ATTEMPTS', 'LAST', 'ERROR'])
    assert len(lines) == 3
    assert ['1', entries[0].path, 'original', '0.0', 'MiB',
            'queued', '2027-01-15T08:00:00+00:00', '0'] == lines[1].split()
    assert lines[2].split()[-6:] == (
        ['parked', '2027-01-15T08:00:00+00:00', '5',
         'cannot', 'delete:', 'EPERM'])


def test_list_json(scrub):
    [entry] = scrub.queue_files(1)
    code, stdout, stderr = scrub.manage('list', '--json')
    assert code == 0, stderr
    assert json.loads(stdout) == {'schema_version': 1,
                                  'entries': [entry.to_dict()]}
    assert {'id', 'path', 'kind', 'size', 'state', 'queued_at', 'attempts',
            'last_error'} - set(entry.to_dict()) == set()


def test_list_shows_finished_entries_with_all(scrub):
    [entry] = scrub.queue_files(1)
    scrub.queue.drain(scrubtree.NOW, 0, 3)
    scrub.assert_succeeds('The scrub queue is empty.\n', 'list')
    code, stdout, stderr = scrub.manage('list', '--all', '--json')
    [listed] = json.loads(stdout)['entries']
    assert (entry.id, scrub_entries.DRAINED) == (listed['id'], listed['state'])


def test_drain_ignores_the_delay(scrub):
    entries = scrub.queue_files(3)
    code, stdout, stderr = scrub.manage('drain')
    assert code == 0, stderr
    assert re.search(r'^Drained 3 entries, ', stdout)
    assert scrub.quarantined_names() == []
    assert [scrub_entries.DRAINED] * 3 == [
        scrub.queue.entry(e.id).state for e in entries]


def test_two_drains_at_once_drain_every_entry_exactly_once(scrub):
    count = 200
    scrub.queue_files(count)
    first, second = scrub.start('drain'), scrub.start('drain')
    drained = 0
    for process in (first, second):
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
        drained += int(re.match(r'Drained (\d+) entries', stdout)[1])
    assert count == drained
    assert scrub.queue.counts() == {scrub_entries.DRAINED: count}
    assert scrub.quarantined_names() == []


def test_restore(scrub):
    [entry] = scrub.queue_files(1)
    scrub.assert_succeeds('Restored entry 1: %s\n' % entry.path,
                          'restore', str(entry.id))
    assert [entry.name] == scrub.cache_names()


def test_restore_refused_when_the_path_exists_again(scrub):
    [entry] = scrub.queue_files(1)
    scrub.make_file(entry.name, b'new')
    scrub.assert_fails(1, '^refusing to restore entry 1: .* exists again; '
                         'nothing changed$', 'restore', '1')
    assert scrub.queue.entry(entry.id).state == scrub_entries.QUEUED
    assert os.path.exists(entry.quarantine_path)


def test_restore_drained_entry_is_an_error(scrub):
    scrub.queue_files(1)
    scrub.queue.drain(scrubtree.NOW, 0, 3)
    scrub.assert_fails(1, 'entry 1 was drained', 'restore', '1')


@pytest.mark.parametrize('command', ['restore', 'retry'])
def test_unknown_id(scrub, command):
    scrub.assert_fails(1, '^no scrub queue entry with ID 7$', command, '7')


def test_id_must_be_a_number(scrub):
    code, stdout, stderr = scrub.manage('restore', 'x')
    assert code == 2


def test_retry(scrub):
    [entry] = scrub.queue_files(1)
    scrub.assert_fails(1, 'entry 1 is queued, not parked', 'retry', '1')
    scrub.set_entry(entry.id, state=scrub_entries.PARKED, attempts=5)
    scrub.assert_succeeds('Queued entry 1 again: %s\n' % entry.path,
                          'retry', '1')
    retried = scrub.queue.entry(entry.id)
    assert (retried.state, retried.attempts) == (scrub_entries.QUEUED,
                                                0)


def test_newer_database_is_a_configuration_error(scrub):
    connection = sqlite3.connect(os.path.join(scrub.state_path,
                                              db.DATABASE_FILE))
    connection.execute('PRAGMA user_version = 99')
    connection.close()
    scrub.assert_fails(2, 'state database .* has schema version 99',
                       'list')


def test_missing_state_path_is_a_configuration_error(scrub):
    os.rename(scrub.state_path, scrub.state_path + '.moved')
    scrub.assert_fails(2, r'\[DEFAULT\] state_path: .* does not exist',
                       'list')


def test_quarantine_on_another_file_system_is_a_configuration_error(
        scrub, elsewhere):
    if os.stat(elsewhere).st_dev == os.stat(scrub.cache_dir).st_dev:
        pytest.skip('/dev/shm is on the file system of the test directory '
                    'here')
    scrub.write_config(quarantine_dir=elsewhere)
    scrub.assert_fails(2, r'\[scrubber\] quarantine_dir .* is not on the '
                         'file system of the image cache', 'drain')
