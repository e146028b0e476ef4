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

"""The package as a packager and an operator get it.

The sdist is built as a packager builds it (``python -m build --sdist``),
then installed with pip into a virtualenv that has nothing else, from the
package index this machine's pip is configured with. What cachekeeper
needs there must come from its own requirements: nothing is borrowed from
the virtualenv the tests run in.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# What the build must not see of this checkout: the virtualenvs and what
# earlier builds and runs left. The build runs on a copy because pbr writes
# AUTHORS, ChangeLog and an egg-info into the tree it builds, where a
# second cachekeeper distribution next to the editable one would confuse
# importlib.metadata in the tests that run from the checkout.
_NOT_COPIED = shutil.ignore_patterns(
    '.venv*', '.tox', '*.egg-info', '__pycache__', '.pytest_cache',
    '.import_linter_cache', 'build', 'dist', 'AUTHORS', 'ChangeLog')

# Run by the bare virtualenv's interpreter, in an empty directory.
CHECK_INSTALLED = textwrap.dedent("""\
    import importlib.metadata
    import importlib.util
    import os
    import sys

    from packaging.requirements import Requirement

    # format_inspector imports cryptography for its LUKS checks: the
    # import and the call fail without it.
    from oslo_utils.imageutils import format_inspector
    import cryptography

    # Declared, not brought in by chance by another requirement.
    requirements = [Requirement(r) for r in
                    importlib.metadata.requires('cachekeeper')]
    assert any(r.name == 'oslo.utils' and 'image-inspection' in r.extras
               and r.marker is None for r in requirements), requirements
    with open('zeros.raw', 'wb') as f:
        f.write(bytes(65536))
    assert format_inspector.detect_file_format('zeros.raw').NAME == 'raw'
    print('cryptography', cryptography.__version__)

    distribution = importlib.metadata.distribution('cachekeeper')
    licenses = [f for f in distribution.files if f.name == 'LICENSE']
    assert licenses, 'no LICENSE in the installed metadata'
    # The backends' client libraries and libvirt-python are extras only.
    extras = set(distribution.metadata.get_all('Provides-Extra'))
    assert {'redis', 'etcd3gw', 'zookeeper', 'libvirt'} <= extras, extras
    for module in ('redis', 'libvirt'):
        assert importlib.util.find_spec(module) is None, module
    # [files] data_files, below the virtualenv as below /usr.
    for path in ('etc/cachekeeper/cachekeeper.conf.sample',
                 'lib/systemd/system/cachekeeper.service'):
        assert os.path.isfile(os.path.join(sys.prefix, path)), path
    """)


def _run(command, cwd, timeout=600):
    # The package index and pip's settings stay as this machine has them;
    # only what points Python at the tests' own virtualenv goes.
    env = {key: value for key, value in os.environ.items()
           if key not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV')}
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, timeout=timeout,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert result.returncode == 0, '%s failed (%d):\n%s' % (
        ' '.join(map(str, command)), result.returncode, result.stdout[-6000:])
    return result.stdout


@pytest.mark.timeout(1200)
def test_sdist_ships_license_and_installs_into_a_bare_venv(tmp_path):
    source = tmp_path / 'source'
    shutil.copytree(ROOT, source, symlinks=True, ignore=_NOT_COPIED)
    dist = tmp_path / 'dist'
    _run([sys.executable, '-m', 'build', '--sdist', '--outdir', dist,
          source], cwd=tmp_path)
    [sdist] = dist.glob('cachekeeper-*.tar.gz')
    top = sdist.name[:-len('.tar.gz')]
    with tarfile.open(sdist) as tar:
        names = set(tar.getnames())
        assert '%s/LICENSE' % top in names, sorted(names)
        shipped = tar.extractfile('%s/LICENSE' % top).read().decode()
    with open(os.path.join(ROOT, 'LICENSE')) as f:
        assert shipped == f.read()
    assert 'Apache License' in shipped and 'Version 2.0' in shipped
    for path in ('requirements.txt', 'etc/cachekeeper/cachekeeper.conf.sample',
                 'etc/systemd/cachekeeper.service'):
        assert '%s/%s' % (top, path) in names, path

    # The sdist, not the checkout: what is installed is only what the sdist
    # ships, requirements included.
    venv = tmp_path / 'venv'
    _run([sys.executable, '-m', 'venv', venv], cwd=tmp_path)
    python = venv / 'bin' / 'python'
    _run([python, '-m', 'pip', 'install', '-q', sdist], cwd=tmp_path)
    work = tmp_path / 'work'
    work.mkdir()
    output = _run([python, '-c', CHECK_INSTALLED], cwd=work, timeout=120)
    assert 'cryptography ' in output
    # The console scripts import the whole package and its requirements.
    output = _run([venv / 'bin' / 'cachekeeper-manage', '--version'],
                  cwd=work, timeout=120)
    # pbr's version string: the sdist's version without its .devN.
    version = output.split()[-1]
    assert top.split('-', 1)[1].split('.dev')[0] == version, output
