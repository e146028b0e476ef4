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

"""nova's storage registry: the hosts that share ``instances_path``.

At every image cache pass nova-compute records its host and the time in
``$instances_path/compute_nodes`` (JSON ``{host: unix time}``) while it
holds its external lock ``storage-registry-lock``
(``locks/nova-storage-registry-lock``). nova rewrites the file in place,
and when it cannot parse it starts again from ``{}``, which drops every
other host. cachekeeper reads the registry under the same lock at every
pass and registers its own host (``[DEFAULT] host``) by writing a
temporary file and renaming it over the registry while it holds the lock:
every other entry is kept, the file is never seen half written, and a
registry that cannot be parsed is left exactly as it is.

The rule for registered hosts
-----------------------------

cachekeeper cannot ask nova's database which instances a host has. It
reads instance directories instead, so it relies on this: a host registered
in ``$instances_path/compute_nodes`` is a host whose instances_path is this
directory (nova registers where its instances live), so its instance
directories are the ones the inventory reads here.

- Every registered host other than this one, whatever its timestamp, shares
  the image cache. A stale entry (older than nova's 24 hours) is a host that
  is unknown, not a host that is gone: nova drops it and then removes the
  files its instances use; cachekeeper keeps reading its instance
  directories like any other's, so they keep protecting their files.
- While the cache is shared, only the leader removes, and only through a
  coordination backend that reaches every host (see
  cachekeeper.coordination).
- Whatever cannot be read makes the hosts unknown, and then every file is
  one their instances could use: a registry that cannot be read or parsed,
  or that holds an entry that is not a host name with a time, makes the pass
  remove nothing (a facts.Doubt about every file) until it is repaired.
  cachekeeper does not rewrite it.
- A missing or empty registry (nova before its first pass, or bug 1252659)
  lists no host.

What this rule cannot see, and no registry can tell: hosts that use the
cache directory without being registered here, such as a ``_base`` mounted
into another host's own instances_path. Do not share a cache that way.
"""

import contextlib
import dataclasses
import json
import math
import os

from oslo_log import log as logging

from cachekeeper.cache import facts
from cachekeeper.cache import locks
from cachekeeper import smallfile

LOG = logging.getLogger(__name__)

REGISTRY_FILE = 'compute_nodes'
LOCK_NAME = 'storage-registry-lock'
# nova counts a host as a storage user for 24 hours after its last pass.
STALE_AFTER = 24 * 3600
# What a crashed writer leaves behind: only a writer that holds the lock
# has such a file, so any found while holding it is residue.
TEMP_PREFIX = '.compute_nodes.cachekeeper-'

# A registry lists a few hosts; anything much larger is not nova's.
MAX_REGISTRY_BYTES = 1024 * 1024


class RegistryError(Exception):
    """The registry cannot be read or parsed: the hosts are unknown."""


@dataclasses.dataclass(frozen=True)
class Registry:
    """What the registry said when it was read.

    ``hosts`` maps each registered host to the time it last registered.
    ``problem`` says why the registry could not be read; then ``hosts`` is
    empty and the hosts sharing the cache are unknown.
    """

    path: str
    hosts: dict = dataclasses.field(default_factory=dict)
    problem: str = None

    def other_hosts(self, host):
        return sorted(h for h in self.hosts if h != host)

    def is_shared(self, host):
        """Whether other hosts use this cache, or may (when unknown)."""
        return self.problem is not None or bool(self.other_hosts(host))

    def stale_hosts(self, now, stale_after=STALE_AFTER):
        return sorted(h for h, t in self.hosts.items()
                      if now - t > stale_after)

    def doubts(self):
        """The facts.Doubt that holds every removal back, if any."""
        if self.problem is None:
            return []
        return [facts.Doubt(
            source=self.path,
            message='%s; the hosts that share this image cache are unknown '
                    'until it is repaired' % self.problem)]

    def to_dict(self, now):
        return {
            'path': self.path,
            'problem': self.problem,
            'hosts': {host: {'registered_at': timestamp,
                             'age_s': round(now - timestamp, 1),
                             'stale': now - timestamp > STALE_AFTER}
                      for host, timestamp in sorted(self.hosts.items())},
        }


def registry_path(instances_path):
    return os.path.join(instances_path, REGISTRY_FILE)


def parse(data):
    """Return {host: time} from the content of the registry.

    Empty content is an empty registry. Raises RegistryError when the
    content is not a JSON object of host names and finite times.
    """
    if not data.strip():
        return {}
    try:
        hosts = json.loads(data)
    except (RecursionError, ValueError) as e:
        raise RegistryError('not valid JSON (%s)' % e)
    if not isinstance(hosts, dict):
        raise RegistryError('not a JSON object of hosts and times')
    for host, timestamp in hosts.items():
        if (isinstance(timestamp, bool) or
                not isinstance(timestamp, (int, float)) or
                not math.isfinite(timestamp)):
            raise RegistryError('the entry of host %r is %r, not a time'
                                % (host, timestamp))
    return {host: float(timestamp) for host, timestamp in hosts.items()}


def read(instances_path, create_lock=True):
    """Read the registry under nova's lock; return a Registry.

    With ``create_lock`` False (a dry run) a missing lock file is not
    created: nobody can be writing under a lock that has no file yet, so
    the registry is then read without it.
    """
    path = registry_path(instances_path)
    try:
        with _registry_lock(instances_path, create_lock):
            return Registry(path, _read_hosts(path))
    except RegistryError as e:
        return Registry(path, problem=str(e))
    except OSError as e:
        return Registry(path, problem='cannot be read: %s' % (
            e.strerror or e))


def register(instances_path, host, now):
    """Record ``host`` at ``now`` in the registry; return what it holds.

    Everything happens under nova's lock: read, remove residue of crashed
    writers, write a temporary file, rename it over the registry. A registry
    that cannot be parsed is not written; the Registry returned then says
    why. Raises OSError when nova's lock cannot be taken or the registry
    cannot be written.
    """
    path = registry_path(instances_path)
    with _registry_lock(instances_path, create=True):
        try:
            hosts = _read_hosts(path)
        except RegistryError as e:
            return Registry(path, problem=str(e))
        except OSError as e:
            return Registry(path, problem='cannot be read: %s' % (
                e.strerror or e))
        _remove_residue(instances_path)
        hosts[host] = now
        smallfile.replace_json(path, hosts, TEMP_PREFIX)
        return Registry(path, hosts)


@contextlib.contextmanager
def _registry_lock(instances_path, create):
    if create or os.path.exists(
            locks.lock_file_path(instances_path, LOCK_NAME)):
        with locks.nova_lock(instances_path, LOCK_NAME):
            yield
    else:
        yield


def _read_hosts(path):
    try:
        data = smallfile.read(path, MAX_REGISTRY_BYTES)
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise RegistryError('cannot be read: %s' % e)
    return parse(data)


def _remove_residue(instances_path):
    for name in os.listdir(instances_path):
        if name.startswith(TEMP_PREFIX):
            LOG.info('Removing %s, left by an interrupted registry write',
                     name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(instances_path, name))
