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

"""Whether instance directories moved while they were read."""

import pytest

from cachekeeper.cache import inventory


A = (10, 100, 100)


@pytest.mark.parametrize('before, after, moved', [
    ({'a': A}, {'a': A}, False),
    ({'a': A}, {}, False),
    ({'a': A}, {'a': (10, 200, 200)}, False),
    ({'a': A}, {'a_resize': (10, 100, 200)}, True),
    ({'a': A}, {'a': (10, 100, 200)}, True),
    ({'a': A}, {'a': (12, 100, 200), 'a_del': (10, 100, 200)}, True),
    # Made meanwhile, or renamed while ``before`` was listed: its name
    # was listed before its stat, which found nothing there or the
    # directory made in its place.
    ({'a': A}, {'a': A, 'b': (11, 100, 100)}, True),
    ({'a': None}, {'a_resize': A}, True),
    ({'a': (12, 300, 300)}, {'a': (12, 300, 300), 'a_resize': A}, True),
], ids=['still', 'deleted', 'written', 'renamed', 'renamed back',
        'replaced', 'made', 'renamed while listed',
        'resized while listed'])
def test_moved(before, after, moved):
    # Listings map names to (inode, mtime, ctime).
    assert inventory._moved(before, after) is moved
