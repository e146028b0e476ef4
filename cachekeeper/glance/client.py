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

"""The glanceclient both halves of Glance use, and its failures.

make_client() builds a glanceclient v2 Client from the ``[glance]``
keystoneauth options (auth, session, adapter); ``auth_type = none`` with
``endpoint_override`` reaches a keystone-less endpoint.
"""

from glanceclient import client as glance_client
from glanceclient import exc as glance_exc
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading
from keystoneauth1.loading import adapter as ks_adapter_loading

from cachekeeper import masking

GROUP = 'glance'
API_VERSION = '2'

# What failures of Glance, or of the way to it, raise. requests'
# exceptions, raised while a download streams, are OSErrors.
SERVICE_ERRORS = (glance_exc.BaseException, glance_exc.ClientException,
                  ks_exc.ClientException, OSError)


def is_configured(conf):
    """Whether Glance is used at all: an endpoint or an auth is set."""
    return bool(conf.glance.auth_type or conf.glance.endpoint_override)


def make_client(conf):
    """A glanceclient v2 Client from the [glance] keystoneauth options."""
    auth = ks_loading.load_auth_from_conf_options(conf, GROUP)
    session = ks_loading.load_session_from_conf_options(conf, GROUP,
                                                        auth=auth)
    adapter_options = {}
    ks_adapter_loading.process_conf_options(conf[GROUP], adapter_options)
    # The client speaks the v2 API, whatever version discovery would say.
    for name in ('version', 'min_version', 'max_version'):
        del adapter_options[name]
    return glance_client.Client(API_VERSION, session=session,
                                **adapter_options)


def error_text(exc, limit=200):
    """One line of text for an exception of Glance or of the way to it.

    keystoneauth's errors quote the URL they failed on (auth_url,
    endpoint_override): it is masked before the text is cut, which could
    cut a password in two.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = masking.mask(' '.join(lines)) or exc.__class__.__name__
    return text if len(text) <= limit else text[:limit] + '...'
