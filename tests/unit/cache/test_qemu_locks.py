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

"""What a lock on QEMU's lock bytes means, in words."""

import pytest

from cachekeeper.cache import qemu_locks


@pytest.mark.parametrize('start, length, meaning', [
    (100, 1, 'holds consistent read'),
    (100, 2, 'holds consistent read, write'),
    (201, 1, 'does not share write'),
    (103, 3, 'holds resize, graph modification, permission 5'),
    (199, 3, 'holds permission 99; does not share consistent read, write'),
])
def test_meaning_of_qemu_lock_bytes(start, length, meaning):
    image_lock = qemu_locks.ImageLock(start=start, length=length,
                                      exclusive=False)
    assert image_lock.meaning() == meaning


@pytest.mark.parametrize('start, length, meaning', [
    (0, 0, 'a lock from byte 0 to the end'),
    (50, 100, 'a lock from byte 50 to 149'),
    (250, 100, 'a lock from byte 250 to 349'),
])
def test_meaning_of_other_locks(start, length, meaning):
    image_lock = qemu_locks.ImageLock(start=start, length=length,
                                      exclusive=True, pid=42)
    assert image_lock.meaning() == meaning


def test_reason_names_the_pid_when_known():
    assert (qemu_locks.ImageLock(100, 1, False).reason() ==
            'open by a running QEMU')
    assert (qemu_locks.ImageLock(100, 1, False, pid=42).reason() ==
            'open by a running QEMU (pid 42)')
