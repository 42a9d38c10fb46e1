"""Who closes a received descriptor when its adoption fails (worker/migration.py
adopt_connections, supervisor/handoff/ownership.py): exactly one closer.

An adopter that made a socket object of a record's descriptor and then raised left two owners
of one number: the socket object (closing it when collected) and the refusal path (closing
what the record holds). The number, closed by the first, could go to a descriptor opened
meanwhile, which the second then closed: an unrelated socket of the worker lost. The real
adopter of "http1-idle" is used, failing where a half-made connection still holds its socket.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import types

import pytest

from baton.supervisor.handoff import ownership, protocol
from baton.worker import migration
from baton.worker.proxy.http import connection_manager  # noqa: F401 - registers http1-idle
from tests.fd_accounting import fd_is_open

from .test_handoff_records import ALL_V2


class _Worker:
    """What adopt_connections and HttpConnection.adopt use of a worker; `accept_http` fails
    after the connection took its socket (held, as a loop's reader or transport would)."""

    def __init__(self, loop):
        chain = types.SimpleNamespace(http_config=types.SimpleNamespace(idle_timeout=60.0),
                                      index=0)
        self.loop = loop
        self.listeners = {"l": types.SimpleNamespace(name="l", spec={}, chains=[chain],
                                                     family=socket.AF_UNIX,
                                                     stat_cx_active="cx_active")}
        self.stats = types.SimpleNamespace(gauges=collections.Counter())
        self.connections = {}
        self.held = []

    def next_connection_id(self):
        return 100

    def accept_http(self, conn, client):
        self.held.append(client)
        raise RuntimeError("a bug after the connection took its socket")


def test_a_descriptor_an_adopter_took_is_closed_by_its_socket_alone():
    loop = asyncio.new_event_loop()
    client, ours = socket.socketpair()
    try:
        worker = _Worker(loop)
        received = os.dup(ours.fileno())           # what the channel hands the receiver
        record = protocol.encode_record(2, ALL_V2, "http1-idle",
                                        {"id": 5, "listener": "l", "chain": 0, "peer": None,
                                         "original": None, "initial": None}, [received])
        msg = {"type": "connections", "conns": [record]}
        adopted, refused, _, _ = migration.adopt_connections(worker, 2, msg, [received])
        assert (adopted, refused) == ([], {5: "its http1-idle adopter failed"})
        [half_made] = worker.held
        assert half_made.fileno() == received and fd_is_open(received), \
            "the refusal closed the descriptor its socket object owns"
        unrelated = os.open("/dev/null", os.O_RDONLY)   # the lowest free number
        half_made.close()              # the half-made connection's end closes its socket
        assert fd_is_open(unrelated), "the descriptor was closed twice: an unrelated one lost"
        os.close(unrelated)
    finally:
        client.close()
        ours.close()
        loop.close()


def test_a_descriptor_taken_is_struck_from_the_record():
    with socket.socket() as original:
        fds = [os.dup(original.fileno())]
        number = fds[0]
        sock = ownership.socket_from(fds, 0, socket.AF_INET)
        assert (fds, sock.fileno()) == ([-1], number)
        sock.close()


def test_a_descriptor_that_could_not_be_taken_stays_the_records():
    fds = [os.open("/dev/null", os.O_RDONLY)]
    number = fds[0]
    with pytest.raises(OSError):
        ownership.socket_from(fds, 0, socket.AF_INET)     # not a socket
    assert fds == [number] and fd_is_open(number)
    os.close(number)
