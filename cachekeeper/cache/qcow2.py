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

"""Read the backing file of a plain qcow2 image from its header.

A fast path beside ``qemu-img info``, for the overlays nova creates: one
bounded read of the first block, and every field qemu validates when it
opens an image (block/qcow2.c ``qcow2_do_open``) checked the same way. The
reader answers only for images it fully understands: anything else (an
unknown or unusual feature, an external data file, encryption, internal
snapshots, bitmaps, an unknown header extension, a header that qemu would
refuse or that reaches past the first block) raises Unsupported, and the
caller asks qemu-img, which stays the authority.
"""

import dataclasses
import os
import struct

MAGIC = b'QFI\xfb'

# Everything the reader looks at must lie in this first block; qemu-img
# writes the header, its extensions and the backing file name into the
# first few hundred bytes.
READ_SIZE = 4096

# QCowHeader: magic, version, backing_file_offset, backing_file_size,
# cluster_bits, size, crypt_method, l1_size, l1_table_offset,
# refcount_table_offset, refcount_table_clusters, nb_snapshots,
# snapshots_offset; then, from version 3, incompatible_features,
# compatible_features, autoclear_features, refcount_order, header_length
# and, if header_length says so, compression_type.
_HEADER_V2 = struct.Struct('>4sIQIIQIIQQIIQ')
_HEADER_V3 = struct.Struct('>QQQII')
_V2_HEADER_LENGTH = _HEADER_V2.size
_V3_MIN_HEADER_LENGTH = _HEADER_V2.size + _HEADER_V3.size
_COMPRESSION_TYPE_OFFSET = _V3_MIN_HEADER_LENGTH

_EXTENSION = struct.Struct('>II')
_EXT_END = 0x00000000
_EXT_BACKING_FORMAT = 0xe2792aca
_EXT_FEATURE_TABLE = 0x6803f857

# Incompatible feature bits: 0 dirty, 1 corrupt, 2 external data file,
# 3 compression type, 4 extended L2 entries. Only a dirty image (one not
# closed cleanly) has exactly the header layout read here; qemu opens it
# read-only as it is.
_SAFE_INCOMPATIBLE = 1 << 0
# Autoclear feature bits: 0 bitmaps (the extension itself is refused),
# 1 raw external data file (meaningless without one).
_SAFE_AUTOCLEAR = 1 << 0

# qemu's limits (block/qcow2.h).
_MIN_CLUSTER_BITS = 9
_MAX_CLUSTER_BITS = 21
_MAX_REFCOUNT_ORDER = 6
_MAX_BACKING_NAME = 1023
_MAX_BACKING_FORMAT = 15
_MAX_L1_BYTES = 32 * 1024 * 1024
_MAX_REFTABLE_BYTES = 8 * 1024 * 1024
_MAX_SNAPSHOTS = 65536
_SNAPSHOT_HEADER_BYTES = 40
_L1_ENTRY_BYTES = 8
_L2_ENTRY_BITS = 3
_INT_MAX = 2 ** 31 - 1
_INT64_MAX = 2 ** 63 - 1


class Unsupported(Exception):
    """The header is not one this reader fully understands; ask qemu-img."""


@dataclasses.dataclass(frozen=True)
class Header:
    """What a qcow2 header says about the image's chain.

    ``backing_file`` is the name as written (maybe relative), None when
    the image has no backing file; ``backing_format`` is None when the
    header does not record it.
    """

    version: int
    backing_file: str = None
    backing_format: str = None


def read(fd):
    """Return the Header of the qcow2 image open on ``fd``.

    One pread of at most READ_SIZE bytes from offset 0; the descriptor's
    offset is not moved. Raises Unsupported, or OSError from the read.
    """
    return parse(os.pread(fd, READ_SIZE, 0))


def _check_table(name, offset, entries, entry_bytes, max_bytes, cluster_size):
    # qcow2_validate_table
    if entries > max_bytes // entry_bytes:
        raise Unsupported('%s too large' % name)
    if _INT64_MAX - entries * entry_bytes < offset:
        raise Unsupported('%s exceeds the maximum supported size' % name)
    if offset % cluster_size:
        raise Unsupported('%s is not cluster aligned' % name)


def _text(data, what):
    if b'\0' in data:
        raise Unsupported('%s contains a NUL byte' % what)
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError:
        raise Unsupported('%s is not UTF-8' % what)


