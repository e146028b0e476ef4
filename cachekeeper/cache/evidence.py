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

"""What a pass carries to the next one: evidence that has not changed.

A daemon's pass reads thousands of instance directories, and most of them
are as the last pass left them. The evidence of each (Directory) records
what it rests on: the stat of the directory and of its metadata files,
the version of every disk and chain file whose content was read, the real
path of every path that was resolved. A directory whose inputs all say the
same is not read again; Memory keeps that evidence, and the parsed
metadata files (ParsedFiles), from pass to pass.

Times only prove a file unchanged when they are older than the file
system's timestamp granularity (git calls a change within it "racily
clean"): what changed more recently than the racy horizon, and what cannot
be stat'ed, is read again whatever its times say.
"""

import dataclasses
import errno
import os
import stat
import time

from oslo_log import log as logging

from cachekeeper.cache import facts
from cachekeeper.cache import metadata
from cachekeeper.cache import names
from cachekeeper import smallfile

LOG = logging.getLogger(__name__)

# A change made within the file system's timestamp granularity of the stat
# that recheck compares against leaves the same times behind, so a
# directory changed this recently is re-read (and inspect_cache keeps no
# answer about a file changed this recently).
RACY_SECONDS = 2

# What stat raises for a path that is not there (or is a dangling or
# looping symlink): it holds no disk and uses nothing.
GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)

# Kinds of the inputs of a Directory: a file whose content was read (its
# stat version), a path resolved to a file (its real path and file type),
# a path resolved to its real path only.
READ = 'read'
RESOLVED = 'resolved'
REAL_PATH = 'real path'

# Stands for a metadata file whose stat failed: it is read without a
# signature, and reading it reports the error.
UNKNOWN = object()


def stat_or_none(path):
    """os.stat following symlinks; None if the path is not there."""
    try:
        return os.stat(path)
    except OSError as e:
        if e.errno in GONE:
            return None
        raise


def identity(path):
    """(st_dev, st_ino) of ``path``, or None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def version(st):
    """What changes in a stat result whenever its file is written."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def resolution(st, real_path):
    """What a resolved path is: its real path and the type of its file."""
    return real_path, stat.S_IFMT(st.st_mode)


def racy_horizon(clock=time.time_ns):
    """Times after this are too recent to prove a later change absent."""
    return clock() - RACY_SECONDS * 10 ** 9


@dataclasses.dataclass(slots=True)
class Directory:
    """What one instance directory uses, and how it looked when read.

    ``signature`` is None when the directory must be read again at the next
    recheck whatever its times say. ``inputs`` are what the evidence rests
    on besides the directory and its metadata files: (kind, path, what it
    was) for the disks and chain files read. ``references`` come from the
    chains; ``metadata`` holds (NovaMetadata, source) pairs, whose
    references depend on the names in the cache. A directory not
    ``carried`` is read again in the next pass whatever its inputs say.
    ``doubts`` are facts.Doubt about things that could hide the use of any
    file; ``local_doubts`` are (source, message) pairs about things that
    can hide no more than the directory's disks, which were read anyway,
    use (see all_doubts). The evidence of a libvirt domain is kept in one
    too, without a signature: it is keyed by its definition.
    """

    signature: tuple = None
    references: list = dataclasses.field(default_factory=list)
    doubts: list = dataclasses.field(default_factory=list)
    local_doubts: list = dataclasses.field(default_factory=list)
    metadata: list = dataclasses.field(default_factory=list)
    inputs: list = dataclasses.field(default_factory=list)
    carried: bool = True
    _expanded: tuple = dataclasses.field(default=(None, ()), repr=False,
                                         compare=False)

    def doubt(self, source, message):
        """Record that ``source`` could not be read: it could use any file."""
        LOG.debug('Doubt about %s: %s', source, message)
        self.doubts.append(facts.Doubt(source=source, message=message))

    def local_doubt(self, source, message):
        """Record that ``source`` could not be read, though the disks of
        this directory still were: it can hide no more than they use.
        """
        LOG.debug('Doubt about %s (what its directory uses): %s', source,
                  message)
        self.local_doubts.append((source, message))

    @property
    def has_doubts(self):
        return bool(self.doubts or self.local_doubts)

    def all_doubts(self, cache_names):
        """The doubts, the local ones naming what this directory uses."""
        if not self.local_doubts:
            return self.doubts
        used = frozenset(reference.name for reference in
                         self.all_references(cache_names))
        return self.doubts + [
            facts.Doubt(source=source, message=message, names=used)
            for source, message in self.local_doubts]

    def all_references(self, cache_names):
        """The references, those of the metadata expanded for the
        names.CacheNames ``cache_names``.
        """
        if not self.metadata:
            return self.references
        if self._expanded[0] is not cache_names:
            self._expanded = (cache_names, [
                facts.Reference(name=name, source=source,
                                reason='%s in %s' % (reason, source),
                                image_id=names.image_of(nova_metadata, name))
                for nova_metadata, source in self.metadata
                for name, reason in names.cache_names_for(nova_metadata,
                                                          cache_names)])
        return self._expanded[1] + self.references

    def read(self, path, st):
        """Record that the content of ``path``, stat ``st``, was read."""
        if (not stat.S_ISREG(st.st_mode) or
                max(st.st_mtime_ns, st.st_ctime_ns) > racy_horizon()):
            # Writing to a block device changes none of its times, and a
            # file changed within its timestamps' granularity keeps them:
            # neither is proven unchanged in a later pass.
            self.carried = False
        self.inputs.append((READ, path, version(st)))

    def resolved(self, path, st, real_path):
        """Record that ``path`` is ``real_path``, a file of stat ``st``."""
        self.inputs.append((RESOLVED, path, resolution(st, real_path)))

    def resolved_real_path(self, path, real_path):
        """Record that ``path`` is ``real_path``, whatever is there."""
        self.inputs.append((REAL_PATH, path, real_path))

    def identities_read(self):
        """Yield (st_dev, st_ino) of each file whose content was read."""
        for kind, _path, was in self.inputs:
            if kind == READ:
                yield was[:2]


