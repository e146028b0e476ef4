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
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


class CITestCase(unittest.TestCase):

    def _readme_commands(self):
        lines = _read('README.rst').splitlines()
        return [line.strip() for line in lines
                if line.startswith('    bash tools/install.sh')]

    def test_readme_opens_with_two_commands(self):
        commands = self._readme_commands()
        self.assertEqual(2, len(commands))
        self.assertIn('demo create', commands[0])
        self.assertIn('pytest', commands[1])

    def test_ci_runs_the_readme_test_command(self):
        test_command = self._readme_commands()[1]
        self.assertIn(test_command, _read('.ci', 'run').splitlines())
