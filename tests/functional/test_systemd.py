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

"""sd_notify messages on a real datagram socket."""

import logging
import socket
import threading

from cachekeeper import systemd


def _drain(receiver):
    received = []
    while True:
        try:
            received.append(receiver.recv(4096))
        except BlockingIOError:
            return received


def test_a_socket_nobody_reads_never_blocks(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='cachekeeper.systemd')
    address = str(tmp_path / 'notify.sock')
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(address)
        receiver.setblocking(False)
        notifier = systemd.Notifier(address)
        # Far more than the queue of an unread datagram socket holds.
        sender = threading.Thread(target=lambda: [
            notifier.status('pass %d' % n) for n in range(1000)])
        sender.start()
        sender.join(10)
        assert not sender.is_alive(), 'a notification blocked'
        received = _drain(receiver)
        assert received[0] == b'STATUS=pass 0'
        # Dropped once the queue was full, and said once.
        assert len(received) < 1000
        assert caplog.text.count('Cannot notify systemd') == 1
        # Read again, the queue takes notifications again.
        notifier.status('again')
        assert _drain(receiver) == [b'STATUS=again']
        assert 'Notifying systemd works again' in caplog.text
