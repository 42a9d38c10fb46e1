"""An HTTP connection's own timeouts, on a uvloop loop as in a worker (the connection-per-
request case arms them on every connection): the connection's idle timeout drains an idle
connection (downstream_cx_idle_timeout), the delayed close ends a client that does not close
after a codec error's reply, a route timeout answers 504 (upstream_rq_timeout); each never
early; and a connection that ends leaves none of its timers armed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import uvloop

from baton.worker.proxy.http.connection_manager import HttpConnection

from .test_http_express import REQUEST, RESPONSE, FakeTransport, Rig

CLOSE_REQUEST = REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
TIMEOUT = 0.2
SLACK = 0.15            # the loop's own lateness on a busy machine
# libuv keeps its clock in whole milliseconds: a timer due at t fires when loop.time() may
# still read a hair under t (0.19999999 for 0.2 was seen), so a duration measured by
# loop.time() is on time from TIMEOUT - EARLY.
EARLY = 0.001
TIMERS = ("idle_timer", "header_timer", "duration_timer", "stream_timer", "deadline_timer",
          "drain_timer", "hold_timer", "unsent_poll", "lingering")


class HalfClosing(FakeTransport):
    eof_written = False

    def can_write_eof(self):
        return True

    def write_eof(self):
        self.eof_written = True


@pytest.fixture
def loop():
    loop = uvloop.new_event_loop()
    yield loop
    loop.close()


def _run_until(loop, done, limit: float, start: float | None = None) -> float:
    """Run the loop until done() or `limit` seconds; the seconds it took since `start` (the
    loop's time when the timer was armed; default now)."""
    if start is None:
        start = loop.time()

    async def wait():
        while not done() and loop.time() - start < limit:
            await asyncio.sleep(0.005)
    loop.run_until_complete(wait())
    return loop.time() - start


def _connection(rig, transport) -> HttpConnection:
    conn = HttpConnection(rig.worker, rig.conn.listener, rig.conn.chain, ("127.0.0.1", 40001),
                          None, 2)
    conn.connection_made(transport)
    return conn


def _answer(rig, conn) -> None:
    """The request `conn` sent upstream gets the upstream's response."""
    up = rig.busy_upstream()
    up.transport.take()
    up.data_received(RESPONSE)


def test_the_idle_timeout_drains_an_idle_connection(tmp_path: Path, loop):
    rig = Rig(tmp_path, loop)
    rig.conn.hcm.idle_timeout = TIMEOUT
    down = FakeTransport()
    armed = loop.time()
    conn = _connection(rig, down)
    took = _run_until(loop, lambda: down.aborted, 3, armed)
    assert down.aborted and conn.closed
    assert TIMEOUT - EARLY <= took <= TIMEOUT + SLACK
    assert rig.worker.stats.counters["http.ingress_http.downstream_cx_idle_timeout"] == 1


def test_the_delayed_close_ends_a_client_that_does_not_close(tmp_path: Path, loop):
    rig = Rig(tmp_path, loop)
    rig.conn.hcm.delayed_close_timeout = TIMEOUT
    down = HalfClosing()
    conn = _connection(rig, down)
    armed = loop.time()
    conn.data_received(b"BAD\r\n\r\n")      # a codec error's 400 arms the delayed close
    assert down.take().startswith(b"HTTP/1.1 400 ")
    # The FIN is held until the client closes or the timer fires, as Envoy holds it.
    assert conn.closed and not down.eof_written and not down.aborted
    took = _run_until(loop, lambda: down.aborted, 3, armed)
    assert down.aborted
    assert TIMEOUT - EARLY <= took <= TIMEOUT + SLACK
    conn.connection_lost(None)                  # (what the transport's close() calls)
    assert rig.worker.stats.counters[
        "http.ingress_http.downstream_cx_delayed_close_timeout"] == 1


def test_a_close_after_a_request_read_whole_does_not_linger(tmp_path: Path, loop):
    """`Connection: close` on a request read whole: the socket closes once the response is
    written, with no half close and no delayed close (Envoy 1.40's FlushWrite), a local
    close."""
    rig = Rig(tmp_path, loop)
    down = HalfClosing()
    conn = _connection(rig, down)
    conn.data_received(CLOSE_REQUEST)
    _answer(rig, conn)
    assert down.take().endswith(RESPONSE.partition(b"\r\n\r\n")[2])
    assert conn.closed and down.aborted and not down.eof_written
    assert conn.lingering is None
    counters = rig.worker.stats.counters
    assert (counters["http.ingress_http.downstream_cx_destroy"],
            counters["http.ingress_http.downstream_cx_destroy_local"]) == (1, 1)


def test_a_route_timeout_answers_504(tmp_path: Path, loop):
    rig = Rig(tmp_path, loop, route_extra=", timeout: 0.2s")
    armed = loop.time()
    rig.conn.data_received(REQUEST)
    took = _run_until(loop, lambda: b"504" in b"".join(rig.down.written), 3, armed)
    reply = rig.down.take()
    assert reply.startswith(b"HTTP/1.1 504 ") and reply.endswith(b"upstream request timeout")
    assert TIMEOUT - EARLY <= took <= TIMEOUT + SLACK
    assert rig.worker.stats.counters["cluster.upstream.upstream_rq_timeout"] == 1


def test_a_connection_that_ends_leaves_no_timer_armed(tmp_path: Path, loop):
    rig = Rig(tmp_path, loop)
    down = HalfClosing()
    conn = _connection(rig, down)
    conn.data_received(CLOSE_REQUEST)
    # The stream sweep rides the route deadline's timer (due first): no timer of its own.
    assert conn.idle_timer is not None and conn.deadline_timer is not None and conn.sweep_due
    _answer(rig, conn)
    conn.eof_received()                         # the client closes after the response
    conn.connection_lost(None)
    assert [name for name in TIMERS if getattr(conn, name) is not None] == []


def test_the_stream_sweep_rides_the_route_deadlines_timer_and_keeps_its_time(tmp_path: Path,
                                                                              loop):
    """A route timeout due before the stream sweep's first look: no sweep timer yet, the
    deadline's timer arms it when it fires, for the same time (one loop timer a connection
    per request, not two). A stream that outlives that timer (here its deadline cleared, as
    a response's end clears it) still gets its stream_idle_timeout never early, at most a
    sweep interval late."""
    rig = Rig(tmp_path, loop, route_extra=", timeout: 0.05s, idle_timeout: 0.4s")
    rig.conn.hcm.shortest_idle = 0.4                    # a sweep every 0.1 s
    conn = rig.conn
    armed = loop.time()
    conn.data_received(REQUEST)
    (stream,) = conn.streams.values()
    assert conn.deadline_timer is not None and conn.stream_timer is None and conn.sweep_due
    stream.deadline = 0.0
    _run_until(loop, lambda: conn.stream_timer is not None, 3, armed)
    assert conn.stream_timer is not None and not conn.sweep_due
    took = _run_until(loop, lambda: b"stream timeout" in b"".join(rig.down.written), 3, armed)
    reply = rig.down.take()         # (the request was whole: Envoy's 504)
    assert reply.startswith(b"HTTP/1.1 504 ") and reply.endswith(b"\r\n\r\nstream timeout")
    assert 0.4 - EARLY <= took <= 0.4 + 0.1 + SLACK
    assert rig.worker.stats.counters["http.ingress_http.downstream_rq_idle_timeout"] == 1


def test_an_idle_timeout_before_any_request_closes_at_once(tmp_path: Path, loop):
    """No request read: Envoy 1.40 has no codec yet and closes at once (FlushWrite), no
    delayed close; after a request, the idle timeout drains the connection and its close,
    drain_timeout later, is a delayed one."""
    rig = Rig(tmp_path, loop)
    rig.conn.hcm.idle_timeout = TIMEOUT
    rig.conn.hcm.drain_timeout = TIMEOUT
    silent, served = HalfClosing(), HalfClosing()
    quiet = _connection(rig, silent)
    used = _connection(rig, served)
    used.data_received(REQUEST)
    _answer(rig, used)
    _run_until(loop, lambda: quiet.closed and used.closed, 3)
    assert quiet.closed and silent.aborted and not silent.eof_written and quiet.lingering is None
    assert used.closed and not served.eof_written and not served.aborted and \
        used.lingering is not None              # (the FIN held: the delayed close)
    used.eof_received()                         # the client's close ends the delayed close
    assert served.aborted


def test_the_idle_timeout_drains_before_it_closes(tmp_path: Path, loop):
    """After a request, the idle timeout starts Envoy 1.40's drain sequence: nothing is sent,
    a request within drain_timeout is answered with `connection: close` and the connection
    stays, and drain_timeout after the idle timeout it closes with its FIN held (the delayed
    close), not at that response's end."""
    rig = Rig(tmp_path, loop)
    rig.conn.hcm.idle_timeout = TIMEOUT
    rig.conn.hcm.drain_timeout = 2 * TIMEOUT
    down = HalfClosing()
    conn = _connection(rig, down)
    conn.data_received(REQUEST)
    _answer(rig, conn)
    assert b"connection: close" not in down.take().lower()
    armed = loop.time()
    _run_until(loop, lambda: conn.idle_draining, 3, armed)
    assert not conn.closed and down.take() == b""
    assert rig.worker.stats.counters["http.ingress_http.downstream_cx_idle_timeout"] == 1
    conn.data_received(REQUEST)
    _answer(rig, conn)
    reply = down.take()
    assert reply.startswith(b"HTTP/1.1 200 ") and b"\r\nconnection: close\r\n" in reply.lower()
    assert not conn.closed
    took = _run_until(loop, lambda: conn.closed, 3, armed)
    assert 3 * TIMEOUT - EARLY <= took <= 3 * TIMEOUT + SLACK
    assert conn.lingering is not None and not down.eof_written and not down.aborted


class Unread(HalfClosing):
    """A client that does not read: `unsent` bytes stay in the transport's buffer, so its
    close() waits for them; abort() drops them."""
    unsent = 65536
    dropped = False

    def get_write_buffer_size(self):
        return self.unsent

    def abort(self):
        self.dropped = self.aborted = True


@pytest.mark.parametrize("progress", [False, True], ids=["stuck", "writing-slowly"])
def test_a_close_whose_bytes_are_not_written_ends_after_delayed_close_timeout(
        tmp_path: Path, loop, progress):
    """A response that ends its connection (FlushWrite, no delayed close) but stays unwritten
    (the client does not read): delayed_close_timeout after the close, the socket is dropped
    with the rest unsent and downstream_cx_delayed_close_timeout counted, once (Envoy bounds
    FlushWrite's flush by that timer). Writes going on restart the wait, as in Envoy. A close
    with everything written arms nothing (test_a_close_after_a_request_read_whole_...)."""
    rig = Rig(tmp_path, loop)
    rig.conn.hcm.delayed_close_timeout = TIMEOUT
    down = Unread()
    conn = _connection(rig, down)
    conn.data_received(CLOSE_REQUEST)
    _answer(rig, conn)
    armed = loop.time()
    assert conn.closed and down.aborted and not down.eof_written and not down.dropped
    assert conn.lingering is not None
    if progress:
        _run_until(loop, lambda: False, TIMEOUT / 2)
        down.unsent -= 1000
    took = _run_until(loop, lambda: down.dropped, 3, armed)
    wait = 2 * TIMEOUT if progress else TIMEOUT
    assert down.dropped and wait - EARLY <= took <= wait + SLACK
    conn.connection_lost(None)                  # (what the transport's abort() calls)
    counters = rig.worker.stats.counters
    assert [counters["http.ingress_http." + name] for name in (
        "downstream_cx_destroy", "downstream_cx_destroy_local",
        "downstream_cx_delayed_close_timeout")] == [1, 1, 1]
    assert [name for name in TIMERS if getattr(conn, name) is not None] == []


@pytest.mark.parametrize("headers, idle, answer", [
    (None, TIMEOUT, (b"stream timeout", "downstream_rq_idle_timeout")),
    (TIMEOUT, 300.0, (b"request header timeout", "downstream_rq_header_timeout")),
    (1.0, TIMEOUT, (b"stream timeout", "downstream_rq_idle_timeout")),
], ids=["stream-idle-only", "headers-first", "stream-idle-first"])
def test_a_head_that_stops_arriving_gets_the_408_of_the_shorter_head_timeout(
        tmp_path: Path, loop, headers, idle, answer):
    """A request head begun and never finished: Envoy's stream exists from its first byte,
    so request_headers_timeout and stream_idle_timeout both time it; the shorter answers,
    never early, and the connection's idle timeout (shorter still) does not close it."""
    rig = Rig(tmp_path, loop)
    hcm = rig.conn.hcm
    hcm.request_headers_timeout, hcm.stream_idle_timeout = headers, idle
    hcm.idle_timeout = TIMEOUT / 2
    down = HalfClosing()
    conn = _connection(rig, down)
    armed = loop.time()
    conn.data_received(REQUEST[:20])
    took = _run_until(loop, lambda: conn.closed, 3, armed)
    reply = down.take()
    body, stat = answer
    assert reply.startswith(b"HTTP/1.1 408 ") and reply.endswith(b"\r\n\r\n" + body)
    assert TIMEOUT - EARLY <= took <= TIMEOUT + SLACK
    counters = rig.worker.stats.counters
    assert counters["http.ingress_http." + stat] == 1
    assert counters["http.ingress_http.downstream_cx_idle_timeout"] == 0


def test_a_head_begun_behind_a_request_in_one_read_is_timed_too(tmp_path: Path, loop):
    """A whole request and the start of the next one's head in one read, then nothing: the
    first is served, and the stalled head behind it is answered by the stream idle timeout
    (from the idle timeout's look at the latest), never held for ever."""
    rig = Rig(tmp_path, loop)
    hcm = rig.conn.hcm
    hcm.request_headers_timeout, hcm.stream_idle_timeout = None, TIMEOUT
    hcm.idle_timeout = TIMEOUT / 2
    down = HalfClosing()
    conn = _connection(rig, down)
    conn.data_received(REQUEST + REQUEST[:20])
    _answer(rig, conn)
    assert down.take().endswith(RESPONSE.partition(b"\r\n\r\n")[2])
    armed = loop.time()
    took = _run_until(loop, lambda: conn.closed, 3, armed)
    assert conn.closed and down.take().endswith(b"\r\n\r\nstream timeout")
    assert took <= TIMEOUT / 2 + TIMEOUT + SLACK
    assert rig.worker.stats.counters["http.ingress_http.downstream_rq_idle_timeout"] == 1
