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

"""The qcow2 header reader, cross-checked against the real qemu-img.

The rule every case checks: when the reader answers, qemu-img opens the
image and names the same backing file and format. Where it declines,
qemu-img decides.
"""

import os
import random

import pytest

from cachekeeper.cache import inspect
from cachekeeper.cache import qcow2
from tests.lib import qemu

# Header fields (offset, size) and values that cross qemu's limits.
FIELDS = ((4, 4), (8, 8), (16, 4), (20, 4), (24, 8), (32, 4), (36, 4),
          (40, 8), (48, 8), (56, 4), (60, 4), (64, 8), (72, 8), (80, 8),
          (88, 8), (96, 4), (100, 4), (104, 1))
VALUES = (0, 1, 2, 3, 8, 9, 16, 21, 22, 64, 104, 105, 112, 0x200, 0x210,
          0x10000, 0x10001)


def ask_qemu_img(path):
    """(backing_file, backing_format), or None when qemu-img fails."""
    try:
        info = qemu.QEMU_IMG_INSPECTOR.inspect(path, 'qcow2')
    except inspect.InspectError:
        return None
    return info.backing_file, info.backing_format


def patch(path, offset, data):
    with open(path, 'r+b') as f:
        f.seek(offset)
        f.write(data)
    return path


def set_bits(path, offset, bits):
    with open(path, 'rb') as f:
        f.seek(offset)
        value = int.from_bytes(f.read(8), 'big')
    return patch(path, offset, (value | bits).to_bytes(8, 'big'))


def feature_table_offset(path):
    with open(path, 'rb') as f:
        data = f.read(4096)
    return data.index(b'\x68\x03\xf8\x57')


@pytest.fixture
def images(tmp_path, monkeypatch):
    (tmp_path / 'base.raw').write_bytes(b'')
    os.truncate(tmp_path / 'base.raw', 1024 * 1024)
    # qemu-img creates overlays of relative names only next to them.
    monkeypatch.chdir(tmp_path)
    return tmp_path


def overlay(path, backing='base.raw', backing_fmt='raw', *options):
    qemu.qemu_img('create', '-q', '-f', 'qcow2', *options, '-F',
                  backing_fmt, '-b', backing, path)
    return path


def unsafe_overlay(path, backing, *options):
    qemu.qemu_img('create', '-q', '-f', 'qcow2', '-u', *options, '-F',
                  'raw', '-b', backing, path, '1M')
    return path


def plain(path, *options):
    qemu.qemu_img('create', '-q', '-f', 'qcow2', *options, path, '1M')
    return path


# (name, how to make it in a directory, what the reader finds or None).
READ = [
    ('version 3, absolute backing file',
     lambda d: overlay(d / 'a.qcow2', str(d / 'base.raw')),
     lambda d: (str(d / 'base.raw'), 'raw')),
    ('version 2, relative backing file',
     lambda d: overlay(d / 'a.qcow2', 'base.raw', 'raw', '-o',
                       'compat=0.10'),
     lambda d: ('base.raw', 'raw')),
    ('no backing file', lambda d: plain(d / 'a.qcow2'),
     lambda d: (None, None)),
    ('512-byte clusters',
     lambda d: overlay(d / 'a.qcow2', 'base.raw', 'raw', '-o',
                       'cluster_size=512'),
     lambda d: ('base.raw', 'raw')),
    ('2 MiB clusters',
     lambda d: overlay(d / 'a.qcow2', 'base.raw', 'raw', '-o',
                       'cluster_size=2M'),
     lambda d: ('base.raw', 'raw')),
    ('lazy refcounts',
     lambda d: overlay(d / 'a.qcow2', 'base.raw', 'raw', '-o',
                       'lazy_refcounts=on'),
     lambda d: ('base.raw', 'raw')),
    ('dirty',
     lambda d: set_bits(overlay(d / 'a.qcow2', 'base.raw', 'raw', '-o',
                                'lazy_refcounts=on'), 72, 1),
     lambda d: ('base.raw', 'raw')),
    ('qcow2 backing file',
     lambda d: overlay(d / 'a.qcow2', plain(d / 'mid.qcow2'), 'qcow2'),
     lambda d: (str(d / 'mid.qcow2'), 'qcow2')),
    ('relative path through a directory',
     lambda d: unsafe_overlay(d / 'a.qcow2', '../_base/x'),
     lambda d: ('../_base/x', 'raw')),
    ('non-ASCII name',
     lambda d: unsafe_overlay(d / 'a.qcow2', 'b\u00e4se \u2713.raw'),
     lambda d: ('b\u00e4se \u2713.raw', 'raw')),
    ('name of 1023 bytes',
     lambda d: unsafe_overlay(d / 'a.qcow2', '/' + 'n' * 1022),
     lambda d: ('/' + 'n' * 1022, 'raw')),
    ('json: description',
     lambda d: unsafe_overlay(d / 'a.qcow2', 'json:{"driver": "raw"}'),
     lambda d: ('json:{"driver": "raw"}', 'raw')),
    ('no backing format recorded',
     lambda d: patch(overlay(d / 'a.qcow2', 'base.raw', 'raw', '-o',
                             'compat=0.10'), 72, bytes(4)),
     lambda d: ('base.raw', None)),
]

