"""What an exchange writes while its connection's move is being answered is held
(inflight.ForwardedTransport) and bounded as a client socket's buffer is: past the connection's
buffer limit the upstream is paused (conn.pause_writing) until the held bytes are forwarded
(attach) or given back to the client (give_back). Before, a fast upstream grew the old
worker's memory by its whole body during a reload (and for as long as a late answer takes).
The new worker's own pause/resume may come before the answer: the upstream is read again only
once both are released. Nothing written is lost or reordered."""

from __future__ import annotations

import os
import socket

import pytest

from baton.worker.connection import Move
from baton.worker.proxy.http import inflight
from baton.worker.proxy.http.inflight import ForwardedTransport
from tests.unit.test_http_express import REQUEST, Rig, loop  # noqa: F401 - a fixture

LIMIT = 1000


class _Conn:
    """What ForwardedTransport uses of HttpConnection: its pause (the connection's
    pause_writing / resume_writing hold and release every stream's upstream)."""

    def __init__(self):
        self.write_paused = False
        self.calls: list = []

    def pause_writing(self):
        self.write_paused = True
        self.calls.append("pause")

    def resume_writing(self):
        self.write_paused = False
        self.calls.append("resume")


class _Channel:
    """A handoff channel whose socket takes every frame at once, or (`stalled`) none: those
    wait with their on_sent callbacks in `queued` until `take_all`."""

    closed = False

    def __init__(self, stalled: bool = False):
        self.sent: list = []
        self.stalled = stalled
        self.queued: list = []

    def send(self, msg):
        self.sent.append(msg)

    def send_counted(self, msg, size, on_sent):
        self.sent.append(msg)
        if self.stalled:
            self.queued.append((size, on_sent))
        else:
            on_sent(size)

    def take_all(self):
        queued, self.queued = self.queued, []
        for size, on_sent in queued:
            on_sent(size)


class _Client:
    """A client transport (high-water mark: LIMIT) whose socket takes nothing, or with
    `sent_at_once` all it is given."""

    def __init__(self, conn, sent_at_once: bool = False):
        self.conn, self.data, self.closed = conn, b"", False
        self.buffered, self.sent_at_once = 0, sent_at_once

    def write(self, data):
        self.data += data
        if self.sent_at_once:
            return
        was, self.buffered = self.buffered, self.buffered + len(data)
        if was <= LIMIT < self.buffered:
            self.conn.pause_writing()       # as asyncio's transport does past its mark

    def get_write_buffer_size(self):
        return self.buffered

    def close(self):
        self.closed = True


def _chunks(n: int) -> list[bytes]:
    return [bytes([65 + i]) * 300 for i in range(n)]


def test_held_bytes_past_the_limit_pause_the_upstream_until_forwarded():
    conn = _Conn()
    forwarded = ForwardedTransport(conn, limit=LIMIT)
    chunks = _chunks(5)
    for chunk in chunks[:3]:
        forwarded.write(chunk)
    assert conn.calls == [], "paused at or under the limit"
    forwarded.write(chunks[3])                  # 1200 > 1000
    assert conn.calls == ["pause"], "the held bytes grew past the limit, the upstream read on"
    forwarded.write(chunks[4])                  # what was already read is kept, not dropped
    assert conn.calls == ["pause"]
    channel = _Channel()
    forwarded.attach(channel, 42)
    assert b"".join(m["data"] for m in channel.sent) == b"".join(chunks)
    assert {m["id"] for m in channel.sent} == {42}
    assert conn.calls == ["pause", "resume"] and not conn.write_paused


def test_without_a_limit_nothing_pauses():
    """An RPC connection's (rpc/connection.py): it holds the answers to the requests in
    flight at its move, and its pause_writing would stop reading the client instead."""
    conn = _Conn()
    forwarded = ForwardedTransport(conn)
    for chunk in _chunks(10):
        forwarded.write(chunk)
    forwarded.attach(_Channel(), 42)
    assert conn.calls == []


def test_the_receivers_early_pause_outlasts_the_answer():
    """Its pause arrives before the answer (its messages follow the answer on the channel,
    and the answer is acted on a turn later): the answer releases only the hold's pause."""
    conn = _Conn()
    forwarded = ForwardedTransport(conn, limit=LIMIT)
    for chunk in _chunks(4):
        forwarded.write(chunk)
    forwarded.receiver_paused(True)
    forwarded.attach(_Channel(), 42)
    assert conn.calls == ["pause"] and conn.write_paused, "resumed while the receiver is full"
    forwarded.receiver_paused(False)
    assert conn.calls == ["pause", "resume"] and not conn.write_paused


