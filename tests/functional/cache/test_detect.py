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

"""Format detection, cross-checked against every inspector and qemu-img.

The rule every case checks: the magic bytes path answers what oslo.utils'
inspectors all together answer (as nova's images.get_image_format reads
them), or a format that may have a backing file where they find one that
cannot; it never answers where they refuse. qemu-img's own probing, which
a pass never uses, is the second opinion.
"""

import json
import random
import struct
import subprocess

from oslo_utils.imageutils import format_inspector
import pytest

from cachekeeper.cache import inspect
from tests.lib import qemu

DISK_SIZE = 1024 * 1024


def created(fmt, *options):
    def make(path):
        qemu.qemu_img('create', '-q', '-f', fmt, *options, path,
                      DISK_SIZE)
    return make


def written(*pieces, size=DISK_SIZE, over=None):
    """A disk of ``size`` zero bytes or a copy of sample ``over``.

    (offset, bytes) ``pieces`` are written over it.
    """
    def make(path):
        data = bytearray((path.parent / over).read_bytes() if over
                         else bytes(size))
        for offset, piece in pieces:
            data[offset:offset + len(piece)] = piece
        path.write_bytes(data)
    return make


def partition(os_type, start, sectors):
    """An MBR partition table entry at 446, as fdisk writes the first."""
    return (446, struct.pack('<B3BB3BII', 0, 0, 2, 0, os_type, 0xfe, 0xff,
                             0xff, start, sectors))


BOOT_SIGNATURE = (510, b'\x55\xaa')
# A primary volume descriptor after the 32 KiB system area.
ISO_DESCRIPTOR = (0x8000, b'\x01CD001\x01')
LUKS_SECRET = ('--object', 'secret,id=sec0,data=123456', '-o',
               'key-secret=sec0,iter-time=10')

# (name, how to make it, the format detected or None for a refusal); made
# in this order, so that a sample may use one made before.
SAMPLES = (
    ('raw', created('raw'), 'raw'),
    ('qcow2', created('qcow2'), 'qcow2'),
    ('qcow2-v2', created('qcow2', '-o', 'compat=0.10'), 'qcow2'),
    ('qcow2-overlay', created('qcow2', '-F', 'raw', '-b', 'raw'), 'qcow2'),
    # The inspector takes version 1 for qcow2 too: qemu-img -f qcow2
    # refuses it, and a pass doubts it.
    ('qcow', created('qcow'), 'qcow2'),
    ('vmdk-sparse', created('vmdk', '-o', 'subformat=monolithicSparse'),
     'vmdk'),
    ('vmdk-stream', created('vmdk', '-o', 'subformat=streamOptimized'),
     'vmdk'),
    # A text descriptor, and the raw extent it names.
    ('vmdk-flat', created('vmdk', '-o', 'subformat=monolithicFlat'), 'vmdk'),
    ('vmdk-flat-flat', None, 'raw'),
    ('vmdk-child', created('vmdk', '-F', 'vmdk', '-b', 'vmdk-sparse'),
     'vmdk'),
    ('vdi', created('vdi'), 'vdi'),
    ('vhdx', created('vhdx'), 'vhdx'),
    ('vpc-dynamic', created('vpc', '-o', 'subformat=dynamic'), 'vhd'),
    # Its only header is a footer at the end: raw to qemu-img as well.
    ('vpc-fixed', created('vpc', '-o', 'subformat=fixed'), 'raw'),
    ('qed', created('qed'), 'qed'),
    ('qed-overlay', created('qed', '-F', 'raw', '-b', 'raw'), 'qed'),
    ('luks', created('luks', *LUKS_SECRET), 'luks'),
    # No inspector knows it, and it cannot have a backing file.
    ('parallels', created('parallels'), 'raw'),
    ('iso', written(ISO_DESCRIPTOR), 'iso'),
    # The inspector takes UDF's descriptors there for an ISO's too.
    ('iso-nsr02', written((0x8000, b'\x00NSR02\x01')), 'iso'),
    ('iso-nsr03', written((0x8000, b'\x00NSR03\x01')), 'iso'),
    # The inspector reads the first volume descriptor only (and qemu-img
    # finds raw too).
    ('iso-second-descriptor', written((0x8800, ISO_DESCRIPTOR[1])), 'raw'),
    ('mbr', written(partition(0x83, 2048, 2000), BOOT_SIGNATURE), 'gpt'),
    ('gpt', written(partition(0xee, 1, 2047), BOOT_SIGNATURE,
                    (512, b'EFI PART')), 'gpt'),
    # A FAT boot sector has the MBR's signature, but is raw.
    ('fat', written((0x10, b'\x02'), (0x15, b'\xf8'), BOOT_SIGNATURE),
     'raw'),
    # An ISO that boots from a partition table in front: an ISO to nova.
    ('iso-hybrid', written(ISO_DESCRIPTOR, partition(0x83, 0, 2048),
                           BOOT_SIGNATURE), 'iso'),
    ('empty', written(size=0), 'raw'),
    ('tiny', written((0, b'x'), size=1), 'raw'),
    # Too short to be a qcow2 header for the inspector.
    ('qcow2-magic-only', written((0, b'QFI\xfb'), size=4), 'raw'),
    ('qcow2-broken-header', written((0, b'QFI\xfb' + b'\xff' * 508)),
     'qcow2'),
    ('random', lambda path: path.write_bytes(
        random.Random(15).randbytes(DISK_SIZE)), 'raw'),
    ('qcow2-and-mbr', written(BOOT_SIGNATURE, over='qcow2'), None),
    # Text that the VMDK inspector reads as a descriptor, finding none.
    ('text', written((0, b'no descriptor\n' * 300), size=4200), 'raw'),
    # Text the VMDK inspector fails on: every inspector refuses it.
    ('text-not-ascii', written((0, b'a' * 600 + b'\xc3\xa9'), size=602),
     None),
)
DETECTED = {name: fmt for name, _make, fmt in SAMPLES}
# What the magic bytes alone do not decide: every inspector reads these.
READ_BY_EVERY_INSPECTOR = frozenset((
    'fat', 'iso-hybrid', 'qcow2-magic-only', 'qcow2-and-mbr', 'text',
    'text-not-ascii'))
