"""A terminated CONNECT's upstream connect (connect_tunnel.py `TcpUpstream._open`): a socket
that cannot be made (EMFILE, EAFNOSUPPORT) is a failed connect the waiter hears of at once
(it killed the task and the stream hung until its route timeout), and an internal listener's
host needs no socket of its own (an AF_INET6 one was made for "internal:..." and closed)."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import defaultdict
from types import SimpleNamespace

from baton.worker.proxy import internal_listener
from baton.worker.proxy.http.connect_tunnel import TcpTunnelConnection, TcpUpstream


class Waiter:
    def __init__(self):
        self.failure = self.ready = None

    def on_pool_failure(self, reason, flags):
        self.failure = (reason, flags)

    def on_pool_ready(self, conn):
        self.ready = conn


def opened(address: str, monkeypatch) -> tuple[Waiter, TcpUpstream]:
    """The connect, with no socket to be made (the loop's own are made before)."""
    loop = asyncio.new_event_loop()
    try:
        worker = SimpleNamespace(loop=loop, upstream_mark=0, stats=SimpleNamespace(
            counters=defaultdict(int), gauges=defaultdict(int)))
        cluster = SimpleNamespace(stat=defaultdict(str), connect_timeout=1.0, active=0,
                                  buffer_limit=1 << 20, bind_source=lambda sock: 0)
        host = SimpleNamespace(address=address, port=15008, connect_fail=0, active=0,
                               stat_id=address)
        pool, waiter = TcpUpstream(worker, cluster, host), Waiter()
        with monkeypatch.context() as m:
            m.setattr(socket, "socket", no_socket)
            pool.request(waiter)
            loop.run_until_complete(asyncio.wait_for(pool.task, 5))
        if waiter.ready is not None:
            waiter.ready.abort(None)
        return waiter, pool
    finally:
        loop.close()


def no_socket(*args, **kwargs):
    raise OSError(errno.EMFILE, "Too many open files")


def test_a_socket_that_cannot_be_made_is_a_failed_connect(monkeypatch):
    waiter, pool = opened("127.0.0.1", monkeypatch)
    assert waiter.failure is not None and waiter.failure[1] == "UF"
    assert pool.host.connect_fail == 1


def test_an_internal_host_needs_no_socket_of_its_own(monkeypatch):
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    monkeypatch.setattr(internal_listener, "connect", lambda *args, **kwargs: ours)
    try:
        waiter, _ = opened("internal:main_internal", monkeypatch)
    finally:
        theirs.close()
    assert waiter.failure is None and waiter.ready is not None


class Transport:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append(name)


def tunnel_connection() -> tuple[TcpTunnelConnection, Transport]:
    worker = SimpleNamespace(stats=SimpleNamespace(counters=defaultdict(int), gauges=defaultdict(int)))
    cluster = SimpleNamespace(stat=defaultdict(str), active=1)
    pool = TcpUpstream(worker, cluster, SimpleNamespace(active=1))
    conn, transport = TcpTunnelConnection(pool), Transport()
    conn.transport = transport
    return conn, transport


def test_a_tunnel_whose_two_directions_ended_closes_after_its_buffered_bytes():
    conn, transport = tunnel_connection()
    conn.send_body(1, b"last bytes", True)
    conn.stream_done(1, True)
    assert transport.calls == ["write", "can_write_eof", "close"]   # no abort: no RST, no loss
    assert conn.closed and conn.pool.cluster.active == 0


def test_a_tunnel_whose_request_goes_on_is_reset_when_its_stream_ends():
    conn, transport = tunnel_connection()
    conn.stream_done(1, False)
    assert transport.calls == ["abort"]
