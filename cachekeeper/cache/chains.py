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

"""The backing chains of disks: which cache files each disk reads through.

A qcow2 disk names its backing file in its header, that file may name
another, and a guest reads through all of them: every cache file in the
chain is in use. Reader walks the chains of the disks of instance
directories (and, with their disk.info and libvirt.xml, their nova
metadata) and of libvirt domains, level by level so that the inspections
of one level run in the inspector's pool, and records what it found in an
evidence.Directory. A file's format is trusted as recorded (disk.info, the
domain definition, the header above it); only a file without one has its
format detected, and only a format that can have a backing file is
inspected: a raw disk whose guest wrote a qcow2 header is never read as
one. Whatever cannot be read or detected is a doubt about the disk; a
file that vanished meanwhile uses nothing, but a backing file named and
missing keeps its name in use (nova brings it back by that name).
"""

import dataclasses
import os
import stat

from oslo_log import log as logging

from cachekeeper.cache import evidence
from cachekeeper.cache import facts
from cachekeeper.cache import inspect
from cachekeeper.cache import metadata
from cachekeeper.cache import names

LOG = logging.getLogger(__name__)

# nova builds chains of two or three files; a longer one is broken or built
# to make the pass work hard.
MAX_CHAIN_LENGTH = 16


def _exists(path):
    try:
        return evidence.stat_or_none(path) is not None
    except OSError:
        return True


def _has_protocol(name):
    # qemu reads "proto:..." as a protocol when the colon comes before any
    # slash (block.c path_has_protocol), e.g. json:{...} or nbd://host.
    colon = name.find(':')
    slash = name.find('/')
    return colon > 0 and (slash < 0 or colon < slash)


@dataclasses.dataclass(frozen=True)
class _Link:
    """One element of a backing chain, still to be inspected.

    ``path`` is the element as named (a relative backing name resolves
    against its directory, as qemu does), ``chain`` the disk and the real
    paths of the elements down to this one, ``seen`` the real paths of all
    of them. ``owner`` names what uses a disk outside an instance
    directory (e.g. 'disk vda of libvirt domain instance-00000001').
    """

    directory: evidence.Directory
    disk: str
    path: str
    real_path: str
    fmt: str
    chain: tuple
    seen: frozenset
    owner: str = None


