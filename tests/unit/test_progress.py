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

import threading
import time

from cachekeeper import progress


def test_no_pass_runs_at_first():
    position = progress.PassProgress().position()
    assert (position.step, position.path, position.started_at) == (
        None, None, None)
    assert position.moved_at <= time.monotonic()


def test_the_first_step_begins_a_pass_and_the_next_ones_continue_it():
    record = progress.PassProgress()
    before = time.monotonic()
    record.step('scan')
    first = record.position()
    assert first.step == 'scan'
    assert before <= first.started_at <= first.moved_at

    record.file('/cache/a')
    record.step('inventory')
    second = record.position()
    assert second.step == 'inventory'
    # A new step is on no file yet.
    assert second.path is None
    assert second.started_at == first.started_at
    assert second.moved_at >= first.moved_at


def test_each_file_and_each_move_within_one_is_a_move():
    record = progress.PassProgress()
    record.step('execute')
    before = time.monotonic()
    record.file('/cache/a')
    on_a = record.position()
    assert (on_a.step, on_a.path) == ('execute', '/cache/a')
    assert on_a.moved_at >= before

    record.moved()
    moved = record.position()
    assert (moved.step, moved.path, moved.started_at) == (
        'execute', '/cache/a', on_a.started_at)
    assert moved.moved_at >= on_a.moved_at


def test_end_leaves_no_pass_and_the_next_step_begins_another():
    record = progress.PassProgress()
    record.step('drain')
    record.file('/quarantine/a')
    started = record.position().started_at
    record.end()
    assert record.position()[:3] == (None, None, None)

    record.step('scan')
    assert record.position().started_at >= started
    assert record.position().path is None


def test_a_pool_stays_on_its_oldest_file_while_the_others_finish():
    record = progress.PassProgress()
    record.step('inventory')
    record.file('/instances/a/disk')
    with record.working_on('/instances/b/disk'):
        with record.working_on('/instances/c/disk'):
            assert record.position().path == '/instances/b/disk'
        # c finished: a move, still on b, which hangs.
        assert record.position().path == '/instances/b/disk'
        with record.working_on('/instances/d/disk'):
            assert record.position().path == '/instances/b/disk'
    # Nothing is worked on at once any more: back to the last file.
    assert record.position().path == '/instances/a/disk'


def test_the_same_file_worked_on_twice_stays_until_both_end():
    record = progress.PassProgress()
    record.step('inventory')
    with record.working_on('/instances/a/disk'):
        with record.working_on('/instances/a/disk'):
            pass
        assert record.position().path == '/instances/a/disk'
    assert record.position().path is None


def test_a_file_whose_work_fails_is_left():
    record = progress.PassProgress()
    record.step('inventory')
    try:
        with record.working_on('/instances/a/disk'):
            raise OSError('EIO')
    except OSError:
        pass
    assert record.position().path is None


def test_threads_working_at_once_leave_nothing_in_flight():
    record = progress.PassProgress()
    record.step('inventory')
    record.file('/instances')

    def work(n):
        for i in range(200):
            with record.working_on('/instances/%d/disk%d' % (n, i)):
                record.moved()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert record.position()[:2] == ('inventory', '/instances')


def test_the_position_is_read_without_the_lock():
    # As a signal handler may find it: interrupting a writer that holds it.
    record = progress.PassProgress()
    record.step('execute')
    record.file('/cache/a')
    with record._lock:
        assert record.position()[:2] == ('execute', '/cache/a')