DECLINED = [
    ('extended L2 entries',
     lambda d: plain(d / 'a.qcow2', '-o', 'extended_l2=on')),
    ('zstd compression',
     lambda d: plain(d / 'a.qcow2', '-o', 'compression_type=zstd')),
    ('external data file',
     lambda d: plain(d / 'a.qcow2', '-o', 'data_file=data.raw')),
    # A real LUKS image takes seconds to make (key derivation); the
    # header field is what matters.
    ('AES encryption',
     lambda d: patch(overlay(d / 'a.qcow2'), 32, (1).to_bytes(4, 'big'))),
    ('persistent bitmap',
     lambda d: qemu.qemu_img('bitmap', '--add', plain(d / 'a.qcow2'), 'b0')),
    ('internal snapshot',
     lambda d: qemu.qemu_img('snapshot', '-c', 's1',
                             plain(d / 'a.qcow2'))),
    ('corrupt',
     lambda d: set_bits(overlay(d / 'a.qcow2'), 72, 2)),
    ('unknown incompatible feature',
     lambda d: set_bits(overlay(d / 'a.qcow2'), 72, 1 << 5)),
    ('unknown header extension',
     lambda d: patch(overlay(d / 'a.qcow2'),
                     feature_table_offset(d / 'a.qcow2'),
                     b'\x12\x34\x56\x78')),
    ('version 4',
     lambda d: patch(overlay(d / 'a.qcow2'), 4, (4).to_bytes(4, 'big'))),
    ('raw file', lambda d: d / 'base.raw'),
    ('empty file', lambda d: (d / 'a.qcow2').write_bytes(b'')),
]


@pytest.mark.parametrize('name,make,expected', READ,
                         ids=[case[0] for case in READ])
def test_reader_agrees_with_qemu_img(images, name, make, expected):
    make(images)
    path = images / 'a.qcow2'
    assert qemu.read_header(path) == expected(images)
    assert ask_qemu_img(path) == expected(images)


@pytest.mark.parametrize('name,make', DECLINED,
                         ids=[case[0] for case in DECLINED])
def test_reader_leaves_to_qemu_img(images, name, make):
    make(images)
    path = images / 'base.raw' if name == 'raw file' else images / (
        'a.qcow2')
    assert qemu.read_header(path) is None


def mutations(original, rng, flips):
    """Yield damaged copies of a header: fields, random bytes, truncation."""
    for offset, size in FIELDS:
        for value in VALUES + (2 ** (8 * size) - 1,):
            if value < 2 ** (8 * size):
                damaged = bytearray(original)
                damaged[offset:offset + size] = value.to_bytes(size, 'big')
                yield bytes(damaged)
    for _ in range(flips):
        damaged = bytearray(original)
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(0x300)] = rng.randrange(256)
        yield bytes(damaged)
    for length in (60, 72, 100, 104, 112, 0x80, 0x200, 0x215):
        yield original[:length]


@pytest.mark.parametrize('options', [(), ('-o', 'compat=0.10')],
                         ids=['version 3', 'version 2'])
def test_damaged_headers_are_read_only_as_qemu_img_reads_them(images,
                                                              options):
    original = (overlay(images / 'a.qcow2', str(images / 'base.raw'),
                        'raw', *options)).read_bytes()
    read = {}
    declined = 0
    for index, damaged in enumerate(
            mutations(original, random.Random(len(options)), 150)):
        path = str(images / ('m%d.qcow2' % index))
        with open(path, 'wb') as f:
            f.write(damaged)
        found = qemu.read_header(path)
        if found is None:
            declined += 1
        else:
            read[path] = found
    answers = qemu.QEMU_IMG_INSPECTOR.inspect_many(
        (path, 'qcow2') for path in read)
    for path, found in read.items():
        answer = answers[path]
        assert not isinstance(answer, inspect.InspectError), answer
        assert found == (answer.backing_file, answer.backing_format), path
    # Both ways were taken: real answers were compared.
    assert len(read) > 100 and declined > 100, (len(read), declined)


def test_read_does_not_move_the_file_offset(images):
    path = overlay(images / 'a.qcow2')
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 7, os.SEEK_SET)
        qcow2.read(fd)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 7
    finally:
        os.close(fd)
