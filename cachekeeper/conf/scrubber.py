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

from cachekeeper.conf import groups

scrubber_group = cfg.OptGroup(
    'scrubber',
    title='Scrub Queue Options',
    help="""
Removed cache files first move into a quarantine directory and a durable
queue; they are deleted for good later, and can be restored until then.
""")

scrubber_opts = [
    cfg.IntOpt('scrub_delay',
        default=1800,
        min=0,
        mutable=True,
        help="""
Seconds a removed file stays in quarantine before it is deleted. 0 deletes it
in the pass that removed it.
"""),
    cfg.IntOpt('drain_interval',
        default=300,
        min=1,
        mutable=True,
        help="""
Seconds between two drains of the scrub queue, besides the drain at the end of
each pass.
"""),
    cfg.IntOpt('max_attempts',
        default=5,
        min=1,
        mutable=True,
        help="""
Failed deletions are retried with exponential backoff; after this many
attempts the entry is parked until an operator retries it.
"""),
    cfg.StrOpt('quarantine_dir',
        default='$instances_path/.cachekeeper-quarantine',
        help="""
Directory that holds quarantined files. It must be on the same filesystem as
the image cache, so that quarantining a file is a rename.
"""),
]


def register_opts(conf):
    groups.register(conf, scrubber_group, scrubber_opts)


def list_opts():
    return {scrubber_group: scrubber_opts}
