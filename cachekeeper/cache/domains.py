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

"""The domains libvirt has defined on this host, as evidence of use.

Optional (``[inventory] libvirt_uri``): a read-only connection lists every
defined domain, running or shut off, and the inventory reads the disks of
each as it reads an instance directory's. libvirt-python is imported only
when a URI is configured. The model of a domain (Domain, DomainDisk) and
the parser of its definition are here too, whatever lists the domains:
the inventory reads Domains, and chains follow their disks.
"""

import dataclasses
import os
import sys
import threading

from cachekeeper.cache import metadata
from cachekeeper.cache import names
from cachekeeper import masking

# How long a listing of the domains may take. libvirt calls block without
# a timeout of their own, and a pass may wait for them under nova's lock.
LIBVIRT_TIMEOUT = 60


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
    # A string: in the class body the field's name hides the module's.
    metadata: 'metadata.NovaMetadata' = None

    @property
    def label(self):
        return 'libvirt domain %s' % self.name


class DomainsUnavailable(Exception):
    """The domain source cannot say which domains are defined."""

    def __init__(self, source, message):
        # Both may quote the connection URI (libvirt's errors do), and
        # they reach logs, reports and cache status.
        source, message = masking.mask(source), masking.mask(message)
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
    domain = metadata.parse_xml(data)
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
                  metadata=metadata.nova_metadata(domain))


def _import_libvirt(uri):
    try:
        import libvirt
    except ImportError:
        raise DomainsUnavailable(
            _source(uri), '[inventory] libvirt_uri is set, but the libvirt '
            'Python module is not installed (libvirt-python)')
    # Without a handler of its own, libvirt prints every error on stderr;
    # each one reaches the caller as an exception anyway.
    libvirt.registerErrorHandler(lambda context, error: None, None)
    return libvirt


def _source(uri):
    return 'libvirt %s' % uri


def _os_threading():
    """The threading module of OS threads, even under eventlet.

    A libvirt call blocks in C: only an OS thread can be given up on.
    """
    patcher = sys.modules.get('eventlet.patcher')
    if patcher is not None and patcher.is_monkey_patched('thread'):
        return patcher.original('threading')
    return threading


class LibvirtSource:
    """Lists the domains of one libvirt connection URI."""

    def __init__(self, uri, timeout=LIBVIRT_TIMEOUT):
        self.uri = uri
        self.timeout = timeout

    @classmethod
    def from_conf(cls, conf):
        """The source [inventory] libvirt_uri names, None if it is empty."""
        uri = conf.inventory.libvirt_uri
        return cls(uri) if uri else None

    def domains(self):
        """Return a Domain for each definition of each defined domain.

        A running domain may have a persistent definition for its next
        start that differs from the live one; both count. Raises
        DomainsUnavailable if libvirt cannot be asked or does not
        answer in time.
        """
        libvirt = _import_libvirt(self.uri)
        threads = _os_threading()
        done = threads.Event()
        outcome = {}

        def list_domains():
            try:
                outcome['domains'] = self._list(libvirt)
            except Exception as e:
                # Raised again in the caller's thread.
                outcome['error'] = e
            finally:
                done.set()

        threads.Thread(target=list_domains, name='libvirt-domains',
                       daemon=True).start()
        if not done.wait(self.timeout):
            # The thread stays blocked until libvirt answers or hangs up.
            raise DomainsUnavailable(
                _source(self.uri), 'no answer within %g s' % self.timeout)
        error = outcome.get('error')
        if isinstance(error, libvirt.libvirtError):
            raise DomainsUnavailable(
                _source(self.uri), error.get_error_message() or str(error))
        if isinstance(error, ValueError):
            raise DomainsUnavailable(_source(self.uri), str(error))
        if error is not None:
            raise error
        return outcome['domains']

    def _list(self, libvirt):
        connection = libvirt.openReadOnly(self.uri)
        try:
            domains = []
            for domain in connection.listAllDomains(0):
                try:
                    descriptions = [domain.XMLDesc(0)]
                    if domain.isActive() and domain.isPersistent():
                        descriptions.append(domain.XMLDesc(
                            libvirt.VIR_DOMAIN_XML_INACTIVE))
                except libvirt.libvirtError as e:
                    if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        # Undefined since it was listed: it uses nothing.
                        continue
                    raise
                for description in descriptions:
                    try:
                        domains.append(parse_domain_xml(description))
                    except ValueError as e:
                        raise ValueError('cannot read the definition of '
                                         'domain %s: %s' % (domain.name(), e))
            # A running domain's two definitions are often the same.
            return list(dict.fromkeys(domains))
        finally:
            connection.close()


@dataclasses.dataclass(frozen=True)
class MissingDisk:
    """A file a defined domain names that does not exist."""

    domain: str
    role: str
    path: str


@dataclasses.dataclass(frozen=True)
class Orphans:
    """Instance directories and domains that do not match up.

    ``directories`` are instance directories that no defined domain uses;
    ``missing_disks`` the files defined domains name that are not there.
    """

    directories: tuple = ()
    missing_disks: tuple = ()


def orphans(directories, domains):
    """Match instance directories and domains; return the Orphans.

    A directory is used by a domain whose UUID is its name (nova names
    instance directories after the instance, and ``<uuid>_resize`` during
    a resize) or whose disks are in it.
    """
    uuids = set()
    disk_directories = set()
    missing = []
    for domain in domains:
        uuids.add(domain.uuid)
        for disk in domain.disks:
            disk_directories.add(os.path.dirname(os.path.realpath(disk.path)))
            if not os.path.exists(disk.path):
                missing.append(MissingDisk(domain=domain.name, role=disk.role,
                                           path=disk.path))
    unused = []
    for directory in directories:
        name = os.path.basename(directory)
        if name.endswith(names.RESIZE_SUFFIX):
            name = name[:-len(names.RESIZE_SUFFIX)]
        if (name not in uuids and
                os.path.realpath(directory) not in disk_directories):
            unused.append(directory)
    return Orphans(directories=tuple(unused),
                   missing_disks=tuple(sorted(set(missing),
                                              key=dataclasses.astuple)))
