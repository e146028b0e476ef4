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

"""The import contracts of setup.cfg hold, and would see a breach.

lint-imports checks them ([importlinter] in setup.cfg): the layers only
point down, no two modules of a package import each other in a cycle, and
plan and budget stay pure. It runs on the real tree, and on copies of the
package with one import added that breaks one contract.
"""

import configparser
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SETUP_CFG = os.path.join(ROOT, 'setup.cfg')
LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), 'lint-imports')


def _contract_names():
    """{contract id: name} of the contracts in setup.cfg."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(SETUP_CFG)
    prefix = 'importlinter:contract:'
    return {section[len(prefix):]: parser[section]['name']
            for section in parser.sections() if section.startswith(prefix)}


def _lint(directory):
    """Run lint-imports with the repository's contracts on the package in
    ``directory``; return (exit status, output with whitespace squeezed).
    """
    process = subprocess.run(
        [LINT_IMPORTS, '--no-cache', '--no-logo', SETUP_CFG],
        cwd=directory, capture_output=True, text=True, timeout=120)
    # The output wraps long lines.
    return process.returncode, ' '.join(
        (process.stdout + process.stderr).split())


def test_setup_cfg_has_the_three_contracts():
    assert set(_contract_names()) == {'layers', 'acyclic', 'pure'}


def test_the_tree_keeps_every_contract():
    status, output = _lint(ROOT)
    assert status == 0, output
    for name in _contract_names().values():
        assert '%s KEPT' % name in output


@pytest.mark.parametrize('module, line, broken, named', [
    # The cache library imports the pass orchestrator above it (and so
    # makes a cycle of cache and manager too).
    ('cache/scan.py', 'from cachekeeper import manager',
     {'layers', 'acyclic'}, 'cachekeeper.cache.scan -> cachekeeper.manager'),
    # Two modules of cache/ that import each other: no layer is crossed.
    ('cache/locks.py', 'from cachekeeper.cache import registry',
     {'acyclic'}, 'No cycles are allowed in cachekeeper.cache.'),
    # A pure module that could touch files.
    ('cache/plan.py', 'import os',
     {'pure'}, 'cachekeeper.cache.plan -> os'),
], ids=['cache imports manager', 'cycle in cache', 'plan imports os'])
def test_a_breach_fails_naming_its_contract(tmp_path, module, line, broken,
                                            named):
    shutil.copytree(os.path.join(ROOT, 'cachekeeper'),
                    tmp_path / 'cachekeeper',
                    ignore=shutil.ignore_patterns('__pycache__'))
    with open(tmp_path / 'cachekeeper' / module, 'a') as f:
        f.write('\n%s  # noqa\n' % line)
    status, output = _lint(tmp_path)
    assert status == 1, output
    for contract, name in _contract_names().items():
        verdict = 'BROKEN' if contract in broken else 'KEPT'
        assert '%s %s' % (name, verdict) in output, output
    assert named in output, output
