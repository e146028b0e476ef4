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

import unittest

from keystoneauth1 import noauth
from oslo_config import cfg

from cachekeeper import glance
import cachekeeper.conf

URL = 'http://127.0.0.1:9292'


class ClientTestCase(unittest.TestCase):
    """The client is built from [glance] as keystoneauth loads it."""

    def conf(self, **glance_options):
        conf = cfg.ConfigOpts()
        cachekeeper.conf.register_opts(conf)
        conf([], project='cachekeeper-test', default_config_files=[])
        for name, value in glance_options.items():
            conf.set_override(name, value, group='glance')
        return conf

    def test_glance_is_used_only_when_configured(self):
        self.assertFalse(glance.is_configured(self.conf()))
        self.assertTrue(glance.is_configured(self.conf(endpoint_override=URL)))
        self.assertTrue(glance.is_configured(self.conf(auth_type='password')))

    def test_keystone_less_client_with_retries_and_timeout(self):
        client = glance.make_client(
            self.conf(auth_type='none', endpoint_override=URL))
        adapter = client.http_client
        self.assertIsInstance(adapter.session.auth, noauth.NoAuth)
        self.assertEqual(URL, adapter.get_endpoint())
        self.assertEqual('image', adapter.service_type)
        self.assertEqual(60, adapter.session.timeout)
        self.assertEqual(3, adapter.connect_retries)
        self.assertEqual(3, adapter.status_code_retries)
        self.assertEqual([500, 502, 503, 504], adapter.retriable_status_codes)

    def test_adapter_options_reach_the_client(self):
        client = glance.make_client(self.conf(
            endpoint_override=URL, region_name='north',
            valid_interfaces=['internal'], connect_retries=0,
            connect_retry_delay=0.5, timeout=5))
        adapter = client.http_client
        self.assertIsNone(adapter.session.auth)
        self.assertEqual('north', adapter.region_name)
        self.assertEqual(['internal'], adapter.interface)
        self.assertEqual(0, adapter.connect_retries)
        self.assertEqual(0.5, adapter.connect_retry_delay)
        self.assertEqual(5, adapter.session.timeout)


class PinPropertyTestCase(unittest.TestCase):

    def test_parse(self):
        self.assertEqual(('cachekeeper_pinned', 'true'),
                         glance.parse_pin_property('cachekeeper_pinned=true'))
        self.assertEqual(('k', 'a=b'), glance.parse_pin_property(' k = a=b'))
        self.assertIsNone(glance.parse_pin_property(''))
        for bad in ('novalue', '=true', ' =x'):
            with self.subTest(text=bad):
                self.assertRaises(ValueError, glance.parse_pin_property, bad)


class ErrorTextTestCase(unittest.TestCase):

    def test_one_bounded_line(self):
        self.assertEqual('a b', glance.error_text(Exception('a\n\n  b\n')))
        self.assertEqual('RuntimeError', glance.error_text(RuntimeError()))
        long_text = glance.error_text(Exception('x' * 500))
        self.assertEqual(203, len(long_text))
        self.assertTrue(long_text.endswith('...'))
