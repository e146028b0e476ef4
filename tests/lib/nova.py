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

"""nova, for the tests of what cachekeeper shares with it.

nova's own code, in the virtualenv tools/install.sh makes for it
(require_python), and nova's metadata as nova writes it, for the tests of
its readers: an image id and the cache file name nova gives it, and libvirt
domain XML with nova's instance metadata: a short one (xml) and libvirt.xml
as nova writes it into an instance directory (libvirt_xml).
"""

import os
import subprocess

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# nova brings many dependencies that cachekeeper must not depend on.
PYTHON = os.path.join(_ROOT, '.venv-nova', 'bin', 'python')

IMAGE_ID = 'fd0cb2f1-8375-44c9-b1f4-3e1f4c4a8ef0'
IMAGE_SHA1 = '0d5e6b61602d758984b3bf038267614d6016eb2a'

_LIBVIRT_XML = '''<domain type="kvm">
  <name>instance-00000001</name>
  <metadata>
    <nova:instance xmlns:nova="{namespace}">
      <nova:package version="31.0.0"/>
      <nova:name>vm</nova:name>
      <nova:flavor name="m1.small">
        <nova:memory>2048</nova:memory>
        <nova:disk>20</nova:disk>
        <nova:swap>{swap_mb}</nova:swap>
        <nova:ephemeral>{ephemeral_gb}</nova:ephemeral>
        <nova:vcpus>1</nova:vcpus>
      </nova:flavor>
      <nova:root type="{root_type}" uuid="{image_id}"/>
    </nova:instance>
  </metadata>
  <devices>
    <disk type="file" device="disk">
      <driver name="qemu" type="raw"/>
      <source file="{directory}/disk"/>
    </disk>
  </devices>
</domain>
'''


def libvirt_xml(image_id, swap_mb=0, ephemeral_gb=0, root_type='image',
                version='1.1', directory='/var/lib/nova/instances/x'):
    """libvirt.xml as nova writes it into instance directory ``directory``.

    ``root_type`` is 'image' for an instance booted from image
    ``image_id``, 'volume' for one booted from a volume; ``version`` is
    that of nova's XML namespace.
    """
    return _LIBVIRT_XML.format(
        image_id=image_id, swap_mb=swap_mb, ephemeral_gb=ephemeral_gb,
        root_type=root_type, directory=directory,
        namespace='http://openstack.org/xmlns/libvirt/nova/' + version)


def xml(namespace_version='1.1', flavor='', root=''):
    """A domain XML whose nova metadata holds ``flavor`` and ``root``."""
    return ('<domain type="kvm"><name>instance-00000001</name><metadata>'
            '<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/'
            'nova/%s"><nova:name>vm</nova:name>%s%s</nova:instance>'
            '</metadata></domain>' % (namespace_version, flavor, root))


def require_python():
    """The python of .venv-nova; skip (fail on CI) if it has no nova.

    CI must run the tests of nova's own behaviour; a developer without the
    virtualenv is told how to get it.
    """
    if not os.path.exists(PYTHON):
        problem = '%s does not exist' % PYTHON
    else:
        process = subprocess.run(
            [PYTHON, '-c', 'import nova.virt.libvirt.imagebackend'],
            capture_output=True, text=True)
        if not process.returncode:
            return PYTHON
        problem = '%s cannot import nova: %s' % (
            PYTHON, process.stderr.strip()[-500:])
    problem += '; tools/install.sh makes .venv-nova'
    if os.environ.get('CI'):
        pytest.fail(problem, pytrace=False)
    pytest.skip(problem)
