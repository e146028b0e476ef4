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

"""Which image cache files the instances on this host use.

The evidence comes from the instance directories under ``instances_path``:
the full backing chain of every instance disk, and the nova metadata in
``libvirt.xml`` for the disks that are flat copies of a cache file and so
have no backing file. A domain source (libvirt) may add the disks of the
domains defined on the host, wherever they are, which are read by the same
rules. Anything that cannot be read becomes a Doubt, so the plan fails
closed; anything that vanished meanwhile simply uses nothing.
"""

import dataclasses
import errno
import hashlib
import json
import os
import re
import stat
import threading
import time
from xml.etree import ElementTree

from oslo_log import log as logging
from oslo_utils import units

from cachekeeper.cache import facts
from cachekeeper.cache import inspect
from cachekeeper import smallfile

LOG = logging.getLogger(__name__)

DISK_INFO = 'disk.info'
LIBVIRT_XML = 'libvirt.xml'
LOCKS_DIR = 'locks'
NOVA_NAMESPACE_PREFIX = 'http://openstack.org/xmlns/libvirt/nova/'

# The disks nova's libvirt driver creates in an instance directory; any
# other file that disk.info lists is a disk too.
_DISK_NAME = re.compile(r'disk(\.local|\.eph[0-9]+|\.swap|\.rescue|\.config)?')

# nova builds chains of two or three files; a longer one is broken or built
# to make the pass work hard.
MAX_CHAIN_LENGTH = 16

# disk.info and libvirt.xml are a few KiB.
MAX_METADATA_BYTES = units.Mi

# A change made within the file system's timestamp granularity of the stat
# that recheck compares against leaves the same times behind (git calls
# this "racily clean"), so a directory changed this recently is re-read.
RACY_SECONDS = 2

# Reads of the instance directories before a pass gives up on them standing
# still long enough to be read.
MAX_READS = 5

# What stat raises for a path that is not there (or is a dangling or
# looping symlink): it holds no disk and uses nothing.
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


def _stat(path):
    """os.stat following symlinks; None if the path is not there."""
    try:
        return os.stat(path)
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise


