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

"""Scanning a real image cache directory."""

import os
import stat

import pytest

from cachekeeper.cache import facts
from cachekeeper.cache import scan

SHA1 = 'a9993e364706816aba3e25717850c26c9cd0d89d'


@pytest.mark.parametrize('name,kind', [
    (SHA1, facts.ORIGINAL),
    (SHA1 + '_10737418240', facts.RESIZED),
    (SHA1 + '_sm', facts.LEGACY_SM),
    ('swap_512', facts.SWAP),
    ('ephemeral_1_0706d66', facts.EPHEMERAL),
    (SHA1 + '.part', facts.RESIDUE),
    ('x\n.tmp', facts.RESIDUE),
    (SHA1.upper(), facts.FOREIGN),
    (SHA1 + '_', facts.FOREIGN),
    (SHA1 + '_1a', facts.FOREIGN),
    ('ephemeral_1_0706d6', facts.FOREIGN),
    ('swap_', facts.FOREIGN),
    ('.part', facts.FOREIGN),
])
def test_classify(name, kind):
    assert scan.classify(name, stat.S_IFREG | 0o644) == kind
    assert scan.classify(name, stat.S_IFLNK | 0o777) == facts.FOREIGN


def test_unchanged_entries_are_the_earlier_scan_objects(tmp_path):
    for name in ('swap_512', 'swap_1024', 'swap_2048'):
        (tmp_path / name).write_bytes(b'x')
    first = scan.scan(str(tmp_path))
    previous = {b.name: b for b in first}

    os.utime(tmp_path / 'swap_1024', (1, 1))
    (tmp_path / 'swap_2048').unlink()
    (tmp_path / 'swap_2048').mkdir()
    second = scan.scan(str(tmp_path), previous=previous)

    assert second == scan.scan(str(tmp_path))
    assert second[2] is previous['swap_512']
    assert second[0].mtime == 1 and second[0] is not previous['swap_1024']
    assert (second[1].kind, second[1].file_type) == (facts.FOREIGN,
                                                     'directory')


def _write(path, size):
    with open(path, 'wb') as f:
        f.write(b'x' * size)


def test_size_since_lstats_only_new_names(tmp_path):
    _write(tmp_path / SHA1, 8192)
    known = {b.name: b for b in scan.scan(str(tmp_path))}
    # Grown since the scan: counted as the scan found it, not lstat'ed.
    _write(tmp_path / SHA1, 3 * 8192)
    _write(tmp_path / 'swap_512', 4096)
    os.symlink(SHA1, tmp_path / 'link')

    size = scan.size_since(str(tmp_path), known)

    assert size.files == 2
    assert size.new_files == 1
    assert size.allocated == (known[SHA1].allocated +
                              os.lstat(tmp_path / 'swap_512').st_blocks * 512)


def test_size_since_leaves_out_what_is_gone(tmp_path):
    _write(tmp_path / SHA1, 4096)
    known = {b.name: b for b in scan.scan(str(tmp_path))}
    os.unlink(tmp_path / SHA1)
    assert scan.size_since(str(tmp_path), known) == scan.CacheSize()
    assert scan.size_since(str(tmp_path / 'missing'), {}) == scan.CacheSize()
