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

"""cachekeeper-manage, killed with SIGKILL at one of the queue's crash steps.

    python -m tests.lib.crash STEP [cachekeeper-manage arguments...]

The scrub queue calls ``queue.crash_hook(step)`` at each of
queue.CRASH_STEPS when a hook is set. This sets one that kills the process
at STEP, as a power cut or the OOM killer would, with no chance to clean
up, then runs cachekeeper-manage as usual. Nothing in cachekeeper sets the
hook: only a process started here crashes on purpose.
"""

import os
import signal
import sys

from cachekeeper.cmd import manage
from cachekeeper.scrub import queue


def kill_at(step):
    """Return a crash hook that kills this process with SIGKILL at step."""
    if step not in queue.CRASH_STEPS:
        raise ValueError('no crash step %r; the steps are %s'
                         % (step, ', '.join(queue.CRASH_STEPS)))

    def hook(reached):
        if reached == step:
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def main():
    queue.crash_hook = kill_at(sys.argv[1])
    sys.argv[:2] = ['cachekeeper-manage']
    return manage.main()


if __name__ == '__main__':
    sys.exit(main())
