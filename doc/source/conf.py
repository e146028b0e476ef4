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

project = 'cachekeeper'
copyright = 'OpenStack Foundation'
master_doc = 'index'
exclude_patterns = []
html_theme = 'default'

extensions = [
    # .. show-options:: (configuration/config.rst)
    'oslo_config.sphinxext',
    # The sample config, generated at every build from the generator's
    # own file (configuration/sample-config.rst).
    'oslo_config.sphinxconfiggen',
]

# Relative to this directory; written to _static/cachekeeper.conf.sample.
config_generator_config_file = (
    '../../etc/cachekeeper/cachekeeper-config-generator.conf')
sample_config_basename = '_static/cachekeeper'

# sphinx-build -b man: (source, name, description, authors, section).
man_pages = [
    ('cli/cachekeeper-manage', 'cachekeeper-manage',
     "inspect and act on nova's libvirt image cache", ['OpenStack'], 1),
    ('cli/cachekeeper', 'cachekeeper',
     "image cache daemon for nova's libvirt _base", ['OpenStack'], 8),
]
# The pages directly in the output directory, not in man1/ and man8/.
man_make_section_directory = False
