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

"""Credentials masked in text before it is shown.

The one home of masking, for every place a value that may hold a
credential is shown: log lines, ``cache status``, the pass report, error
messages. oslo.utils' mask_password knows the ``key=value`` forms of
OpenStack's secrets, but not URLs: it leaves the password of a netloc
alone, and it masks ``sentinel_password=S&db=0`` to
``sentinel_password=***``, taking the parameters after the secret with it.
A URL is masked here, part by part as tooz reads it, and the text around
it by mask_password, the URL held out of its reach.
"""

import re
import urllib.parse

from oslo_utils import strutils

MASK = '***'

# The query parameters of tooz's drivers (tooz 9.1) whose values are
# secrets; every driver that reads a password from the netloc (redis,
# zookeeper, mysql, postgresql) has it masked there.
TOOZ_SECRET_PARAMETERS = frozenset([
    # redis: the password of the sentinels, apart from the master's.
    'sentinel_password',
    # zookeeper: the password of the TLS client key.
    'keyfile_password',
    # memcached: the password of the TLS client key.
    'ssl_key_password',
])

# A URL in running text: it ends where a quote, a bracket or white space
# does, as in a log line or a repr().
_URL = re.compile(r'''[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>]*''')
# What follows ``scheme://``: the netloc, up to where urllib.parse.urlsplit
# (and so tooz) ends it, and the rest.
_NETLOC = re.compile('([^/?#]*)(.*)', re.DOTALL)
# What stands for the n-th URL of a text while mask_password reads it: a
# character of Unicode's private use area, which no text has, around n.
_HELD = '\ue000%d\ue000'
_HELD_URL = re.compile('\ue000([0-9]+)\ue000')


def mask(text):
    """``text`` with every credential in it replaced by MASK.

    In a URL: the password of its netloc, and the value of each query
    parameter in TOOZ_SECRET_PARAMETERS or that mask_password would mask;
    the rest of the URL is left as it is written. In ``text``, what
    mask_password masks, a whole URL included when it is the value of a
    secret (``password='redis://...'``).
    """
    urls = []

    def hold(match):
        urls.append(_mask_url(match.group()))
        return _HELD % (len(urls) - 1)

    held = strutils.mask_password(_URL.sub(hold, text), secret=MASK)
    return _HELD_URL.sub(lambda match: urls[int(match.group(1))], held)


def _mask_url(url):
    scheme, separator, rest = url.partition('://')
    netloc, tail = _NETLOC.match(rest).groups()
    userinfo, _, host = netloc.rpartition('@')
    user, _, password = userinfo.partition(':')
    if password:
        netloc = '%s:%s@%s' % (user, MASK, host)
    path, question, query = tail.partition('?')
    query, hash_, fragment = query.partition('#')
    query = '&'.join(map(_mask_parameter, query.split('&')))
    return ''.join((scheme, separator, netloc, path, question, query, hash_,
                    fragment))


def _mask_parameter(parameter):
    name, equals, value = parameter.partition('=')
    if value and _is_secret(urllib.parse.unquote_plus(name)):
        return name + equals + MASK
    return parameter


def _is_secret(name):
    # mask_password's list of secret keys is private: ask mask_password
    # itself whether it would mask a value given under this name.
    probe = '%s=x' % name
    return (name.lower() in TOOZ_SECRET_PARAMETERS or
            strutils.mask_password(probe) != probe)
