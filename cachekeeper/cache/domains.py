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
when a URI is configured.
"""

import dataclasses
import os
import sys
import threading

from cachekeeper.cache import inventory

# How long a listing of the domains may take. libvirt calls block without
# a timeout of their own, and a pass may wait for them under nova's lock.
LIBVIRT_TIMEOUT = 60

# A _resize directory belongs to the instance being resized.
_RESIZE_SUFFIX = '_resize'


def _import_libvirt(uri):
    try:
        import libvirt
    except ImportError:
        raise inventory.DomainsUnavailable(
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
        inventory.DomainsUnavailable if libvirt cannot be asked or does not
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
            raise inventory.DomainsUnavailable(
                _source(self.uri), 'no answer within %g s' % self.timeout)
        error = outcome.get('error')
        if isinstance(error, libvirt.libvirtError):
            raise inventory.DomainsUnavailable(
                _source(self.uri), error.get_error_message() or str(error))
        if isinstance(error, ValueError):
            raise inventory.DomainsUnavailable(_source(self.uri), str(error))
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
                        domains.append(inventory.parse_domain_xml(description))
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
        if name.endswith(_RESIZE_SUFFIX):
            name = name[:-len(_RESIZE_SUFFIX)]
        if (name not in uuids and
                os.path.realpath(directory) not in disk_directories):
            unused.append(directory)
    return Orphans(directories=tuple(unused),
                   missing_disks=tuple(sorted(set(missing),
                                              key=dataclasses.astuple)))
