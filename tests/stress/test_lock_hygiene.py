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

"""Lock files and restores, through cachekeeper-manage.

Lock files cachekeeper creates belong to nova (the owner and group of
``locks/``, or of instances_path when it makes ``locks/`` itself), nova's
lock files are never removed, and ``scrub restore`` writes nowhere but
into the image cache, whatever the scrub queue says. The functions behind
these are tested one by one in tests/functional/cache/test_locks.py,
test_execute.py and tests/functional/scrub/test_queue.py; here it is
the commands an operator runs, on a host laid out as nova leaves it.
"""

import json
import os
import sqlite3
import stat

import pytest

from tests.lib import hosttree

NOVA_UID = 64061
NOVA_GID = 64062
OLD = 2 * hosttree.DAY
UUID = '6f1c4a52-2d0e-4c36-9a51-0000000000cc'
IN_USE = hosttree.image('in-use')
UNUSED = [hosttree.image('unused-%d' % n) for n in range(3)]
# Lock files nova left behind: for a base that is gone, one for a base
# about to go, and one for the base in use.
NOVA_LOCKS = ['nova-' + hosttree.image('long-gone'), 'nova-' + UNUSED[0],
              'nova-' + IN_USE, 'nova-storage-registry-lock']

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason='chowns files to a nova user: needs root')


def lock_files(host):
    """{name: (inode, uid, gid, mode)} of everything in locks/."""
    found = {}
    for name in os.listdir(host.locks_dir):
        st = os.lstat(os.path.join(host.locks_dir, name))
        found[name] = (st.st_ino, st.st_uid, st.st_gid, st.st_mode)
    return found


def nova_host(tmp_path, locks_dir):
    """A host whose instances_path (and locks/) belong to nova."""
    host = hosttree.HostTree(tmp_path / 'host', locks_dir=locks_dir)
    os.chmod(host.state_path, 0o700)
    os.chown(host.instances_path, NOVA_UID, NOVA_GID)
    if locks_dir:
        os.chown(host.locks_dir, NOVA_UID, NOVA_GID)
        for name in NOVA_LOCKS:
            path = os.path.join(host.locks_dir, name)
            with open(path, 'a'):
                pass
            os.chown(path, NOVA_UID, NOVA_GID)
    host.instance(UUID, {'disk': host.base(IN_USE, OLD)})
    for name in UNUSED:
        host.base(name, OLD)
    return host


def queue_entries(host):
    process = host.manage('scrub', 'list', '--json')
    assert process.returncode == 0, process.stderr
    return {os.path.basename(e['path']): e
            for e in json.loads(process.stdout)['entries']}


@needs_root
@pytest.mark.parametrize('locks_dir', [True, False],
                         ids=['locks dir', 'no locks dir'])
def test_lock_files_belong_to_nova_and_stay(tmp_path, locks_dir):
    host = nova_host(tmp_path, locks_dir)
    before = lock_files(host) if locks_dir else {}

    process, report = host.run_pass()

    assert process.returncode == 0, process.stderr
    assert sorted(e['verdict'] for e in report['files']) == [
        'in_use', 'queued', 'queued', 'queued']
    st = os.stat(host.locks_dir)
    assert (st.st_uid, st.st_gid) == (NOVA_UID, NOVA_GID)
    after = lock_files(host)
    # nova's own lock files are all there, as they were.
    for name, state in before.items():
        assert after[name] == state, name
    # Those made for the removals are there, nova's, and nova can open
    # them for writing (oslo's external locks open them in append mode).
    made = {'nova-' + n for n in UNUSED}
    assert set(after) >= set(before) | made
    for name in made - set(before):
        _ino, uid, gid, mode = after[name]
        assert (uid, gid, stat.S_IMODE(mode)) == (NOVA_UID, NOVA_GID, 0o644)

    # A restore, after the lock files were lost (locks/ on a tmpfs and a
    # reboot), makes its lock file nova's too; a drain takes no lock.
    lost = 'nova-' + UNUSED[1]
    os.unlink(os.path.join(host.locks_dir, lost))
    entry = queue_entries(host)[UNUSED[1]]
    process = host.manage('scrub', 'restore', str(entry['id']))
    assert process.returncode == 0, process.stderr
    assert os.path.isfile(host.cache_path(UNUSED[1]))
    _ino, uid, gid, mode = lock_files(host)[lost]
    assert (uid, gid, stat.S_IMODE(mode)) == (NOVA_UID, NOVA_GID, 0o644)
    before = lock_files(host)
    process = host.manage('scrub', 'drain')
    assert process.returncode == 0, process.stderr
    assert lock_files(host) == before