def _identity(path):
    """(st_dev, st_ino) of ``path``, or None if it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _exists(path):
    try:
        return _stat(path) is not None
    except OSError:
        return True


def _read_small_file(path):
    """Return the content of a small regular file; None if it is gone.

    A FIFO or device is refused without waiting on it (ValueError).
    """
    try:
        return smallfile.read(path, MAX_METADATA_BYTES)
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise


def _has_protocol(name):
    # qemu reads "proto:..." as a protocol when the colon comes before any
    # slash (block.c path_has_protocol), e.g. json:{...} or nbd://host.
    colon = name.find(':')
    slash = name.find('/')
    return colon > 0 and (slash < 0 or colon < slash)


class _RefuseDoctype(ElementTree.TreeBuilder):
    """Tree builder that refuses DTDs, and with them entity expansion."""

    def doctype(self, name, pubid, system):
        raise ValueError('a DOCTYPE is not accepted')


def parse_disk_info(data, directory):
    """Map disk file names to formats from the content of disk.info.

    nova records absolute paths, which are stale if instances_path moved, so
    entries are matched by base name; an entry for the disk's current path
    wins. A name recorded with conflicting formats maps to None. Empty
    content (or only white space) records nothing, as nova reads it: nova
    creates the file empty and only then renames the written one over it
    (``Image.resolve_driver_format``). Raises ValueError if the content is
    not nova's JSON object.
    """
    if not data.strip():
        return {}
    try:
        recorded = json.loads(data)
    except RecursionError:
        raise ValueError('JSON nested too deeply')
    if not isinstance(recorded, dict) or not all(
            isinstance(k, str) and isinstance(v, str)
            for k, v in recorded.items()):
        raise ValueError('not a JSON object of paths to formats')
    exact = {}
    by_name = {}
    for disk_path, fmt in recorded.items():
        name = os.path.basename(disk_path)
        if disk_path == os.path.join(directory, name):
            exact[name] = fmt
        else:
            by_name.setdefault(name, set()).add(fmt)
    formats = {name: fmts.pop() if len(fmts) == 1 else None
               for name, fmts in by_name.items()}
    formats.update(exact)
    return formats


@dataclasses.dataclass(frozen=True)
class NovaMetadata:
    """What libvirt.xml's nova metadata says about the instance's disks."""

    root_image: str = None
    swap_mb: int = 0
    ephemeral_gb: int = 0


def _nova_instance(domain):
    """Return the nova:instance element of a domain and its namespace.

    nova has written versions 1.0 and 1.1 of its namespace.
    """
    for child in domain.findall('metadata/*'):
        if child.tag.startswith('{'):
            namespace, _sep, tag = child.tag[1:].partition('}')
            if (tag == 'instance' and
                    namespace.startswith(NOVA_NAMESPACE_PREFIX)):
                return child, namespace
    return None, None


def _parse_xml(data):
    parser = ElementTree.XMLParser(target=_RefuseDoctype())
    try:
        parser.feed(data)
        return parser.close()
    except ElementTree.ParseError as e:
        raise ValueError('not well-formed XML: %s' % e)


def parse_libvirt_xml(data):
    """Return the NovaMetadata of a domain XML, or None if it has none.

    Raises ValueError if the XML cannot be parsed or its nova metadata makes
    no sense.
    """
    return _nova_metadata(_parse_xml(data))


def _nova_metadata(domain):
    instance, namespace = _nova_instance(domain)
    if instance is None:
        return None

    def find(path):
        return instance.find('/'.join('{%s}%s' % (namespace, t)
                                      for t in path.split('/')))

    def size(path):
        element = find(path)
        text = (element.text or '').strip() if element is not None else ''
        if not text:
            return 0
        if not text.isascii() or not text.isdigit():
            raise ValueError('%s is not a size: %r' % (path, text))
        return int(text)

    root = find('root')
    root_image = None
    if root is not None and root.get('type') == 'image':
        root_image = root.get('uuid') or None
    return NovaMetadata(root_image=root_image,
                        swap_mb=size('flavor/swap'),
                        ephemeral_gb=size('flavor/ephemeral'))


@dataclasses.dataclass(frozen=True)
class DomainDisk:
    """A file a libvirt domain opens: a disk, its chain, a kernel, an initrd.

    ``role`` says which, e.g. 'disk vda' or 'kernel'; ``fmt`` is the format
    libvirt was told, None if it was not.
    """

    role: str
    path: str
    fmt: str = None


@dataclasses.dataclass(frozen=True)
class Domain:
    """What a libvirt domain definition says about the files it uses.

    ``unknown_disks`` describe disks whose file cannot be known from the
    definition (a storage pool volume, a relative path): their chains are
    unknown, so nothing may be removed while the domain is defined.
    """

    name: str
    uuid: str
    disks: tuple = ()
    unknown_disks: tuple = ()
    metadata: NovaMetadata = None

    @property
    def label(self):
        return 'libvirt domain %s' % self.name


class DomainsUnavailable(Exception):
    """The domain source cannot say which domains are defined."""

    def __init__(self, source, message):
        super().__init__('%s: %s' % (source, message))
        self.source = source
        self.message = message


# Disk types whose source is a local file, and the attribute naming it.
_LOCAL_DISK_SOURCES = {'file': 'file', 'block': 'dev'}


class _DomainFiles:
    """Collects the files of one domain definition."""

    def __init__(self):
        self.disks = []
        self.unknown = []

    def add(self, role, path, fmt):
        if os.path.isabs(path):
            self.disks.append(DomainDisk(role=role, path=path, fmt=fmt))
        else:
            self.unknown.append('%s has the relative path %r' % (role, path))

    def add_disk(self, disk):
        """Add a disk and the chain below it.

        A running domain's definition lists the chain libvirt found below
        the disk as nested backingStore elements.
        """
        target = disk.find('target')
        role = '%s %s' % (disk.get('device', 'disk'),
                          target.get('dev') if target is not None else '?')
        element = disk
        fmt_element = disk.find('driver')
        while element is not None:
            disk_type = element.get('type')
            source = element.find('source')
            fmt = fmt_element.get('type') if fmt_element is not None else None
            if source is not None and disk_type in _LOCAL_DISK_SOURCES:
                path = source.get(_LOCAL_DISK_SOURCES[disk_type])
                if path:
                    self.add(role, path, fmt or None)
            elif source is not None and disk_type == 'volume':
                self.unknown.append('%s is the storage pool volume %s/%s' % (
                    role, source.get('pool'), source.get('volume')))
            element = element.find('backingStore')
            if element is not None:
                fmt_element = element.find('format')
                role = 'backing file of %s' % role


def parse_domain_xml(data):
    """Return the Domain a libvirt domain XML describes.

    Disks on the network, directories and the like hold no image cache
    file and are left out. Raises ValueError if the XML cannot be parsed
    or its nova metadata makes no sense.
    """
    domain = _parse_xml(data)
    files = _DomainFiles()
    for disk in domain.findall('devices/disk'):
        files.add_disk(disk)
    for role in ('kernel', 'initrd'):
        path = (domain.findtext('os/%s' % role) or '').strip()
        if path:
            # Not a disk image: its name is all that can be in use.
            files.add(role, path, 'raw')
    return Domain(name=domain.findtext('name', ''),
                  uuid=domain.findtext('uuid', ''),
                  disks=tuple(files.disks),
                  unknown_disks=tuple(files.unknown),
                  metadata=_nova_metadata(domain))


class CacheNames:
    """The names in the cache directory, indexed for nova's name patterns.

    ``variants[original]`` are the resized and legacy variants of an
    original (``<original>_<digits>``, ``<original>_sm``);
    ``ephemerals[size]`` the ephemeral files of a size in GiB
    (``ephemeral_<size>_*``), each sorted by name.
    """

    def __init__(self, names):
        self.names = frozenset(names)
        self.variants = {}
        self.ephemerals = {}
        for name in sorted(self.names):
            if _VARIANT.fullmatch(name):
                self.variants.setdefault(name[:40], []).append(name)
            if name.startswith(_EPHEMERAL_PREFIX):
                size, sep, _rest = name[len(_EPHEMERAL_PREFIX):].partition(
                    '_')
                if sep:
                    self.ephemerals.setdefault(size, []).append(name)

    def __contains__(self, name):
        return name in self.names


_VARIANT = re.compile('.{40}_(sm|[0-9]+)', re.DOTALL)
_EPHEMERAL_PREFIX = 'ephemeral_'


def cache_names_for(metadata, cache_names):
    """Yield (name, reason) for the cache files nova metadata points to.

    The original of the root image is named whether or not it is in
    ``cache_names`` (a CacheNames, or any collection of names); its resized
    variants, and the ephemeral files whose file system hash is not
    recorded, are found among ``cache_names``.
    """
    if not isinstance(cache_names, CacheNames):
        cache_names = CacheNames(cache_names)
    if metadata.root_image:
        original = hashlib.sha1(metadata.root_image.encode('utf-8'),
                                usedforsecurity=False).hexdigest()
        reason = 'root image %s' % metadata.root_image
        yield original, reason
        for name in cache_names.variants.get(original, ()):
            yield name, reason
    if metadata.swap_mb > 0:
        yield 'swap_%d' % metadata.swap_mb, (
            'flavor swap of %d MiB' % metadata.swap_mb)
    if metadata.ephemeral_gb > 0:
        for name in cache_names.ephemerals.get(
                '%d' % metadata.ephemeral_gb, ()):
            yield name, (
                'flavor ephemeral disk of %d GiB' % metadata.ephemeral_gb)


# Kinds of the inputs of a _Directory: a file whose content was read (its
# stat _version), a path resolved to a file (its real path and file type),
# a path resolved to its real path only.
_READ = 'read'
_RESOLVED = 'resolved'
_REAL_PATH = 'real path'


@dataclasses.dataclass(slots=True)
class _Directory:
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
        this directory still were: it can hide no more than they use."""
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
        names = frozenset(reference.name for reference in
                          self.all_references(cache_names))
        return self.doubts + [
            facts.Doubt(source=source, message=message, names=names)
            for source, message in self.local_doubts]

    def all_references(self, cache_names):
        """The references, those of the metadata expanded for the
        CacheNames ``cache_names``."""
        if not self.metadata:
            return self.references
        if self._expanded[0] is not cache_names:
            self._expanded = (cache_names, [
                facts.Reference(name=name, source=source,
                                reason='%s in %s' % (reason, source))
                for metadata, source in self.metadata
                for name, reason in cache_names_for(metadata, cache_names)])
        return self._expanded[1] + self.references

    def read(self, path, st):
        """Record that the content of ``path``, stat ``st``, was read."""
        if (not stat.S_ISREG(st.st_mode) or
                max(st.st_mtime_ns, st.st_ctime_ns) > _racy_horizon()):
            # Writing to a block device changes none of its times, and a
            # file changed within its timestamps' granularity keeps them:
            # neither is proven unchanged in a later pass.
            self.carried = False
        self.inputs.append((_READ, path, _version(st)))


