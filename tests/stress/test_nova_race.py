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

"""Spawns through nova's real image code against the daemon (see race.py).

Workers run nova's own libvirt driver code from ``.venv-nova`` (see
novareal.py) while the real daemon passes every 0.2 s with minimum ages of
1 s; ``python -m tests.stress.race --nova-real --cycles 5000`` runs the
long one. Without ``.venv-nova`` (tools/install.sh makes it) the test is
skipped, except on CI (``CI=true``), where it fails.
"""

import time

from tests.lib import nova
from tests.stress import novareal
from tests.stress import race

CI_CYCLES = 150
# The workers stop spawning after this long, whatever the cycles.
CI_TIME_LIMIT = 110


def test_nova_race(tmp_path):
    nova.require_python()
    result = race.run_race(
        str(tmp_path), CI_CYCLES, seed=int(time.time()),
        images=race.NOVA_REAL_IMAGES, time_limit=CI_TIME_LIMIT,
        worker=race.NOVAREAL, daemon=True)
    summary = result.summary()
    print(summary)
    # Among them: any failure of nova's code outside its own window, and
    # the daemon's exit status and output.
    assert result.violations == [], summary
    assert result.cycles >= CI_CYCLES * 2 // 3, summary
    # The daemon cannot pass the test by removing nothing; a doubt that
    # holds back every removal (such as the empty disk.info of the spawn
    # killed at the start) would.
    assert result.removed > 0, summary
    assert result.pass_loop['exit_status'] == 0, summary
    assert result.pass_loop['drained'] == result.removed, summary
    assert result.disks_at_end > 0, summary
    # Failures are only of the kinds the workers allow (any other is a
    # violation), and rare.
    for name in result.failed_spawns:
        step = name.split(' ', 1)[1] if name.startswith('rescue ') else name
        assert (step in novareal.NOVA_WINDOW or
                step.endswith(' (aged out)')), summary
    failed = sum(result.failed_spawns.values())
    assert failed <= result.cycles // 20, summary
    assert result.log_problems == [], result.log_problems
