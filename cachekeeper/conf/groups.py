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

"""Option groups registered so that each ConfigOpts has its own."""

from oslo_config import cfg


def register(conf, group, opts):
    """Register ``opts`` in ``conf`` under a copy of OptGroup ``group``.

    oslo.config keeps what a ConfigOpts holds of a group's options (the
    overrides, the defaults set) in the OptGroup it registers, copied only
    shallowly: every ConfigOpts given the same object would share them, and
    an override in one would show in all.
    """
    conf.register_group(cfg.OptGroup(group.name, title=group.title,
                                     help=group.help))
    conf.register_opts(opts, group=group.name)