@dataclasses.dataclass(frozen=True)
class _Link:
    """One element of a backing chain, still to be inspected.

    ``path`` is the element as named (a relative backing name resolves
    against its directory, as qemu does), ``chain`` the disk and the real
    paths of the elements down to this one, ``seen`` the real paths of all
    of them. ``owner`` names what uses a disk outside an instance
    directory (e.g. 'disk vda of libvirt domain instance-00000001').
    """

    directory: _Directory
    disk: str
    path: str
    real_path: str
    fmt: str
    chain: tuple
    seen: frozenset
    owner: str = None


def _version(st):
    """What changes in a stat result whenever its file is written."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _racy_horizon(clock=time.time_ns):
    """Times after this are too recent to prove a later change absent."""
    return clock() - RACY_SECONDS * 10 ** 9


# Not frozen: each pass makes one or two per directory (see
# facts.Decision).
@dataclasses.dataclass(slots=True)
class _InstanceDirectory:
    """An instance directory as listed: its stat (following symlinks) and,
    when it is no symlink, its real path."""

    path: str
    st: os.stat_result
    real_path: str = None


# Stands for a metadata file whose stat failed: it is read without a
# signature, and reading it reports the error.
_UNKNOWN = object()


def _directory_state(directory):
    """Return the signature of an instance directory and its metadata stats.

    The signature identifies the state of the directory and of its
    metadata files; it is None when any of them changed too recently for
    the times to tell a later change apart, or cannot be stat'ed. The
    stats are {DISK_INFO: st, LIBVIRT_XML: st}, None for a file that is
    not there and _UNKNOWN for one that cannot be stat'ed.
    """
    horizon = _racy_horizon()
    st = directory.st
    parts = [_version(st)]
    valid = st.st_mtime_ns <= horizon
    stats = {}
    for name in (DISK_INFO, LIBVIRT_XML):
        try:
            part = _stat(directory.path + os.sep + name)
        except OSError:
            stats[name] = _UNKNOWN
            valid = False
            continue
        stats[name] = part
        if part is None:
            parts.append(None)
            continue
        valid = valid and part.st_mtime_ns <= horizon
        parts.append(_version(part))
    return (tuple(parts) if valid else None), stats


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

        ``st`` is its stat taken before (None or _UNKNOWN when there is
        none). Returns None if the file is gone; raises OSError when it
        cannot be read, ValueError when parse refuses its content.
        """
        version = None
        if st is not None and st is not _UNKNOWN and stat.S_ISREG(
                st.st_mode):
            version = _version(st)
            entry = self._current.get(path) or self._previous.get(path)
            if entry is not None and entry[0] == version:
                self._current[path] = entry
                return self._value(entry[1])
        data = _read_small_file(path)
        if data is None:
            return None
        try:
            value = parse(data)
        except ValueError as e:
            value = e
        if version is not None and max(
                st.st_mtime_ns, st.st_ctime_ns) <= _racy_horizon(
                    self._clock):
            self._current[path] = (version, value)
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
        self.cache_names = CacheNames(())

    def cache_names_of(self, names):
        """The CacheNames of ``names``; the last pass's if they are equal
        (references expanded for it are kept with it)."""
        names = frozenset(names)
        if names != self.cache_names.names:
            self.cache_names = CacheNames(names)
        return self.cache_names


