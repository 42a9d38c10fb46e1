"""A receiving worker's side of one claimed batch (worker/migration.py MigrationServer), over
a real Channel on a socketpair: its answer names exactly the connections it holds, even when
one record's adopter raises, and the connections it adopted start their I/O only once that
answer has left (a sender that finds it dead with its answer unsent resends the batch, safe
only if nothing here touched it)."""

from __future__ import annotations

import asyncio
import os
import socket

from baton.supervisor.handoff import claim, protocol
from baton.supervisor.handoff.channel import Channel
from baton.supervisor.handoff.framing import encode
from baton.worker import connection, migration
from tests.fd_accounting import fd_is_open

from .test_handoff_records import ALL_V2, Datagram, _Worker, datagram_kind  # noqa: F401


class _Adopting(_Worker):
    def __init__(self, loop):
        super().__init__()
        self.loop = loop
        self.handoff_channels = set()


def _batch(ids, fds, token_fd):
    records = [protocol.encode_record(3, {**ALL_V2, "datagram": [1]}, "datagram",
                                      {"id": i, "listener": "l", "sessions": 1}, [fd])
               for i, fd in zip(ids, fds)]
    return {"type": "connections", "conns": records, "claim": len(fds)}, [*fds, token_fd]


def _receiver(loop, sock):
    server = migration.MigrationServer.__new__(migration.MigrationServer)
    server.worker, server.loop, server.masters = _Adopting(loop), loop, {}
    channel = Channel(sock, server._on_message, server._on_closed, name="handoff from test")
    server.versions = {channel: 3}
    return server, channel


def test_a_record_whose_adopter_raises_is_refused_alone(datagram_kind, monkeypatch):
    def adopt(cls, worker, listener, fields, fds, conn_id, channel):
        if fields["id"] == 6:
            raise RuntimeError("a bug in this kind's adopter")
        return cls(conn_id, listener, fields, fds)
    monkeypatch.setitem(connection._ADOPTERS, "datagram", adopt.__get__(Datagram))

    async def run():
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        server, receiving = _receiver(loop, theirs)
        sender = Channel(ours, lambda *a: None, name="handoff to test")
        token = claim.BatchToken()
        conn_fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(2)]
        msg, fds = _batch([5, 6], conn_fds, token.fd)
        reply = await sender.request(msg, fds, timeout=5)
        held = list(server.worker.connections.values())
        token.close()
        sender.close()
        receiving.close()
        for fd in conn_fds:
            os.close(fd)
        return reply, held
    before = len(os.listdir("/proc/self/fd"))
    reply, held = asyncio.run(run())
    assert reply["type"] == "adopted", reply
    assert (reply["ids"], reply["new_ids"]) == ([5], {5: 100})
    assert reply["refused"] == {6: "its datagram adopter failed"}
    assert [c.id for c in held] == [100] and held[0].started
    assert fd_is_open(held[0].fds[0]), "the adopted connection's descriptor was closed"
    os.close(held[0].fds[0])
    assert len(os.listdir("/proc/self/fd")) == before     # the refused record's closed once


def test_adopted_connections_start_only_once_the_answer_left(datagram_kind):
    async def run():
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        server, channel = _receiver(loop, theirs)
        channel.send({"type": "filler", "data": b"x" * (1 << 20)})    # the peer reads nothing yet
        token = claim.BatchToken()
        conn_fd = os.open("/dev/null", os.O_RDONLY)
        msg, fds = _batch([5], [conn_fd], token.fd)
        socket.send_fds(ours, [encode({**msg, "id": 1}, len(fds))], fds)
        for _ in range(200):
            await asyncio.sleep(0.005)
            if server.worker.connections:
                break
        [adopted] = server.worker.connections.values()
        queued = not adopted.started
        ours.setblocking(False)
        while not adopted.started:          # the sender reads: the answer leaves
            try:
                ours.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.005)
        channel.close()
        ours.close()
        token.close()
        os.close(conn_fd)
        os.close(adopted.fds[0])
        return queued
    assert asyncio.run(asyncio.wait_for(run(), 10)), "started while its answer was still queued"
