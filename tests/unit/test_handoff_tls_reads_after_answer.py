"""An HTTPS connection adopted through the handoff channel (https.adopt_idle) reads nothing
before the receiver's answer has left (HttpConnection.after_adoption, which MigrationServer
calls once the answer is sent or the channel closed). Until then the sender may still find
the receiver dead with its answer unsent and resume the connection itself: safe only if no
TLS record was read here, else the sender's record layer (sequence numbers) would be stale
and the request read here lost (review of RB's moves: the handoff protocol of DESIGN.md).

The real adopter and TLS transport on a socket pair, a real session state (no handshake),
test_http_express's Rig for the HTTP connection's world.
"""

from __future__ import annotations

import os
import socket
import types

from baton.worker.proxy import https
from baton.worker.tls.state import export_state

from ..tls_helpers import layer_pair
from .test_http_express import REQUEST, Rig, loop  # noqa: F401 - a fixture


def _unread(sock: socket.socket) -> int:
    """Bytes waiting in `sock`'s receive queue (not read by anyone yet)."""
    try:
        return len(sock.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return 0


def _turns(loop, n: int = 5) -> None:
    for _ in range(n):
        loop.run_until_complete(_one_turn())


async def _one_turn() -> None:
    pass


def test_an_adopted_https_connection_reads_only_once_its_answer_left(tmp_path, loop):
    rig = Rig(tmp_path, loop)
    rig.worker.connections = {}
    chain = rig.conn.chain
    chain.tls = types.SimpleNamespace(context=None, local_uris=[], trusted_cas=[])
    listener = types.SimpleNamespace(name="https", port=10443, stat_cx_active="l.active",
                                     local_address=None, spec={}, chains=[chain],
                                     family=socket.AF_UNIX)
    server_layer, client_layer = layer_pair("TLS_AES_128_GCM_SHA256")
    client, ours = socket.socketpair()
    peek = socket.socket(fileno=os.dup(ours.fileno()))
    try:
        fields = {"id": 5, "listener": "https", "chain": 0, "peer": None, "original": None,
                  "tls": export_state(server_layer)}
        fds = [os.dup(ours.fileno())]
        conn = https.adopt_idle(rig.worker, listener, fields, fds, 100, channel=object())
        client.sendall(client_layer.send_data(REQUEST))
        _turns(loop)
        assert _unread(peek) > 0, "read before the answer left: the sender may still resume it"
        assert not any(c.streams for c in rig.upstreams.values())
        conn.after_adoption()           # the answer left
        _turns(loop)
        assert _unread(peek) == 0, "never read once adopted"
        assert rig.busy_upstream().transport.take().startswith(b"GET /a?b=1 HTTP/1.1\r\n")
        conn.close()
    finally:
        for sock in (client, ours, peek):
            sock.close()