class _Reader:
    """Reads instance directories; inspects each file once per read."""

    def __init__(self, inspector, cache_dir, cache_names, parsed_files):
        self.inspector = inspector
        self.cache_dir = cache_dir
        self.real_cache_dir = os.path.realpath(cache_dir)
        self.cache_dir_identity = _identity(cache_dir)
        self.cache_names = cache_names
        self.parsed_files = parsed_files
        self._inspected = {}
        self._parent_identities = {}
        self._real_dirs = {}
        self._resolved = {}

    def _in_cache_dir(self, real_path):
        """Whether ``real_path`` (a real path) is in the cache directory.

        Compared by the identity of the parent directory, not its name: a
        bind mount gives one directory two real paths.
        """
        parent = os.path.dirname(real_path)
        if parent == self.real_cache_dir:
            return True
        if parent not in self._parent_identities:
            self._parent_identities[parent] = _identity(parent)
        identity = self._parent_identities[parent]
        return identity is not None and identity == self.cache_dir_identity

    def _resolve(self, path):
        """Return the stat (following symlinks) and real path of ``path``.

        (None, None) if it is not there; raises OSError when it cannot be
        stat'ed. Each path, and the real path of each directory, is
        resolved once per read: many disks share a backing file.
        """
        resolved = self._resolved.get(path)
        if resolved is None:
            resolved = self._resolved[path] = self._resolve_now(path)
        return resolved

    def _resolve_now(self, path):
        try:
            st = os.lstat(path)
        except OSError as e:
            if e.errno in _GONE:
                return None, None
            raise
        head, tail = os.path.split(path)
        if stat.S_ISLNK(st.st_mode) or tail in ('', '.', '..'):
            st = _stat(path)
            return st, None if st is None else os.path.realpath(path)
        real_head = self._real_dirs.get(head)
        if real_head is None:
            # With a trailing separator, to be joined by concatenation.
            real_head = self._real_dirs[head] = os.path.join(
                os.path.realpath(head), '')
        return st, real_head + tail

    def read(self, directories):
        """Read _InstanceDirectory entries; return {path: _Directory}.

        Directories that are gone meanwhile are left out.
        """
        found = {}
        links = []
        for instance_directory in directories:
            path = instance_directory.path
            signature, stats = _directory_state(instance_directory)
            directory = _Directory(signature=signature)
            try:
                names = os.listdir(path)
            except OSError as e:
                if e.errno in _GONE:
                    continue
                directory.doubt(path, 'cannot list instance directory: %s' %
                                e.strerror)
                found[path] = directory
                continue
            found[path] = directory
            if instance_directory.real_path is not None:
                self._real_dirs[path] = instance_directory.real_path + os.sep
            links.extend(self._read_directory(directory, path, set(names),
                                              stats))
        self._follow_chains(links)
        return found

    def unchanged(self, directory):
        """Whether the inputs of ``directory`` are as they were read."""
        try:
            for kind, path, was in directory.inputs:
                if kind == _READ:
                    st = _stat(path)
                    if st is None or _version(st) != was:
                        return False
                elif kind == _RESOLVED:
                    st, real_path = self._resolve(path)
                    if st is None or (real_path,
                                      stat.S_IFMT(st.st_mode)) != was:
                        return False
                elif os.path.realpath(path) != was:
                    return False
        except OSError:
            return False
        return True

    def _read_directory(self, directory, path, names, stats):
        formats = {}
        if DISK_INFO in names:
            formats = self._read_disk_info(directory, path,
                                           stats[DISK_INFO])
        if LIBVIRT_XML in names:
            self._read_libvirt_xml(directory, os.path.join(path, LIBVIRT_XML),
                                   stats[LIBVIRT_XML])
        if formats is None:
            # Which files disk.info names as disks is unknown: every file
            # of the directory is read as one, in the format its header
            # shows. That keeps whatever nova could read them as.
            formats = {}
            candidates = names - {DISK_INFO, LIBVIRT_XML}
        else:
            candidates = {name for name in names
                          if _DISK_NAME.fullmatch(name) or name in formats}
        links = []
        for name in sorted(candidates):
            disk = path + os.sep + name
            if name in formats and formats[name] is None:
                directory.doubt(disk, 'disk.info records conflicting '
                                'formats for this disk')
                continue
            link = self._first_link(directory, disk, formats.get(name))
            if link is not None:
                links.append(link)
        return links

    def _read_disk_info(self, directory, path, st):
        """The formats disk.info records; None if it cannot be read."""
        disk_info = os.path.join(path, DISK_INFO)
        try:
            formats = self.parsed_files.read(
                disk_info, st, lambda data: parse_disk_info(data, path))
        except (OSError, ValueError) as e:
            directory.local_doubt(
                disk_info, 'cannot read disk.info: %s; the disks of its '
                'directory are read by their headers' % e)
            return None
        return {} if formats is None else formats

    def _read_libvirt_xml(self, directory, path, st):
        try:
            metadata = self.parsed_files.read(path, st, parse_libvirt_xml)
        except (OSError, ValueError) as e:
            directory.doubt(path, 'cannot read libvirt.xml: %s' % e)
            return
        if metadata is not None:
            self._metadata_references(directory, metadata, path)

    @staticmethod
    def _metadata_references(directory, metadata, source):
        directory.metadata.append((metadata, source))

    def read_domains(self, domains):
        """Return a _Directory of evidence for each of ``domains``."""
        directories = {}
        links = []
        for domain in domains:
            directory = _Directory()
            directories[domain] = directory
            if domain.metadata is not None:
                self._metadata_references(directory, domain.metadata,
                                          domain.label)
            for unknown in domain.unknown_disks:
                directory.doubt(domain.label, unknown)
            for disk in domain.disks:
                link = self._domain_disk_link(directory, domain, disk)
                if link is not None:
                    links.append(link)
        self._follow_chains(links)
        return directories

    def _domain_disk_link(self, directory, domain, disk):
        owner = '%s of %s' % (disk.role, domain.label)
        # A domain may use a cache file itself, e.g. as a raw disk; its name
        # is in use even while the file is missing.
        real_path = os.path.realpath(disk.path)
        if self._in_cache_dir(real_path):
            directory.references.append(facts.Reference(
                name=os.path.basename(real_path), source=disk.path,
                reason=owner))
        return self._first_link(directory, disk.path, disk.fmt, owner=owner)

    def _first_link(self, directory, disk, fmt=None, owner=None):
        """Return the link to inspect for ``disk``, None if it has none.

        ``fmt`` is the recorded format, None to detect it. A disk of a
        domain (with an ``owner``) may be a block device, as libvirt allows;
        in an instance directory only regular files are disks.
        """
        try:
            st, real_path = self._resolve(disk)
        except OSError as e:
            directory.doubt(disk, 'cannot stat disk: %s' % e.strerror)
            return None
        if st is None:
            return None
        if not (stat.S_ISREG(st.st_mode) or
                (owner is not None and stat.S_ISBLK(st.st_mode))):
            LOG.debug('Skipping %s: not a regular file', disk)
            return None
        if owner is None and self._in_cache_dir(real_path):
            # A symlink (or disk.info) makes a cache file the disk itself:
            # the guest writes to it (_domain_disk_link names a domain's).
            directory.inputs.append(
                (_RESOLVED, disk, (real_path, stat.S_IFMT(st.st_mode))))
            directory.references.append(facts.Reference(
                name=os.path.basename(real_path), source=disk,
                chain=(disk, real_path), reason='disk %s' % disk))
        if fmt is None or inspect.has_backing(fmt):
            directory.read(disk, st)
        if fmt is None:
            try:
                fmt = self.inspector.detect_format(disk)
            except inspect.InspectError as e:
                if _exists(disk):
                    directory.doubt(disk, 'cannot detect the format: %s' %
                                    e.message)
                return None
        if not inspect.has_backing(fmt):
            return None
        return _Link(directory=directory, disk=disk, path=disk,
                     real_path=real_path, fmt=fmt, chain=(disk,),
                     seen=frozenset([real_path]), owner=owner)

    def _follow_chains(self, links):
        # Level by level, so that each level's inspections run in the pool.
        pending = links
        while pending:
            batch = {}
            for link in pending:
                if (link.real_path, link.fmt) not in self._inspected:
                    batch.setdefault(link.real_path, link.fmt)
            for path, result in self.inspector.inspect_many(
                    batch.items()).items():
                self._inspected[(path, batch[path])] = result
            waiting = []
            for link in pending:
                result = self._inspected.get((link.real_path, link.fmt))
                if result is None:
                    # The same file read in another format: next round.
                    waiting.append(link)
                    continue
                next_link = self._next_link(link, result)
                if next_link is not None:
                    waiting.append(next_link)
            pending = waiting

    def _reference(self, link, name, chain, reason):
        if link.owner is not None:
            reason = '%s (%s)' % (reason, link.owner)
        link.directory.references.append(facts.Reference(
            name=name, source=link.disk, chain=chain, reason=reason))

    def _backing_not_found(self, link, chain, path):
        # nova re-roots a backing file by its name into the current cache
        # directory (instances_path may have moved), and hard reboot brings
        # a missing one back from there, so the name is what is in use.
        # Whether the name is in the cache changes from pass to pass.
        link.directory.carried = False
        name = os.path.basename(path)
        if name not in self.cache_names and not self._in_cache_dir(
                os.path.realpath(path)):
            LOG.debug('Backing file %s of %s does not exist', path,
                      link.disk)
            return
        self._reference(
            link, name, chain + (os.path.join(self.cache_dir, name),),
            'backing chain of %s (recorded backing file %s not found)' %
            (link.disk, path))

    def _data_file(self, link, name):
        # The guest's data lives in that file: it is used as much as the
        # backing chain, though it has no chain of its own.
        if _has_protocol(name):
            link.directory.doubt(link.disk, 'data file %r of %s is not a '
                                 'local file' % (name, link.path))
            return
        path = os.path.join(os.path.dirname(link.path), name)
        real_path = os.path.realpath(path)
        link.directory.inputs.append((_REAL_PATH, path, real_path))
        if self._in_cache_dir(real_path):
            self._reference(link, os.path.basename(real_path),
                            link.chain + (real_path,),
                            'data file of %s' % link.disk)

    def _next_link(self, link, result):
        """Record what ``link`` leads to; return the next link to inspect."""
        directory = link.directory
        if isinstance(result, inspect.InspectError):
            if _exists(link.path):
                directory.doubt(link.disk, 'cannot inspect %s: %s' %
                                (link.path, result.message))
            elif len(link.chain) > 1 and not self._in_cache_dir(
                    link.real_path):
                # Deleted since its parent named it; one in the cache
                # directory was already recorded then.
                self._backing_not_found(link, link.chain[:-1], link.path)
            return None
        if result.data_file is not None:
            self._data_file(link, result.data_file)
        backing = result.backing_file
        if backing is None:
            return None
        if backing.startswith('file:'):
            backing = backing[len('file:'):]
        if _has_protocol(backing):
            directory.doubt(link.disk, 'backing file %r of %s is not a '
                            'local file' % (backing, link.path))
            return None
        path = os.path.join(os.path.dirname(link.path), backing)
        try:
            st, real_path = self._resolve(path)
        except OSError as e:
            directory.doubt(link.disk, 'cannot stat backing file %s: %s' %
                            (path, e.strerror))
            return None
        if st is None:
            self._backing_not_found(link, link.chain, path)
            return None
        directory.inputs.append(
            (_RESOLVED, path, (real_path, stat.S_IFMT(st.st_mode))))
        if real_path in link.seen:
            directory.doubt(link.disk, 'backing chain loops at %s' % path)
            return None
        chain = link.chain + (real_path,)
        if self._in_cache_dir(real_path):
            self._reference(link, os.path.basename(real_path), chain,
                            'backing chain of %s' % link.disk)
        if len(chain) >= MAX_CHAIN_LENGTH:
            directory.doubt(link.disk, 'backing chain longer than %d files' %
                            MAX_CHAIN_LENGTH)
            return None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            directory.doubt(link.disk, 'backing file %s is not a regular '
                            'file' % path)
            return None
        fmt = result.backing_format
        if fmt is None or inspect.has_backing(fmt):
            directory.read(path, st)
        if fmt is None:
            try:
                fmt = self.inspector.detect_format(path)
            except inspect.InspectError as e:
                directory.doubt(link.disk, 'cannot detect the format of '
                                'backing file %s: %s' % (path, e.message))
                return None
        if not inspect.has_backing(fmt):
            return None
        return _Link(directory=directory, disk=link.disk, path=path,
                     real_path=real_path, fmt=fmt, chain=chain,
                     seen=link.seen | {real_path}, owner=link.owner)


