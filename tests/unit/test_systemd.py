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

"""The Notifier's watchdog, on a datagram socket the test reads."""

import os
import socket
import struct

import pytest

from cachekeeper import systemd


@pytest.fixture
def notify_socket(tmp_path):
    """A bound AF_UNIX datagram socket that says who sent each datagram."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(tmp_path / 'notify.sock'))
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        receiver.settimeout(5)
        yield receiver


# struct ucred: pid, uid, gid.
UCRED = struct.Struct('iII')


def receive(receiver):
    """Return (datagram, pid of its sender)."""
    message, ancillary, _flags, _address = receiver.recvmsg(
        4096, socket.CMSG_SPACE(UCRED.size))
    for level, kind, data in ancillary:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
            return message, UCRED.unpack(data[:UCRED.size])[0]
    raise AssertionError('no credentials with %r' % message)


@pytest.fixture
def environment(monkeypatch, notify_socket):
    """Set the variables systemd gives a Type=notify service with a
    watchdog, for this process; return a function that changes them.
    """
    def set_environment(**variables):
        for name, value in variables.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, str(value))

    set_environment(NOTIFY_SOCKET=notify_socket.getsockname(),
                    WATCHDOG_USEC=120000000, WATCHDOG_PID=os.getpid())
    return set_environment


def test_watchdog_at_half_its_timeout_and_taken_from_the_environment(
        environment, notify_socket):
    notifier = systemd.Notifier.from_environment()
    assert notifier.watchdog_interval == 60
    # Neither the launcher nor a child (qemu-img) sees them any more.
    for name in ('NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID'):
        assert name not in os.environ
    notifier.watchdog()
    assert receive(notify_socket) == (b'WATCHDOG=1', os.getpid())


def test_watchdog_without_watchdog_pid(environment):
    environment(WATCHDOG_USEC=1000000, WATCHDOG_PID=None)
    assert systemd.Notifier.from_environment().watchdog_interval == 0.5


@pytest.mark.parametrize('variables', [
    {'WATCHDOG_USEC': None},
    {'WATCHDOG_USEC': 0},
    {'WATCHDOG_USEC': 'soon'},
    # Set for another process, whose environment this one inherited.
    {'WATCHDOG_PID': 1},
    {'WATCHDOG_PID': 'me'},
    # Nowhere to send it to.
    {'NOTIFY_SOCKET': None},
], ids=['unset', 'zero', 'not a number', 'another pid', 'bad pid',
        'no socket'])
def test_no_watchdog(environment, variables):
    environment(**variables)
    notifier = systemd.Notifier.from_environment()
    assert notifier.watchdog_interval is None
    assert 'WATCHDOG_USEC' not in os.environ


def test_a_forked_worker_notifies_the_watchdog_of_the_main_process(
        environment, notify_socket):
    # WATCHDOG_PID names the main process, which read it: the threading
    # backend's worker, forked from it, is the one that notifies.
    notifier = systemd.Notifier.from_environment()
    worker = os.fork()
    if worker == 0:
        try:
            notifier.watchdog()
        finally:
            os._exit(0)
    os.waitpid(worker, 0)
    assert receive(notify_socket) == (b'WATCHDOG=1', worker)