def test_the_receivers_resume_does_not_release_the_holds_pause():
    conn = _Conn()
    forwarded = ForwardedTransport(conn, limit=LIMIT)
    forwarded.receiver_paused(True)
    for chunk in _chunks(4):
        forwarded.write(chunk)
    forwarded.receiver_paused(False)
    assert conn.write_paused, "the receiver's resume read the upstream past the held limit"
    forwarded.attach(_Channel(), 42)
    assert conn.calls == ["pause", "resume"]


def test_a_failed_move_gives_back_everything_and_the_client_transport_rules_then():
    conn = _Conn()
    forwarded = ForwardedTransport(conn, limit=LIMIT)
    chunks = _chunks(4)
    for chunk in chunks:
        forwarded.write(chunk)
    client = _Client(conn)
    forwarded.give_back(client)
    assert client.data == b"".join(chunks)
    # Past its mark the client's transport paused the connection itself and resumes it
    # when drained: the hold's release must not read the upstream meanwhile.
    assert conn.write_paused and conn.calls == ["pause", "pause"]


def test_a_failed_move_under_the_clients_mark_resumes_the_upstream():
    conn = _Conn()
    forwarded = ForwardedTransport(conn, limit=LIMIT)
    for chunk in _chunks(4):
        forwarded.write(chunk)
    client = _Client(conn, sent_at_once=True)
    forwarded.give_back(client)
    assert conn.calls == ["pause", "resume"] and not conn.write_paused


def test_an_exchange_that_ended_while_held_leaves_the_next_request_unpaused():
    """Its response done while held (the connection stays: served here if the move fails):
    nothing to resume, but the next request must not start its upstream paused."""
    conn = _Conn()
    conn.resume_writing = lambda: (_ for _ in ()).throw(AssertionError("resumed an ended one"))
    forwarded = ForwardedTransport(conn, limit=LIMIT)
    for chunk in _chunks(4):
        forwarded.write(chunk)
    forwarded.response_done()
    forwarded.give_back(_Client(conn, sent_at_once=True))
    assert not conn.write_paused


# -- a real connection (the connection manager, codec, straight step and upstream pool of
# tests/unit/test_http_express.py's Rig, on fake transports) -----------------------------

BODY = 8 << 20
CHUNK = 1 << 16


@pytest.fixture
def moving(tmp_path, loop):
    """A response of BODY bytes started, its connection exported with it in flight (record
    http1-inflight): (the rig, its upstream connection, the client's socket pair)."""
    yield from _moving(Rig(tmp_path, loop))


def _moving(rig):
    rig.conn.listener.spec = {}
    rig.worker.handoff_accepts = {inflight.RECORD: [1]}
    ours, theirs = socket.socketpair()
    extra = rig.down.get_extra_info
    rig.down.get_extra_info = lambda key, default=None: ours if key == "socket" else \
        extra(key, default)
    rig.down.set_protocol = lambda protocol: None
    rig.conn.data_received(REQUEST)
    upstream = rig.busy_upstream()
    upstream.transport.take()
    upstream.data_received(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % BODY + b"a" * CHUNK)
    rig.down.take()
    assert rig.conn.readiness() is Move.NOW
    assert rig.conn.export().kind == inflight.RECORD
    yield rig, upstream
    for sock in (ours, theirs):
        sock.close()
    if rig.conn.moving_fd >= 0:
        os.close(rig.conn.moving_fd)


def _feed(upstream, sent: int, until: int) -> int:
    """What the upstream sends while it is read, up to `until` bytes of body."""
    while upstream.transport.reading and sent < until:
        upstream.data_received(b"b" * CHUNK)
        sent += CHUNK
    return sent


def test_a_fast_upstream_is_paused_at_the_limit_while_the_move_is_answered(moving):
    rig, upstream = moving
    sent = _feed(upstream, CHUNK, BODY)
    assert sent < BODY, f"the whole {BODY}-byte body was read and held during the move"
    limit = rig.conn.hcm.buffer_limit
    assert limit < rig.conn.transport.held_bytes <= limit + CHUNK     # one read past it
    assert not upstream.transport.reading
    channel = _Channel()
    rig.conn.migrated(channel, 1001)            # adopted: the held bytes go to the new worker
    assert upstream.transport.reading, "the upstream stayed paused once its bytes were forwarded"
    assert _feed(upstream, sent, BODY) == BODY
    forwarded = b"".join(m["data"] for m in channel.sent if m["type"] == "data")
    assert forwarded == b"b" * (BODY - CHUNK), "bytes lost, added or reordered"
    assert channel.sent[-1] == {"type": "done", "id": 1001}


def test_the_receivers_pause_before_the_answer_keeps_the_upstream_paused(moving):
    rig, upstream = moving
    _feed(upstream, CHUNK, BODY)
    rig.conn.on_forwarded({"type": "pause", "id": rig.conn.id})
    rig.conn.migrated(_Channel(), 1001)
    assert not upstream.transport.reading, "read on while the new worker's client is full"
    rig.conn.on_forwarded({"type": "resume", "id": rig.conn.id})
    assert upstream.transport.reading


