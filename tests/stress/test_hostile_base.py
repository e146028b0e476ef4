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

"""One image cache full of hostile entries, through the command line and
the daemon.

Names with spaces, newlines, bytes that are not UTF-8, shell syntax,
leading dashes and 255 bytes; hard links; a sparse file larger than its
file system; empty files; directories and FIFOs named like cache files;
files and directories nobody may read; symlinks of every sort. None may be
followed or block a pass, and none may go unless it is a regular, classified,
unused and old file. The rules for single odd entries are in
tests/functional/cache/test_scenarios.py; this is all of them at once, as
a host could really look.
"""

import os
import stat
import time

import pytest

from cachekeeper.cache import facts
from tests.lib import daemon as system_daemon
from tests.lib import hosttree

OLD = 2 * hosttree.DAY
YOUNG = 10 * hosttree.MINUTE
UUID = '6f1c4a52-2d0e-4c36-9a51-0000000000aa'
PASS_LINE = r'INFO cachekeeper.service .* Pass done'
TIB = 1024 ** 4


def image(name):
    return hosttree.image(name).encode()


IN_USE_EPHEMERAL = b'ephemeral_1_' + hosttree.VFAT.encode()
TOO_LONG_TO_LOCK = image('resized') + b'_' + b'1' * 214

# Regular, classified, unused and old: these go.
REMOVABLE = {
    image('empty'): 'empty file',
    image('sparse'): 'sparse file larger than its file system',
    image('no-permissions'): 'mode 000',
    image('linked-from-outside'): 'hard link to a file outside the cache',
    b'swap_2048': 'unused swap file',
}
# Kept, but not for being foreign: residue and a young file are young, and
# a name too long for its lock file cannot be locked.
NOT_FOREIGN = {image('young'), image('residue') + b'.part',
               b'x' * 250 + b'.part', TOO_LONG_TO_LOCK}
# Another name of a base in use: regular, classified, old and used by no
# instance under this name, so it may go (the base keeps its data); it is
# kept if the base in use was touched first, since they share their mtime.
HARD_LINK_OF_IN_USE = image('hard-link-of-root')
# In use by the instance, whatever they look like: kept and touched.
IN_USE = {
    image('root'): 'root disk base',
    IN_USE_EPHEMERAL: 'empty base in use',
    b'swap_512': 'mode 000 base in use',
    image('rescue'): 'sparse base in use, larger than its file system',
}
# Everything else is kept: with its lstat unchanged, contents untouched.
KEPT = {
    image('a-directory'): 'directory named like a cache file',
    image('unreadable-directory'): 'directory nobody may read',
    image('a-fifo'): 'FIFO named like a cache file',
    b'swap_1024': 'FIFO named like a swap file',
    image('a-socket'): 'socket named like a cache file',
    image('symlink'): 'symlink to an old file outside',
    image('dangling'): 'dangling symlink',
    image('loop'): 'symlink to itself',
    image('to-base'): 'symlink to a base in the cache',
    image('young'): 'unused, but young',
    image('residue') + b'.part': 'download residue',
    b'x' * 250 + b'.part': '255-byte download residue',
    b'x' * 255: '255-byte name',
    TOO_LONG_TO_LOCK: '255-byte resized name, too long for its lock file',
    b'has space': 'space',
    image('trailing-space') + b' ': 'cache name and a space',
    image('newline') + b'\n': 'cache name and a newline',
    b'two\nlines': 'newline',
    b'\xff\xfe not utf-8': 'bytes that are not UTF-8',
    image('not-utf-8') + b'\xff': 'cache name and a byte that is not UTF-8',
    b'-rf': 'leading dash',
    b'--help': 'two leading dashes',
    b'-' + image('dash'): 'cache name after a dash',
    b'$(touch PWNED)': 'command substitution',
    b'`touch PWNED`; rm -rf ~': 'backticks and a command',
    image('upper').upper(): 'upper case cache name',
}


def cache_path(host, name):
    return os.path.join(os.fsencode(host.cache_dir), name)


def make_file(path, age, size=1024 * 1024):
    with open(path, 'wb') as f:
        f.truncate(size)
    set_age(path, age)


def set_age(path, age):
    when = time.time() - age
    os.utime(path, (when, when), follow_symlinks=False)


