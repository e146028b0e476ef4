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

"""Fixtures of the functional tests."""

import tempfile

import pytest

from tests.lib import scrubtree


# A scrubtree.ScrubTree in tmp_path: a cache and host-a's scrub queue.
scrub = scrubtree.tree_fixture()


@pytest.fixture
def elsewhere():
    """A directory on another file system than the tests': /dev/shm."""
    with tempfile.TemporaryDirectory(dir='/dev/shm') as path:
        yield path