class Reader:
    """Reads instance directories and domains; inspects each file once per
    read.

    ``cache_names`` are the names.CacheNames of the cache directory, by
    which a missing backing file is recognised; ``parsed_files`` the
    evidence.ParsedFiles of the metadata files. ``progress`` (a
    progress.PassProgress) is told each directory and file read.
    """

    def __init__(self, inspector, cache_dir, cache_names, parsed_files,
                 progress):
        self.inspector = inspector
        self.progress = progress
        self.cache_dir = cache_dir
        self.real_cache_dir = os.path.realpath(cache_dir)
        self.cache_dir_identity = evidence.identity(cache_dir)
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
            self._parent_identities[parent] = evidence.identity(parent)
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
            if e.errno in evidence.GONE:
                return None, None
            raise
        head, tail = os.path.split(path)
        if stat.S_ISLNK(st.st_mode) or tail in ('', '.', '..'):
            st = evidence.stat_or_none(path)
            return st, None if st is None else os.path.realpath(path)
        real_head = self._real_dirs.get(head)
        if real_head is None:
            # With a trailing separator, to be joined by concatenation.
            real_head = self._real_dirs[head] = os.path.join(
                os.path.realpath(head), '')
        return st, real_head + tail

    def read(self, directories):
        """Read evidence.InstanceDirectory entries; return
        {path: evidence.Directory}.

        Directories that are gone meanwhile are left out.
        """
        found = {}
        links = []
        for instance_directory in directories:
            path = instance_directory.path
            self.progress.file(path)
            signature, stats = evidence.directory_state(instance_directory)
            directory = evidence.Directory(signature=signature)
            try:
                entries = os.listdir(path)
            except OSError as e:
                if e.errno in evidence.GONE:
                    continue
                directory.doubt(path, 'cannot list instance directory: %s' %
                                e.strerror)
                found[path] = directory
                continue
            found[path] = directory
            if instance_directory.real_path is not None:
                self._real_dirs[path] = instance_directory.real_path + os.sep
            links.extend(self._read_directory(directory, path,
                                              set(entries), stats))
        self._follow_chains(links)
        return found

    def unchanged(self, directory):
        """Whether the inputs of ``directory`` are as they were read."""
        try:
            for kind, path, was in directory.inputs:
                if kind == evidence.READ:
                    st = evidence.stat_or_none(path)
                    if st is None or evidence.version(st) != was:
                        return False
                elif kind == evidence.RESOLVED:
                    st, real_path = self._resolve(path)
                    if st is None or evidence.resolution(
                            st, real_path) != was:
                        return False
                elif os.path.realpath(path) != was:
                    return False
        except OSError:
            return False
        return True

    def _read_directory(self, directory, path, entries, stats):
        formats = {}
        if names.DISK_INFO in entries:
            formats = self._read_disk_info(directory, path,
                                           stats[names.DISK_INFO])
        if names.LIBVIRT_XML in entries:
            self._read_libvirt_xml(
                directory, os.path.join(path, names.LIBVIRT_XML),
                stats[names.LIBVIRT_XML])
        if formats is None:
            # Which files disk.info names as disks is unknown: every file
            # of the directory is read as one, in the format its header
            # shows. That keeps whatever nova could read them as.
            formats = {}
            candidates = entries - {names.DISK_INFO, names.LIBVIRT_XML}
        else:
            candidates = {name for name in entries
                          if names.is_disk_name(name) or name in formats}
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
        disk_info = os.path.join(path, names.DISK_INFO)
        try:
            formats = self.parsed_files.read(
                disk_info, st,
                lambda data: metadata.parse_disk_info(data, path))
        except (OSError, ValueError) as e:
            directory.local_doubt(
                disk_info, 'cannot read disk.info: %s; the disks of its '
                'directory are read by their headers' % e)
            return None
        return {} if formats is None else formats

    def _read_libvirt_xml(self, directory, path, st):
        try:
            nova_metadata = self.parsed_files.read(
                path, st, metadata.parse_libvirt_xml)
        except (OSError, ValueError) as e:
            directory.doubt(path, 'cannot read libvirt.xml: %s' % e)
            return
        if nova_metadata is not None:
            directory.metadata.append((nova_metadata, path))

    def read_domains(self, domains):
        """Return an evidence.Directory for each of ``domains``."""
        directories = {}
        links = []
        for domain in domains:
            directory = evidence.Directory()
            directories[domain] = directory
            if domain.metadata is not None:
                directory.metadata.append((domain.metadata, domain.label))
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
        self.progress.file(disk)
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
            directory.resolved(disk, st, real_path)
            directory.references.append(facts.Reference(
                name=os.path.basename(real_path), source=disk,
                chain=(disk, real_path), reason='disk %s' % disk))
        fmt = self._format_to_follow(directory, disk, disk, st, fmt)
        if fmt is None:
            return None
        return _Link(directory=directory, disk=disk, path=disk,
                     real_path=real_path, fmt=fmt, chain=(disk,),
                     seen=frozenset([real_path]), owner=owner)

    def _format_to_follow(self, directory, disk, path, st, fmt):
        """Return the format to inspect ``path`` in, None to go no further.

        ``path`` is a file of the chain of ``disk`` (the disk itself at the
        top), ``st`` its stat and ``fmt`` the format recorded for it (by
        disk.info, the domain, the header of the file above), None if none
        was. The read is recorded when the format is unknown or can have a
        backing file: the file's content is then evidence. An unknown
        format is detected; one that cannot be is a doubt about the disk,
        unless the disk itself is gone meanwhile (it then uses nothing).
        None when the format has no backing file: the chain ends there.
        """
        if fmt is None or inspect.has_backing(fmt):
            directory.read(path, st)
        if fmt is None:
            try:
                fmt = self.inspector.detect_format(path)
            except inspect.InspectError as e:
                if path != disk or _exists(disk):
                    what = ('' if path == disk else
                            ' of backing file %s' % path)
                    directory.doubt(disk, 'cannot detect the format%s: %s'
                                    % (what, e.message))
                return None
        return fmt if inspect.has_backing(fmt) else None

    def _follow_chains(self, links):
        # Level by level, so that each level's inspections run in the pool.
        pending = links
        while pending:
            batch = {}
            for link in pending:
                if (link.real_path, link.fmt) not in self._inspected:
                    batch.setdefault(link.real_path, link.fmt)
            for path, result in self.inspector.inspect_many(
                    batch.items(), progress=self.progress).items():
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
        link.directory.resolved_real_path(path, real_path)
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
        self.progress.file(path)
        try:
            st, real_path = self._resolve(path)
        except OSError as e:
            directory.doubt(link.disk, 'cannot stat backing file %s: %s' %
                            (path, e.strerror))
            return None
        if st is None:
            self._backing_not_found(link, link.chain, path)
            return None
        directory.resolved(path, st, real_path)
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
        fmt = self._format_to_follow(directory, link.disk, path, st,
                                     result.backing_format)
        if fmt is None:
            return None
        return _Link(directory=directory, disk=link.disk, path=path,
                     real_path=real_path, fmt=fmt, chain=chain,
                     seen=link.seen | {real_path}, owner=link.owner)
