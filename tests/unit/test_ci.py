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

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def _readme_commands():
    lines = _read('README.rst').splitlines()
    return [line.strip() for line in lines
            if line.startswith('    bash tools/install.sh')]


def test_readme_opens_with_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert 'demo create' in commands[0]
    assert 'pytest' in commands[1]


def test_ci_runs_the_readme_test_command():
    test_command = _readme_commands()[1]
    assert test_command in _read('.ci', 'run').splitlines()
