"""TlsTransport (worker/tls/transport.py) shows a protocol what uvloop's own transport shows
it: the same callbacks in the same order, the same write-buffer marks. Each case runs one
recording protocol on a uvloop transport over plain TCP and on Baton's TLS transport, with
a real client on the other end of a real socket pair (a thread), and compares the two
recordings."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading

import pytest
import uvloop

from baton.worker.tls.server import TlsServer
from baton.worker.tls.transport import TlsAcceptor, TlsTransport

from ..tls_certs import leaf, make_ca
from .test_tls_server import spec

BULK = 1 << 20


class Recorder(asyncio.Protocol):
    """Writes BULK bytes at connection_made with a 64 KiB high-water mark, records every
    callback (data coalesced), and says the same things back on each data chunk."""

    def __init__(self, done: asyncio.Future, high: int = 65536) -> None:
        self.events: list = []
        self.done = done
        self.high = high
        self.transport = None

    def _note(self, event) -> None:
        if event == "data" and self.events and self.events[-1] == "data":
            return
        self.events.append(event)

    def connection_made(self, transport) -> None:
        self._note("made")
        self.transport = transport
        transport.set_write_buffer_limits(high=self.high)
        transport.write(b"x" * BULK)
        self._note(("buffered", transport.get_write_buffer_size() > self.high))

    def data_received(self, data) -> None:
        self._note("data")

    def eof_received(self):
        self._note("eof")
        return False

    def pause_writing(self) -> None:
        self._note("pause")

    def resume_writing(self) -> None:
        self._note(("resume", self.transport.get_write_buffer_size() <= self.high // 4))

    def connection_lost(self, exc) -> None:
        self._note(("lost", exc))
        self.done.set_result(None)


def _client(sock: socket.socket, wrap) -> None:
    """Read BULK bytes, send a line, half-close, read to the end."""
    conn = wrap(sock) if wrap else sock
    got = 0
    while got < BULK:
        data = conn.recv(65536)
        assert data
        got += len(data)
    conn.sendall(b"bye\n")
    conn.shutdown(socket.SHUT_WR)       # a bare FIN, for TLS too (no close_notify)
    conn.settimeout(10)                 # (an SSLSocket reads raw bytes after shutdown)
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass
    conn.close()


def _run(tls: bool) -> list:
    ca = make_ca("ecdsa")
    server = TlsServer(spec(leaf(ca, "ecdsa")))
    loop = uvloop.new_event_loop()
    try:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        wrap = None
        if tls:
            ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
            wrap = lambda s: ctx.wrap_socket(s, server_hostname="localhost")   # noqa: E731
        client = threading.Thread(target=_client, args=(theirs, wrap), daemon=True)
        client.start()
        done = loop.create_future()
        protocol = Recorder(done)

        async def serve():
            if tls:
                TlsAcceptor(loop, ours, server, lambda t: t.start(protocol),
                            lambda reason: done.set_exception(AssertionError(reason))).start()
            else:
                await loop.connect_accepted_socket(lambda: protocol, ours)
            await asyncio.wait_for(done, 20)
        loop.run_until_complete(serve())
        client.join(10)
        return protocol.events
    finally:
        loop.close()


def test_the_tls_transport_calls_the_protocol_as_uvloop_does():
    plain = _run(tls=False)
    # pause_writing comes from inside write(), before it returns.
    assert plain == ["made", "pause", ("buffered", True), ("resume", True), "data", "eof",
                     ("lost", None)]
    assert _run(tls=True) == plain


@pytest.mark.parametrize("tls", [False, True])
def test_write_limits_are_checked_as_uvloop_checks_them(tls):
    loop = uvloop.new_event_loop()
    try:
        a, b = socket.socketpair()
        transports = []

        class Sink(asyncio.Protocol):
            def connection_made(self, transport):
                transports.append(transport)

        async def make():
            if tls:
                return TlsTransport(loop, a, None, bytearray(), None)
            transport, _ = await loop.connect_accepted_socket(Sink, a)
            return transport
        transport = loop.run_until_complete(make())
        transport.set_write_buffer_limits(high=100)
        assert transport.get_write_buffer_limits() == (25, 100)
        transport.set_write_buffer_limits(low=10)
        assert transport.get_write_buffer_limits() == (10, 40)
        with pytest.raises(ValueError):
            transport.set_write_buffer_limits(high=10, low=20)
        assert transport.can_write_eof() is True
        assert transport.get_extra_info("socket") is not None
        assert transport.get_extra_info("nonexistent", "default") == "default"
        a.close()
        b.close()
    finally:
        loop.close()
