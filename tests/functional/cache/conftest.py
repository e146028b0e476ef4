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

"""Fixtures of the tests of the image cache library on real files."""

import os

import pytest

from tests.lib import instances
from tests.lib import locks as held_locks


@pytest.fixture
def host(tmp_path):
    """An instances.Host in ``tmp_path``."""
    return instances.Host(tmp_path)


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    """A directory first on PATH, for a fake qemu-img."""
    d = tmp_path / 'bin'
    d.mkdir()
    monkeypatch.setenv('PATH', '%s:%s' % (d, os.environ['PATH']))
    return d


@pytest.fixture
def held_lock():
    """held_lock(lock_path, touch_on_release=()): another process holds it.

    Returns the started locks.HeldLock; whatever still holds a lock is
    stopped after the test.
    """
    held = []

    def hold(lock_path, touch_on_release=()):
        lock = held_locks.HeldLock(lock_path, touch_on_release).start()
        held.append(lock)
        return lock

    yield hold
    for lock in held:
        lock.stop()
