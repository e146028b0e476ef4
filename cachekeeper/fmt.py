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

"""How a number of bytes, a duration, a time or an errno reads as text.

The one home of these helpers, for reasons, log lines and what
cachekeeper-manage prints alike. Pure functions that import nothing of
cachekeeper, so that every layer may use them (plan and budget included).
Escaping what a file name may smuggle into a line is printable's.
"""

import datetime
import errno
import functools

from oslo_utils import units

# (unit, its seconds, the next smaller unit, its seconds).
_DURATION_UNITS = (('d', 86400, 'h', 3600), ('h', 3600, 'm', 60),
                   ('m', 60, 's', 1))


def mib(nbytes):
    """A number of bytes in MiB: '1.5 MiB'."""
    return '%.1f MiB' % (nbytes / units.Mi)


def size(nbytes):
    """A number of bytes in MiB, or in GiB from 1 GiB on: '2.0 GiB'."""
    if nbytes >= units.Gi:
        return '%.1f GiB' % (nbytes / units.Gi)
    return mib(nbytes)


def duration(seconds):
    """A number of seconds as '2h', '1d 3h' or '45s'."""
    return _whole_seconds(int(seconds))


# Every pass renders two per cache file, one of them a minimum age: the
# texts of the most recent are kept.
@functools.lru_cache(maxsize=1024)
def _whole_seconds(seconds):
    for suffix, unit, next_suffix, next_unit in _DURATION_UNITS:
        if seconds >= unit:
            whole, rest = divmod(seconds, unit)
            rest //= next_unit
            if rest:
                return '%d%s %d%s' % (whole, suffix, rest, next_suffix)
            return '%d%s' % (whole, suffix)
    return '%ds' % seconds if seconds > 0 else '0s'


def utc(timestamp):
    """Seconds since the epoch as ISO 8601 in UTC, to the second."""
    return datetime.datetime.fromtimestamp(
        timestamp, datetime.timezone.utc).isoformat(timespec='seconds')


def errno_text(exc):
    """An OSError as its errno name and message: EACCES (Permission denied)."""
    name = errno.errorcode.get(exc.errno, 'errno %s' % exc.errno)
    return '%s (%s)' % (name, exc.strerror)
