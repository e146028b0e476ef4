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

"""Hostile files around the image cache, through cachekeeper-manage.

Whoever can write instances_path (nova's user, or a guest's disk image)
can put a FIFO or a deeply nested JSON document where cachekeeper reads
nova's files, make qemu-img name an impossible backing file, or give
cache entries names that hold terminal control sequences. A pass must
neither hang nor stop on them, keep what could be in use, and tell each
in one log line; what the command line prints must stay on its lines.
"""

import os
import re
import stat
import subprocess

import pytest

from cachekeeper import coordination
from tests.lib import daemon as system_daemon
from tests.lib import hosttree

OLD = 2 * hosttree.DAY
PASS_LINE = r'INFO cachekeeper.service .* Pass done'
UUID = '6f1c4a52-2d0e-4c36-9a51-0000000000aa'
ROOT = hosttree.image('root')
UNUSED = hosttree.image('unused')
# Deeper than Python's recursion limit.
DEEP_JSON = '[' * 100000 + ']' * 100000

# Prints what qemu-img would, but names a backing file with a NUL byte.
NUL_BACKING_QEMU_IMG = '''#!/bin/sh
printf '{"format": "qcow2", "filename": "disk", "virtual-size": 1048576, '
printf '"backing-filename": "/x\\\\u0000y"}'
'''
# Control characters, a bidirectional override and a byte that is not
# UTF-8: none may reach a log line or a terminal as it is.
CONTROL = re.compile('[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e]')
ODD_NAMES = ['new\nline 2026-01-01 00:00:00.000 1 CRITICAL forged',
             'carriage\rreturn', '\x1b[31mred\x1b[0m', '\x1b]0;title\x07',
             ROOT[:39] + '\u202e', os.fsdecode(b'not-utf-8-\xff')]


def build(host):
    root = host.base(ROOT, OLD)
    host.base(UNUSED, OLD)
    return host.instance(UUID, {'disk': root})


def fifo_registry(host):
    os.mkfifo(os.path.join(host.instances_path, 'compute_nodes'))
    return os.path.join(host.instances_path, 'compute_nodes')


def deep_registry(host):
    path = os.path.join(host.instances_path, 'compute_nodes')
    with open(path, 'w') as f:
        f.write(DEEP_JSON)
    return path


def deep_disk_info(host):
    path = os.path.join(host.instances_path, UUID, 'disk.info')
    with open(path, 'w') as f:
        f.write(DEEP_JSON)
    return path


def nul_backing(host):
    bin_dir = os.path.join(host.root, 'bin')
    os.mkdir(bin_dir)
    fake = os.path.join(bin_dir, 'qemu-img')
    with open(fake, 'w') as f:
        f.write(NUL_BACKING_QEMU_IMG)
    os.chmod(fake, 0o755)
    host.write_config(inspect_method='qemu-img')
    return os.path.join(host.instances_path, UUID, 'disk')


# What each unreadable file holds back: a disk.info only what the disks of
# its directory use (they are read by their headers), the others anything.
@pytest.mark.parametrize('make, unused_verdict', [
    (fifo_registry, 'kept'), (deep_registry, 'kept'),
    (deep_disk_info, 'queued'), (nul_backing, 'kept')],
    ids=['fifo_registry', 'deep_registry', 'deep_disk_info', 'nul_backing'])
def test_unreadable_file_fails_the_pass_closed(tmp_path, make,
                                               unused_verdict):
    host = hosttree.HostTree(tmp_path / 'host')
    build(host)
    culprit = make(host)
    path_prefix = os.path.join(host.root, 'bin')

    process, report = host.run_pass(path_prefix=path_prefix)

    assert 'Traceback' not in process.stderr, process.stderr
    assert process.returncode == 1, process.stderr
    assert [e['path'] for e in report['errors']] == [culprit], report
    verdicts = {name: entry['verdict']
                for name, entry in hosttree.entries(report).items()}
    assert verdicts[UNUSED] == unused_verdict, report
    assert os.path.exists(host.cache_path(ROOT))
    assert os.path.exists(host.cache_path(UNUSED)) == (
        unused_verdict == 'kept')
    assert len(re.findall(' WARNING .*%s' % re.escape(culprit),
                          process.stderr)) == 1, process.stderr


