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

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

glance_group = cfg.OptGroup(
    'glance',
    title='Glance Options',
    help="""
How cachekeeper reaches the Image service. Authentication, session and
endpoint options are keystoneauth's; ``auth_type = none`` with
``endpoint_override`` reaches a Glance without Keystone.
""")

DEFAULT_SERVICE_TYPE = 'image'


def register_opts(conf):
    conf.register_group(glance_group)
    ks_loading.register_session_conf_options(conf, glance_group.name)
    ks_loading.register_auth_conf_options(conf, glance_group.name)
    ks_loading.register_adapter_conf_options(conf, glance_group.name)
    conf.set_default('service_type', DEFAULT_SERVICE_TYPE,
                     group=glance_group.name)


def list_opts():
    return {
        glance_group: (
            ks_loading.get_session_conf_options() +
            ks_loading.get_auth_common_conf_options() +
            ks_loading.get_auth_plugin_conf_options('password') +
            ks_loading.get_adapter_conf_options(include_deprecated=False)),
    }
