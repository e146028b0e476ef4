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

from cachekeeper.conf import groups

glance_group = cfg.OptGroup(
    'glance',
    title='Glance Options',
    help="""
How cachekeeper reaches the Image service. Authentication, session and
endpoint options are keystoneauth's; ``auth_type = none`` with
``endpoint_override`` reaches a Glance without Keystone.

Glance is used only when ``auth_type`` or ``endpoint_override`` is set.
Then passes remove unused images that Glance no longer has sooner (see
``[image_cache] remove_deleted_image_minimum_age_seconds``), keep the
images that carry ``pin_property``, and download missing pinned images.
Glance is never needed for safety: while it cannot be reached, passes go on
as if it were not configured, except that pins it reported are kept.

The service user should see every image (visibility ``all``): an image it
cannot see counts as deleted.
""")

glance_opts = [
    cfg.IntOpt('image_list_ttl',
        default=300,
        min=0,
        mutable=True,
        help="""
Seconds a listing of Glance's images is used before it is taken again.
Past this age, if Glance cannot be reached, no image counts as deleted.
"""),
    cfg.StrOpt('pin_property',
        default='cachekeeper_pinned=true',
        regex=r'^([^=]*[^=\s][^=]*=.*)?$',
        mutable=True,
        help="""
``KEY=VALUE``: images whose property KEY has the value VALUE (compared
without regard to case) are pinned like those in ``[image_cache]
pinned_images``: never removed, and downloaded when missing. Empty: no
image is pinned by property.
"""),
    cfg.BoolOpt('allow_md5_fallback',
        default=False,
        mutable=True,
        help="""
What to do with a download whose Glance multihash algorithm
(``os_hash_algo``, sha512 by default) this host's Python cannot compute,
for instance under a FIPS policy that leaves it out. False, the default:
refuse the download, as glanceclient does by default. True: verify it with
Glance's md5 ``checksum`` instead, a weaker check, told once per algorithm
in the log. Images that Glance never gave a multihash (uploaded before
Glance had one) are verified with md5 either way, as glanceclient does:
that is all Glance has for them.
"""),
]

# Defaults of keystoneauth options that suit a daemon better than
# keystoneauth's own: a call never hangs, and a Glance restart or an
# overloaded proxy costs a retry with backoff rather than a listing.
KEYSTONEAUTH_DEFAULTS = {
    'service_type': 'image',
    'timeout': 60,
    'connect_retries': 3,
    'status_code_retries': 3,
    'retriable_status_codes': [500, 502, 503, 504],
}


def register_opts(conf):
    # A group of its own for each ConfigOpts matters here too because
    # keystoneauth adds the auth plugin's options to the group when it
    # loads the plugin.
    groups.register(conf, glance_group, glance_opts)
    ks_loading.register_session_conf_options(conf, glance_group.name)
    ks_loading.register_auth_conf_options(conf, glance_group.name)
    ks_loading.register_adapter_conf_options(conf, glance_group.name)
    for name, value in KEYSTONEAUTH_DEFAULTS.items():
        conf.set_default(name, value, group=glance_group.name)


def list_opts():
    keystoneauth_opts = (
        ks_loading.get_session_conf_options() +
        ks_loading.get_auth_common_conf_options() +
        ks_loading.get_auth_plugin_conf_options('password') +
        ks_loading.get_adapter_conf_options(include_deprecated=False))
    cfg.set_defaults(keystoneauth_opts, **KEYSTONEAUTH_DEFAULTS)
    return {glance_group: glance_opts + keystoneauth_opts}