def _moved(before, after):
    """Whether a directory may have moved while listing ``before`` was
    listed and read, as listing ``after`` shows.

    Moved is an entry whose inode is under another name now, or one
    renamed away and back: its change time moved but not its modification
    time, which a change of its content moves too. A name is listed before
    it is stat'ed, so a directory renamed in between is in ``before``
    under neither name: the old one has no state (its stat failed) or the
    inode of a directory made in its place (nova's resize makes the new
    <uuid> right after renaming the old one to <uuid>_resize), and only
    ``after`` has the new one. Every inode ``before`` did not have counts
    as moved, then: a directory made meanwhile costs one more read.
    """
    if before is None or after is None:
        return before is not after
    if None in before.values():
        return True
    names = {state[0]: name for name, state in after.items() if state}
    if not names.keys() <= {state[0] for state in before.values()}:
        return True
    for name, (ino, mtime_ns, ctime_ns) in before.items():
        if names.get(ino, name) != name:
            return True
        now = after.get(name)
        if (now is not None and now[0] == ino and now[1] == mtime_ns
                and now[2] != ctime_ns):
            return True
    return False


class Inventory:
    """Finds the cache files in use, and re-checks one before its removal.

    ``excluded`` are directories under ``instances_path`` that are not
    instance directories (besides the cache directory and ``locks``).
    ``domain_source``, if given, lists the domains defined on the host: an
    object with a ``domains()`` method that returns Domains or raises
    DomainsUnavailable. It is asked again at every recheck. ``memory`` is
    the Memory of the previous passes, if any.
    """

    def __init__(self, instances_path, cache_dir, inspector, excluded=(),
                 domain_source=None, memory=None):
        self.instances_path = instances_path
        self.cache_dir = cache_dir
        self.inspector = inspector
        self.excluded = (cache_dir,
                         os.path.join(instances_path, LOCKS_DIR)) + tuple(
                             excluded)
        self.domain_source = domain_source
        self.memory = Memory() if memory is None else memory
        self._cache_names = CacheNames(())
        self._directories = {}
        self._domains = {}
        self._doubts = []
        self._lock = threading.Lock()

    def collect(self, cache_names):
        """Read every instance directory; return the facts.Usage.

        ``cache_names`` are the names in the cache directory, needed to
        expand name patterns (resized variants, ephemeral files).
        """
        with self._lock:
            self._cache_names = self.memory.cache_names_of(cache_names)
            self._directories = self._carried()
            self._domains = {}
            self.memory.parsed_files.new_pass()
            read = self._refresh(self._cache_names)
            self.memory.directories = self._directories
            if read:
                # Every disk was read or is known unchanged: what the
                # cache holds about others is of no more use. (Without a
                # read, what it holds about deleted disks waits for one.)
                self.inspector.keep(
                    was[:2] for directory in self._directories.values()
                    for kind, _path, was in directory.inputs
                    if kind == _READ)
            self.inspector.save(prune=read)
            usage = facts.Usage()
            for doubt in self._all_doubts(self._cache_names):
                usage.add_doubt(doubt)
            for directory in self._evidence():
                for reference in directory.all_references(self._cache_names):
                    usage.add_reference(reference)
            return usage

    def _carried(self):
        """The evidence of the last pass that may serve this one.

        What had doubts is read again (the cause may be gone), and nothing
        when the cache directory is another one.
        """
        key = (self.cache_dir, os.path.realpath(self.cache_dir),
               _identity(self.cache_dir))
        if key != self.memory.cache_dir_key:
            self.memory.cache_dir_key = key
            return {}
        return {path: directory
                for path, directory in self.memory.directories.items()
                if directory.carried and not directory.has_doubts}

    def instance_directories(self):
        """List the instance directories a pass reads, as paths."""
        with self._lock:
            return [d.path for d in self._list()[1]]

    def recheck(self, name):
        """Return (references, doubts) for cache file ``name`` right now.

        Meant to run under nova's lock for ``name``, just before removing
        it. Directories that are new or changed since the last collect or
        recheck are read again; the others cost three stats. The domains
        are listed again; those whose definition changed are read again.
        """
        return self.recheck_many([name])[name]

    def recheck_many(self, names):
        """Return {name: (references, doubts)} for cache files, right now.

        One recheck for them all: meant to run under nova's locks for all
        of ``names``.
        """
        with self._lock:
            cache_names = self._cache_names
            if not cache_names.names.issuperset(names):
                cache_names = CacheNames(cache_names.names.union(names))
            self._refresh(cache_names)
            self.inspector.save()
            found = {name: ([], []) for name in names}
            for directory in self._evidence():
                for reference in directory.all_references(cache_names):
                    if reference.name in found:
                        found[reference.name][0].append(reference)
            for doubt in self._all_doubts(cache_names):
                for name in (found if doubt.names is None else
                             [n for n in doubt.names if n in found]):
                    found[name][1].append(doubt)
            return found

    def _evidence(self):
        return list(self._directories.values()) + list(
            self._domains.values())

    def _all_doubts(self, cache_names):
        doubts = list(self._doubts)
        for directory in self._evidence():
            doubts.extend(directory.all_doubts(cache_names))
        return doubts

    def _refresh(self, cache_names):
        """Read what changed until no directory moves while it is read.

        A directory renamed while it is listed or read hides its disks
        from that read (nova renames <uuid> to <uuid>_resize, back again on
        a revert, and to <uuid>_del), so instances_path is listed before
        and after each read, and what moved meanwhile (see _moved) is read
        under its new name. If directories keep moving, nothing may be
        removed. Only when every directory of the listing was found as its
        evidence says, none is missing and no stat failed is instances_path
        not listed again: a directory renamed since it was checked still
        holds what its evidence says, under another name. Returns whether
        any directory was read.
        """
        listing, directories, doubts = self._list()
        for attempt in range(MAX_READS):
            read = self._read_changed(cache_names, directories, doubts)
            if not read and listing is not None and (
                    None not in listing.values()):
                return attempt > 0
            # The listing after this read is the one before the next.
            after, directories, doubts = self._list()
            if not _moved(listing, after):
                return True
            listing = after
        self._doubts.append(facts.Doubt(
            source=self.instances_path,
            message='instance directories kept changing while they were '
                    'read'))
        return True

    def _read_changed(self, cache_names, directories, doubts):
        """Read the ``directories`` (from _list) that changed.

        Returns whether any had to be read or a directory known before is
        missing from them.
        """
        self._doubts = list(doubts)
        reader = _Reader(self.inspector, self.cache_dir, cache_names,
                         self.memory.parsed_files)
        current = {}
        changed = []
        for directory in directories:
            known = self._directories.get(directory.path)
            if (known is not None and known.signature is not None and
                    known.signature == _directory_state(directory)[0] and
                    reader.unchanged(known)):
                current[directory.path] = known
            else:
                changed.append(directory)
        if changed:
            current.update(reader.read(changed))
            # In path order whatever was read again (_list's order), so
            # that the first of a file's references, which a report
            # shows, does not depend on it.
            current = dict(sorted(current.items()))
        missing = not self._directories.keys() <= current.keys()
        self._directories = current
        self._domains = self._refresh_domains(reader)
        return bool(changed) or missing

    def _refresh_domains(self, reader):
        """Read the domains that are new, changed or had doubts."""
        if self.domain_source is None:
            return {}
        try:
            domains = set(self.domain_source.domains())
        except DomainsUnavailable as e:
            self._doubts.append(facts.Doubt(source=e.source,
                                            message=e.message))
            return {}
        current = {domain: known
                   for domain, known in self._domains.items()
                   if domain in domains and not known.has_doubts}
        current.update(reader.read_domains(
            sorted(domains - set(current), key=lambda d: (d.name, d.uuid))))
        return current

    def _excluded_identities(self):
        identities = set()
        for path in self.excluded:
            try:
                st = _stat(path)
            except OSError:
                continue
            if st is not None:
                identities.add((st.st_dev, st.st_ino))
        return identities

    def _list(self):
        """List instances_path: return (listing, directories, doubts).

        ``listing`` has the inode, modification and change time of each
        entry by name (see _moved), without the directories a pass does
        not read: they change all the time; it is None when
        instances_path cannot be listed. ``directories`` are the instance
        directories, every directory not excluded, as _InstanceDirectory
        entries sorted by path; ``doubts`` say what could not be stat'ed.
        """
        doubts = []
        try:
            with os.scandir(self.instances_path) as iterator:
                entries = sorted(iterator, key=lambda entry: entry.name)
        except OSError as e:
            if e.errno not in _GONE:
                doubts.append(facts.Doubt(
                    source=self.instances_path,
                    message='cannot list instances path: %s' % e.strerror))
            return None, [], doubts
        excluded = self._excluded_identities()
        real_prefix = os.path.join(
            os.path.realpath(self.instances_path), '')
        listing = {}
        directories = []
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) not in excluded:
                    listing[entry.name] = (st.st_ino, st.st_mtime_ns,
                                           st.st_ctime_ns)
                symlink = stat.S_ISLNK(st.st_mode)
                if symlink:
                    st = entry.stat()
            except OSError as e:
                listing.setdefault(entry.name, None)
                if e.errno not in _GONE:
                    doubts.append(facts.Doubt(
                        source=entry.path,
                        message='cannot stat: %s' % e.strerror))
                continue
            if (stat.S_ISDIR(st.st_mode) and
                    (st.st_dev, st.st_ino) not in excluded):
                directories.append(_InstanceDirectory(
                    entry.path, st,
                    None if symlink else real_prefix + entry.name))
        return listing, directories, doubts
