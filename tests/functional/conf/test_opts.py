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

"""The options cachekeeper shares with nova, against nova's own.

The unit reads nova.conf before cachekeeper.conf, so an option of nova's
name means what nova means by it; where its default differs, the reason is
written here.
"""

import json
import subprocess

from keystoneauth1 import loading as ks_loading
import pytest

from cachekeeper.conf import opts
from tests.lib import nova

_KEYSTONEAUTH_OPTIONS = {
    opt.name for opt in (ks_loading.get_session_conf_options() +
                         ks_loading.get_auth_common_conf_options() +
                         ks_loading.get_auth_plugin_conf_options('password') +
                         ks_loading.get_adapter_conf_options())}

# Run by nova's python: nova's options as nova registers them.
_NOVA_OPTIONS = '''
import json
import nova.conf
conf = nova.conf.CONF
groups = {'DEFAULT': conf._opts}
groups.update((name, group._opts) for name, group in conf._groups.items())
print(json.dumps({
    group: {name: {'type': type(entry['opt'].type).__name__,
                   'default': entry['opt'].default}
            for name, entry in options.items()}
    for group, options in groups.items()}, default=str))
'''

# (group, option): why the default is not nova's.
DIFFERENT_DEFAULTS = {
    # cachekeeper's own state; cachekeeper.conf, read last, sets it.
    ('DEFAULT', 'state_path'): '/var/lib/cachekeeper',
    # nova's is $state_path/instances, which is this where distributions
    # set nova's state_path to /var/lib/nova; here state_path is not
    # nova's.
    ('DEFAULT', 'instances_path'): '/var/lib/nova/instances',
}
# (group, option): why the type is not nova's.
DIFFERENT_TYPES = {
    # A fraction of a second is allowed too (tests and demos pass fast);
    # every value nova takes means the same.
    ('image_cache', 'manager_interval'): 'Float',
}
# Groups whose every option is nova's, by their help text.
NOVA_GROUPS = ('libvirt',)


@pytest.fixture(scope='module')
def nova_options():
    process = subprocess.run([nova.require_python(), '-c', _NOVA_OPTIONS],
                             capture_output=True, text=True, check=True)
    return json.loads(process.stdout)


def _options():
    """(group name, option) for each option of cachekeeper's own.

    Not keystoneauth's: what they mean is keystoneauth's business, whoever
    registers them (cachekeeper.conf.glance gives some other defaults).
    """
    for group, options in opts.list_opts():
        for opt in options:
            if opt.name not in _KEYSTONEAUTH_OPTIONS:
                yield getattr(group, 'name', group) or 'DEFAULT', opt


def _shared(nova_options):
    """(group name, option, nova's) for each option of a name nova has."""
    for group, opt in _options():
        theirs = nova_options.get(group, {}).get(opt.name)
        if theirs is not None:
            yield group, opt, theirs


def test_shared_options_have_novas_defaults(nova_options):
    different = {(group, opt.name): opt.default
                 for group, opt, theirs in _shared(nova_options)
                 if opt.default != theirs['default']}
    # Hostnames: both default to this host's name, read at import time.
    different.pop(('DEFAULT', 'host'), None)

    assert different == DIFFERENT_DEFAULTS


def test_shared_options_have_novas_types(nova_options):
    different = {(group, opt.name): type(opt.type).__name__
                 for group, opt, theirs in _shared(nova_options)
                 if type(opt.type).__name__ != theirs['type']}
    # nova's host is a HostDomain, cachekeeper's any string: nova checks it.
    different.pop(('DEFAULT', 'host'), None)

    assert different == DIFFERENT_TYPES


def test_the_limits_nova_shares_are_novas_options(nova_options):
    ours = {(group, opt.name) for group, opt in _options()
            if group in NOVA_GROUPS}
    theirs = {(group, name) for group in NOVA_GROUPS
              for name in nova_options[group]}

    assert ours and ours <= theirs


def test_shared_options_are_checked(nova_options):
    # Against a nova that renamed its groups, the tests above would pass
    # on nothing.
    shared = {(group, opt.name) for group, opt, _ in _shared(nova_options)}

    assert {('image_cache', 'remove_unused_original_minimum_age_seconds'),
            ('libvirt', 'images_cpu_time_limit'),
            ('libvirt', 'images_address_space_limit')} <= shared
