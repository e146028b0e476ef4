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

"""nova's file names: how nova names what it caches, and how to read a name.

nova's libvirt driver names a cache file after what it holds, and that
name is all a pass has to go on: scan tells the kind of a file by it, the
inventory finds the files an instance's nova metadata points to by it, and
execute takes the lock of the file a download was to become by it. Every
such rule is here, once: a rule written twice drifts apart, and a name
built one way and read another is a file kept forever or removed while in
use. The names nova gives instance directories and the files in them are
here too.
"""

import hashlib
import re

from cachekeeper.cache import facts

# An original is named after its image: the sha1 of the image id in hex
# (imagebackend: ``hashlib.sha1(image_id)``). Its variants start with that.
SHA1_LENGTH = 40
_SHA1 = '[0-9a-f]{%d}' % SHA1_LENGTH
# The pre-Folsom small copy of an original: ``<sha1>_sm``.
LEGACY_SM_SUFFIX = '_sm'
SWAP_PREFIX = 'swap_'
EPHEMERAL_PREFIX = 'ephemeral_'
# Kinds whose name is ``<sha1 of an image id>_<something>``.
IMAGE_VARIANT_KINDS = (facts.RESIZED, facts.LEGACY_SM)

# What nova (and cachekeeper-manage precache) write a download into, under
# nova's lock for the file it becomes, before renaming it into place.
PART_SUFFIX = '.part'
CONVERTED_SUFFIX = '.converted'
DOWNLOAD_SUFFIXES = (PART_SUFFIX, CONVERTED_SUFFIX)
# The temporary files of other writers: residue too, but of no download.
TEMPORARY_SUFFIX = '.tmp'
_RESIDUE_SUFFIXES = DOWNLOAD_SUFFIXES + (TEMPORARY_SUFFIX,)

# The file cachekeeper makes in the image cache to find out whether it
# takes O_DIRECT (``<prefix><random>``).
DIRECT_IO_PROBE_PREFIX = '.directio.'

# Tried in order: the first that matches the whole name gives the kind.
_NAME_PATTERNS = (
    (_SHA1, facts.ORIGINAL),
    # ``<sha1>_<size in bytes>``: the original resized for a flavor.
    (_SHA1 + '_[0-9]+', facts.RESIZED),
    (_SHA1 + re.escape(LEGACY_SM_SUFFIX), facts.LEGACY_SM),
    # ``swap_<MiB>``.
    (SWAP_PREFIX + '[0-9]+', facts.SWAP),
    # ``ephemeral_<GiB>_<file system hash>``.
    (EPHEMERAL_PREFIX + '[0-9]+_[0-9a-f]{7}', facts.EPHEMERAL),
    ('.+(?:%s)' % '|'.join(map(re.escape, _RESIDUE_SUFFIXES)),
     facts.RESIDUE),
)
# All in one expression, one group per kind: the alternatives of a regular
# expression are tried in order too.
_NAME = re.compile('|'.join('(%s)' % pattern for pattern, _kind in
                            _NAME_PATTERNS), re.DOTALL)
_KINDS = {index + 1: kind for index, (_pattern, kind) in
          enumerate(_NAME_PATTERNS)}

# Instance directories: nova names one after its instance's UUID, renames
# it to ``<uuid>_resize`` during a resize (and ``<uuid>_del`` to delete
# it), and keeps these files in it besides the disks.
RESIZE_SUFFIX = '_resize'
DISK_INFO = 'disk.info'
LIBVIRT_XML = 'libvirt.xml'
# The disks nova's libvirt driver creates in an instance directory; any
# other file that disk.info lists is a disk too.
_DISK_NAME = re.compile(r'disk(\.local|\.eph[0-9]+|\.swap|\.rescue|\.config)?')


def kind_of(name):
    """Return the kind of the cache file called ``name``, by nova's names.

    facts.FOREIGN for a name nova does not give.
    """
    match = _NAME.fullmatch(name)
    return facts.FOREIGN if match is None else _KINDS[match.lastindex]


