"""Tests for worker/codecs/http2.py: the HTTP/2 codecs on bytes, in pairs (our client codec
against our server codec), against a raw h2 peer that is allowed to misbehave, and against
real clients (curl, h2load) through a tiny asyncio server."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import re
import shutil
import subprocess

import h2.config
import h2.connection
import h2.events
import pytest
from hyperframe.frame import Frame, GoAwayFrame, RstStreamFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.worker.codecs.events import (Body, GoAway, ProtocolError, RequestHead, ResponseHead,
                                        StreamReset, Trailers, WindowOpen)
from baton.worker.codecs.http2 import (CANCEL, NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM,
                                       Http2ClientCodec, Http2ServerCodec, StreamUnavailable)
from baton.worker.codecs.message import Headers, Request, Response
from tests.reference.h2lib_server import H2LibServerCodec

PROPERTY = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
FUZZ_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "fuzz", "fuzz_http2.py")
CORPUS = os.path.join(os.path.dirname(__file__), "..", "fuzz", "corpus", "http2")


# -- helpers -------------------------------------------------------------------------------------

class ConnectionPair:
    """Our client codec and our server codec joined in memory."""

    def __init__(self, client: Http2ClientCodec | None = None,
                 server: Http2ServerCodec | None = None):
        self.client = client or Http2ClientCodec()
        self.server = server or Http2ServerCodec()
        self.client.initiate()
        self.server.initiate()
        self.pump()

    def pump(self, consume: bool = True):
        """Move bytes both ways until both are quiet; the events each side saw. With `consume`
        every Body is acknowledged at once (a proxy that forwards instantly)."""
        client_events, server_events = [], []
        while True:
            to_server = self.client.data_to_send()
            to_client = self.server.data_to_send()
            if not to_server and not to_client:
                return client_events, server_events
            if to_server:
                events = self.server.receive(to_server)
                server_events += events
                if consume:
                    _consume(self.server, events)
            if to_client:
                events = self.client.receive(to_client)
                client_events += events
                if consume:
                    _consume(self.client, events)

    def request(self, method="GET", path="/", authority="example.com", headers=(),
                end_stream=True) -> int:
        return self.client.send_head(
            Request(method, path, authority, Headers(list(headers)), "http"), end_stream)


def _consume(codec, events) -> None:
    for event in events:
        if isinstance(event, Body) and event.data:
            codec.consumed(event.stream_id, len(event.data))


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def body_of(events, stream_id) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Body) and e.stream_id == stream_id)


class RawClient:
    """A plain h2 client with validation off: it sends what the test says, even if wrong."""

    def __init__(self, server: Http2ServerCodec):
        config = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                           validate_outbound_headers=False,
                                           normalize_outbound_headers=False,
                                           validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config)
        self.server = server
        self.conn.initiate_connection()
        server.initiate()
        self.exchange()

    def exchange(self):
        """Send what is queued; (server events, h2 events the client got back)."""
        server_events = self.server.receive(self.conn.data_to_send())
        back = self.server.data_to_send()
        client_events = self.conn.receive_data(back) if back else []
        more = self.conn.data_to_send()
        if more:
            server_events += self.server.receive(more)
            back = self.server.data_to_send()
            if back:
                client_events += self.conn.receive_data(back)
        return server_events, client_events

    def send(self, headers, end_stream=True, data=None):
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers, end_stream=end_stream and data is None)
        if data is not None:
            self.conn.send_data(stream_id, data, end_stream=end_stream)
        return stream_id


GOOD = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.example"),
        (b":path", b"/")]


def frames(data: bytes):
    """Parse raw frames (no preface) with hyperframe."""
    out = []
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9:9 + length])
        out.append(frame)
        view = view[9 + length:]
    return out


# -- basics --------------------------------------------------------------------------------------

def test_simple_get_round_trip():
    pair = ConnectionPair()
    sid = pair.request(path="/a?b=c", headers=[("x-one", "1"), ("accept", "*/*")])
    _, server_events = pair.pump()
    [head] = server_events
    assert isinstance(head, RequestHead) and head.end_stream and head.stream_id == sid
    request = head.request
    assert (request.method, request.path, request.authority, request.scheme, request.version) \
        == ("GET", "/a?b=c", "example.com", "http", "2")
    assert request.headers.items == [("x-one", "1"), ("accept", "*/*")]
    assert pair.server.open_streams == 1 and pair.server.stream_ids() == [sid]

    pair.server.send_head(sid, Response(200, Headers([("content-type", "text/plain")])), False)
    pair.server.send_body(sid, b"x" * 1024, True)
    client_events, _ = pair.pump()
    assert isinstance(client_events[0], ResponseHead)
    assert client_events[0].response.status == 200
    assert client_events[0].response.headers.items == [("content-type", "text/plain")]
    assert body_of(client_events, sid) == b"x" * 1024 and client_events[-1].end_stream
    assert pair.server.open_streams == 0 and pair.client.open_streams == 0
    assert not pair.server.closed and not pair.client.closed


def test_head_only_response_and_latin1_values():
    pair = ConnectionPair()
    sid = pair.request(headers=[("x-latin", "caf\xe9")])
    _, server_events = pair.pump()
    assert server_events[0].request.headers.get("x-latin") == "caf\xe9"
    pair.server.send_head(sid, Response(204, Headers([("x-r", "\xff")])), True)
    client_events, _ = pair.pump()
    [head] = client_events
    assert head.end_stream and head.response.status == 204
    assert head.response.headers.get("x-r") == "\xff"


def test_authority_from_host_when_no_authority_pseudo_header():
    server = Http2ServerCodec()
    raw = RawClient(server)
    raw.send([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
              (b"host", b"h.example:8080")])
    events, _ = raw.exchange()
    [head] = events
    assert head.request.authority == "h.example:8080"
    assert "host" not in head.request.headers


def test_client_sends_host_as_authority_and_drops_host_header():
    pair = ConnectionPair()
    pair.client.send_head(Request("GET", "/", "", Headers([("host", "from-host")])), True)
    _, events = pair.pump()
    assert events[0].request.authority == "from-host"
    assert "host" not in events[0].request.headers


def test_cookie_crumbs_are_joined():
    pair = ConnectionPair()
    pair.request(headers=[("cookie", "a=1"), ("x", "y"), ("cookie", "b=2"), ("cookie", "c=3")])
    _, events = pair.pump()
    assert events[0].request.headers.items == [("cookie", "a=1; b=2; c=3"), ("x", "y")]


def test_connection_specific_headers_are_stripped_on_send():
    pair = ConnectionPair()
    sid = pair.request(headers=[("connection", "keep-alive, x-hop"), ("keep-alive", "5"),
                                ("proxy-connection", "x"), ("transfer-encoding", "chunked"),
                                ("upgrade", "websocket"), ("te", "trailers"), ("x-hop", "1"),
                                ("x-keep", "2")])
    _, events = pair.pump()
    assert events[0].request.headers.items == [("te", "trailers"), ("x-keep", "2")]
    pair.server.send_head(sid, Response(200, Headers([
        ("connection", "close"), ("transfer-encoding", "chunked"), ("te", "gzip"),
        ("keep-alive", "timeout=5"), ("upgrade", "h2c"), ("content-length", "0")])), True)
    client_events, _ = pair.pump()
    assert client_events[0].response.headers.items == [("content-length", "0")]


def test_expect_continue_and_informational_response():
    pair = ConnectionPair()
    sid = pair.request(method="POST", headers=[("expect", "100-continue")], end_stream=False)
    _, events = pair.pump()
    assert events[0].expect_continue and "expect" not in events[0].request.headers
    pair.server.send_head(sid, Response(100, Headers()), False)
    client_events, _ = pair.pump()
    [informational] = client_events
    assert informational.response.status == 100 and not informational.end_stream
    pair.client.send_body(sid, b"data", True)
    _, events = pair.pump()
    assert body_of(events, sid) == b"data"
    pair.server.send_head(sid, Response(200, Headers()), True)
    client_events, _ = pair.pump()
    assert client_events[0].response.status == 200 and client_events[0].end_stream


def test_connect_request_is_a_tunnel():
    pair = ConnectionPair()
    sid = pair.client.send_head(Request("CONNECT", "db.example:5432", "db.example:5432",
                                        Headers()), False)
    _, events = pair.pump()
    [head] = events
    assert head.upgrade == "connect" and not head.end_stream
    assert head.request.method == "CONNECT" and head.request.authority == "db.example:5432"
    assert head.request.path == "db.example:5432"
    pair.server.send_head(sid, Response(200, Headers()), False)
    pair.client.send_body(sid, b"ping", False)
    client_events, server_events = pair.pump()
    assert client_events[0].response.status == 200
    assert body_of(server_events, sid) == b"ping"


def test_trailers_both_ways():
    pair = ConnectionPair()
    sid = pair.request(method="POST", headers=[("te", "trailers")], end_stream=False)
    pair.client.send_body(sid, b"abc", False)
    pair.client.send_trailers(sid, Headers([("x-checksum", "123")]))
    _, events = pair.pump()
    assert [type(e) for e in events] == [RequestHead, Body, Trailers]
    assert events[2].headers.items == [("x-checksum", "123")]
    pair.server.send_head(sid, Response(200, Headers()), False)
    pair.server.send_body(sid, b"resp", False)
    pair.server.send_trailers(sid, Headers([("grpc-status", "0")]))
    client_events, _ = pair.pump()
    assert [type(e) for e in client_events] == [ResponseHead, Body, Trailers]
    assert client_events[2].headers.get("grpc-status") == "0"
    assert pair.server.open_streams == 0 and pair.client.open_streams == 0


def test_many_concurrent_streams_answered_out_of_order():
    pair = ConnectionPair()
    ids = [pair.request(path=f"/{i}") for i in range(300)]
    _, events = pair.pump()
    heads = of(events, RequestHead)
    assert [h.stream_id for h in heads] == ids
    assert [h.request.path for h in heads] == [f"/{i}" for i in range(300)]
    for sid in reversed(ids):
        pair.server.send_head(sid, Response(200, Headers()), False)
        pair.server.send_body(sid, str(sid).encode() * 100, True)
    client_events, _ = pair.pump()
    for sid in ids:
        assert body_of(client_events, sid) == str(sid).encode() * 100
    assert pair.client.open_streams == 0 and pair.server.open_streams == 0


# -- flow control --------------------------------------------------------------------------------

def test_request_body_larger_than_windows_flows_as_the_proxy_consumes():
    server = Http2ServerCodec(initial_stream_window=20_000, initial_connection_window=30_000)
    pair = ConnectionPair(server=server)
    body = os.urandom(500_000)
    sid = pair.request(method="POST", end_stream=False)
    pair.client.send_body(sid, body, True)
    assert pair.client.pending(sid) > 0        # held back: the server's window is small

    # Without consumed() nothing more than the window gets through: backpressure.
    _, events = pair.pump(consume=False)
    assert len(body_of(events, sid)) <= 30_000
    assert pair.client.pending(sid) == len(body) - len(body_of(events, sid))

    bodies = of(events, Body)
    pair.server.consumed(sid, len(body_of(events, sid)))
    openings = 0
    for _ in range(200):
        client_events, server_events = pair.pump(consume=False)
        openings += len(of(client_events, WindowOpen))
        chunk = body_of(server_events, sid)
        if not chunk and not pair.client.pending(sid):
            break
        bodies += of(server_events, Body)
        pair.server.consumed(sid, len(chunk))
    assert b"".join(b.data for b in bodies) == body
    assert pair.client.pending(sid) == 0 and openings > 0
    assert bodies[-1].end_stream and not any(b.end_stream for b in bodies[:-1])


def test_response_body_larger_than_windows_with_trailers_held_behind_it():
    client = Http2ClientCodec(initial_stream_window=16_384, initial_connection_window=16_384)
    pair = ConnectionPair(client=client)
    sid = pair.request()
    pair.pump()
    body = os.urandom(200_000)
    pair.server.send_head(sid, Response(200, Headers()), False)
    pair.server.send_body(sid, body, False)
    pair.server.send_trailers(sid, Headers([("x-done", "1")]))
    assert pair.server.pending(sid) > 0
    events, _ = pair.pump()            # the client consumes as it goes
    assert body_of(events, sid) == body
    assert isinstance(events[-1], Trailers) and pair.server.pending(sid) == 0
    assert pair.server.open_streams == 0


def test_frames_respect_max_frame_size():
    pair = ConnectionPair()
    sid = pair.request()
    pair.pump()
    pair.server.send_head(sid, Response(200, Headers()), False)
    pair.server.data_to_send()
    pair.server.send_body(sid, b"z" * 100_000, True)
    data = pair.server.data_to_send()
    sizes = [len(f.data) for f in frames(data)]
    assert sum(sizes) == 100_000 and max(sizes) <= 16_384


def test_reset_returns_unconsumed_window():
    server = Http2ServerCodec(initial_stream_window=65_535, initial_connection_window=65_535)
    pair = ConnectionPair(server=server)
    sid = pair.request(method="POST", end_stream=False)
    pair.client.send_body(sid, b"a" * 60_000, False)
    pair.pump(consume=False)
    pair.server.reset(sid)
    client_events, _ = pair.pump(consume=False)
    assert [(e.stream_id, e.code) for e in of(client_events, StreamReset)] == [(sid, CANCEL)]
    # The connection window came back even though nobody consumed those bytes.
    sid2 = pair.request(method="POST", end_stream=False)
    pair.client.send_body(sid2, b"b" * 60_000, True)
    _, events = pair.pump(consume=False)
    assert len(body_of(events, sid2)) == 60_000


# -- resets --------------------------------------------------------------------------------------

def test_client_reset_reaches_server():
    pair = ConnectionPair()
    sid = pair.request(end_stream=False)
    pair.pump()
    pair.client.reset(sid)
    _, events = pair.pump()
    assert [(e.stream_id, e.code) for e in of(events, StreamReset)] == [(sid, CANCEL)]
    assert pair.server.open_streams == 0 and pair.client.open_streams == 0
    # Late sends on the reset stream are dropped, not errors.
    pair.server.send_head(sid, Response(200, Headers()), True)
    pair.server.send_body(sid, b"late", True)
    assert pair.pump() == ([], [])


def test_server_reset_reaches_client_and_connection_continues():
    pair = ConnectionPair()
    sid = pair.request()
    pair.pump()
    pair.server.reset(sid, REFUSED_STREAM)
    events, _ = pair.pump()
    assert [(e.stream_id, e.code) for e in events] == [(sid, REFUSED_STREAM)]
    sid2 = pair.request()
    _, events = pair.pump()
    assert events[0].stream_id == sid2


def test_complete_response_to_incomplete_request_resets_with_no_error():
    pair = ConnectionPair()
    sid = pair.request(method="POST", end_stream=False)
    pair.client.send_body(sid, b"part", False)
    pair.pump()
    pair.server.send_head(sid, Response(413, Headers()), True)
    client_events, _ = pair.pump()
    assert client_events[0].response.status == 413
    assert [(e.stream_id, e.code) for e in of(client_events, StreamReset)] == [(sid, NO_ERROR)]
    assert pair.server.open_streams == 0


# -- GOAWAY --------------------------------------------------------------------------------------

def test_graceful_goaway_is_two_phase():
    pair = ConnectionPair()
    sid1 = pair.request(end_stream=False)
    pair.pump()
    pair.server.goaway()
    phase_one = pair.server.data_to_send()
    goaways = [f for f in frames(phase_one) if isinstance(f, GoAwayFrame)]
    assert [g.last_stream_id for g in goaways] == [2**31 - 1]
    # A request already on its way when the first GOAWAY was sent is still served...
    sid2 = pair.request()
    in_flight = pair.client.data_to_send()
    client_events = pair.client.receive(phase_one)
    assert [(e.last_stream_id, e.code) for e in of(client_events, GoAway)] == [(2**31 - 1, 0)]
    server_events = pair.server.receive(in_flight)
    assert [e.stream_id for e in of(server_events, RequestHead)] == [sid2]
    # ... the PING ack brings the final GOAWAY with the real last stream id.
    pair.server.receive(pair.client.data_to_send())
    final = [f for f in frames(pair.server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert [g.last_stream_id for g in final] == [sid2]
    assert pair.client.available_streams() == 0
    with pytest.raises(StreamUnavailable):
        pair.request()
    # In-flight streams finish; then the connection is done.
    assert not pair.server.closed
    for sid in (sid1, sid2):
        pair.server.send_head(sid, Response(200, Headers()), True)
    pair.client.send_body(sid1, b"", True)
    client_events, _ = pair.pump()
    assert sorted(e.stream_id for e in of(client_events, ResponseHead)) == [sid1, sid2]
    assert pair.server.closed and pair.client.closed


def test_stream_opened_after_final_goaway_is_refused():
    server = Http2ServerCodec()
    raw = RawClient(server)
    raw.send(GOOD)
    raw.exchange()
    server.goaway(graceful=False)
    assert server.data_to_send()  # the GOAWAY, still on its way when the client...
    late = raw.send(GOOD)         # ... opens another stream
    events, client_events = raw.exchange()
    assert events == []
    assert [(e.stream_id, e.error_code) for e in client_events
            if isinstance(e, h2.events.StreamReset)] == [(late, REFUSED_STREAM)]


def test_goaway_from_upstream_refuses_streams_above_last_id():
    pair = ConnectionPair()
    ids = [pair.request() for _ in range(3)]
    pair.pump()
    pair.server.goaway(last_stream_id=ids[0], graceful=False)
    client_events, _ = pair.pump()
    assert [e.last_stream_id for e in of(client_events, GoAway)] == [ids[0]]
    assert sorted((e.stream_id, e.code) for e in of(client_events, StreamReset)) == \
        [(ids[1], REFUSED_STREAM), (ids[2], REFUSED_STREAM)]
    assert pair.client.open_streams == 1 and not pair.client.reusable
    pair.server.send_head(ids[0], Response(200, Headers()), True)
    client_events, _ = pair.pump()
    assert client_events[0].response.status == 200 and pair.client.closed


def test_goaway_with_error_code_ends_the_connection():
    pair = ConnectionPair()
    sid = pair.request()
    pair.pump()
    pair.server.goaway(code=0x2)
    assert pair.server.closed
    events = pair.client.receive(pair.server.data_to_send())
    assert [(e.code) for e in of(events, GoAway)] == [0x2]
    assert [(e.stream_id, e.code) for e in of(events, StreamReset)] == [(sid, 0x2)]
    assert pair.client.closed


# -- limits --------------------------------------------------------------------------------------

def test_streams_past_max_concurrent_streams_are_refused():
    server = Http2ServerCodec(max_concurrent_streams=2)
    client = Http2ClientCodec()
    client.initiate()
    server.initiate()
    # The client opens three streams before it has seen the server's SETTINGS.
    ids = [client.send_head(Request("GET", "/", "a", Headers()), False) for _ in range(3)]
    events = server.receive(client.data_to_send())
    assert [e.stream_id for e in of(events, RequestHead)] == ids[:2]
    client_events = client.receive(server.data_to_send())
    assert [(e.stream_id, e.code) for e in of(client_events, StreamReset)] == \
        [(ids[2], REFUSED_STREAM)]
    assert client.available_streams() == 0
    # Once one stream finishes, another may open.
    server.send_head(ids[0], Response(200, Headers()), True)
    client.send_body(ids[0], b"", True)
    server.receive(client.data_to_send())
    client.receive(server.data_to_send())
    assert client.available_streams() == 1


def test_oversized_headers_reset_the_stream_and_the_connection_survives():
    # As Envoy 1.40's HTTP/2 codec: RST_STREAM(INTERNAL_ERROR), http2.header_list_size_too_large
    # (HTTP/1.1 answers 431).
    pair = ConnectionPair(server=Http2ServerCodec(max_header_bytes=8 * 1024))
    sid = pair.request(method="POST", headers=[("x-big", "v" * 9000)], end_stream=False)
    pair.client.send_body(sid, b"discarded", True)
    client_events, events = pair.pump()
    assert [(type(e).__name__, e.stream_id) for e in events] == \
        [("HeadersRefused", sid), ("StreamReset", sid)]
    assert events[0].stat == "http2.header_list_size_too_large" and events[1].code == 2
    assert not pair.server.closed
    assert [(type(e).__name__, e.stream_id, e.code) for e in client_events] == \
        [("StreamReset", sid, 2)]
    sid2 = pair.request(headers=[("x-small", "v" * 100)])
    _, events = pair.pump()
    assert isinstance(events[0], RequestHead) and events[0].stream_id == sid2


def test_too_many_headers_reset_the_stream():
    pair = ConnectionPair(server=Http2ServerCodec(max_headers=20))
    sid = pair.request(headers=[(f"x-{i}", "1") for i in range(30)])
    _, events = pair.pump()
    assert [(type(e).__name__, e.stream_id) for e in events] == \
        [("HeadersRefused", sid), ("StreamReset", sid)]
    assert events[0].stat == "http2.header_overflow"


def test_decompression_bomb_ends_the_connection():
    server = Http2ServerCodec(max_header_bytes=1024)   # hard cap: 256 KiB
    raw = RawClient(server)
    raw.send(GOOD + [(b"x-big", b"v" * 4000)] * 80)
    events, _ = raw.exchange()
    assert [type(e) for e in events] == [ProtocolError] and events[0].stream_id == 0
    assert server.closed


# -- malformed input -----------------------------------------------------------------------------

MALFORMED = {
    "missing :method": [(b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")],
    "missing :path": [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a")],
    "missing :scheme": [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a")],
    "empty :path": [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"")],
    "relative :path": [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"x")],
    "space in :path": GOOD[:3] + [(b":path", b"/a b")],
    "CR LF in :path": GOOD[:3] + [(b":path", b"/\r\nx: y")],
    "duplicate :path": GOOD + [(b":path", b"/again")],
    "unknown pseudo": GOOD + [(b":protocol", b"websocket")],
    "response pseudo": GOOD + [(b":status", b"200")],
    "pseudo after regular": GOOD[:3] + [(b"x", b"1"), (b":path", b"/")],
    "uppercase name": GOOD + [(b"X-Upper", b"1")],
    "space in name": GOOD + [(b"x y", b"1")],
    "empty name": GOOD + [(b"", b"1")],
    "connection header": GOOD + [(b"connection", b"close")],
    "keep-alive header": GOOD + [(b"keep-alive", b"5")],
    "transfer-encoding": GOOD + [(b"transfer-encoding", b"chunked")],
    "upgrade header": GOOD + [(b"upgrade", b"websocket")],
    "te gzip": GOOD + [(b"te", b"gzip")],
    "CR LF in value": GOOD + [(b"x", b"a\r\nevil: 1")],
    "NUL in value": GOOD + [(b"x", b"a\x00b")],
    "leading space in value": GOOD + [(b"x", b" a")],
    "bad content-length": GOOD + [(b"content-length", b"12a")],
    "conflicting content-length": GOOD + [(b"content-length", b"1"), (b"content-length", b"2")],
    "CONNECT with :path": [(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":path", b"/")],
    "CONNECT without authority": [(b":method", b"CONNECT")],
    "bad method": [(b":method", b"GE T")] + GOOD[1:],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_resets_only_its_stream(case):
    server = Http2ServerCodec()
    raw = RawClient(server)
    sid = raw.send(MALFORMED[case])
    events, client_events = raw.exchange()
    assert [(type(e), e.stream_id, e.code) for e in events] == \
        [(StreamReset, sid, PROTOCOL_ERROR)], case
    assert [(e.stream_id, e.error_code) for e in client_events
            if isinstance(e, h2.events.StreamReset)] == [(sid, PROTOCOL_ERROR)]
    assert not server.closed and server.open_streams == 0
    good = raw.send(GOOD)
    events, _ = raw.exchange()
    assert [(type(e), e.stream_id) for e in events] == [(RequestHead, good)]


def test_body_longer_than_content_length_resets_the_stream():
    server = Http2ServerCodec()
    raw = RawClient(server)
    sid = raw.send(GOOD + [(b"content-length", b"3")], end_stream=False)
    raw.exchange()
    raw.conn.send_data(sid, b"too long", end_stream=True)
    events, client_events = raw.exchange()
    assert [(type(e), e.stream_id, e.code) for e in events] == \
        [(StreamReset, sid, PROTOCOL_ERROR)]
    assert not server.closed
    good = raw.send(GOOD)
    assert of(raw.exchange()[0], RequestHead)[0].stream_id == good


def test_body_shorter_than_content_length_resets_the_stream():
    server = Http2ServerCodec()
    raw = RawClient(server)
    sid = raw.send(GOOD + [(b"content-length", b"10")], end_stream=False)
    raw.conn.send_data(sid, b"short", end_stream=True)
    events, _ = raw.exchange()
    assert [type(e) for e in events] == [RequestHead, StreamReset]
    assert events[1].code == PROTOCOL_ERROR and not server.closed


def test_malformed_trailers_reset_the_stream():
    server = Http2ServerCodec()
    raw = RawClient(server)
    sid = raw.send(GOOD, end_stream=False)
    raw.conn.send_headers(sid, [(b":path", b"/x")], end_stream=True)
    events, _ = raw.exchange()
    assert [type(e) for e in events] == [RequestHead, StreamReset]


def test_malformed_response_resets_the_stream_for_the_router():
    pair = ConnectionPair(server=H2LibServerCodec())   # the h2-based one has a raw h2 inside
    sid = pair.request()
    pair.pump()
    # Our server codec strips connection headers, so write the bad response with raw h2.
    conn = pair.server._conn
    conn.send_headers(sid, [(b":status", b"200"), (b"connection", b"close")], end_stream=True)
    events, _ = pair.pump()
    assert [(type(e), e.stream_id, e.code) for e in events] == \
        [(StreamReset, sid, PROTOCOL_ERROR)]
    assert not pair.client.closed and pair.client.available_streams() > 0


def test_preface_garbage_is_a_connection_error():
    server = Http2ServerCodec()
    server.initiate()
    server.data_to_send()
    events = server.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [(type(e), e.stream_id) for e in events] == [(ProtocolError, 0)]
    assert server.closed and server.internal_error is None
    goaway = [f for f in frames(server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert goaway and goaway[0].error_code == PROTOCOL_ERROR
    assert server.receive(b"more") == []


def test_eof_fails_open_streams():
    pair = ConnectionPair()
    sid = pair.request()
    pair.pump()
    assert [(type(e), e.stream_id) for e in pair.server.receive(b"")] == [(ProtocolError, sid)]
    assert [(type(e), e.stream_id, e.status) for e in pair.client.receive(b"")] == \
        [(ProtocolError, sid, 502)]
    assert pair.server.closed and pair.client.closed


def test_rst_stream_on_idle_stream_is_a_connection_error():
    server = Http2ServerCodec()
    RawClient(server)           # preface and SETTINGS exchanged
    events = server.receive(RstStreamFrame(5, error_code=0).serialize())
    assert [type(e) for e in events] == [ProtocolError] and server.closed
    assert server.internal_error is None


# -- regressions from the fuzzer (tests/fuzz/fuzz_http2.py) -------------------------------------

def _fuzz_module():
    spec = importlib.util.spec_from_file_location("fuzz_http2", FUZZ_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fuzz_corpus():
    """Inputs the fuzzer once found failing (tests/fuzz/corpus/http2/), replayed exactly as
    the fuzzer drives them. The 1,000,000-input runs so far found none; the directory is
    where new finds land."""
    if not os.path.isdir(CORPUS):
        return
    fuzz = _fuzz_module()
    for name in sorted(os.listdir(CORPUS)):
        with open(os.path.join(CORPUS, name), "rb") as f:
            assert fuzz.replay(f.read()) == [], name


def test_fuzzer_smoke():
    """The fuzz script itself still runs (a few hundred inputs)."""
    fuzz = _fuzz_module()
    rng = random.Random(3)
    for _ in range(300):
        assert fuzz.replay(fuzz.generate(rng)) == []


# -- properties ----------------------------------------------------------------------------------

_name = st.from_regex(r"\Ax-[a-z0-9\-]{1,20}\Z")
_value = st.from_regex(r"\A([!-~]([ -~\x80-\xff]{0,40}[!-~])?)?\Z")


@PROPERTY
@given(headers=st.lists(st.tuples(_name, _value), max_size=30),
       body=st.binary(max_size=70_000), path=st.from_regex(r"\A/[!-~]{0,60}\Z"))
def test_request_round_trip(headers, body, path):
    pair = ConnectionPair()
    sid = pair.request(method="POST", path=path, headers=headers, end_stream=not body)
    if body:
        pair.client.send_body(sid, body, True)
    _, events = pair.pump()
    head = events[0]
    assert head.request.path == path and head.request.headers.items == headers
    assert body_of(events, sid) == body


# -- interop with real clients -------------------------------------------------------------------

class _TinyServer(asyncio.Protocol):
    """Answers every request with 'hello <path>' or, for POST, echoes the body."""

    def connection_made(self, transport):
        self.transport = transport
        self.codec = Http2ServerCodec()
        self.codec.initiate()
        self.requests = {}
        self.bodies = {}
        transport.write(self.codec.data_to_send())

    def data_received(self, data):
        codec = self.codec
        for event in codec.receive(data):
            if isinstance(event, RequestHead):
                self.requests[event.stream_id] = event.request
                self.bodies[event.stream_id] = []
                if event.end_stream:
                    self.answer(event.stream_id)
            elif isinstance(event, Body):
                self.bodies[event.stream_id].append(event.data)
                codec.consumed(event.stream_id, len(event.data))
                if event.end_stream:
                    self.answer(event.stream_id)
        out = codec.data_to_send()
        if out:
            self.transport.write(out)
        if codec.closed:
            self.transport.close()

    def answer(self, stream_id):
        request = self.requests.pop(stream_id)
        body = b"".join(self.bodies.pop(stream_id))
        if request.method != "POST":
            body = f"hello {request.path}".encode()
        self.codec.send_head(stream_id, Response(200, Headers([
            ("content-length", str(len(body))), ("x-method", request.method)])), False)
        self.codec.send_body(stream_id, body, True)


async def _run(*argv, timeout=30.0):
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv[0]} did not finish in {timeout}s")
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@pytest.mark.skipif(not shutil.which("curl") or not shutil.which("h2load"),
                    reason="curl and h2load are needed")
def test_interop_with_curl_and_h2load(tmp_path):
    tmp = str(tmp_path)

    async def main():
        loop = asyncio.get_running_loop()
        # Listening once create_server returns: the clients need no readiness wait.
        server = await loop.create_server(_TinyServer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        try:
            code, out, err = await _run("curl", "-sS", "--http2-prior-knowledge",
                                        "-D", "-", f"{url}/greet?x=1")
            assert code == 0, err
            assert out.startswith("HTTP/2 200") and "x-method: GET" in out
            assert out.endswith("hello /greet?x=1")
            payload = os.urandom(150_000).hex()
            path = os.path.join(tmp, "payload")
            with open(path, "w") as f:
                f.write(payload)
            code, out, err = await _run("curl", "-sS", "--http2-prior-knowledge",
                                        "--data-binary", f"@{path}", f"{url}/echo")
            assert code == 0, err
            assert out == payload
            code, out, err = await _run("h2load", "-n", "2000", "-c", "4", "-m", "10", url)
            assert code == 0, err
            assert re.search(r"requests: 2000 total, 2000 started, 2000 done, "
                             r"2000 succeeded, 0 failed, 0 errored", out), out
            assert "status codes: 2000 2xx" in out, out
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
