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

"""sd_notify(3) messages: READY, STATUS, STOPPING and WATCHDOG.

oslo.service's launchers send READY=1 as soon as they start and then drop
NOTIFY_SOCKET from the environment. The daemon takes the socket first, so
that READY=1 means "configuration valid, service started", and keeps it for
STATUS=, STOPPING=1 and WATCHDOG=1, which oslo.service does not send.
"""

import os
import socket

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


def _watchdog_timeout(usec, pid):
    """The watchdog timeout in seconds that WATCHDOG_USEC and WATCHDOG_PID
    give this process, or None, as sd_watchdog_enabled(3) reads them.
    """
    try:
        usec = int(usec)
        if pid is not None and int(pid) != os.getpid():
            # Meant for another process, from which this one inherited it.
            return None
    except (TypeError, ValueError):
        return None
    return usec / 1e6 if usec > 0 else None


class Notifier:
    """Sends sd_notify messages to ``address``, when there is one.

    ``watchdog_timeout`` is systemd's watchdog timeout in seconds, None
    without a watchdog; watchdog_interval is how often to send WATCHDOG=1.
    """

    def __init__(self, address=None, watchdog_timeout=None):
        if address and address.startswith('@'):
            address = '\0' + address[1:]
        self._address = address
        # Half the timeout, as sd_watchdog_enabled(3) advises: one late
        # notification is not yet a missed one.
        self.watchdog_interval = (watchdog_timeout / 2
                                  if address and watchdog_timeout else None)
        self._failing = False
        self._stopping_sent = False
        # Under the threading backend the service runs in a forked worker
        # that is replaced on SIGHUP: only the main process may say that
        # the service is stopping.
        self._main_pid = os.getpid()

    @classmethod
    def from_environment(cls):
        """Take NOTIFY_SOCKET out of the environment so launchers skip it.

        The watchdog's WATCHDOG_USEC and WATCHDOG_PID go too, read here in
        the main process, whose pid systemd put in WATCHDOG_PID: under the
        threading backend the forked worker sends WATCHDOG=1 (the unit's
        NotifyAccess=all lets it), with the timeout read before the fork.
        """
        address = os.environ.pop('NOTIFY_SOCKET', None)
        return cls(address, _watchdog_timeout(
            os.environ.pop('WATCHDOG_USEC', None),
            os.environ.pop('WATCHDOG_PID', None)))

    def ready(self):
        self._send('READY=1')

    def status(self, text):
        self._send('STATUS=' + text.replace('\n', ' '))

    def watchdog(self):
        """Tell systemd's watchdog that the service is alive."""
        self._send('WATCHDOG=1')

    def stopping(self):
        if os.getpid() == self._main_pid and not self._stopping_sent:
            self._stopping_sent = True
            self._send('STOPPING=1')

    def _send(self, message):
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Nothing may stall the daemon while the queue is full
                # (nobody reads it): what cannot go at once is dropped.
                sock.setblocking(False)
                sock.connect(self._address)
                sock.sendall(message.encode('utf-8'))
        except OSError as e:
            if not self._failing:
                LOG.warning('Cannot notify systemd (%s): %s', message, e)
            self._failing = True
        else:
            if self._failing:
                LOG.info('Notifying systemd works again')
            self._failing = False
