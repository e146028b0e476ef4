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

This module lists the instance directories, and lists them again while
nova renames them under a pass, and asks the domain source; chains reads
what each directory and domain uses, and the evidence of the last pass
(evidence.Memory) spares reading what did not change.
"""

import os
import stat
import threading

from cachekeeper.cache import chains
from cachekeeper.cache import domains
from cachekeeper.cache import evidence
from cachekeeper.cache import facts
from cachekeeper.cache import locks
from cachekeeper.cache import names
from cachekeeper import progress as pass_progress

# Reads of the instance directories before a pass gives up on them standing
# still long enough to be read.
MAX_READS = 5


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
    by_inode = {state[0]: name for name, state in after.items() if state}
    if not by_inode.keys() <= {state[0] for state in before.values()}:
        return True
    for name, (ino, mtime_ns, ctime_ns) in before.items():
        if by_inode.get(ino, name) != name:
            return True
        now = after.get(name)
        if (now is not None and now[0] == ino and now[1] == mtime_ns and
                now[2] != ctime_ns):
            return True
    return False


class Inventory:
    """Finds the cache files in use, and re-checks one before its removal.

    ``excluded`` are directories under ``instances_path`` that are not
    instance directories (besides the cache directory and ``locks``).
    ``domain_source``, if given, lists the domains defined on the host: an
    object with a ``domains()`` method that returns domains.Domain objects
    or raises domains.DomainsUnavailable. It is asked again at every recheck.
    ``memory`` is the evidence.Memory of the previous passes, if any.
    ``progress`` (a progress.PassProgress) is told each directory and file
    read.
    """

    def __init__(self, instances_path, cache_dir, inspector, excluded=(),
                 domain_source=None, memory=None, progress=None):
        self.instances_path = instances_path
        self.cache_dir = cache_dir
        self.inspector = inspector
        self.excluded = (cache_dir, locks.locks_dir(instances_path)) + tuple(
            excluded)
        self.domain_source = domain_source
        self.memory = evidence.Memory() if memory is None else memory
        self.progress = (pass_progress.PassProgress() if progress is None
                         else progress)
        self._cache_names = names.CacheNames(())
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
                    identity for directory in self._directories.values()
                    for identity in directory.identities_read())
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
               evidence.identity(self.cache_dir))
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

    def recheck_many(self, file_names):
        """Return {name: (references, doubts)} for cache files, right now.

        One recheck for them all: meant to run under nova's locks for all
        of ``file_names``.
        """
        with self._lock:
            cache_names = self._cache_names
            if not cache_names.names.issuperset(file_names):
                cache_names = names.CacheNames(
                    cache_names.names.union(file_names))
            self._refresh(cache_names)
            self.inspector.save()
            found = {name: ([], []) for name in file_names}
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
        reader = chains.Reader(self.inspector, self.cache_dir, cache_names,
                               self.memory.parsed_files, self.progress)
        current = {}
        changed = []
        for directory in directories:
            known = self._directories.get(directory.path)
            if (known is not None and known.signature is not None and
                    known.signature == evidence.directory_state(
                        directory)[0] and
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
            defined = set(self.domain_source.domains())
        except domains.DomainsUnavailable as e:
            self._doubts.append(facts.Doubt(source=e.source,
                                            message=e.message))
            return {}
        current = {domain: known
                   for domain, known in self._domains.items()
                   if domain in defined and not known.has_doubts}
        current.update(reader.read_domains(
            sorted(defined - set(current), key=lambda d: (d.name, d.uuid))))
        return current

    def _excluded_identities(self):
        identities = set()
        for path in self.excluded:
            try:
                st = evidence.stat_or_none(path)
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
        directories, every directory not excluded, as
        evidence.InstanceDirectory entries sorted by path; ``doubts`` say
        what could not be stat'ed.
        """
        doubts = []
        self.progress.file(self.instances_path)
        try:
            with os.scandir(self.instances_path) as iterator:
                entries = sorted(iterator, key=lambda entry: entry.name)
        except OSError as e:
            if e.errno not in evidence.GONE:
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
                if e.errno not in evidence.GONE:
                    doubts.append(facts.Doubt(
                        source=entry.path,
                        message='cannot stat: %s' % e.strerror))
                continue
            if (stat.S_ISDIR(st.st_mode) and
                    (st.st_dev, st.st_ino) not in excluded):
                directories.append(evidence.InstanceDirectory(
                    entry.path, st,
                    None if symlink else real_prefix + entry.name))
        return listing, directories, doubts