# qemu's names for the formats of oslo.utils' inspectors.
QEMU_NAMES = {'vhd': 'vpc', 'iso': 'raw', 'gpt': 'raw'}


@pytest.fixture(scope='module')
def samples(tmp_path_factory):
    directory = tmp_path_factory.mktemp('samples')
    for name, make, _fmt in SAMPLES:
        if make is not None:
            make(directory / name)
    return directory


def every_inspector(path):
    """What oslo.utils' inspectors answer together; None: they refuse.

    They read the whole file, as in nova's images.get_image_format.
    """
    with open(path, 'rb') as f:
        wrapper = format_inspector.InspectWrapper(f)
        while wrapper.read(4096):
            pass
        wrapper.close()
    try:
        names = {str(match) for match in wrapper.formats}
    except Exception:
        # An inspector that fails on the content (VMDK on text-not-ascii).
        return None
    if names == {'iso', 'gpt'}:
        return 'iso'
    return names.pop() if len(names) == 1 else None


def detect(inspector, path):
    try:
        return inspector.detect_format(str(path))
    except inspect.InspectError:
        return None


def qemu_img_probe(path):
    """The format qemu-img guesses, None if it cannot open the file."""
    process = subprocess.run(
        [qemu.QEMU_IMG, 'info', '--output=json', '--force-share',
         str(path)], capture_output=True, timeout=30)
    if process.returncode:
        return None
    return json.loads(process.stdout)['format']


@pytest.mark.parametrize('name', DETECTED)
@pytest.mark.parametrize('magic', [True, False],
                         ids=['magic', 'every_inspector'])
def test_detection_agrees_with_every_inspector(samples, monkeypatch, name,
                                               magic):
    monkeypatch.setattr(inspect, '_MAGIC_KNOWS_ALL', magic)
    inspector = inspect.Inspector()
    detected = detect(inspector, samples / name)
    assert detected == DETECTED[name]
    reference = every_inspector(samples / name)
    if detected != reference:
        # Only a format that may have backing files where the inspectors
        # find one that cannot: a pass then keeps more, never less.
        assert reference is not None and not inspect.has_backing(reference)
        assert inspect.has_backing(detected)
    assert inspector.full_detections == (
        not magic or name in READ_BY_EVERY_INSPECTOR)
    assert (inspector.format_detections,
            inspector.detection_cache_hits) == (1, 0)


def test_detection_agrees_with_qemu_img_probing(samples):
    inspector = inspect.Inspector()
    for name in DETECTED:
        detected = detect(inspector, samples / name)
        probed = qemu_img_probe(samples / name)
        if detected is None or probed is None:
            # A refusal is a doubt in a pass; and what qemu-img cannot
            # open, no pass can read through.
            continue
        # qemu-img refuses a backing file for parallels images.
        assert (QEMU_NAMES.get(detected, detected) == probed or
                inspect.has_backing(detected) or
                probed == 'parallels'), name


def test_every_format_of_the_inspector_is_a_sample():
    # A format oslo.utils learns makes every detection run every inspector
    # until it has a magic, and a sample here to check it.
    assert inspect._MAGIC_KNOWS_ALL
    assert set(format_inspector.ALL_FORMATS) == set(DETECTED.values()) - {
        None}
