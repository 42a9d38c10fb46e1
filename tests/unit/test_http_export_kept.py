"""An HTTP connection whose export fails (EMFILE at the descriptor's dup) or whose record the
receiver refuses serves on in its worker (worker/migration.py `_keep`, then `resume()`): it
must still be bound by every deadline export cancelled, not only the idle one (it kept its
max_connection_duration and HTTP/2's final-GOAWAY deadline for ever before)."""

from __future__ import annotations

import asyncio
import socket
import types

import pytest

from baton.worker.proxy.http import connection_move
from baton.worker.proxy.http.connection_manager import HttpConnection


class Transport:
    def __init__(self, sock):
        self.sock = sock
        self.reading = True

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def get_extra_info(self, name):
        return self.sock if name == "socket" else None


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _connection(loop, sock) -> HttpConnection:
    worker = types.SimpleNamespace(loop=loop)
    chain = types.SimpleNamespace(http_config=types.SimpleNamespace(idle_timeout=60.0), index=0)
    listener = types.SimpleNamespace(name="l", spec={})
    conn = HttpConnection(worker, listener, chain, None, None, 7)
    conn.transport = Transport(sock)
    conn.codec = types.SimpleNamespace(multiplexed=False, backlog=None)
    return conn


def test_a_failed_export_keeps_the_duration_and_final_goaway_deadlines(loop, monkeypatch):
    def no_descriptors(fd):
        raise OSError(24, "Too many open files")
    monkeypatch.setattr(connection_move.os, "dup", no_descriptors)
    with socket.socket() as sock:
        conn = _connection(loop, sock)
        conn.duration_timer = loop.call_at(loop.time() + 30, conn.drain)
        conn.drain_timer = loop.call_at(loop.time() + 5, conn._final_goaway)
        duration, final = conn.duration_timer.when(), conn.drain_timer.when()
        with pytest.raises(OSError):
            conn.export()
        assert conn.duration_timer is None and conn.drain_timer is None
        conn.resume()
        assert conn.transport.reading
        assert conn.duration_timer.when() == duration
        assert conn.drain_timer.when() == final
        assert conn.idle_timer is not None
        conn._cancel_timers()


def test_a_connection_without_those_deadlines_gets_none(loop, monkeypatch):
    monkeypatch.setattr(connection_move.os, "dup", lambda fd: (_ for _ in ()).throw(OSError(24, "x")))
    with socket.socket() as sock:
        conn = _connection(loop, sock)
        with pytest.raises(OSError):
            conn.export()
        conn.resume()
        assert conn.duration_timer is None and conn.drain_timer is None
        conn._cancel_timers()