def test_a_refused_move_gives_the_held_bytes_to_the_client_and_reads_on(moving):
    rig, upstream = moving
    sent = _feed(upstream, CHUNK, BODY)
    rig.conn.resume()
    assert rig.conn.transport is rig.down and upstream.transport.reading
    assert _feed(upstream, sent, BODY) == BODY
    assert rig.down.take() == b"b" * (BODY - CHUNK), "bytes lost, added or reordered"


def test_once_attached_the_bytes_the_channel_has_not_sent_are_bounded_too(moving):
    """A receiver that stops reading its handoff channel (stopped, wedged) says no pause: what
    is forwarded waits in the channel's queue. Past the limit of this connection's bytes
    queued there the upstream pauses, and reads on once they left (down to half the limit).
    Before, the queue took the whole body."""
    rig, upstream = moving
    channel = _Channel(stalled=True)
    rig.conn.migrated(channel, 1001)
    sent = _feed(upstream, CHUNK, BODY)
    assert sent < BODY, f"the whole {BODY}-byte body was queued for a receiver that reads nothing"
    limit = rig.conn.hcm.buffer_limit
    queued = sum(size for size, _ in channel.queued)
    assert limit < queued <= limit + CHUNK and not upstream.transport.reading
    channel.take_all()
    assert upstream.transport.reading, "still paused once the channel sent its bytes"
    channel.stalled = False
    assert _feed(upstream, sent, BODY) == BODY
    forwarded = b"".join(m["data"] for m in channel.sent if m["type"] == "data")
    assert forwarded == b"b" * (BODY - CHUNK), "bytes lost, added or reordered"
    assert channel.sent[-1] == {"type": "done", "id": 1001}


def test_the_channels_release_does_not_read_past_the_receivers_pause():
    conn = _Conn()
    forwarded = ForwardedTransport(conn, limit=LIMIT)
    channel = _Channel(stalled=True)
    forwarded.attach(channel, 42)
    for chunk in _chunks(4):
        forwarded.write(chunk)
    assert conn.calls == ["pause"]
    forwarded.receiver_paused(True)
    channel.take_all()
    assert conn.write_paused, "the channel's release read on while the receiver is full"
    forwarded.receiver_paused(False)
    assert conn.calls == ["pause", "resume"] and not conn.write_paused


@pytest.fixture
def moving_again(tmp_path, loop):
    """`moving` for a connection that was itself adopted with a response in flight (its
    ForwardedResponse done): the old side of its second move."""
    rig = Rig(tmp_path, loop)
    rig.conn.adopt_forwarded_response(inflight.ForwardedResponse(rig.conn, _Channel(), 3))
    rig.conn.on_forwarded({"type": "done", "id": rig.conn.id})
    assert rig.conn.active is None and not rig.conn.streams
    yield from _moving(rig)


def test_a_connection_that_moved_in_flight_before_hears_its_new_receiver(moving_again):
    """Its first move's stand-in (ForwardedResponse, done) took the second receiver's pause,
    resume and reset, and dropped them: the upstream read on past a full client, and an
    exchange whose client left went on."""
    rig, upstream = moving_again
    rig.conn.migrated(_Channel(), 1001)
    rig.conn.on_forwarded({"type": "pause", "id": rig.conn.id})
    assert not upstream.transport.reading, "read on while the new worker's client is full"
    rig.conn.on_forwarded({"type": "resume", "id": rig.conn.id})
    assert upstream.transport.reading
    rig.conn.on_forwarded({"type": "reset", "id": rig.conn.id})
    assert rig.conn.closed and not rig.conn.streams, "the exchange outlived its client"


def test_an_adopted_response_in_the_idle_drain_window_carries_its_end(tmp_path, loop):
    """Record http1-inflight's idle_drain (the seconds left of the idle timeout's drain window):
    the adopted connection drains as the old one did, its window ending when the old one's
    would have (close_policy.py `_idle_drained`), and answers with connection: close
    meanwhile."""
    rig = Rig(tmp_path, loop)
    response = inflight.ForwardedResponse(rig.conn, _Channel(), 3, idle_drain=4.5)
    rig.conn.adopt_forwarded_response(response)
    assert rig.conn.idle_draining and rig.conn.drain_timer is not None
    assert abs(rig.conn.drain_timer.when() - loop.time() - 4.5) < 0.5
    assert rig.conn.drain_timer._callback == rig.conn._idle_drained
    rig.conn.on_forwarded({"type": "done", "id": rig.conn.id})
    assert b"connection: close" in rig.exchange()[1].lower()