def parse(data):
    """Return the Header encoded at the start of ``data``.

    ``data`` is the beginning of the file (READ_SIZE bytes, fewer if the
    file is shorter). Raises Unsupported.
    """
    if len(data) < _V2_HEADER_LENGTH:
        raise Unsupported('shorter than a qcow2 header')
    (magic, version, backing_offset, backing_size, cluster_bits, size,
     crypt_method, l1_size, l1_offset, refcount_offset, refcount_clusters,
     nb_snapshots, snapshots_offset) = _HEADER_V2.unpack_from(data)
    if magic != MAGIC:
        raise Unsupported('not a qcow2 image')
    if version not in (2, 3):
        raise Unsupported('qcow2 version %d' % version)
    if not _MIN_CLUSTER_BITS <= cluster_bits <= _MAX_CLUSTER_BITS:
        raise Unsupported('cluster size 2^%d' % cluster_bits)
    cluster_size = 1 << cluster_bits
    if version == 2:
        incompatible = autoclear = 0
        refcount_order = 4
        header_length = _V2_HEADER_LENGTH
    else:
        if len(data) < _V3_MIN_HEADER_LENGTH:
            raise Unsupported('shorter than a qcow2 version 3 header')
        (incompatible, _compatible, autoclear, refcount_order,
         header_length) = _HEADER_V3.unpack_from(data, _V2_HEADER_LENGTH)
        if header_length < _V3_MIN_HEADER_LENGTH:
            raise Unsupported('header too short')
    if header_length > cluster_size:
        raise Unsupported('header exceeds the cluster size')
    if header_length > len(data):
        raise Unsupported('header longer than the bytes read')
    if backing_offset > cluster_size:
        raise Unsupported('invalid backing file offset')
    if incompatible & ~_SAFE_INCOMPATIBLE:
        raise Unsupported('incompatible features 0x%x' % incompatible)
    if autoclear & ~_SAFE_AUTOCLEAR:
        raise Unsupported('autoclear features 0x%x' % autoclear)
    if (header_length > _COMPRESSION_TYPE_OFFSET and
            data[_COMPRESSION_TYPE_OFFSET] != 0):
        # Only zlib goes without the compression type feature bit.
        raise Unsupported('compression type %d'
                          % data[_COMPRESSION_TYPE_OFFSET])
    if refcount_order > _MAX_REFCOUNT_ORDER:
        raise Unsupported('refcount order %d' % refcount_order)
    if crypt_method:
        raise Unsupported('encrypted (method %d)' % crypt_method)
    if refcount_clusters == 0:
        raise Unsupported('no reference count table')
    _check_table('reference count table', refcount_offset,
                 refcount_clusters, cluster_size, _MAX_REFTABLE_BYTES,
                 cluster_size)
    _check_table('snapshot table', snapshots_offset, nb_snapshots,
                 _SNAPSHOT_HEADER_BYTES,
                 _SNAPSHOT_HEADER_BYTES * _MAX_SNAPSHOTS, cluster_size)
    if nb_snapshots:
        raise Unsupported('%d internal snapshots' % nb_snapshots)
    _check_table('L1 table', l1_offset, l1_size, _L1_ENTRY_BYTES,
                 _MAX_L1_BYTES, cluster_size)
    # size_to_l1: the L1 table must cover the virtual size.
    l1_shift = cluster_bits + cluster_bits - _L2_ENTRY_BITS
    needed_l1 = (size + (1 << l1_shift) - 1) >> l1_shift
    if needed_l1 > _INT_MAX:
        raise Unsupported('image too big')
    if l1_size < needed_l1:
        raise Unsupported('L1 table too small')

    extensions_end = backing_offset or cluster_size
    backing_format = _read_extensions(data, header_length, extensions_end)

    if not backing_offset:
        return Header(version=version)
    if backing_size > min(_MAX_BACKING_NAME, cluster_size - backing_offset):
        raise Unsupported('backing file name too long')
    if backing_offset + backing_size > len(data):
        raise Unsupported('backing file name beyond the bytes read')
    backing_file = _text(data[backing_offset:backing_offset + backing_size],
                         'backing file name')
    if not backing_file:
        return Header(version=version)
    return Header(version=version, backing_file=backing_file,
                  backing_format=backing_format)


def _read_extensions(data, offset, end):
    """Walk the header extensions; return the backing format, or None."""
    backing_format = None
    while offset < end:
        if offset + _EXTENSION.size > len(data):
            raise Unsupported('header extensions beyond the bytes read')
        ext_type, length = _EXTENSION.unpack_from(data, offset)
        offset += _EXTENSION.size
        if offset > end or length > end - offset:
            raise Unsupported('header extension too large')
        if ext_type == _EXT_END:
            return backing_format
        if offset + length > len(data):
            raise Unsupported('header extension beyond the bytes read')
        if ext_type == _EXT_BACKING_FORMAT:
            if length > _MAX_BACKING_FORMAT:
                raise Unsupported('backing format name too long')
            backing_format = _text(data[offset:offset + length],
                                   'backing format') or None
        elif ext_type != _EXT_FEATURE_TABLE:
            raise Unsupported('header extension 0x%08x' % ext_type)
        offset += (length + 7) & ~7
    return backing_format