def image_cache_name(image_id):
    """Return the name nova gives the cached copy of image ``image_id``."""
    return hashlib.sha1(image_id.encode('utf-8'),
                        usedforsecurity=False).hexdigest()


def original_of(name):
    """The name of the original a file of IMAGE_VARIANT_KINDS copies."""
    return name[:SHA1_LENGTH]


def resized_name(original, size):
    """The name of ``original`` resized to ``size`` bytes."""
    return '%s_%d' % (original, size)


def swap_name(swap_mb):
    """The name of the swap file of ``swap_mb`` MiB."""
    return '%s%d' % (SWAP_PREFIX, swap_mb)


def ephemeral_name(ephemeral_gb, file_system):
    """The name of the ephemeral file of ``ephemeral_gb`` GiB.

    nova names it after the md5 of the file system it makes on it (or of
    the mkfs command configured for the guest's OS type).
    """
    digest = hashlib.md5(file_system.encode('utf-8'), usedforsecurity=False)
    return '%s%d_%s' % (EPHEMERAL_PREFIX, ephemeral_gb,
                        digest.hexdigest()[:7])


def download_target(name):
    """Return the cache file name download residue ``name`` was to become.

    None when ``name`` is not a download's (``<target>.part`` or
    ``<target>.converted``): no lock is known to guard it.
    """
    for suffix in DOWNLOAD_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)]
    return None


def is_disk_name(name):
    """Whether nova's libvirt driver names a disk ``name`` in an instance
    directory.
    """
    return _DISK_NAME.fullmatch(name) is not None


class CacheNames:
    """The names in the cache directory, indexed for nova's name patterns.

    ``variants[original]`` are the resized and legacy variants of an
    original (``<original>_<digits>``, ``<original>_sm``);
    ``ephemerals[size]`` the ephemeral files of a size in GiB
    (``ephemeral_<size>_*``, whatever follows: nova metadata names only
    the size), each sorted by name.
    """

    def __init__(self, names):
        self.names = frozenset(names)
        self.variants = {}
        self.ephemerals = {}
        for name in sorted(self.names):
            if kind_of(name) in IMAGE_VARIANT_KINDS:
                self.variants.setdefault(original_of(name), []).append(name)
            if name.startswith(EPHEMERAL_PREFIX):
                size, sep, _rest = name[len(EPHEMERAL_PREFIX):].partition(
                    '_')
                if sep:
                    self.ephemerals.setdefault(size, []).append(name)

    def __contains__(self, name):
        return name in self.names


def image_of(metadata, name):
    """The Glance image id ``metadata`` says cache file ``name`` holds.

    That is its root image, for the image's original and its resized
    copies; None for any other file (swap, ephemeral).
    """
    root_image = metadata.root_image
    if root_image and original_of(name) == image_cache_name(root_image):
        return root_image
    return None


def cache_names_for(metadata, cache_names):
    """Yield (name, reason) for the cache files nova metadata points to.

    ``metadata`` is a metadata.NovaMetadata. The original of the root image
    is named whether or not it is in ``cache_names`` (a CacheNames, or any
    collection of names); its resized variants, and the ephemeral files
    whose file system hash is not recorded, are found among
    ``cache_names``.
    """
    if not isinstance(cache_names, CacheNames):
        cache_names = CacheNames(cache_names)
    if metadata.root_image:
        original = image_cache_name(metadata.root_image)
        reason = 'root image %s' % metadata.root_image
        yield original, reason
        for name in cache_names.variants.get(original, ()):
            yield name, reason
    if metadata.swap_mb > 0:
        yield swap_name(metadata.swap_mb), (
            'flavor swap of %d MiB' % metadata.swap_mb)
    if metadata.ephemeral_gb > 0:
        for name in cache_names.ephemerals.get(
                '%d' % metadata.ephemeral_gb, ()):
            yield name, (
                'flavor ephemeral disk of %d GiB' % metadata.ephemeral_gb)