def snapshot(host):
    """The instances and what is outside them (state_path left out)."""
    return (hosttree.snapshot(host.instances_path),
            hosttree.snapshot(outside(host)))


@needs_root
def test_everything_made_in_locks_is_novas(tmp_path):
    host = nova_host(tmp_path, locks_dir=True)
    process, _report = host.run_pass()
    assert process.returncode == 0, process.stderr
    foreign = []
    for dirpath, dirnames, filenames in os.walk(host.locks_dir):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_uid, st.st_gid) != (NOVA_UID, NOVA_GID):
                foreign.append(os.path.relpath(os.path.join(dirpath, name),
                                               host.locks_dir))
    assert foreign == []


def tampered(host, entry_id, **columns):
    connection = sqlite3.connect(os.path.join(host.state_path,
                                              'cachekeeper.sqlite'))
    with connection:
        for column, value in columns.items():
            connection.execute('UPDATE scrub_entry SET %s = ? WHERE id = ?'
                               % column, (value, entry_id))
    connection.close()


def outside(host):
    return os.path.join(host.root, 'outside')


def through_dots(host, entry):
    return {'name': 'escaped',
            'path': os.path.join(host.cache_dir, '..', 'escaped')}


def dots_as_name(host, entry):
    return {'name': '..', 'path': os.path.join(host.cache_dir, '..')}


def slash_in_name(host, entry):
    return {'name': 'sub/escaped',
            'path': os.path.join(host.cache_dir, 'sub', 'escaped')}


def through_symlink(host, entry):
    link = os.path.join(host.instances_path, '_base_elsewhere')
    os.symlink(outside(host), link)
    return {'path': os.path.join(link, entry['name'])}


def absolute_elsewhere(host, entry):
    return {'path': os.path.join(outside(host), entry['name'])}


def symlink_in_the_cache(host, entry):
    # The name is right, but a symlink to elsewhere took its place.
    os.symlink(os.path.join(outside(host), entry['name']),
               host.cache_path(entry['name']))
    return {}


def quarantine_path_elsewhere(host, entry):
    # Restoring would write into the cache, but from a file elsewhere.
    victim = os.path.join(outside(host), 'victim')
    with open(victim, 'w') as f:
        f.write('not a cache file')
    return {'quarantine_path': victim}


TAMPERS = [through_dots, dots_as_name, slash_in_name, through_symlink,
           absolute_elsewhere, symlink_in_the_cache, quarantine_path_elsewhere]


def entry_state(host, entry_id):
    connection = sqlite3.connect(os.path.join(host.state_path,
                                              'cachekeeper.sqlite'))
    try:
        return connection.execute('SELECT state FROM scrub_entry WHERE '
                                  'id = ?', (entry_id,)).fetchone()[0]
    finally:
        connection.close()


def test_restore_of_a_tampered_entry_is_refused(tmp_path, subtests):
    host = hosttree.HostTree(tmp_path / 'host')
    os.chmod(host.state_path, 0o700)
    os.mkdir(outside(host))
    names = [hosttree.image('tampered-%d' % n) for n in range(len(TAMPERS))]
    for name in names:
        host.base(name, OLD)
    process, _report = host.run_pass()
    assert process.returncode == 0, process.stderr
    entries = queue_entries(host)
    for tamper, name in zip(TAMPERS, names):
        with subtests.test(tamper=tamper.__name__):
            entry = entries[name]
            tampered(host, entry['id'], **tamper(host, entry))
            before = snapshot(host)

            process = host.manage('scrub', 'restore', str(entry['id']))

            assert process.returncode == 1, process.stdout + process.stderr
            assert 'Traceback' not in process.stderr
            assert len(process.stderr.strip().splitlines()) == 1, (
                process.stderr)
            # Nothing moved, anywhere.
            assert snapshot(host) == before
            assert os.path.isfile(entry['quarantine_path'])
            assert entry_state(host, entry['id']) == 'queued'