def test_status_does_not_wait_on_a_fifo_leader_record(tmp_path):
    host = hosttree.HostTree(tmp_path / 'host')
    build(host)
    os.mkfifo(coordination.leader_record_path(host.instances_path,
                                              host.cache_dir))

    process = host.manage('cache', 'status')

    assert process.returncode == 0, process.stderr
    assert 'Traceback' not in process.stderr, process.stderr


def test_status_shows_odd_host_names_escaped(tmp_path):
    host = hosttree.HostTree(tmp_path / 'host')
    build(host)
    with open(os.path.join(host.instances_path, 'compute_nodes'), 'w') as f:
        f.write('{"\\u001b[2Jcompute-2\\nforged": 1.0}')

    process = host.manage('cache', 'status')

    assert process.returncode == 0, process.stderr
    assert '\\x1b[2Jcompute-2\\nforged' in process.stdout, process.stdout
    assert not CONTROL.search(process.stdout), process.stdout


def test_odd_names_stay_on_their_log_and_terminal_lines(tmp_path):
    host = hosttree.HostTree(tmp_path / 'host')
    build(host)
    for name in ODD_NAMES:
        host.base(name, OLD)

    process, report = host.run_pass()

    assert process.returncode == 0, process.stderr
    for line in process.stderr.splitlines():
        assert re.match(r'\d{4}-\d\d-\d\d ', line), process.stderr
        assert not CONTROL.search(line), line
    warnings = [line for line in process.stderr.splitlines()
                if 'Unexpected entry' in line]
    assert len(warnings) == len(ODD_NAMES), process.stderr
    for name in ODD_NAMES:
        assert os.path.exists(host.cache_path(name))
        explained = subprocess.run(
            host.manage_command('cache', 'explain', host.cache_path(name)),
            capture_output=True, timeout=hosttree.PASS_TIMEOUT)
        assert explained.returncode == 0, explained.stderr
        text = os.fsdecode(explained.stdout)
        assert 'verdict:  ignored' in text, text
        assert not CONTROL.search(text), text
        assert b'Traceback' not in explained.stderr, explained.stderr


def test_quarantine_dir_that_is_an_instance_directory_is_refused(tmp_path):
    host = hosttree.HostTree(tmp_path / 'host')
    directory = build(host)
    with open(host.config_file, 'a') as f:
        f.write('[scrubber]\nquarantine_dir = %s\n' % directory)
    before = hosttree.snapshot(host.instances_path)

    process = host.manage('cache', 'pass', '--json')

    assert process.returncode == 2, process.stderr
    assert 'quarantine_dir' in process.stderr, process.stderr
    assert hosttree.snapshot(host.instances_path) == before
    assert stat.S_ISREG(os.stat(host.cache_path(ROOT)).st_mode)


def test_lasting_faults_are_told_once_under_the_daemon(tmp_path):
    host = hosttree.HostTree(tmp_path / 'host')
    build(host)
    system_daemon.write_config(
        host.config_file,
        DEFAULT={'instances_path': host.instances_path,
                 'state_path': host.state_path, 'host': 'compute-test',
                 'service_backend': 'threading'},
        image_cache={'manager_interval': 1,
                     'remove_unused_original_minimum_age_seconds':
                         hosttree.DAY})
    daemon = system_daemon.Daemon(host.root, host.config_file)
    try:
        daemon.wait_for(PASS_LINE)
        # Every later pass meets both: registering needs a lock file in
        # locks/, adopting files needs the host's quarantine directory.
        quarantine = os.path.join(host.instances_path,
                                  '.cachekeeper-quarantine', 'compute-test')
        os.rename(quarantine, quarantine + '.away')
        os.rename(host.locks_dir, host.locks_dir + '.away')
        with open(host.locks_dir, 'w'):
            pass
        daemon.wait_for(PASS_LINE, count=len(daemon.lines(PASS_LINE)) + 4)
        assert daemon.process.poll() is None
        log = daemon.stop_cleanly()
    finally:
        daemon.kill()
    assert len(daemon.lines('Cannot register host')) == 1, log
    assert len(daemon.lines('cannot list quarantine directory')) == 1, log
    assert os.path.exists(host.cache_path(ROOT))
