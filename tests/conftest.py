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

"""The test tiers: each test is marked with the directory it is in.

``pytest -m unit`` runs tests/unit alone; ``pytest -m "not stress and not
system"`` leaves out the long ones. The markers are registered in
pyproject.toml.
"""

import pathlib

import pytest

TIERS = ('unit', 'functional', 'integration', 'stress', 'system')

_ROOT = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        try:
            tier = item.path.relative_to(_ROOT).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
