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

"""Where the running pass is: its step, the file it is on, and since when.

The pass writes it as it goes (the manager names the steps, the cache
library, the scrub queue and the precache name the files); the service's
watchdog reads it from another thread to tell a pass that moves on from one
that hangs, and a Guru Meditation Report shows it.
"""

import contextlib
import threading
import time
import typing


class Position(typing.NamedTuple):
    """Where a pass was at one moment.

    ``step`` is None while no pass runs. ``path`` is the file the pass is
    on, None when it is on none. ``started_at`` and ``moved_at`` are
    time.monotonic() values: when the pass began, and when it last moved
    on (to a step or a file, or within a file).
    """

    step: str = None
    path: str = None
    started_at: float = None
    moved_at: float = None


class PassProgress:
    """The progress of one pass after another, for other threads to read.

    A pass moves through steps, and through files within a step: one at a
    time (file) or several at once in a pool of workers (working_on). The
    file it is on is the oldest of those still worked on, else the last it
    came to: a pool whose other workers finish stays on the one that
    hangs.
    """

    def __init__(self):
        # Serialises the writers; readers never take it (see position).
        self._lock = threading.Lock()
        self._file = None
        # The files worked on at once, oldest first, by a token of their
        # own: the same file may be worked on twice.
        self._in_flight = {}
        self._position = Position(moved_at=time.monotonic())

    def position(self):
        """Return the Position now, without waiting.

        A Guru Meditation Report reads it in a signal handler, which may
        have interrupted a writer holding the lock: each write publishes a
        new Position instead.
        """
        return self._position

    def step(self, name):
        """The pass moves on to step ``name``, on no file yet.

        The first step after end() begins a pass.
        """
        with self._lock:
            self._file = None
            current = self._position
            self._publish(name, (time.monotonic() if current.step is None
                                 else current.started_at))

    def file(self, path):
        """The pass moves on to ``path``, within its step."""
        with self._lock:
            self._file = path
            self._publish_move()

    def moved(self):
        """The pass moved on within its file (a download got more bytes)."""
        with self._lock:
            self._publish_move()

    @contextlib.contextmanager
    def working_on(self, path):
        """Work on ``path`` alongside other files (see PassProgress).

        Its start and its end are moves.
        """
        token = object()
        with self._lock:
            self._in_flight[token] = path
            self._publish_move()
        try:
            yield
        finally:
            with self._lock:
                del self._in_flight[token]
                self._publish_move()

    def end(self):
        """No pass runs until the next step."""
        with self._lock:
            self._file = None
            self._position = Position(moved_at=time.monotonic())

    def _publish_move(self):
        """Publish a move within the current step; the lock is held."""
        self._publish(self._position.step, self._position.started_at)

    def _publish(self, step, started_at):
        """Publish the Position of a move made now; the lock is held."""
        # Built whole rather than replaced: a pass moves for every file.
        self._position = Position(
            step, next(iter(self._in_flight.values()), self._file),
            started_at, time.monotonic())