def build(host):
    outside = os.path.join(os.fsencode(host.root), b'outside')
    os.mkdir(outside)
    make_file(cache_path(host, image('root')), OLD)
    make_file(cache_path(host, IN_USE_EPHEMERAL), OLD, size=0)
    make_file(cache_path(host, b'swap_512'), OLD)
    os.chmod(cache_path(host, b'swap_512'), 0)
    make_file(cache_path(host, image('rescue')), OLD, size=TIB)
    host.instance(UUID, {
        'disk': os.fsdecode(cache_path(host, image('root'))),
        'disk.local': os.fsdecode(cache_path(host, IN_USE_EPHEMERAL)),
        'disk.swap': os.fsdecode(cache_path(host, b'swap_512')),
        'disk.rescue': os.fsdecode(cache_path(host, image('rescue')))})

    make_file(cache_path(host, image('empty')), OLD, size=0)
    make_file(cache_path(host, image('sparse')), OLD, size=TIB)
    make_file(cache_path(host, image('no-permissions')), OLD)
    os.chmod(cache_path(host, image('no-permissions')), 0)
    make_file(os.path.join(outside, b'linked'), OLD)
    os.link(os.path.join(outside, b'linked'),
            cache_path(host, image('linked-from-outside')))
    make_file(cache_path(host, b'swap_2048'), OLD)

    os.link(cache_path(host, image('root')),
            cache_path(host, HARD_LINK_OF_IN_USE))
    for name in (image('a-directory'), image('unreadable-directory')):
        os.mkdir(cache_path(host, name))
        make_file(os.path.join(cache_path(host, name), image('inside')), OLD)
    os.chmod(cache_path(host, image('unreadable-directory')), 0)
    os.mkfifo(cache_path(host, image('a-fifo')))
    os.mkfifo(cache_path(host, b'swap_1024'))
    os.mknod(cache_path(host, image('a-socket')), stat.S_IFSOCK | 0o600)
    make_file(os.path.join(outside, b'target'), OLD)
    os.symlink(os.path.join(outside, b'target'),
               cache_path(host, image('symlink')))
    os.symlink(b'nowhere', cache_path(host, image('dangling')))
    os.symlink(image('loop'), cache_path(host, image('loop')))
    os.symlink(image('root'), cache_path(host, image('to-base')))
    make_file(cache_path(host, image('young')), YOUNG)
    for name, what in KEPT.items():
        path = cache_path(host, name)
        if not os.path.lexists(path):
            make_file(path, YOUNG if name.endswith(b'.part') else OLD)
        elif not os.path.islink(path):
            set_age(path, OLD if name != image('young') else YOUNG)


def snapshot(host):
    """{name: lstat} of every entry of the cache and of what is outside."""
    state = {}
    for top in (host.cache_dir, os.path.join(host.root, 'outside')):
        for dirpath, dirnames, filenames in os.walk(os.fsencode(top)):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                state[path] = (stat.S_IFMT(st.st_mode), st.st_ino,
                               st.st_size, st.st_mtime_ns, st.st_nlink)
    return state


def report_entries(report):
    return {os.fsencode(os.path.basename(entry['path'])): entry
            for entry in report['files']}


@pytest.fixture
def host(tmp_path):
    host = hosttree.HostTree(tmp_path / 'host')
    os.chmod(host.state_path, 0o700)
    build(host)
    return host


def check_pass(host):
    before = snapshot(host)
    listed = set(os.listdir(os.fsencode(host.cache_dir)))
    started = time.time()
    process, report = host.run_pass()
    assert 'Traceback' not in process.stderr, process.stderr
    entries = report_entries(report)
    assert set(entries) == listed
    after = snapshot(host)
    for name, what in REMOVABLE.items():
        assert not os.path.lexists(cache_path(host, name)), what
    for name, what in IN_USE.items():
        assert entries[name]['verdict'] == facts.IN_USE, (what, entries[name])
        assert os.lstat(cache_path(host, name)).st_mtime >= started - 1, what
    for name, what in KEPT.items():
        path = cache_path(host, name)
        assert entries[name]['verdict'] not in (
            facts.QUEUED, facts.REMOVED), (what, entries[name])
        assert after[path] == before[path], what
    root = cache_path(host, image('root'))
    assert after[root][:3] == before[root][:3]
    for path, state in before.items():
        if not path.startswith(os.fsencode(host.cache_dir)):
            # Nothing outside the cache was followed, touched or removed,
            # though a removed hard link leaves one link fewer.
            assert after[path][:4] == state[:4], path
    # Only the name too long for a lock file beside it is an error.
    assert [os.fsencode(os.path.basename(e['path']))
            for e in report['errors']] == [TOO_LONG_TO_LOCK], report['errors']
    assert process.returncode == 1


def test_hostile_cache_through_the_command_line(host):
    check_pass(host)
    # A second pass finds the same, and removes nothing more.
    check_pass(host)
    assert not os.path.exists(os.path.join(host.root, 'PWNED'))
    assert not os.path.exists('PWNED')


@pytest.mark.parametrize('backend', ['eventlet', 'threading'])
def test_hostile_cache_under_the_daemon(host, backend):
    system_daemon.write_config(
        host.config_file,
        DEFAULT={'instances_path': host.instances_path,
                 'state_path': host.state_path, 'host': 'compute-test',
                 'service_backend': backend},
        image_cache={'manager_interval': 1,
                     'remove_unused_original_minimum_age_seconds':
                         hosttree.DAY})
    daemon = system_daemon.Daemon(host.root, host.config_file)
    try:
        daemon.wait_for(PASS_LINE, count=3, timeout=60)
        assert daemon.process.poll() is None
        log = daemon.stop_cleanly()
    finally:
        daemon.kill()
    for name in REMOVABLE:
        assert not os.path.lexists(cache_path(host, name)), log
    for name in list(IN_USE) + list(KEPT):
        assert os.path.lexists(cache_path(host, name)), log
    assert 'Logging error' not in log, log
    # Each odd entry is reported once, not at every pass.
    warnings = [line.split(' ', 4)[4] for line in log.splitlines()
                if ' WARNING ' in line]
    assert len(warnings) == len(set(warnings)), log
    assert len(daemon.lines('Unexpected entry in the image cache')) == len(
        set(KEPT) - NOT_FOREIGN), log
