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

"""Fixtures that run a real glance-api on 127.0.0.1."""

import os

import pytest

from tests.integration import glance_server


def _require_glance():
    missing = glance_server.GlanceServer.available()
    if missing is None:
        return
    # CI must run these tests; a developer without the glance virtualenv
    # is told how to get it.
    if os.environ.get('CI'):
        pytest.fail('glance-api cannot run: %s' % missing, pytrace=False)
    pytest.skip('glance-api cannot run: %s' % missing)


def _start(root):
    server = glance_server.GlanceServer(root)
    try:
        server.start()
    except glance_server.GlanceUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    return server


@pytest.fixture(scope='session')
def glance_api(tmp_path_factory):
    """A glance-api shared by the tests that leave it running."""
    _require_glance()
    server = _start(tmp_path_factory.mktemp('glance'))
    yield server
    server.stop()


@pytest.fixture
def own_glance_api(tmp_path):
    """A glance-api of the test's own, for tests that stop or kill it."""
    _require_glance()
    server = _start(tmp_path / 'glance')
    yield server
    server.stop()
