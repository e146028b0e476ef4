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

"""The aging pass, rule by rule, as an operator runs it.

Each row of SCENARIOS builds a compute host's instances_path out of real
files and real qcow2 images with explicit ages, runs
``cachekeeper-manage cache pass --json`` on it as a subprocess, and checks
the verdict of every entry of ``_base``; that files in use were touched and
no other file was; and that exactly the removed files are gone. The tests
after the table cover what a row cannot: the exit status when a disk cannot
be read, dry run, a file used while the pass waits for its lock, the JSON
report and ``cache explain``.
"""

import collections
import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest

from cachekeeper.cache import facts
from tests.lib import hosttree
from tests.lib import qemu

MINUTE = hosttree.MINUTE
HOUR = hosttree.HOUR
DAY = hosttree.DAY
OLD = 2 * DAY
MEDIUM = 2 * HOUR
YOUNG = 10 * MINUTE

IN_USE = facts.IN_USE
TOO_YOUNG = facts.TOO_YOUNG
PINNED = facts.PINNED
KEPT = facts.KEPT
IGNORED = facts.IGNORED
# A removed file leaves _base: for the scrub queue's quarantine, or, if it
# is download residue, deleted at once.
REMOVED = facts.QUEUED
GONE = (facts.QUEUED, facts.REMOVED)

# Cache file names.
ROOT = hosttree.image('root-image')
OTHER = hosttree.image('other-image')
RESCUE = hosttree.image('rescue-image')
UNUSED = hosttree.image('unused-image')
PINNED_IMAGE = hosttree.image('pinned-image')
YOUNG_IMAGE = hosttree.image('young-image')
MEDIUM_IMAGE = hosttree.image('medium-image')
SIZE_10G = '_10737418240'
SIZE_20G = '_21474836480'
EPH1 = 'ephemeral_1_' + hosttree.VFAT
EPH2 = 'ephemeral_2_' + hosttree.VFAT
EPH3 = 'ephemeral_3_' + hosttree.VFAT
EPH1_EXT4 = 'ephemeral_1_' + hosttree.EXT4
SWAP_512 = 'swap_512'
SWAP_1024 = 'swap_1024'
NOT_HEX = 'not-a-sha1-but-exactly-40-characters-xyz'
A_DIRECTORY = hosttree.image('a-directory')
A_FIFO = hosttree.image('a-fifo')

UUID1 = '6f1c4a52-2d0e-4c36-9a51-000000000001'
UUID2 = '6f1c4a52-2d0e-4c36-9a51-000000000002'
UUID3 = '6f1c4a52-2d0e-4c36-9a51-000000000003'
BAD_UUID = '6f1c4a52-2d0e-4c36-9a51-0000000000ba'

