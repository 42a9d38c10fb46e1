"""An L4 tcp_proxy connection moved with `--l4-move client-only` (record tcp-split) whose batch
the receiver claimed and did not answer in CLAIMED_ANSWER_TIMEOUT, its channel open
(worker/batch_ownership.py _let_go_late): its upstream half stays here, paused as export left
it, until the late answer; adopted, it forwards to the id that answer gives (before, it was
let go at the deadline as connection 0, which the receiver drops, and its upstream closed);
refused, the connection serves on here as if it had never moved.

The real TcpProxyConnection on real sockets and the real late-answer code; the receiver's
answer is a future this test resolves, the channel a recorder of what is sent over it."""

from __future__ import annotations

import asyncio
import socket
from collections import defaultdict
from types import SimpleNamespace

import pytest

from baton.supervisor.handoff import protocol
from baton.worker import batch_ownership
from baton.worker.connection import Lifecycle
from baton.worker.forwarding import ForwardedSide
from baton.worker.proxy.pipes import PipePool
from baton.worker.proxy.tcp_proxy import Pump, TcpProxyConnection

from .test_http_inflight_hold import _Channel as _Recorder

CONN_ID, NEW_ID = 7, 1007


class _Channel(_Recorder):
    def close(self, reason):
        self.closed = True

    def data_for(self, peer_id: int) -> bytes:
        return b"".join(m.get("data", b"") for m in self.sent
                        if m["id"] == peer_id and m["type"] == "data")


class _Peer:
    """What batch_ownership uses of migration.Peer."""

    def __init__(self, channel):
        self.channel, self.late, self.moving = channel, set(), False
        self.pidfd = self.pid = None

    def forget_process(self):
        pass


def _split_connection(loop, client: socket.socket, upstream: socket.socket):
    """An open tcp_proxy connection between `client` and `upstream`, as _established makes it."""
    stats = SimpleNamespace(counters=defaultdict(int), gauges=defaultdict(int))
    worker = SimpleNamespace(loop=loop, stats=stats, pipes=PipePool(), connections={},
                             draining=False, id=1)
    worker.connection_closed = lambda conn: worker.connections.pop(conn.id, None)
    conn = object.__new__(TcpProxyConnection)
    conn.worker, conn.loop, conn.stats, conn.id = worker, loop, stats, CONN_ID
    conn.listener = SimpleNamespace(name="l", access_logs=(), stat_cx_active="listener.active")
    conn.chain = SimpleNamespace(index=0, network_filters=(), access_logs=())
    conn.config = {"max_connect_attempts": 1}
    conn.cluster = SimpleNamespace(name="c", buffer_limit=1 << 16, active=1,
                                   stat=defaultdict(str, upstream_cx_active="cluster.active"))
    conn.host = SimpleNamespace(address="127.0.0.1", port=1, active=1)
    conn.client, conn.upstream = client, upstream
    conn.state, conn.timer, conn.idle_timeout = Lifecycle.OPEN, None, 0
    conn.peer = conn.original = conn.initial = conn.moved = conn.early = None
    conn.reset_client = False
    c, u = client.fileno(), upstream.fileno()
    conn.pumps = (Pump(conn, c, u, 1 << 16, ()), Pump(conn, u, c, 1 << 16, ()))
    worker.connections[CONN_ID] = conn
    for sock in (client, upstream):
        sock.setblocking(False)
    return worker, conn


async def _until(check, what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"waited {timeout}s for {what}"
        await asyncio.sleep(0.005)


def _late(answer: dict, then, early: bytes = b"") -> None:
    """Export connection 7 client-only, send it, reach CLAIMED_ANSWER_TIMEOUT unanswered,
    then answer `answer` (`early`: what the receiver's client half sent, read before that
    answer was), and `then(worker, conn, channel, client_far, upstream_far)` in the same loop."""
    client_far, client = socket.socketpair()
    upstream, upstream_far = socket.socketpair()

    async def run():
        loop = asyncio.get_running_loop()
        worker, conn = _split_connection(loop, client, upstream)
        export = conn.export(client_only=True)
        assert export.kind == "tcp-split"
        channel, future = _Channel(), loop.create_future()
        peer = _Peer(channel)
        batch_ownership._let_go_late(worker, [conn], future, peer)
        assert worker.connections.get(CONN_ID) is conn and peer.late == {conn}, \
            "let go at the deadline"
        upstream_far.sendall(b"from the upstream, during the wait")
        if early:
            assert conn.on_forwarded({"type": "data", "id": CONN_ID, "data": early})
        future.set_result(answer)
        await _until(lambda: not peer.late, "the late answer's task")
        await then(worker, conn, channel, client_far, upstream_far)

    try:
        asyncio.run(asyncio.wait_for(run(), 10))
    finally:
        for sock in (client_far, client, upstream, upstream_far):
            sock.close()


async def _read(sock: socket.socket, size: int) -> bytes:
    loop, data = asyncio.get_running_loop(), b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture(autouse=True)
def _quiet_exit_wait(monkeypatch):
    monkeypatch.setattr(protocol, "CLAIMED_EXIT_WAIT", 0.01)


def test_a_split_connection_answered_late_forwards_its_upstream_to_the_new_id():
    async def forwards(worker, conn, channel, client_far, upstream_far):
        side = worker.connections.get(CONN_ID)
        assert isinstance(side, ForwardedSide) and not side.closed, \
            "the upstream half ended instead of waiting for the late answer"
        assert side.peer_id == NEW_ID
        # What the receiver's client half sent before its answer was read reaches the upstream.
        upstream_far.setblocking(False)
        assert await _read(upstream_far, 18) == b"early client bytes"
        want = b"from the upstream, during the wait"
        await _until(lambda: channel.data_for(NEW_ID) == want, "the upstream's bytes forwarded")
        assert not any(m["id"] == 0 for m in channel.sent), "addressed connection 0"
        side.close(notify=False)
    _late({"type": "adopted", "ids": [CONN_ID], "refused": None,
           "new_ids": {CONN_ID: NEW_ID}}, forwards, early=b"early client bytes")


def test_a_split_connection_refused_late_serves_on_here():
    async def serves(worker, conn, channel, client_far, upstream_far):
        assert worker.connections.get(CONN_ID) is conn and conn.state is Lifecycle.OPEN
        assert conn.early is None and not channel.sent
        client_far.setblocking(False)
        assert await _read(client_far, 34) == b"from the upstream, during the wait"
        conn.close()
    _late({"type": "adopted", "ids": [], "refused": {str(CONN_ID): "no such listener"},
           "new_ids": None}, serves)