# Not frozen: each pass makes one or two per directory (see
# facts.Decision).
@dataclasses.dataclass(slots=True)
class InstanceDirectory:
    """An instance directory as listed: its stat (following symlinks) and,
    when it is no symlink, its real path.
    """

    path: str
    st: os.stat_result
    real_path: str = None


def directory_state(directory):
    """Return the signature of an InstanceDirectory and its metadata stats.

    The signature identifies the state of the directory and of its
    metadata files; it is None when any of them changed too recently for
    the times to tell a later change apart, or cannot be stat'ed. The
    stats are {names.DISK_INFO: st, names.LIBVIRT_XML: st}, None for a
    file that is not there and UNKNOWN for one that cannot be stat'ed.
    """
    horizon = racy_horizon()
    st = directory.st
    parts = [version(st)]
    valid = st.st_mtime_ns <= horizon
    stats = {}
    for name in (names.DISK_INFO, names.LIBVIRT_XML):
        try:
            part = stat_or_none(directory.path + os.sep + name)
        except OSError:
            stats[name] = UNKNOWN
            valid = False
            continue
        stats[name] = part
        if part is None:
            parts.append(None)
            continue
        valid = valid and part.st_mtime_ns <= horizon
        parts.append(version(part))
    return (tuple(parts) if valid else None), stats


def _read_small_file(path):
    """Return the content of a small regular file; None if it is gone.

    A FIFO or device is refused without waiting on it (ValueError).
    """
    try:
        return smallfile.read(path, metadata.MAX_METADATA_BYTES)
    except OSError as e:
        if e.errno in GONE:
            return None
        raise


class ParsedFiles:
    """disk.info and libvirt.xml files as parsed, while they do not change.

    A file whose stat (identity, size, modification and change time) is
    the one it was parsed at is not read again. Kept from pass to pass by
    the manager; an entry no pass used since the last new_pass() is
    dropped at the next one.
    """

    def __init__(self, clock=time.time_ns):
        self._clock = clock
        self._current = {}
        self._previous = {}

    def new_pass(self):
        self._previous, self._current = self._current, {}

    def read(self, path, st, parse):
        """Return parse(content) of the small file at ``path``.

        ``st`` is its stat taken before (None or UNKNOWN when there is
        none). Returns None if the file is gone; raises OSError when it
        cannot be read, ValueError when parse refuses its content.
        """
        current = None
        if st is not None and st is not UNKNOWN and stat.S_ISREG(
                st.st_mode):
            current = version(st)
            entry = self._current.get(path) or self._previous.get(path)
            if entry is not None and entry[0] == current:
                self._current[path] = entry
                return self._value(entry[1])
        data = _read_small_file(path)
        if data is None:
            return None
        try:
            value = parse(data)
        except ValueError as e:
            value = e
        if current is not None and max(
                st.st_mtime_ns, st.st_ctime_ns) <= racy_horizon(
                    self._clock):
            self._current[path] = (current, value)
        return self._value(value)

    @staticmethod
    def _value(value):
        if isinstance(value, ValueError):
            raise ValueError(str(value))
        return value


class Memory:
    """What the inventories of a daemon's passes keep from pass to pass.

    The parsed metadata files, and the evidence of the instance
    directories the last pass read: a directory whose times, metadata and
    disks did not change since is not read again.
    """

    def __init__(self):
        self.parsed_files = ParsedFiles()
        self.directories = {}
        self.cache_dir_key = None
        self.cache_names = names.CacheNames(())

    def cache_names_of(self, cache_names):
        """The names.CacheNames of ``cache_names``; the last pass's if they
        are equal (references expanded for it are kept with it).
        """
        cache_names = frozenset(cache_names)
        if cache_names != self.cache_names.names:
            self.cache_names = names.CacheNames(cache_names)
        return self.cache_names