# Fails for the one disk of BAD_UUID, as qemu-img does for a disk it cannot
# open; everything else goes to the real qemu-img.
FAKE_QEMU_IMG = '''#!/bin/sh
for arg; do
    case "$arg" in
        *%s*) echo "qemu-img: Could not open '$arg': I/O error" >&2; exit 1;;
    esac
done
exec %s "$@"
''' % (BAD_UUID, qemu.QEMU_IMG)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One rule: a host to build and the verdict of every cache entry.

    ``reasons`` holds text the reason of an entry must contain, with
    ``{instances}`` standing for instances_path; ``bind_mount`` runs the
    pass where host.root is also mounted at nova_view(host); ``check`` is
    a last assertion on the host after the pass.
    """

    name: str
    build: object
    verdicts: dict
    reasons: dict = dataclasses.field(default_factory=dict)
    options: dict = dataclasses.field(default_factory=dict)
    # None: test_unreadable_disk_is_an_error_of_the_pass checks it.
    exit_code: int = 0
    fake_qemu_img: bool = False
    bind_mount: bool = False
    check: object = None


def uses(disk_name, cache_name):
    """Build an instance whose ``disk_name`` alone uses ``cache_name``."""
    def build(host):
        host.instance(UUID1, {
            'disk': host.base(ROOT, OLD),
            disk_name: host.base(cache_name, OLD)})
        host.base(UNUSED, OLD)
    return build


def two_ephemerals(host):
    # Made before nova wrote disk.info: the disks are known by their names.
    host.instance(UUID1, {
        'disk': host.base(ROOT, OLD),
        'disk.eph0': host.base(EPH1, OLD),
        'disk.eph1': host.base(EPH2, OLD)}, formats={})
    host.base(EPH3, OLD)


def ephemeral_hash_changed(host):
    # The instance was made with vfat; the configuration says ext4 now and
    # a later instance's ext4 file is no longer used.
    host.instance(UUID1, {
        'disk': host.base(ROOT, OLD),
        'disk.local': host.base(EPH1, OLD)})
    host.base(EPH1_EXT4, OLD)


def resized_copy(host):
    original = host.base(ROOT, OLD)
    host.instance(UUID1, {'disk': host.base(ROOT + SIZE_10G, OLD,
                                            backing=original)})
    host.base(OTHER + SIZE_10G, OLD, backing=host.base(OTHER, YOUNG))


def odd_names(host):
    host.instance(UUID1, {'disk': host.base(ROOT, OLD)})
    for name in (NOT_HEX, ROOT.upper(), 'ephemeral_0_20_None',
                 UNUSED + '.part'):
        host.base(name, OLD)


def special_entries(host):
    host.instance(UUID1, {'disk': host.base(ROOT, OLD)})
    target = os.path.join(host.root, 'elsewhere', OTHER)
    os.makedirs(os.path.dirname(target))
    with open(target, 'wb') as f:
        f.truncate(1024 * 1024)
    hosttree.set_age(target, OLD)
    os.symlink(target, host.cache_path(OTHER))
    os.mkdir(host.cache_path(A_DIRECTORY))
    with open(os.path.join(host.cache_path(A_DIRECTORY), 'x'), 'w'):
        pass
    os.mkfifo(host.cache_path(A_FIFO))
    # A FIFO where an instance disk belongs is not opened either.
    os.mkfifo(os.path.join(host.instances_path, UUID1, 'disk.local'))
    for name in (OTHER, A_DIRECTORY, A_FIFO):
        hosttree.set_age(host.cache_path(name), OLD)
    host.base(UNUSED, OLD)


def symlink_target_untouched(host):
    target = os.path.join(host.root, 'elsewhere', OTHER)
    assert os.stat(target).st_mtime < time.time() - DAY


def unreadable(make_bad_disk):
    """Build three readable instances and one disk nobody can read.

    The unreadable disk really is an overlay of UNUSED: nothing that it
    could use may go.
    """
    def build(host):
        for directory, image_id in ((UUID1, ROOT), (UUID2, OTHER),
                                    (UUID3, RESCUE)):
            host.instance(directory, {'disk': host.base(image_id, OLD)})
        unused = host.base(UNUSED, OLD)
        host.base(UNUSED + SIZE_10G, OLD, backing=unused)
        host.base(SWAP_512, OLD)
        host.base(YOUNG_IMAGE, YOUNG)
        directory = os.path.join(host.instances_path, BAD_UUID)
        os.makedirs(directory)
        make_bad_disk(host, os.path.join(directory, 'disk'), unused)
    return build


def corrupt_header(host, disk, backing):
    host.overlay(disk, backing)
    with open(disk, 'r+b') as f:
        f.seek(4)
        f.write(b'\x00\x00\x00\x09')


def protocol_backing(host, disk, backing):
    # What qemu would open is a JSON description, not a path.
    host.overlay(disk, 'json:{"driver": "raw", "file": {"driver": "file", '
                 '"filename": "%s"}}' % backing, unsafe=True)


def readable_overlay(host, disk, backing):
    host.overlay(disk, backing)


UNREADABLE_VERDICTS = {
    ROOT: IN_USE, OTHER: IN_USE, RESCUE: IN_USE,
    UNUSED: KEPT, UNUSED + SIZE_10G: KEPT, SWAP_512: KEPT,
    YOUNG_IMAGE: TOO_YOUNG,
}
UNREADABLE_REASONS = {
    name: '{instances}/%s/disk' % BAD_UUID
    for name in (UNUSED, UNUSED + SIZE_10G, SWAP_512)}


def external_data_file(host):
    # A qcow2 disk can keep its clusters in a separate raw data file.
    host.instance(UUID1, {'disk': host.base(ROOT, OLD)})
    data_file = host.base(UNUSED, OLD)
    disk = os.path.join(host.instances_path, UUID2, 'disk')
    os.makedirs(os.path.dirname(disk))
    qemu.qemu_img('create', '-q', '-f', 'qcow2', '-o',
                  'data_file=%s,data_file_raw=on' % data_file, disk, '1M')
    hosttree.set_age(data_file, OLD)


def nova_view(host):
    """Where the bind mount of a row with ``bind_mount`` shows host.root."""
    return os.path.join(os.path.dirname(host.root), 'nova-view')


def backing_through_another_mount(host):
    # nova names the base through another mount of the same directory, as
    # when instances_path is a bind mount and cachekeeper is configured
    # with the path of its source.
    os.mkdir(nova_view(host))
    root = host.base(ROOT, OLD)
    host.overlay(os.path.join(host.instances_path, UUID1, 'disk'),
                 root.replace(host.root, nova_view(host)), unsafe=True)
    host.base(UNUSED, OLD)


def resize_directory(host):
    host.instance(UUID1, {'disk': host.base(OTHER, OLD)})
    host.instance(UUID1 + '_resize', {'disk': host.base(ROOT, OLD)})
    host.base(UNUSED, OLD)


def del_directory(host):
    host.instance(UUID1 + '_del', {'disk': host.base(ROOT, OLD)})
    host.base(UNUSED, OLD)


def relative_backing(host):
    # Both links name their backing file relative to their own directory.
    host.base(ROOT, OLD)
    host.base(ROOT + SIZE_10G, OLD, backing=ROOT)
    host.instance(UUID1, {'disk': '../_base/' + ROOT + SIZE_10G})
    host.base(UNUSED, OLD)


def chain_of_depth_three(host):
    resized = host.base(ROOT + SIZE_20G, OLD, backing=host.base(ROOT, OLD))
    middle = os.path.join(host.root, 'snapshots', 'middle.qcow2')
    host.overlay(middle, resized, backing_fmt='qcow2')
    disk = os.path.join(host.instances_path, UUID1, 'disk')
    host.overlay(disk, middle, backing_fmt='qcow2')
    host.base(UNUSED, OLD)


def flat_disks(host):
    host.instance(UUID1, {'disk': None, 'disk.local': None, 'disk.swap': None},
                  libvirt_xml={'image_id': 'root-image', 'swap_mb': 512,
                               'ephemeral_gb': 1})
    for name in (ROOT, SWAP_512, EPH1, SWAP_1024, EPH2, UNUSED):
        host.base(name, OLD)


def unused_of_every_kind(host):
    host.instance(UUID1, {'disk': host.base(ROOT, OLD)})
    unused = host.base(UNUSED, OLD)
    host.base(UNUSED + SIZE_10G, OLD, backing=unused)
    for name in (UNUSED + '_sm', SWAP_512, EPH1, UNUSED + '.part'):
        host.base(name, OLD)


def young_and_medium(host):
    for name, age in ((YOUNG_IMAGE, YOUNG), (MEDIUM_IMAGE, MEDIUM)):
        host.base(name + SIZE_10G, age, backing=host.base(name, age))
        host.base(name + '_sm', age)
    for name, age in ((SWAP_512, YOUNG), (EPH1, YOUNG),
                      (SWAP_1024, MEDIUM), (EPH2, MEDIUM)):
        host.base(name, age)


def in_use_and_unused(host):
    host.instance(UUID1, {'disk': host.base(ROOT, OLD),
                          'disk.swap': host.base(SWAP_512, OLD)})
    host.base(UNUSED, OLD)
    host.base(SWAP_1024, OLD)


def pinned(host):
    original = host.base(PINNED_IMAGE, OLD)
    host.base(PINNED_IMAGE + SIZE_10G, OLD, backing=original)
    host.base(UNUSED, OLD)


def disks_that_are_cache_files(host):
    # A disk may be a symlink to a cache file (or disk.info may name one):
    # the guest then writes to the cache file itself.
    root = host.base(ROOT, OLD)
    resized = host.base(ROOT + SIZE_10G, OLD, backing=host.base(OTHER, OLD))
    for directory, cache_file, fmt in ((UUID1, root, 'raw'),
                                       (UUID2, resized, 'qcow2')):
        host.instance(directory, {}, formats={'disk': fmt})
        os.symlink(cache_file, os.path.join(host.instances_path, directory,
                                            'disk'))
    host.base(UNUSED, OLD)


def disk_info_content(content):
    """Build two instances, the second with ``content`` as its disk.info.

    nova creates disk.info empty before it renames the written file over
    it, so an empty one is what a killed or out-of-space nova leaves.
    """
    def build(host):
        host.instance(UUID1, {'disk': host.base(ROOT, OLD)})
        directory = host.instance(UUID2, {'disk': host.base(OTHER, OLD)})
        with open(os.path.join(directory, 'disk.info'), 'w') as f:
            f.write(content)
        host.base(UNUSED, OLD)
    return build


def backing_chain_of(directory, disk='disk'):
    return 'backing chain of {instances}/%s/%s' % (directory, disk)


SCENARIOS = [
    Scenario('only disk.local uses a base',
             uses('disk.local', EPH1),
             {ROOT: IN_USE, EPH1: IN_USE, UNUSED: REMOVED},
             {EPH1: backing_chain_of(UUID1, 'disk.local')}),
    Scenario('only disk.eph1 uses a base',
             uses('disk.eph1', EPH2),
             {ROOT: IN_USE, EPH2: IN_USE, UNUSED: REMOVED},
             {EPH2: backing_chain_of(UUID1, 'disk.eph1')}),
    Scenario('only disk.swap uses a base',
             uses('disk.swap', SWAP_512),
             {ROOT: IN_USE, SWAP_512: IN_USE, UNUSED: REMOVED},
             {SWAP_512: backing_chain_of(UUID1, 'disk.swap')}),
    Scenario('only disk.rescue uses a base',
             uses('disk.rescue', RESCUE),
             {ROOT: IN_USE, RESCUE: IN_USE, UNUSED: REMOVED},
             {RESCUE: backing_chain_of(UUID1, 'disk.rescue')}),
    Scenario('two ephemeral disks on two bases',
             two_ephemerals,
             {ROOT: IN_USE, EPH1: IN_USE, EPH2: IN_USE, EPH3: REMOVED},
             {EPH2: backing_chain_of(UUID1, 'disk.eph1')}),
    Scenario('ephemeral base of an older mkfs configuration',
             ephemeral_hash_changed,
             {ROOT: IN_USE, EPH1: IN_USE, EPH1_EXT4: REMOVED},
             {EPH1: backing_chain_of(UUID1, 'disk.local')}),
    Scenario('resized copy and its original',
             resized_copy,
             {ROOT: IN_USE, ROOT + SIZE_10G: IN_USE,
              OTHER: TOO_YOUNG, OTHER + SIZE_10G: REMOVED},
             {ROOT: backing_chain_of(UUID1)}),
    Scenario('names that are not cache files',
             odd_names,
             {ROOT: IN_USE, NOT_HEX: IGNORED, ROOT.upper(): IGNORED,
              'ephemeral_0_20_None': IGNORED, UNUSED + '.part': REMOVED},
             {NOT_HEX: 'never removed'}),
    Scenario('symlink, directory and FIFO in _base',
             special_entries,
             {ROOT: IN_USE, OTHER: IGNORED, A_DIRECTORY: IGNORED,
              A_FIFO: IGNORED, UNUSED: REMOVED},
             {OTHER: 'symlink', A_FIFO: 'fifo'},
             check=symlink_target_untouched),
    Scenario('one disk with a corrupt qcow2 header',
             unreadable(corrupt_header),
             UNREADABLE_VERDICTS, UNREADABLE_REASONS, exit_code=None),
    Scenario('one disk backed by a json: description',
             unreadable(protocol_backing),
             UNREADABLE_VERDICTS, UNREADABLE_REASONS, exit_code=None),
    Scenario('one disk qemu-img fails on',
             unreadable(readable_overlay),
             UNREADABLE_VERDICTS, UNREADABLE_REASONS, exit_code=None,
             options={'inspect_method': 'qemu-img'}, fake_qemu_img=True),
    Scenario('empty disk.info, as nova creates it',
             disk_info_content(''),
             {ROOT: IN_USE, OTHER: IN_USE, UNUSED: REMOVED},
             {OTHER: backing_chain_of(UUID2)}),
    Scenario('disk.info that is not JSON',
             disk_info_content('{"/var/lib/nova/instances/x/disk": '),
             {ROOT: IN_USE, OTHER: IN_USE, UNUSED: REMOVED},
             {OTHER: backing_chain_of(UUID2)}, exit_code=1),
    Scenario('qcow2 disk with an external data file',
             external_data_file,
             {ROOT: IN_USE, UNUSED: IN_USE}),
    Scenario('backing file named through another mount of _base',
             backing_through_another_mount,
             {ROOT: IN_USE, UNUSED: REMOVED},
             {ROOT: backing_chain_of(UUID1)}, bind_mount=True),
    Scenario('disks that are cache files, through symlinks',
             disks_that_are_cache_files,
             {ROOT: IN_USE, ROOT + SIZE_10G: IN_USE, OTHER: IN_USE,
              UNUSED: REMOVED},
             {ROOT: 'disk {instances}/%s/disk' % UUID1,
              ROOT + SIZE_10G: 'disk {instances}/%s/disk' % UUID2,
              OTHER: backing_chain_of(UUID2)}),
    Scenario('<uuid>_resize directory',
             resize_directory,
             {ROOT: IN_USE, OTHER: IN_USE, UNUSED: REMOVED},
             {ROOT: backing_chain_of(UUID1 + '_resize')}),
    Scenario('<uuid>_del directory',
             del_directory,
             {ROOT: IN_USE, UNUSED: REMOVED},
             {ROOT: backing_chain_of(UUID1 + '_del')}),
    Scenario('relative backing file names',
             relative_backing,
             {ROOT: IN_USE, ROOT + SIZE_10G: IN_USE, UNUSED: REMOVED},
             {ROOT: backing_chain_of(UUID1)}),
    Scenario('chain of depth three through another directory',
             chain_of_depth_three,
             {ROOT: IN_USE, ROOT + SIZE_20G: IN_USE, UNUSED: REMOVED},
             {ROOT: backing_chain_of(UUID1),
              ROOT + SIZE_20G: backing_chain_of(UUID1)}),
    Scenario('flat disks and libvirt.xml metadata',
             flat_disks,
             {ROOT: IN_USE, SWAP_512: IN_USE, EPH1: IN_USE,
              SWAP_1024: REMOVED, EPH2: REMOVED, UNUSED: REMOVED},
             {ROOT: 'root image root-image in {instances}/%s/libvirt.xml'
                    % UUID1,
              SWAP_512: 'flavor swap of 512 MiB',
              EPH1: 'flavor ephemeral disk of 1 GiB'}),
    Scenario('old unused files of every kind',
             unused_of_every_kind,
             {ROOT: IN_USE, UNUSED: REMOVED, UNUSED + SIZE_10G: REMOVED,
              UNUSED + '_sm': REMOVED, SWAP_512: REMOVED, EPH1: REMOVED,
              UNUSED + '.part': REMOVED}),
    Scenario('minimum age of each kind',
             young_and_medium,
             {YOUNG_IMAGE: TOO_YOUNG, YOUNG_IMAGE + SIZE_10G: TOO_YOUNG,
              YOUNG_IMAGE + '_sm': TOO_YOUNG, SWAP_512: TOO_YOUNG,
              EPH1: TOO_YOUNG,
              MEDIUM_IMAGE: TOO_YOUNG, MEDIUM_IMAGE + SIZE_10G: REMOVED,
              MEDIUM_IMAGE + '_sm': REMOVED, SWAP_1024: REMOVED,
              EPH2: TOO_YOUNG},
             # Seconds spent building the tree may show ('10m 2s').
             {YOUNG_IMAGE: 'unused, 10m'},
             options={'remove_unused_swap_minimum_age_seconds': HOUR}),
    Scenario('removal disabled',
             in_use_and_unused,
             {ROOT: IN_USE, SWAP_512: IN_USE, UNUSED: KEPT, SWAP_1024: KEPT},
             {UNUSED: 'remove_unused_base_images'},
             options={'remove_unused_base_images': False}),
    Scenario('pinned image',
             pinned,
             {PINNED_IMAGE: PINNED, PINNED_IMAGE + SIZE_10G: PINNED,
              UNUSED: REMOVED},
             {PINNED_IMAGE: 'pinned_images'},
             options={'pinned_images': 'pinned-image'}),
]


def fake_qemu_img_dir(path):
    """Make a directory holding FAKE_QEMU_IMG as qemu-img; return it."""
    os.mkdir(path)
    fake = os.path.join(path, 'qemu-img')
    with open(fake, 'w') as f:
        f.write(FAKE_QEMU_IMG)
    os.chmod(fake, 0o755)
    return str(path)


def lstat_cache(host):
    return {name: os.lstat(host.cache_path(name))
            for name in os.listdir(host.cache_dir)}


@pytest.mark.parametrize('scenario', SCENARIOS, ids=lambda s: s.name)
def test_scenario(scenario, tmp_path):
    host = hosttree.HostTree(tmp_path / 'host')
    host.write_config(**scenario.options)
    scenario.build(host)
    # The header reader (inspect_method = auto) answers as qemu-img would
    # on every disk the scenario made.
    qemu.assert_reader_agrees_with_qemu_img(host.instances_path)
    path_prefix = None
    if scenario.fake_qemu_img:
        path_prefix = fake_qemu_img_dir(tmp_path / 'bin')
    before = lstat_cache(host)
    assert sorted(before) == sorted(scenario.verdicts)
    started = time.time()

    wrapper = None
    if scenario.bind_mount:
        # A mount namespace of its own (and a user namespace, so that no
        # privilege is needed) keeps the mount private to the pass.
        wrapper = ['unshare', '--map-root-user', '--mount', 'sh', '-c',
                   'mount --bind "$0" "$1" && shift && exec "$@"',
                   host.root, nova_view(host)]
    process, report = host.run_pass(path_prefix=path_prefix, wrapper=wrapper)

    if scenario.exit_code is not None:
        assert process.returncode == scenario.exit_code, process.stderr
    entries = hosttree.entries(report)
    assert len(entries) == len(report['files'])
    verdicts = {name: REMOVED if entry['verdict'] in GONE
                else entry['verdict'] for name, entry in entries.items()}
    assert verdicts == scenario.verdicts, json.dumps(report['files'],
                                                     indent=1)
    for name, text in scenario.reasons.items():
        assert text.format(instances=host.instances_path) in (
            entries[name]['reason'])
    for name, st in before.items():
        path = host.cache_path(name)
        if verdicts[name] == REMOVED:
            assert not os.path.lexists(path), name
            continue
        now_st = os.lstat(path)
        assert now_st.st_ino == st.st_ino, name
        if verdicts[name] == IN_USE:
            assert now_st.st_mtime >= started - 1, 'not touched: %s' % name
        else:
            assert now_st.st_mtime_ns == st.st_mtime_ns, 'touched: %s' % name
    if scenario.check is not None:
        scenario.check(host)


def test_unreadable_disk_is_an_error_of_the_pass(tmp_path):
    host = hosttree.HostTree(tmp_path)
    unreadable(corrupt_header)(host)

    process, report = host.run_pass()

    bad_disk = os.path.join(host.instances_path, BAD_UUID, 'disk')
    assert [error['path'] for error in report['errors']] == [bad_disk]
    assert process.returncode == 1


@pytest.mark.parametrize('locks_dir', [True, False],
                         ids=['locks dir', 'no locks dir'])
def test_dry_run_changes_nothing(tmp_path, locks_dir):
    host = hosttree.HostTree(tmp_path, locks_dir=locks_dir)
    in_use_and_unused(host)
    before = hosttree.snapshot(host.instances_path)

    process, report = host.run_pass('--dry-run')

    assert process.returncode == 0, process.stderr
    assert hosttree.snapshot(host.instances_path) == before
    assert os.path.isdir(host.locks_dir) == locks_dir
    entries = hosttree.entries(report)
    assert {name: e['verdict'] for name, e in entries.items()} == {
        ROOT: IN_USE, SWAP_512: IN_USE, UNUSED: REMOVED,
        SWAP_1024: REMOVED}
    assert entries[UNUSED]['reason'].startswith(
        'dry run: would queue for removal')


# Holds nova's lock on one cache file as nova does (oslo.concurrency's
# external lock is fcntl.lockf on the file opened for appending) until a
# line arrives on stdin.
LOCK_HOLDER = '''
import fcntl, sys
with open(sys.argv[1], 'a') as f:
    fcntl.lockf(f, fcntl.LOCK_EX)
    print('locked', flush=True)
    sys.stdin.readline()
'''


def has_open(pid, path):
    """Whether process ``pid`` has ``path`` open.

    oslo.concurrency polls for an external lock with non-blocking lockf
    calls, so no waiter shows in /proc/locks; a process that is after the
    lock keeps the lock file open meanwhile.
    """
    fd_dir = '/proc/%d/fd' % pid
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)) == path:
                return True
        except FileNotFoundError:
            continue
    return False


def touch(host, path):
    # nova's spawn touches the base it is about to use.
    os.utime(path)


def new_overlay(host, path):
    # A backend that does not touch the base (nova's Lvm) still leaves a
    # disk that uses it.
    host.instance(UUID2, {'disk': path})


@pytest.mark.parametrize('use, verdict, reason', [
    (touch, KEPT, 're-touched since scan'),
    (new_overlay, IN_USE, 'backing chain of {instances}/%s/disk' % UUID2),
], ids=['touched', 'new overlay'])
def test_file_used_while_the_pass_waits_for_its_lock_is_kept(
        tmp_path, use, verdict, reason):
    host = hosttree.HostTree(tmp_path)
    host.instance(UUID1, {'disk': host.base(ROOT, OLD)})
    path = host.base(UNUSED, OLD)
    lock_file = os.path.join(host.locks_dir, 'nova-' + UNUSED)
    holder = subprocess.Popen([sys.executable, '-c', LOCK_HOLDER, lock_file],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == 'locked\n'
        cache_pass = subprocess.Popen(
            host.manage_command('cache', 'pass', '--json'),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + hosttree.PASS_TIMEOUT
        while not has_open(cache_pass.pid, lock_file):
            assert cache_pass.poll() is None, cache_pass.communicate()
            assert time.monotonic() < deadline, 'the pass never waited'
            time.sleep(0.05)
        use(host, path)
        holder.communicate('release\n', timeout=10)
        out, err = cache_pass.communicate(timeout=hosttree.PASS_TIMEOUT)
    finally:
        holder.kill()
        holder.wait()
    assert cache_pass.returncode == 0, err
    entries = hosttree.entries(json.loads(out))
    assert entries[UNUSED]['verdict'] == verdict
    assert entries[UNUSED]['reason'] == reason.format(
        instances=host.instances_path)
    assert entries[ROOT]['verdict'] == IN_USE
    assert os.path.exists(path)
    if verdict == IN_USE:
        assert os.stat(path).st_mtime > time.time() - MINUTE


def test_json_report(tmp_path):
    host = hosttree.HostTree(tmp_path)
    unused_of_every_kind(host)
    host.base(NOT_HEX, OLD)
    host.base(YOUNG_IMAGE, YOUNG)
    before = lstat_cache(host)

    process, report = host.run_pass()

    assert process.returncode == 0, process.stderr
    assert set(report) >= {'files', 'summary', 'bytes_queued',
                           'bytes_reclaimed', 'errors', 'duration_s'}
    assert report['errors'] == []
    paths = [entry['path'] for entry in report['files']]
    assert sorted(paths) == sorted(host.cache_path(n) for n in before)
    for entry in report['files']:
        assert set(entry) == {'path', 'kind', 'verdict', 'age_s', 'size',
                              'reason'}
        st = before[os.path.basename(entry['path'])]
        assert entry['size'] == st.st_size
        assert abs(entry['age_s'] - (time.time() - st.st_mtime)) < MINUTE
        assert entry['reason']
    kinds = {name: e['kind'] for name, e in hosttree.entries(report).items()}
    assert kinds == {
        ROOT: facts.ORIGINAL, UNUSED: facts.ORIGINAL,
        YOUNG_IMAGE: facts.ORIGINAL, UNUSED + SIZE_10G: facts.RESIZED,
        UNUSED + '_sm': facts.LEGACY_SM, SWAP_512: facts.SWAP,
        EPH1: facts.EPHEMERAL,
        UNUSED + '.part': facts.RESIDUE,
        NOT_HEX: facts.FOREIGN}
    counts = collections.Counter(e['verdict'] for e in report['files'])
    assert report['summary'] == {verdict: counts[verdict]
                                 for verdict in facts.VERDICTS}
    assert counts[IN_USE] == 1 and counts[TOO_YOUNG] == 1
    assert counts[REMOVED] == 5


def test_explain_names_the_disk_and_the_chain(tmp_path):
    host = hosttree.HostTree(tmp_path)
    chain_of_depth_three(host)
    before = os.stat(host.cache_path(ROOT)).st_mtime_ns

    process = host.manage('cache', 'explain', ROOT)

    assert process.returncode == 0, process.stderr
    lines = process.stdout.splitlines()
    assert 'verdict:  in_use' in lines
    disk = os.path.join(host.instances_path, UUID1, 'disk')
    assert '  backing chain of %s' % disk in lines
    assert '    chain: %s' % ' -> '.join([
        disk, os.path.join(host.root, 'snapshots', 'middle.qcow2'),
        host.cache_path(ROOT + SIZE_20G), host.cache_path(ROOT)]) in lines
    # Explaining is reading: the file in use is not touched.
    assert os.stat(host.cache_path(ROOT)).st_mtime_ns == before


def test_explain_shows_how_far_a_doubt_reaches(tmp_path):
    host = hosttree.HostTree(tmp_path)
    disk_info_content('not json')(host)
    disk_info = os.path.join(host.instances_path, UUID2, 'disk.info')

    held = host.manage('cache', 'explain', OTHER)
    free = host.manage('cache', 'explain', UNUSED)

    assert held.returncode == 0, held.stderr
    lines = held.stdout.splitlines()
    index = lines.index('unread, so removal is held back:')
    assert lines[index + 1].startswith('  %s: cannot read disk.info' % (
        disk_info))
    assert lines[index + 1].endswith(
        '(holds back only the 1 file(s) its directory uses)')
    assert free.returncode == 0, free.stderr
    assert 'verdict:  removable (a pass would remove it)' in (
        free.stdout.splitlines())
    assert 'held back' not in free.stdout


def test_empty_disk_info_is_no_warning(tmp_path):
    host = hosttree.HostTree(tmp_path)
    disk_info_content('')(host)
    os.chmod(host.state_path, 0o700)

    process, report = host.run_pass()

    assert process.returncode == 0, process.stderr
    assert report['errors'] == []
    assert ' WARNING ' not in process.stderr, process.stderr
    assert hosttree.entries(report)[UNUSED]['verdict'] == REMOVED
