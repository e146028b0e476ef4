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

    A FIFO or device is refused without waiting on it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError('not a regular file')
        with open(fd, 'rb', closefd=False) as f:
            data = f.read(MAX_METADATA_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_METADATA_BYTES:
        raise ValueError('larger than %d bytes' % MAX_METADATA_BYTES)
    return data


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
    wins. A name recorded with conflicting formats maps to None. Raises
    ValueError if the content is not nova's JSON object.
    """
    recorded = json.loads(data)
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


def cache_names_for(metadata, cache_names):
    """Yield (name, reason) for the cache files nova metadata points to.

    The original of the root image is named whether or not it is in
    ``cache_names``; its resized variants, and the ephemeral files whose
    file system hash is not recorded, are found among ``cache_names``.
    """
    if metadata.root_image:
        original = hashlib.sha1(metadata.root_image.encode('utf-8'),
                                usedforsecurity=False).hexdigest()
        variant = re.compile(re.escape(original) + '_(sm|[0-9]+)')
        reason = 'root image %s' % metadata.root_image
        yield original, reason
        for name in sorted(cache_names):
            if variant.fullmatch(name):
                yield name, reason
    if metadata.swap_mb > 0:
        yield 'swap_%d' % metadata.swap_mb, (
            'flavor swap of %d MiB' % metadata.swap_mb)
    if metadata.ephemeral_gb > 0:
        prefix = 'ephemeral_%d_' % metadata.ephemeral_gb
        for name in sorted(cache_names):
            if name.startswith(prefix):
                yield name, (
                    'flavor ephemeral disk of %d GiB' % metadata.ephemeral_gb)


@dataclasses.dataclass
class _Directory:
    """What one instance directory uses, and how it looked when read.

    ``signature`` is None when the directory must be read again at the next
    recheck whatever its times say. The evidence of a libvirt domain is
    kept in one too, without a signature: it is keyed by its definition.
    """

    signature: tuple = None
    references: list = dataclasses.field(default_factory=list)
    doubts: list = dataclasses.field(default_factory=list)

    def doubt(self, source, message):
        LOG.debug('Doubt about %s: %s', source, message)
        self.doubts.append(facts.Doubt(source=source, message=message))


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


def _signature(path):
    """Identify the state of an instance directory and its metadata files.

    None when the directory or its metadata changed too recently for the
    times to tell a later change apart, or cannot be stat'ed.
    """
    horizon = time.time_ns() - RACY_SECONDS * 10 ** 9
    parts = []
    for part in (path, os.path.join(path, DISK_INFO),
                 os.path.join(path, LIBVIRT_XML)):
        try:
            st = _stat(part)
        except OSError:
            return None
        if st is None:
            if part == path:
                return None
            parts.append(None)
            continue
        if st.st_mtime_ns > horizon:
            return None
        parts.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                      st.st_ctime_ns))
    return tuple(parts)


class _Reader:
    """Reads instance directories; inspects each file once per read."""

    def __init__(self, inspector, cache_dir, cache_names):
        self.inspector = inspector
        self.cache_dir = cache_dir
        self.real_cache_dir = os.path.realpath(cache_dir)
        self.cache_dir_identity = _identity(cache_dir)
        self.cache_names = cache_names
        self._inspected = {}
        self._parent_identities = {}

    def _in_cache_dir(self, path):
        """Whether ``path`` names an entry of the cache directory.

        Compared by the identity of the parent directory, not its name: a
        bind mount gives one directory two real paths.
        """
        parent = os.path.dirname(os.path.realpath(path))
        if parent == self.real_cache_dir:
            return True
        if parent not in self._parent_identities:
            self._parent_identities[parent] = _identity(parent)
        identity = self._parent_identities[parent]
        return identity is not None and identity == self.cache_dir_identity

    def read(self, paths):
        """Return {path: _Directory} for the directories still there."""
        directories = {}
        links = []
        for path in paths:
            directory = _Directory(signature=_signature(path))
            try:
                names = os.listdir(path)
            except OSError as e:
                if e.errno in _GONE:
                    continue
                directory.doubt(path, 'cannot list instance directory: %s' %
                                e.strerror)
                directories[path] = directory
                continue
            directories[path] = directory
            links.extend(self._read_directory(directory, path, set(names)))
        self._follow_chains(links)
        return directories

    def _read_directory(self, directory, path, names):
        formats = {}
        if DISK_INFO in names:
            formats = self._read_disk_info(directory, path)
        if LIBVIRT_XML in names:
            self._read_libvirt_xml(directory, os.path.join(path, LIBVIRT_XML))
        links = []
        for name in sorted(names):
            if not (_DISK_NAME.fullmatch(name) or name in formats):
                continue
            disk = os.path.join(path, name)
            if name in formats and formats[name] is None:
                directory.doubt(disk, 'disk.info records conflicting '
                                'formats for this disk')
                continue
            link = self._first_link(directory, disk, formats.get(name))
            if link is not None:
                links.append(link)
        return links

    def _read_disk_info(self, directory, path):
        disk_info = os.path.join(path, DISK_INFO)
        try:
            data = _read_small_file(disk_info)
            return parse_disk_info(data, path) if data is not None else {}
        except (OSError, ValueError) as e:
            directory.doubt(disk_info, 'cannot read disk.info: %s' % e)
            return {}

    def _read_libvirt_xml(self, directory, path):
        try:
            data = _read_small_file(path)
            metadata = parse_libvirt_xml(data) if data is not None else None
        except (OSError, ValueError) as e:
            directory.doubt(path, 'cannot read libvirt.xml: %s' % e)
            return
        if metadata is not None:
            self._metadata_references(directory, metadata, path)

    def _metadata_references(self, directory, metadata, source):
        for name, reason in cache_names_for(metadata, self.cache_names):
            directory.references.append(facts.Reference(
                name=name, source=source,
                reason='%s in %s' % (reason, source)))

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
            st = _stat(disk)
        except OSError as e:
            directory.doubt(disk, 'cannot stat disk: %s' % e.strerror)
            return None
        if st is None:
            return None
        if not (stat.S_ISREG(st.st_mode) or
                (owner is not None and stat.S_ISBLK(st.st_mode))):
            LOG.debug('Skipping %s: not a regular file', disk)
            return None
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
        real_path = os.path.realpath(disk)
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
        name = os.path.basename(path)
        if name not in self.cache_names and not self._in_cache_dir(path):
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
        real_path = os.path.realpath(
            os.path.join(os.path.dirname(link.path), name))
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
            st = _stat(path)
        except OSError as e:
            directory.doubt(link.disk, 'cannot stat backing file %s: %s' %
                            (path, e.strerror))
            return None
        if st is None:
            self._backing_not_found(link, link.chain, path)
            return None
        real_path = os.path.realpath(path)
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


class Inventory:
    """Finds the cache files in use, and re-checks one before its removal.

    ``excluded`` are directories under ``instances_path`` that are not
    instance directories (besides the cache directory and ``locks``).
    ``domain_source``, if given, lists the domains defined on the host: an
    object with a ``domains()`` method that returns Domains or raises
    DomainsUnavailable. It is asked again at every recheck.
    """

    def __init__(self, instances_path, cache_dir, inspector, excluded=(),
                 domain_source=None):
        self.instances_path = instances_path
        self.cache_dir = cache_dir
        self.inspector = inspector
        self.excluded = (cache_dir,
                         os.path.join(instances_path, LOCKS_DIR)) + tuple(
                             excluded)
        self.domain_source = domain_source
        self._cache_names = frozenset()
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
            self._cache_names = frozenset(cache_names)
            self._directories = {}
            self._domains = {}
            self._refresh(self._cache_names)
            usage = facts.Usage()
            for doubt in self._all_doubts():
                usage.add_doubt(doubt)
            for directory in self._evidence():
                for reference in directory.references:
                    usage.add_reference(reference)
            return usage

    def instance_directories(self):
        """List the instance directories a pass reads, as paths."""
        with self._lock:
            return self._instance_directories()

    def recheck(self, name):
        """Return (references, doubts) for cache file ``name`` right now.

        Meant to run under nova's lock for ``name``, just before removing
        it. Directories that are new or changed since the last collect or
        recheck are read again; the others cost a stat. The domains are
        listed again; those whose definition changed are read again.
        """
        with self._lock:
            self._refresh(self._cache_names | {name})
            references = [reference
                          for directory in self._evidence()
                          for reference in directory.references
                          if reference.name == name]
            doubts = [doubt for doubt in self._all_doubts()
                      if doubt.names is None or name in doubt.names]
            return references, doubts

    def _evidence(self):
        return list(self._directories.values()) + list(
            self._domains.values())

    def _all_doubts(self):
        doubts = list(self._doubts)
        for directory in self._evidence():
            doubts.extend(directory.doubts)
        return doubts

    def _refresh(self, cache_names):
        """Read what changed until the instance directories stand still.

        A directory renamed while it is read hides its disks from that
        read (nova renames <uuid> to <uuid>_resize, back again on a revert,
        and to <uuid>_del), so instances_path is listed before and after
        each read, and what changed meanwhile is read again. If it never
        stands still, nothing may be removed.
        """
        for _attempt in range(MAX_READS):
            listing = self._listing()
            self._read_changed(cache_names)
            if self._listing() == listing:
                return
        self._doubts.append(facts.Doubt(
            source=self.instances_path,
            message='instance directories kept changing while they were '
                    'read'))

    def _listing(self):
        """Inode and change time of each entry of instances_path by name.

        The change time moves when an entry is renamed, even back to its
        old name. The directories a pass does not read are left out: they
        change all the time. None when instances_path cannot be listed.
        """
        excluded = self._excluded_identities()
        listing = {}
        try:
            with os.scandir(self.instances_path) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        listing[entry.name] = None
                        continue
                    if (st.st_dev, st.st_ino) not in excluded:
                        listing[entry.name] = (st.st_ino, st.st_ctime_ns)
        except OSError:
            return None
        return listing

    def _read_changed(self, cache_names):
        self._doubts = []
        current = {}
        changed = []
        for path in self._instance_directories():
            known = self._directories.get(path)
            if (known is not None and known.signature is not None and
                    known.signature == _signature(path)):
                current[path] = known
            else:
                changed.append(path)
        reader = _Reader(self.inspector, self.cache_dir, cache_names)
        current.update(reader.read(changed))
        self._directories = current
        self._domains = self._refresh_domains(reader)

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
                   if domain in domains and not known.doubts}
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

    def _instance_directories(self):
        """List the instance directories: every directory not excluded."""
        try:
            names = os.listdir(self.instances_path)
        except OSError as e:
            if e.errno in _GONE:
                return []
            self._doubts.append(facts.Doubt(
                source=self.instances_path,
                message='cannot list instances path: %s' % e.strerror))
            return []
        excluded = self._excluded_identities()
        paths = []
        for name in sorted(names):
            path = os.path.join(self.instances_path, name)
            try:
                st = _stat(path)
            except OSError as e:
                self._doubts.append(facts.Doubt(
                    source=path, message='cannot stat: %s' % e.strerror))
                continue
            if (st is not None and stat.S_ISDIR(st.st_mode) and
                    (st.st_dev, st.st_ino) not in excluded):
                paths.append(path)
        return paths
