"""The two halves of a moving RPC connection (worker/proxy/rpc/move.py) on fakes: what the
old half writes while the move is answered is held, given back in order when the move fails,
forwarded frame by frame when it succeeds; the new half writes forwarded frames that came
before its socket, and a receiver that does not adopt the record never gets it."""

from __future__ import annotations

import asyncio
import socket

from baton.supervisor.handoff import protocol
from baton.worker.connection import Move
from baton.worker.proxy.rpc import move
from baton.worker.proxy.rpc.chain import RpcChain
from baton.worker.proxy.rpc.connection import RpcConnection
from baton.worker.stats import Stats


class FakeTransport:
    def __init__(self, sock):
        self.sock = sock
        self.written: list[bytes] = []
        self.reading = True
        self.closed = False

    def write(self, data):
        self.written.append(bytes(data))

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def get_write_buffer_size(self):
        return 0

    def get_extra_info(self, name, default=None):
        return self.sock if name == "socket" else default

    def set_protocol(self, protocol):
        pass

    def abort(self):
        self.closed = True

    close = abort


class FakeChannel:
    closed = False

    def __init__(self):
        self.sent: list[dict] = []

    def send(self, msg):
        self.sent.append(msg)

    async def drained(self, timeout):
        pass


class FakeWorker:
    def __init__(self, loop, accepts=(move.RECORD,)):
        self.loop = loop
        self.stats = Stats()
        self.connections = {}
        self.handoff_accepts = {kind: [1] for kind in accepts}

    def connection_closed(self, conn):
        self.connections.pop(conn.id, None)


class FakeListener:
    name = "l"
    stat_cx_active = "listener.l.downstream_cx_active"


class FakeChain:
    index = 0

    def __init__(self):
        self.rpc = RpcChain("dubbo", {"stat_prefix": "p", "route_configs": []})


def old_half(loop, accepts=(move.RECORD,)):
    worker = FakeWorker(loop, accepts)
    conn = RpcConnection(worker, FakeListener(), FakeChain(), ("127.0.0.1", 1), 7)
    a, b = socket.socketpair()
    conn.connection_made(FakeTransport(a))
    conn.exchanges.add("in flight")        # a request the old half still serves
    worker.connections[conn.id] = conn
    return worker, conn, (a, b)


def test_a_failed_move_gives_back_what_was_written_meanwhile_in_order():
    loop = asyncio.new_event_loop()
    try:
        worker, conn, socks = old_half(loop)
        client = conn.transport
        conn.decoder.feed(b"\xda\xbb\x00")          # half a header: travels as input
        assert conn.readiness() is Move.NOW
        export = conn.export()
        assert export.kind == move.RECORD and not client.reading
        assert export.fields["input"] == b"\xda\xbb\x00" and export.fields["inflight"] == 1
        conn.transport.write(b"answer-1")           # answers while the move is answered
        conn.transport.write(b"answer-2")
        assert client.written == []
        conn.resume()
        assert client.written == [b"answer-1", b"answer-2"] and client.reading
        assert conn.transport is client and conn.moved_to is None
        for s in socks:
            s.close()
    finally:
        loop.close()


def test_an_adopted_move_forwards_each_frame_then_done_and_ends_here():
    loop = asyncio.new_event_loop()
    try:
        worker, conn, socks = old_half(loop)
        conn.export()
        conn.transport.write(b"early")
        channel = FakeChannel()
        conn.migrated(channel, 42)
        assert channel.sent == [{"type": "data", "id": 42, "data": b"early"}]
        assert conn.uses_channel(channel)
        conn.transport.write(b"late")
        conn.exchange_done("in flight")             # its last answer is out
        loop.run_until_complete(asyncio.sleep(0))   # the close waits for the channel to drain
        assert [m["type"] for m in channel.sent] == ["data", "data", "done"]
        assert conn.closed and conn.id not in worker.connections
        for s in socks:
            s.close()
    finally:
        loop.close()


def test_a_receiver_that_does_not_adopt_rpc_leaves_the_connection_here():
    loop = asyncio.new_event_loop()
    try:
        worker, conn, socks = old_half(loop, accepts=("http1-idle",))
        assert conn.readiness() is Move.NEVER       # it drains where it is
        export = conn.export()
        assert protocol.encode_record(2, {"http1-idle": [1]}, export.kind, export.fields,
                                      export.fds) is None
        conn.resume()
        for s in socks:
            s.close()
    finally:
        loop.close()


def test_the_new_half_writes_answers_that_came_before_its_socket():
    loop = asyncio.new_event_loop()
    try:
        worker = FakeWorker(loop)
        conn = RpcConnection(worker, FakeListener(), FakeChain(), None, 9)
        conn.forwarded = move.ForwardedReplies(conn, FakeChannel(), 7)
        conn.on_forwarded({"type": "data", "id": 9, "data": b"frame"})
        a, b = socket.socketpair()
        conn.connection_made(FakeTransport(a))
        assert conn.transport.written == [b"frame"]
        assert conn.readiness() is Move.WHEN_IDLE   # not again until the old worker is done
        conn.on_forwarded({"type": "done", "id": 9})
        assert conn.forwarded is None and conn.readiness() is Move.NOW
        a.close()
        b.close()
    finally:
        loop.close()


def test_a_client_catching_up_does_not_let_requests_in_while_the_connection_moves():
    """Reading is paused for two reasons, each lifted on its own: the client's write side
    draining must not resume reading a connection held for (or crossing) a move, and a failed
    move must not resume reading for a client that still reads slower than its answers."""
    loop = asyncio.new_event_loop()
    try:
        worker, conn, socks = old_half(loop)
        client = conn.transport
        conn.pause_writing()                        # the client reads slowly
        conn.export()
        conn.resume_writing()                       # ... and catches up while the move runs
        assert not client.reading
        conn.pause_writing()
        conn.resume()                               # the move failed: still the slow client
        assert conn.transport is client and not client.reading
        conn.resume_writing()
        assert client.reading
        for s in socks:
            s.close()
    finally:
        loop.close()


def test_an_export_that_fails_before_taking_the_transport_leaves_the_connection_serving(monkeypatch):
    """EMFILE at the descriptor's dup: the mover keeps the connection here (conn.resume());
    it must get its transport back and read again, not lose it."""
    import os
    loop = asyncio.new_event_loop()
    try:
        worker, conn, socks = old_half(loop)
        client = conn.transport

        def no_descriptors(fd):
            raise OSError(24, "Too many open files")
        monkeypatch.setattr(os, "dup", no_descriptors)
        try:
            conn.export()
        except OSError:
            pass
        else:
            raise AssertionError("export should have failed")
        monkeypatch.undo()
        conn.resume()
        assert conn.transport is client and client.reading and conn.moved_to is None
        for s in socks:
            s.close()
    finally:
        loop.close()
