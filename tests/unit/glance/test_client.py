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

from keystoneauth1 import noauth
from oslo_config import cfg

import cachekeeper.conf
from cachekeeper.glance import client as glance_client

URL = 'http://127.0.0.1:9292'


def make_conf(**glance_options):
    """The client is built from [glance] as keystoneauth loads it."""
    conf = cfg.ConfigOpts()
    cachekeeper.conf.register_opts(conf)
    conf([], project='cachekeeper-test', default_config_files=[])
    for name, value in glance_options.items():
        conf.set_override(name, value, group='glance')
    return conf


def test_glance_is_used_only_when_configured():
    assert not glance_client.is_configured(make_conf())
    assert glance_client.is_configured(make_conf(endpoint_override=URL))
    assert glance_client.is_configured(make_conf(auth_type='password'))


def test_keystone_less_client_with_retries_and_timeout():
    client = glance_client.make_client(
        make_conf(auth_type='none', endpoint_override=URL))
    adapter = client.http_client
    assert isinstance(adapter.session.auth, noauth.NoAuth)
    assert adapter.get_endpoint() == URL
    assert adapter.service_type == 'image'
    assert adapter.session.timeout == 60
    assert adapter.connect_retries == 3
    assert adapter.status_code_retries == 3
    assert adapter.retriable_status_codes == [500, 502, 503, 504]


def test_adapter_options_reach_the_client():
    client = glance_client.make_client(make_conf(
        endpoint_override=URL, region_name='north',
        valid_interfaces=['internal'], connect_retries=0,
        connect_retry_delay=0.5, timeout=5))
    adapter = client.http_client
    assert adapter.session.auth is None
    assert adapter.region_name == 'north'
    assert adapter.interface == ['internal']
    assert adapter.connect_retries == 0
    assert adapter.connect_retry_delay == 0.5
    assert adapter.session.timeout == 5


def test_error_text_is_one_bounded_line():
    assert glance_client.error_text(Exception('a\n\n  b\n')) == 'a b'
    assert glance_client.error_text(RuntimeError()) == 'RuntimeError'
    long_text = glance_client.error_text(Exception('x' * 500))
    assert len(long_text) == 203
    assert long_text.endswith('...')
