"""An HTTP connection is the worker's from accept on (worker/main.py accept_http), a moment
before uvloop has made its transport. A drain in that moment (an ECDS or LDS update replacing
its chain, a worker draining or stopping) raised AttributeError on the missing transport, a
traceback in the worker's log (seen in test_ecds_xds under load); it now drains the connection
as soon as it has one."""

from __future__ import annotations

import asyncio
import collections
import types

import pytest

from baton.worker.proxy.http.connection_manager import HttpConnection


class Transport:
    def __init__(self):
        self.closed = False
        self.eof = False

    def set_write_buffer_limits(self, high):
        pass

    def get_extra_info(self, name):
        return ("127.0.0.1", 10000) if name == "sockname" else None

    def can_write_eof(self):
        return True

    def is_closing(self):
        return self.closed

    def write_eof(self):
        self.eof = True

    def close(self):
        self.closed = True

    def get_write_buffer_size(self):
        return 0

    def write(self, data):
        pass


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _connection(loop) -> HttpConnection:
    stats = types.SimpleNamespace(counters=collections.Counter(), gauges=collections.Counter())
    worker = types.SimpleNamespace(loop=loop, stats=stats, connection_closed=lambda conn: None)
    hcm = types.SimpleNamespace(buffer_limit=1 << 20, stat_cx_total="cx_total",
                                stat_cx_active="cx_active", codec_type="AUTO", idle_timeout=0,
                                max_connection_duration=0, delayed_close_timeout=0,
                                stat_cx_destroy="cx_destroy", stat_cx_destroy_local="cx_local",
                                stat_cx_destroy_remote="cx_remote")
    chain = types.SimpleNamespace(http_config=hcm, index=0)
    listener = types.SimpleNamespace(name="l", spec={}, local_address=None,
                                     stat_cx_active="listener_cx_active")
    return HttpConnection(worker, listener, chain, None, None, 7)


@pytest.mark.parametrize("call", ["drain", "close", "abort"])
def test_told_to_go_before_its_transport_it_goes_when_the_transport_comes(loop, call):
    conn = _connection(loop)
    getattr(conn, call)()                   # raised AttributeError on transport None
    assert conn.draining and not conn.closed
    transport = Transport()
    conn.connection_made(transport)
    assert conn.closed and transport.closed
    gauges = conn.worker.stats.gauges
    assert gauges["cx_active"] == 0         # counted in by connection_made, out by its close
