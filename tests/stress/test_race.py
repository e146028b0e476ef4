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

"""Spawns and deletes against back-to-back passes (see race.py).

The short race runs here; ``python -m tests.stress.race --cycles 5000``
runs the long one. The test after it pins down, deterministically, the
race the simulator found first: nova's touch landing while a pass, inside
nova's lock, re-checks the references of a file it is about to remove.
"""

import os
import sys
import time

from cachekeeper.cache import facts
from tests.lib import hosttree
from tests.lib import qemu
from tests.stress import race

CI_CYCLES = 320
CI_TIME_LIMIT = 200
DAY = hosttree.DAY

ROOT = hosttree.image('root-image')
UNUSED = hosttree.image('unused-image')
UUID = '6f1c4a52-2d0e-4c36-9a51-000000000001'


def test_race(tmp_path):
    # Passes read disks both ways, in turns: from their qcow2 headers (the
    # default) and through qemu-img, which makes them slower and the
    # windows wider.
    result = race.run_race(str(tmp_path), CI_CYCLES, seed=int(time.time()),
                           time_limit=CI_TIME_LIMIT,
                           inspect_methods=('auto', 'qemu-img'))
    summary = result.summary()
    print(summary)
    assert result.violations == [], summary
    assert result.cycles >= 300, summary
    # The pass cannot pass the test by removing nothing.
    assert result.removed > 0, summary
    assert result.pass_loop['scrub_queue'].get('drained') == result.removed
    assert result.disks_at_end > 0, summary
    # nova's own window between its existence check and its touch is
    # microseconds wide: almost every spawn works.
    failed = sum(result.failed_spawns.values())
    assert failed <= result.cycles // 20, summary
    assert result.log_problems == [], result.log_problems


# nova's touch, landing while the pass holds nova's lock for the unused
# base: qemu-img runs then when the re-check inside the lock reads the
# instance directory again. The first call changes the disk, so that no
# answer kept from it can spare the second.
TOUCH_WHILE_LOCKED = '''#!/bin/sh
touch "{disk}"
if ! {python} {is_free} "{lock}"; then
    touch "{base}" && touch "{marker}"
fi
exec {qemu_img} "$@"
'''
IS_FREE = '''
import fcntl, sys
with open(sys.argv[1], 'a') as f:
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit(1)
'''


def test_touch_inside_the_lock_keeps_the_base(tmp_path):
    host = hosttree.HostTree(tmp_path / 'host')
    host.write_config(inspect_method='qemu-img')
    directory = host.instance(UUID, {'disk': host.base(ROOT, 2 * DAY)})
    unused = host.base(UNUSED, 2 * DAY)
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    marker = tmp_path / 'touched'
    is_free = tmp_path / 'is_free.py'
    is_free.write_text(IS_FREE)
    fake = bin_dir / 'qemu-img'
    fake.write_text(TOUCH_WHILE_LOCKED.format(
        disk=os.path.join(directory, 'disk'), python=sys.executable,
        is_free=is_free,
        lock=os.path.join(host.locks_dir, 'nova-' + UNUSED), base=unused,
        marker=marker, qemu_img=qemu.QEMU_IMG))
    fake.chmod(0o755)

    process, report = host.run_pass(path_prefix=str(bin_dir))

    assert process.returncode == 0, process.stderr
    assert marker.exists(), 'qemu-img never ran inside the lock'
    entry = hosttree.entries(report)[UNUSED]
    assert entry['verdict'] == facts.KEPT, entry
    assert 'touched' in entry['reason'], entry
    assert os.path.isfile(unused)
    assert os.stat(unused).st_mtime > time.time() - hosttree.MINUTE
