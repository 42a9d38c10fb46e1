"""The HTTP/1.1 codec on bytes (sans-IO): requests in, responses out, and the client side."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from baton.worker.codecs.events import Body, ProtocolError, RequestHead, ResponseHead
from baton.worker.codecs.http1_client import Http1ClientCodec
from baton.worker.codecs.http1_server import Http1ServerCodec
from baton.worker.codecs.message import Headers, Request, Response


def heads(events):
    return [e for e in events if isinstance(e, RequestHead)]


def test_request_head_strips_hop_by_hop_and_keeps_order():
    codec = Http1ServerCodec()
    events = codec.receive(b"GET /a?x=1 HTTP/1.1\r\nHost: foo:8080\r\nX-B: 2\r\nX-A: 1\r\n"
                           b"Connection: keep-alive, x-a\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n")
    (head,) = events
    assert head.end_stream and head.stream_id == 1
    req = head.request
    assert (req.method, req.path, req.authority, req.version) == ("GET", "/a?x=1", "foo:8080", "1.1")
    # x-a was listed in Connection; "te: trailers" is the one TE value a proxy passes on
    assert req.headers.items == [("x-b", "2"), ("te", "trailers")]


def test_pipelined_requests_are_numbered_and_answered_in_order():
    codec = Http1ServerCodec()
    events = codec.receive(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
                           b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
    # A body that arrives whole is one Body event that ends the stream.
    assert [type(e) for e in events] == [RequestHead, RequestHead, Body]
    assert [e.stream_id for e in events] == [1, 3, 3]
    assert events[2].data == b"abc" and events[2].end_stream
    codec.send_head(1, Response(200, Headers([("content-length", "1")])), False)
    codec.send_body(1, b"x", True)
    codec.send_head(3, Response(201, Headers()), True)
    assert codec.data_to_send() == (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx"
                                    b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")


def test_chunked_request_and_response_are_reframed():
    codec = Http1ServerCodec()
    events = codec.receive(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert b"".join(e.data for e in events if isinstance(e, Body)) == b"abcde"
    assert "transfer-encoding" not in events[0].request.headers
    codec.send_head(1, Response(200, Headers()), False)
    codec.send_body(1, b"hello", False)
    codec.send_body(1, b"", True)
    assert codec.data_to_send() == (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                    b"5\r\nhello\r\n0\r\n\r\n")


def test_http10_response_without_length_is_close_delimited():
    codec = Http1ServerCodec()
    codec.receive(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
    codec.send_head(1, Response(200, Headers()), False)
    codec.send_body(1, b"abc", True)
    out = codec.data_to_send()
    assert b"connection: close" in out and out.endswith(b"\r\n\r\nabc")
    assert codec.closed


def test_connection_close_request_closes_after_response():
    codec = Http1ServerCodec()
    codec.receive(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    codec.send_head(1, Response(200, Headers([("content-length", "0")])), True)
    assert b"connection: close" in codec.data_to_send()
    assert codec.closed


def test_limits_give_431_and_garbage_400():
    codec = Http1ServerCodec(max_header_bytes=100)
    (err,) = codec.receive(b"GET / HTTP/1.1\r\nA: " + b"x" * 200 + b"\r\n\r\n")
    assert isinstance(err, ProtocolError) and err.status == 431
    codec = Http1ServerCodec(max_headers=3)
    (err,) = codec.receive(b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(5)) + b"\r\n")
    assert err.status == 431
    codec = Http1ServerCodec()
    (err,) = codec.receive(b"\x16\x03\x01garbage\r\n\r\n")
    assert err.status == 400
    assert codec.receive(b"GET / HTTP/1.1\r\n\r\n") == []       # nothing after an error


def test_smuggling_shapes_are_refused():
    for raw in (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        events = Http1ServerCodec().receive(raw)
        assert any(isinstance(e, ProtocolError) and e.status == 400 for e in events), raw


def test_upgrade_becomes_a_tunnel():
    codec = Http1ServerCodec()
    events = codec.receive(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nRAW")
    head = events[0]
    assert head.upgrade == "websocket" and not head.end_stream
    assert events[-1].data == b"RAW"
    codec.send_head(1, Response(101, Headers([("upgrade", "websocket")])), False)
    assert codec.data_to_send().startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert codec.receive(b"more")[0].data == b"more"


def test_h2c_upgrade_is_declined_and_served_as_http11():
    codec = Http1ServerCodec()
    events = codec.receive(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                           b"Upgrade: h2c\r\nHTTP2-Settings: AAMA\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [(e.request.path, e.upgrade, e.request.headers.items) for e in events] == [
        ("/", None, []), ("/2", None, [])]


def test_awaiting_head_and_abandon():
    codec = Http1ServerCodec()
    assert codec.receive(b"GET / HTTP/1.1\r\nHost") == []
    assert codec.awaiting_head
    stream = codec.abandon_head()
    codec.send_head(stream, Response(408, Headers([("content-length", "0")])), True)
    assert codec.data_to_send().startswith(b"HTTP/1.1 408 Request Timeout")


def test_client_side_request_and_responses():
    codec = Http1ClientCodec()
    sid = codec.send_head(Request("POST", "/x", "up", Headers([("a", "b")])), False)
    codec.send_body(sid, b"data", True)
    assert codec.data_to_send() == (b"POST /x HTTP/1.1\r\nhost: up\r\na: b\r\ntransfer-encoding: chunked"
                                    b"\r\n\r\n4\r\ndata\r\n0\r\n\r\n")
    events = codec.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert [type(e) for e in events] == [ResponseHead, Body] and events[1].end_stream
    assert codec.available_streams() == 1
    # HEAD: a Content-Length but no body follows.
    sid = codec.send_head(Request("HEAD", "/", "up", Headers()), True)
    (head,) = codec.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
    assert head.end_stream
    sid = codec.send_head(Request("GET", "/", "up", Headers()), True)
    events = codec.receive(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert [e.response.status for e in events if isinstance(e, ResponseHead)] == [100, 204]


def test_client_close_delimited_and_truncated_responses():
    codec = Http1ClientCodec()
    sid = codec.send_head(Request("GET", "/", "up", Headers()), True)
    codec.receive(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart")
    (end,) = codec.receive(b"")
    assert isinstance(end, Body) and end.end_stream
    codec = Http1ClientCodec()
    codec.send_head(Request("GET", "/", "up", Headers()), True)
    codec.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart")
    (err,) = codec.receive(b"")
    assert isinstance(err, ProtocolError)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.integers(min_value=1, max_value=64))
def test_server_never_raises_on_arbitrary_bytes(data, step):
    codec = Http1ServerCodec(max_header_bytes=256, max_headers=8)
    for i in range(0, len(data), step):
        for event in codec.receive(data[i:i + step]):
            assert isinstance(event, (RequestHead, Body, ProtocolError))
    codec.receive(b"")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_client_never_raises_on_arbitrary_bytes(data):
    codec = Http1ClientCodec(max_header_bytes=256)
    codec.send_head(Request("GET", "/", "up", Headers()), True)
    codec.receive(data)
    codec.receive(b"")


def test_h2c_upgrade_with_a_body_is_refused_not_smuggled():
    # llhttp ends an upgrade request at its head; its body must never be read as a request.
    codec = Http1ServerCodec()
    events = codec.receive(b"POST /upload HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                           b"Upgrade: h2c\r\nHTTP2-Settings: AAMA\r\nContent-Length: 35\r\n\r\n"
                           b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [type(e) for e in events] == [ProtocolError] and events[0].status == 400


def test_two_host_headers_are_a_400():
    (err,) = Http1ServerCodec().receive(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert isinstance(err, ProtocolError) and err.status == 400


def test_a_refused_upgrade_closes_instead_of_tunnelling():
    codec = Http1ServerCodec()
    (head,) = codec.receive(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    codec.send_head(head.stream_id, Response(403, Headers([("content-length", "0")])), True)
    out = codec.data_to_send()
    assert out.startswith(b"HTTP/1.1 403") and b"connection: close" in out
    assert codec.closed and codec.tunnel == 0
