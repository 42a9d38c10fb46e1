"""An L4 connection moved client-only (record tcp-split) whose batch the receiver claimed and
answered only after CLAIMED_ANSWER_TIMEOUT keeps its upstream half in the old worker until that
late answer, then forwards to the id it gives (worker/batch_ownership.py _let_go_late,
TcpProxyConnection.keeps_exchange_here); before, it was let go at the deadline and its
upstream closed, while the receiver held the client with nobody at the other end.

Real processes: this process runs the real tcp_proxy connection on real sockets and sends it
with worker/migration.py; tests/handoff_receiver.py adopts its client with the real
forwarding.ForwardedSide and stops itself (SIGSTOP) once it claimed the batch, until the move
has given up waiting; continued, it answers, and bytes cross both ways."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import pytest

from baton.supervisor.handoff import protocol
from baton.worker import migration
from baton.worker.forwarding import ForwardedSide

from ..unit.test_handoff_late_split import CONN_ID, _split_connection
from .test_handoff_deadline import read_line, receiver, stops_after_its_claim  # noqa: F401


async def _recv(sock: socket.socket, size: int) -> bytes:
    loop, data = asyncio.get_running_loop(), bytearray()
    while len(data) < size:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, size - len(data)), 10)
        if not chunk:
            break
        data += chunk
    return bytes(data)


@pytest.mark.parametrize("receiver", [["--stop-after-claim"]], indirect=True)
def test_a_split_connection_answered_after_the_claimed_deadline_forwards_to_its_new_id(
        receiver, monkeypatch):
    proc, address = receiver
    client_far, client = socket.socketpair()
    upstream, upstream_far = socket.socketpair()
    monkeypatch.setattr(protocol, "CLAIMED_ANSWER_TIMEOUT", 0.3)
    stops_after_its_claim(proc, monkeypatch)

    async def move():
        worker, conn = _split_connection(asyncio.get_running_loop(), client, upstream)
        worker.handoff_channels = set()
        peer = await migration.open_handoff(address, 1, worker)
        moved, kept = await migration._move(worker, [conn], [peer], True)
        assert (moved, kept) == (1, set())
        assert worker.connections.get(CONN_ID) is conn and peer.late == {conn}, \
            "let go at the deadline"
        upstream_far.sendall(b"sent by the upstream during the wait")
        os.kill(proc.pid, signal.SIGCONT)
        line = await asyncio.get_running_loop().run_in_executor(None, read_line, proc, 10)
        assert line == "adopted [7]"
        for _ in range(500):            # bounded: the late answer is on its way
            if not peer.late:
                break
            await asyncio.sleep(0.01)
        side = worker.connections.get(CONN_ID)
        assert isinstance(side, ForwardedSide) and not side.closed, "the upstream half ended"
        assert side.peer_id == 1000             # the receiver's first id
        for sock in (client_far, upstream_far):
            sock.setblocking(False)
        # Both ways, through the receiver's client half and this process's upstream half.
        assert await _recv(client_far, 36) == b"sent by the upstream during the wait"
        client_far.sendall(b"and the client answers")
        assert await _recv(upstream_far, 22) == b"and the client answers"
        side.close()
        peer.forget_process()
        peer.channel.close("done")

    try:
        asyncio.run(asyncio.wait_for(move(), 30))
    finally:
        for sock in (client_far, client, upstream, upstream_far):
            sock.close()
