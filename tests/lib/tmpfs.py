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

"""A small filesystem of its own, for tests that fill one up."""

import os
import shutil
import subprocess

import pytest


class Tmpfs:
    """A tmpfs of ``mib`` MiB mounted at ``path`` (needs root)."""

    def __init__(self, path, mib):
        self.path = str(path)
        self.mib = mib

    def __enter__(self):
        if os.geteuid() != 0:
            pytest.skip('mounting a tmpfs needs root')
        if shutil.which('mount') is None:
            pytest.skip('mount is not installed')
        os.makedirs(self.path)
        result = subprocess.run(
            ['mount', '-t', 'tmpfs', '-o', 'size=%dm' % self.mib, 'tmpfs',
             self.path], capture_output=True, text=True)
        if result.returncode:
            pytest.skip('cannot mount a tmpfs here: %s'
                        % result.stderr.strip())
        return self

    def __exit__(self, *exc_info):
        subprocess.run(['umount', self.path], check=True)
