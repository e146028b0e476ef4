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

"""The library of one pass over the image cache: scan, inventory, plan,
execute.

It imports nothing above it: only the state database (cachekeeper.state),
the options (cachekeeper.conf) and the small helpers (setup.cfg's
[importlinter] contracts hold this). What a pass does with the scrub queue,
Glance or other hosts is the manager's (cachekeeper.manager); execute is
given the quarantine step. plan, budget and facts are pure.
"""
