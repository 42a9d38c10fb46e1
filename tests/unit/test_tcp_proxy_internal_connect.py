"""tcp_proxy's connect to an internal listener (tcp_proxy.py `_connect_internal`): a connect
that fails (no such listener, EMFILE making the socket pair) is a refused connect, with
nothing counted active and no timer left armed; and the deferred `_connected` does nothing
once the upstream it was for is gone (the connection closed or was exported meanwhile)."""

from __future__ import annotations

import errno
import socket
from collections import defaultdict
from types import SimpleNamespace

from baton.worker.connection import Lifecycle
from baton.worker.proxy import internal_listener
from baton.worker.proxy.tcp_proxy import TcpProxyConnection


class Loop:
    def __init__(self):
        self.soon, self.timers = [], []

    def call_soon(self, callback):
        self.soon.append(callback)

    def call_later(self, delay, callback):
        timer = SimpleNamespace(cancelled=False)
        timer.cancel = lambda: setattr(timer, "cancelled", True)
        self.timers.append(timer)
        return timer

    def remove_writer(self, fd):
        pass


class Probe(TcpProxyConnection):
    def _connected(self):
        raise AssertionError("connected an upstream that is gone")


def connecting(loop) -> TcpProxyConnection:
    conn = object.__new__(Probe)
    stats = SimpleNamespace(counters=defaultdict(int), gauges=defaultdict(int))
    conn.worker = SimpleNamespace(connection_closed=lambda c: None)
    conn.loop, conn.stats, conn.state = loop, stats, Lifecycle.CONNECTING
    conn.listener = SimpleNamespace(access_logs=(), stat_cx_active="listener.active")
    conn.chain = SimpleNamespace(network_filters=(), access_logs=())
    conn.config = {"max_connect_attempts": 1}
    conn.cluster = SimpleNamespace(stat=defaultdict(str, upstream_cx_active="cluster.active"),
                                   active=0, connect_timeout=1.0, type="STATIC")
    conn.host = SimpleNamespace(address="internal:inner", active=0, total=0, connect_fail=0,
                                stat_id="inner")
    conn.client = SimpleNamespace(close=lambda: None)
    conn.tried, conn.attempts, conn.upstream, conn.timer = [], 1, None, None
    conn.pumps, conn.peer, conn.original, conn.reset_client = None, None, None, False
    return conn


def test_a_failed_internal_connect_counts_nothing_active_and_arms_no_timer(monkeypatch):
    def emfile(*args):
        raise OSError(errno.EMFILE, "Too many open files")
    monkeypatch.setattr(internal_listener, "connect", emfile)
    loop = Loop()
    conn = connecting(loop)
    with monkeypatch.context() as m:
        m.setattr(socket, "socket", emfile)         # at EMFILE no other socket can be made
        conn._connect_internal()
    assert conn.state is Lifecycle.CLOSED
    assert (conn.cluster.active, conn.host.active, conn.stats.gauges["cluster.active"]) == (0, 0, 0)
    assert conn.host.connect_fail == 1
    assert all(timer.cancelled for timer in loop.timers)
    assert not loop.soon


def test_the_deferred_connected_does_nothing_once_the_upstream_is_released(monkeypatch):
    class Socket:
        closed = False

        def close(self):
            self.closed = True

        def fileno(self):
            return -1
    monkeypatch.setattr(internal_listener, "connect", lambda *args: Socket())
    loop = Loop()
    conn = connecting(loop)
    conn._connect_internal()
    assert (conn.cluster.active, conn.host.active, conn.stats.gauges["cluster.active"]) == (1, 1, 1)
    conn.timer.cancel()
    conn.timer = None
    conn._release_upstream()        # as export() does for a connection still connecting
    for callback in loop.soon:
        callback()
    assert (conn.cluster.active, conn.host.active, conn.stats.gauges["cluster.active"]) == (0, 0, 0)
