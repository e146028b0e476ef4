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

# The release notes (tox -e releasenotes): reno gathers
# releasenotes/notes/*.yaml from the git history, by version.

project = 'cachekeeper Release Notes'
copyright = 'OpenStack Foundation'
master_doc = 'index'
exclude_patterns = []
templates_path = ['_templates']
html_static_path = ['_static']
html_theme = 'default'

extensions = [
    'reno.sphinxext',
]
