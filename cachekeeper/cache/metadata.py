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

"""nova's metadata files in an instance directory, parsed as nova reads them.

``disk.info`` records the format of each disk, so that a raw disk is never
read as whatever header its guest wrote; ``libvirt.xml`` holds nova's
metadata about the instance (root image, flavor swap and ephemeral sizes),
the only evidence of the cache files a flat disk was copied from. Both are
written by nova and may be rewritten, truncated or replaced by anyone who
can write there, so the parsers take content only (the caller reads it,
with a size limit) and refuse what is not nova's: a DTD, and with it entity
expansion, too. Pure functions of their input.
"""

import dataclasses
import json
import os
from xml.etree import ElementTree

from oslo_utils import units

NOVA_NAMESPACE_PREFIX = 'http://openstack.org/xmlns/libvirt/nova/'

# disk.info and libvirt.xml are a few KiB.
MAX_METADATA_BYTES = units.Mi


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


def parse_xml(data):
    """Return the root element of a libvirt domain XML.

    Raises ValueError if it is not well-formed or has a DOCTYPE.
    """
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
    return nova_metadata(parse_xml(data))


def nova_metadata(domain):
    """Return the NovaMetadata of a parsed domain element, None if none.

    Raises ValueError if its nova metadata makes no sense.
    """
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
