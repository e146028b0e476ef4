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

import errno
import os

import pytest

from cachekeeper import fmt

HOUR = 3600
DAY = 86400
MiB = 1024 * 1024
GiB = 1024 * MiB


@pytest.mark.parametrize('seconds, text', [
    (0, '0s'),
    (0.9, '0s'),
    (-5, '0s'),
    (59, '59s'),
    (60, '1m'),
    (61, '1m 1s'),
    (3599, '59m 59s'),
    (HOUR, '1h'),
    (2 * HOUR + 60, '2h 1m'),
    (DAY, '1d'),
    (DAY + HOUR, '1d 1h'),
    (DAY + 61, '1d'),
    (400 * DAY, '400d'),
])
def test_duration(seconds, text):
    assert fmt.duration(seconds) == text


@pytest.mark.parametrize('nbytes, mib, size', [
    (0, '0.0 MiB', '0.0 MiB'),
    (MiB // 2, '0.5 MiB', '0.5 MiB'),
    (GiB - 1, '1024.0 MiB', '1024.0 MiB'),
    (GiB, '1024.0 MiB', '1.0 GiB'),
    (5 * GiB // 2, '2560.0 MiB', '2.5 GiB'),
])
def test_sizes(nbytes, mib, size):
    assert (fmt.mib(nbytes), fmt.size(nbytes)) == (mib, size)


def test_utc_is_iso_8601_to_the_second():
    assert fmt.utc(1800000000.9) == '2027-01-15T08:00:00+00:00'


def test_errno_text():
    error = OSError(errno.EACCES, os.strerror(errno.EACCES))
    assert fmt.errno_text(error) == 'EACCES (Permission denied)'
    assert fmt.errno_text(OSError(99999, 'odd')) == 'errno 99999 (odd)'
