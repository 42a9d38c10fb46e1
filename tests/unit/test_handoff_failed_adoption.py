"""An HTTP adoption that fails before its connection runs (a record's `prepare`: the HTTP/2
codec's state, the forwarded response of an exchange in flight) leaves nothing behind in the
receiver: no active-connection gauge raised, no half-made connection in worker.connections,
and the socket it made of the record's descriptor closed by the adopter itself (the refusal
no longer holds that number: supervisor/handoff/ownership.py). The real adopters of plain
(HttpConnection.adopt) and TLS (https.adopt_idle) connections, with a real TLS session state.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import types

import pytest

from baton.worker.proxy import https
from baton.worker.proxy.http.connection_manager import HttpConnection
from baton.worker.tls.state import export_state
from tests.fd_accounting import fd_is_open

from ..tls_helpers import layer_pair


class _Worker:
    def __init__(self, loop, tls):
        hcm = types.SimpleNamespace(idle_timeout=60.0, stat_cx_total="hcm_cx_total",
                                    stat_cx_active="hcm_cx_active")
        self.chain = types.SimpleNamespace(http_config=hcm, index=0, tls=tls)
        self.listener = types.SimpleNamespace(name="l", spec={}, chains=[self.chain],
                                              family=socket.AF_UNIX, local_address=None,
                                              stat_cx_active="listener_cx_active")
        self.loop = loop
        self.stats = types.SimpleNamespace(gauges=collections.Counter(),
                                           counters=collections.Counter())
        self.connections = {}
        self.started = []

    def accept_http(self, conn, client):
        self.started.append(conn)


def _fails(conn):
    raise RuntimeError("a bug in this record's prepare")


def _tls_fields():
    server, _client = layer_pair("TLS_AES_128_GCM_SHA256")
    return {"tls": export_state(server)}


@pytest.mark.parametrize("adopter, tls", [
    (HttpConnection.adopt, None),
    (https.adopt_idle, types.SimpleNamespace(context=None, local_uris=[], trusted_cas=[])),
], ids=["http1", "https1"])
def test_a_failed_prepare_leaves_no_trace(adopter, tls):
    loop = asyncio.new_event_loop()
    client, ours = socket.socketpair()
    try:
        worker = _Worker(loop, tls)
        received = os.dup(ours.fileno())
        fields = {"id": 5, "listener": "l", "chain": 0, "peer": None, "original": None,
                  **(_tls_fields() if tls is not None else {})}
        fds = [received]
        with pytest.raises(RuntimeError, match="prepare") as raised:
            adopter(worker, worker.listener, fields, fds, 100, None, prepare=_fails)
        # While the traceback (and so the adopter's frame) lives, only an explicit close
        # has closed the socket it made.
        assert not fd_is_open(received), "the half-made connection's socket was left open"
        del raised
        assert fds == [-1], "the descriptor is still the record's: it would be closed twice"
        assert [name for name, n in worker.stats.gauges.items() if n] == [], \
            "a gauge stays raised for a connection that was never adopted"
        assert worker.connections == {} and worker.started == []
    finally:
        client.close()
        ours.close()
        loop.close()
