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

"""The short soak: both backends at once for a minute (see soak.py)."""

from tests.stress import soak

CI_SECONDS = 60


def test_soak(tmp_path):
    results = soak.run_soaks(str(tmp_path), soak.BACKENDS, CI_SECONDS)
    for result in results:
        print(result.summary())
    assert [(r.backend, r.problems) for r in results] == [
        (backend, []) for backend in soak.BACKENDS], '\n'.join(
            r.summary() for r in results)
    for result in results:
        # The host changed between every two passes.
        assert result.churn > result.passes, result.summary()
