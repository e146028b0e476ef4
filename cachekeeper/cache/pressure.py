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

"""When the pressure check between passes starts a pass.

A burst of spawns of new images can fill the filesystem long before the
next pass. So the daemon checks, every ``[image_cache]
pressure_check_interval`` seconds, what is over the budget
(budget.measure, from the cache's size as scan.size_since counts it
cheaply), and starts a pass when the cache is over: the pass evicts.
"""


def decide(pressure, outcome, new_files):
    """Return (whether a pass must run now, the pressure to carry on).

    ``pressure`` is the budget.Outcome of the check that found the cache
    over its budget, None while it is within; ``outcome`` is this check's;
    ``new_files`` how many files the last pass has not seen. A pass runs
    when the pressure starts. While it lasts, a pass runs again only for
    new files: with the same files, a pass would find the same budget that
    the last one could not meet, and every few seconds a whole pass would
    inspect every disk again for nothing.
    """
    if not outcome.over:
        return False, None
    if pressure is None:
        return True, outcome
    return new_files > 0, pressure
