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

"""The invariant: every instance disk's backing chain is complete.

Two checks, both tolerant of instances that change while they look:

- ``check_chains`` runs ``qemu-img info --backing-chain`` on every disk;
- ``check_tokens`` reads the backing file name from each disk's qcow2
  header and compares the base's download token with the one the
  simulator recorded for the disk (see novasim), which also catches a base
  removed and downloaded again; and its inode, when the simulator
  recorded one (novareal does).

A disk that is deleted, renamed or not yet recorded while it is looked at
is skipped; a problem counts only if it is still there when looked at
again and the disk is still the same file.
"""

import json
import os
import struct
import subprocess
import time

from tests.stress import novasim

# Entries of instances_path that are not instance directories.
_NOT_INSTANCES = ('_base', 'locks')
_QCOW2_MAGIC = b'QFI\xfb'
_CONFIRM_DELAY = 0.05


def instance_disks(instances_path):
    """Yield (directory name, disk name, path) of every instance disk."""
    try:
        names = sorted(os.listdir(instances_path))
    except FileNotFoundError:
        return
    for name in names:
        if (name in _NOT_INSTANCES or name.startswith('.') or
                name.endswith(novasim.DELETE_SUFFIX)):
            continue
        for disk in novasim.DISK_NAMES:
            path = os.path.join(instances_path, name, disk)
            if os.path.lexists(path):
                yield name, disk, path


def backing_file(path):
    """The backing file name in a qcow2 header; OSError or ValueError."""
    with open(path, 'rb') as f:
        header = f.read(20)
        if len(header) < 20 or header[:4] != _QCOW2_MAGIC:
            raise ValueError('not a qcow2 header')
        offset, size = struct.unpack('>QI', header[8:20])
        f.seek(offset)
        return f.read(size).decode('utf-8', 'surrogateescape')


def _identity(path):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _record(records_dir, directory, disk):
    try:
        with open(novasim.records_path(records_dir, directory)) as f:
            return json.load(f).get(disk)
    except (FileNotFoundError, ValueError):
        return None


def _token_problem(cache_dir, records_dir, directory, disk, path):
    record = _record(records_dir, directory, disk)
    if record is None:
        return None
    try:
        backing = backing_file(path)
    except (OSError, ValueError):
        return None
    base = os.path.join(cache_dir, record['base'])
    if backing != base:
        return 'backing file %s is not the recorded base %s' % (backing,
                                                                base)
    try:
        token = novasim.read_token(base)
        inode = os.stat(base).st_ino
    except FileNotFoundError:
        return 'its base %s is gone' % base
    if token != record['token']:
        return ('its base %s was removed and downloaded again (token %s, '
                'made on %s)' % (base, token, record['token']))
    if record.get('inode', inode) != inode:
        return 'its base %s was replaced (inode %d, made on %d)' % (
            base, inode, record['inode'])
    return None


def _confirmed(path, look):
    """Return look()'s problem if the same disk still has it; else None."""
    identity = _identity(path)
    if identity is None:
        return None
    problem = look()
    if problem is None:
        return None
    time.sleep(_CONFIRM_DELAY)
    problem = look()
    if problem is None or _identity(path) != identity:
        return None
    return problem


def check_tokens(instances_path, records_dir):
    """Return a violation message for each disk whose base is not its own."""
    cache_dir = os.path.join(instances_path, '_base')
    violations = []
    for directory, disk, path in instance_disks(instances_path):
        problem = _confirmed(path, lambda: _token_problem(
            cache_dir, records_dir, directory, disk, path))
        if problem:
            violations.append('%s: %s' % (path, problem))
    return violations


def chain_problem(path):
    """Why ``qemu-img info --backing-chain`` fails on ``path``, or None."""
    process = subprocess.run(
        [novasim.QEMU_IMG, 'info', '--backing-chain', '--force-share',
         '--output=json', '-f', 'qcow2', path],
        capture_output=True, text=True, timeout=60)
    if process.returncode == 0:
        return None
    return 'qemu-img info --backing-chain failed: %s' % (
        process.stderr.strip().splitlines() or ['?'])[-1]


def check_chains(instances_path, records_dir):
    """Return a violation message for each recorded disk whose chain breaks.

    Only disks the simulator has finished (recorded) are looked at: one
    being written by qemu-img create or copied is not a disk yet.
    """
    violations = []
    for directory, disk, path in instance_disks(instances_path):
        if _record(records_dir, directory, disk) is None:
            continue
        problem = _confirmed(path, lambda: chain_problem(path))
        if problem:
            violations.append('%s: %s' % (path, problem))
    return violations
