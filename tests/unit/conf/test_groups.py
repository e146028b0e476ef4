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

from oslo_config import cfg

import cachekeeper.conf


def _conf():
    conf = cfg.ConfigOpts()
    cachekeeper.conf.register_opts(conf)
    conf([], project='cachekeeper-test', default_config_files=[])
    return conf


def test_an_override_stays_in_its_own_configuration():
    first, second = _conf(), _conf()
    for group, option, value in (('image_cache', 'max_cache_size_mb', 1),
                                 ('scrubber', 'drain_interval', 7),
                                 ('glance', 'pin_property', 'a=b')):
        # Not read from the second before: a ConfigOpts caches what it
        # read.
        first.set_override(option, value, group=group)

        assert getattr(getattr(first, group), option) == value
        assert getattr(getattr(second, group), option) != value
