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

import importlib.metadata
import importlib.resources
import re

import pytest

from cachekeeper import masking
from tests.lib import tooz_urls

# Option names in tooz's drivers that say their value is a secret.
SECRET_WORDS = re.compile(
    r'''['"](\w*(?:password|passwd|secret|token|passphrase|credential)\w*)'''
    r'''['"]''')


@pytest.mark.parametrize('backend', sorted(tooz_urls.SECRET_URLS))
def test_each_backend_url_shows_all_but_its_secrets(backend):
    template, secrets = tooz_urls.SECRET_URLS[backend]
    url = template.format(port=6379)
    expected = url
    for secret in secrets:
        expected = expected.replace(secret, masking.MASK)
    assert masking.mask(url) == expected


def test_every_networked_tooz_backend_has_a_secret_url():
    backends = {entry_point.name for entry_point in
                importlib.metadata.entry_points(group='tooz.backends')}
    assert backends - {'file', 'ipc'} == set(tooz_urls.SECRET_URLS)


def test_every_secret_a_tooz_driver_reads_is_masked():
    # A tooz release that reads a new secret from the URL fails this test
    # rather than showing it.
    names = set()
    for source in importlib.resources.files('tooz.drivers').iterdir():
        if source.name.endswith('.py'):
            names.update(SECRET_WORDS.findall(source.read_text()))
    assert masking.TOOZ_SECRET_PARAMETERS <= names
    for name in names:
        assert masking.mask('redis://h?%s=S3CR3T&db=0' % name) == (
            'redis://h?%s=***&db=0' % name)


@pytest.mark.parametrize('text, masked', [
    # Nothing to hide.
    ('file:///var/lib/nova/instances/locks/cachekeeper-coordination',
     'file:///var/lib/nova/instances/locks/cachekeeper-coordination'),
    ('file:///var/lib/x?timeout=5', 'file:///var/lib/x?timeout=5'),
    ('ipc://', 'ipc://'),
    ('redis://cachekeeper@10.0.0.1:6379?timeout=5#f',
     'redis://cachekeeper@10.0.0.1:6379?timeout=5#f'),
    ('redis://:@10.0.0.1?sentinel_password=',
     'redis://:@10.0.0.1?sentinel_password='),
    ('qemu+ssh://nova@compute-2/system?keyfile=/etc/nova/id_rsa',
     'qemu+ssh://nova@compute-2/system?keyfile=/etc/nova/id_rsa'),
    ('no URL, no secret', 'no URL, no secret'),
    # The netloc's password, however it is written.
    ('redis://:s3cret@10.0.0.1:6379?timeout=5',
     'redis://:***@10.0.0.1:6379?timeout=5'),
    ('redis://u:p%40ss:w@[::1]:6379', 'redis://u:***@[::1]:6379'),
    ('zookeeper://u:pw@zk1:2181,zk2:2181/ns', 'zookeeper://u:***@zk1:2181,'
     'zk2:2181/ns'),
    # Query parameters, named as tooz reads them, each masked alone.
    ('redis://h?sentinel%5Fpassword=S&sentinel_fallback=h2:26379',
     'redis://h?sentinel%5Fpassword=***&sentinel_fallback=h2:26379'),
    ('redis://h?Token=T&auth_password=A&secret=S&db=0',
     'redis://h?Token=***&auth_password=***&secret=***&db=0'),
    ('redis://h?sentinel_password=a=b&db=0', 'redis://h?sentinel_password=***'
     '&db=0'),
    # URLs in running text, and secrets around them.
    ("Coordination backend 'redis://:pw@h:1?sentinel_password=S' "
     "unavailable: AUTH failed, password=pw2 rejected",
     "Coordination backend 'redis://:***@h:1?sentinel_password=***' "
     "unavailable: AUTH failed, password=*** rejected"),
    ('Unable to establish connection to https://glance:pw@10.0.0.2:9292/v2/'
     'images: refused',
     'Unable to establish connection to https://glance:***@10.0.0.2:9292/v2/'
     'images: refused'),
    ("backend_url='redis://:pw@h:1', password='redis://:pw@h:2'",
     "backend_url='redis://:***@h:1', password='***'"),
])
def test_mask(text, masked):
    assert masking.mask(text) == masked
