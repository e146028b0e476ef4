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

"""List the image cache directory and classify its entries by name.

scan() is a pass's listing; size_since() the pressure check's between
passes, which lstats only what the last scan did not see. Only lstat is
used: nothing in the cache directory is opened or followed
here, so symlinks, FIFOs and devices cannot block or mislead a pass. What
a name says is nova's rule (names.kind_of); only a regular file is read
by its name.
"""

import dataclasses
import operator
import os
import stat

from oslo_log import log as logging

from cachekeeper.cache import facts
from cachekeeper.cache import names

LOG = logging.getLogger(__name__)

_FILE_TYPES = (
    (stat.S_ISREG, 'file'),
    (stat.S_ISLNK, 'symlink'),
    (stat.S_ISDIR, 'directory'),
    (stat.S_ISFIFO, 'fifo'),
    (stat.S_ISSOCK, 'socket'),
    (stat.S_ISBLK, 'block device'),
    (stat.S_ISCHR, 'character device'),
)


def file_type(mode):
    for test, name in _FILE_TYPES:
        if test(mode):
            return name
    return 'unknown'


def classify(name, mode):
    """Return the kind of a cache entry from its name and lstat mode."""
    if not stat.S_ISREG(mode):
        return facts.FOREIGN
    return names.kind_of(name)


def base_file(path, st, name=None):
    """Build the BaseFile for ``path`` from its lstat result.

    ``name`` is the base name of ``path``, if known.
    """
    if name is None:
        name = os.path.basename(path)
    return facts.BaseFile(
        name=name,
        path=path,
        kind=classify(name, st.st_mode),
        file_type=file_type(st.st_mode),
        size=st.st_size,
        allocated=st.st_blocks * 512,
        mtime=st.st_mtime,
        dev=st.st_dev,
        ino=st.st_ino)


def _unchanged(known, path, st):
    """Whether the BaseFile ``known`` describes ``path`` with lstat ``st``."""
    return (known.ino == st.st_ino and known.dev == st.st_dev and
            known.mtime == st.st_mtime and known.size == st.st_size and
            known.allocated == st.st_blocks * 512 and
            known.path == path and
            known.file_type == file_type(st.st_mode))


def scan(cache_dir, previous=None):
    """Return a BaseFile for every entry of ``cache_dir``, sorted by name.

    A missing cache directory is an empty cache. An entry that vanishes
    while the directory is read is left out: it is no longer there to age.
    ``previous`` maps names to the BaseFiles of an earlier scan: an entry
    whose lstat still says the same is returned as that (immutable)
    BaseFile, which spares a daemon building thousands again each pass.
    """
    entries = []
    try:
        iterator = os.scandir(cache_dir)
    except FileNotFoundError:
        LOG.debug('Image cache directory %s does not exist', cache_dir)
        return entries
    with iterator:
        for entry in iterator:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            known = previous.get(entry.name) if previous else None
            if known is None or not _unchanged(known, entry.path, st):
                known = base_file(entry.path, st, entry.name)
            entries.append(known)
    entries.sort(key=operator.attrgetter('name'))
    return entries


@dataclasses.dataclass(frozen=True)
class CacheSize:
    """The regular files of the cache and the bytes they allocate.

    ``new_files`` is how many of them an earlier scan had not seen.
    """

    allocated: int = 0
    files: int = 0
    new_files: int = 0


def size_since(cache_dir, previous):
    """Return the CacheSize of ``cache_dir``, cheaply.

    ``previous`` maps names to the BaseFiles of the last scan: a name it
    has counts as that scan found it, without lstat, so that a check every
    few seconds costs a listing of the directory and an lstat of each new
    name. A missing cache directory is an empty cache.
    """
    allocated = files = new_files = 0
    try:
        iterator = os.scandir(cache_dir)
    except FileNotFoundError:
        return CacheSize()
    with iterator:
        for entry in iterator:
            known = previous.get(entry.name)
            is_new = known is None
            if is_new:
                try:
                    known = base_file(entry.path,
                                      entry.stat(follow_symlinks=False),
                                      entry.name)
                except FileNotFoundError:
                    continue
            if known.is_regular:
                allocated += known.allocated
                files += 1
                new_files += is_new
    return CacheSize(allocated, files, new_files)
