"""The HTTP/1.1 hot path's shortcuts (codecs/http1_*.py, stream.new_request_id): a remembered
head decodes to the same pairs as a fresh one, never to a shared list; the one-pass header
scans keep what the Connection header lists out; request ids stay random version-4 UUIDs.
"""

from __future__ import annotations

import uuid

from baton.worker.codecs import http1_head
from baton.worker.codecs.events import Body, ResponseHead
from baton.worker.codecs.http1_client import Http1ClientCodec
from baton.worker.codecs.http1_server import Http1ServerCodec
from baton.worker.codecs.message import Headers, Request, Response
from baton.worker.proxy.http.stream import new_request_id

RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 4\r\nConnection: keep-alive\r\n\r\nbody")


def _request(headers=()) -> Request:
    return Request("GET", "/", "example.com", Headers(list(headers)), "http", "1.1")


def _response_head(client: Http1ClientCodec, data: bytes) -> ResponseHead:
    client.send_head(_request(), True)
    client.data_to_send()
    return next(e for e in client.receive(data) if isinstance(e, ResponseHead))


def test_request_ids_are_random_version_4_uuids():
    ids = [new_request_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:2000]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # Every variant digit (8, 9, a, b) and every digit elsewhere turns up.
    assert {text[19] for text in ids} == set("89ab")
    assert {c for text in ids for c in text.replace("-", "")} == set("0123456789abcdef")


def test_a_remembered_head_is_a_new_list_each_time():
    client = Http1ClientCodec()
    first = _response_head(client, RESPONSE).response.headers
    first.add("x-added", "1")
    first.items[0] = ("content-type", "changed")
    second = _response_head(client, RESPONSE).response.headers
    assert second.items == [("server", "nginx"), ("content-type", "text/plain"),
                            ("content-length", "4")]
    server = Http1ServerCodec()
    request = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\n"
    one = server.receive(request)[0].request
    one.headers.items.append(("x-b", "2"))
    server.send_head(1, Response(200, Headers([("content-length", "0")])), True)
    two = server.receive(request)[0].request
    assert two.headers.items == [("x-a", "1")] and two.authority == "a"


def test_large_heads_are_decoded_every_time_and_the_memo_stays_bounded():
    big = b"x" * (http1_head._HEAD_MEMO_BYTES + 1)
    client = Http1ClientCodec()
    head = _response_head(client, b"HTTP/1.1 200 OK\r\nX-Big: " + big +
                          b"\r\nContent-Length: 0\r\n\r\n")
    assert head.response.headers.get("x-big") == big.decode()
    assert not any(len(v) > http1_head._HEAD_MEMO_BYTES for key in http1_head._HEADS for _, v in key)
    for i in range(http1_head._HEADS_MAX + 10):
        _response_head(client, b"HTTP/1.1 204 No Content\r\nX-N: %d\r\n\r\n" % i)
    assert len(http1_head._HEADS) <= http1_head._HEADS_MAX


def test_response_connection_tokens_are_dropped_with_or_without_the_memo():
    for _ in range(2):          # decoded, then remembered
        client = Http1ClientCodec()
        head = _response_head(client, b"HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\n"
                                      b"X-Secret: s\r\nClose: c\r\nKeep-Alive: timeout=5\r\n"
                                      b"X-Kept: k\r\nContent-Length: 0\r\n\r\n")
        assert head.response.headers.items == [("x-kept", "k"), ("content-length", "0")]
        assert head.end_stream and not client.reusable
        client = Http1ClientCodec()
        head = _response_head(client, RESPONSE)
        assert [n for n, _ in head.response.headers] == ["server", "content-type",
                                                        "content-length"]
        assert client.reusable


def test_close_delimited_and_framed_responses_end_as_before():
    client = Http1ClientCodec()
    client.send_head(_request(), True)
    events = client.receive(b"HTTP/1.1 200 OK\r\nContent-Type: a\r\n\r\npart")
    assert [type(e) for e in events] == [ResponseHead, Body]
    (end,) = client.receive(b"")
    assert type(end) is Body and end.data == b"" and end.end_stream
    client = Http1ClientCodec()
    client.send_head(_request(), True)
    client.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart")
    assert type(client.receive(b"")[0]).__name__ == "ProtocolError"


def test_request_scan_keeps_connection_listed_names_out():
    server = Http1ServerCodec()
    events = server.receive(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: x-hop, close\r\n"
                            b"X-Hop: 1\r\nClose: 2\r\nTE: trailers, gzip\r\nExpect: 100-continue\r\n"
                            b"X-End: 3\r\n\r\n")
    request = events[0].request
    assert request.headers.items == [("x-end", "3"), ("te", "trailers")]
    assert events[0].expect_continue and request.authority == "h"


def test_a_remembered_reading_of_a_head_is_the_fresh_one():
    """Each side reads a small head once (http1_head._Head): the second request or response with
    the same head gets the same reading, in new lists of its own."""
    request = (b"POST / HTTP/1.1\r\nHost: h\r\nConnection: x-hop\r\nX-Hop: 1\r\n"
               b"Content-Length: 2\r\nX-End: 3\r\n\r\nab")
    server = Http1ServerCodec()
    first = server.receive(request)[0]
    first.request.headers.items.append(("x-added", "1"))
    server.send_head(1, Response(200, Headers([("content-length", "0")])), True)
    second = server.receive(request)[0]
    assert second.request.headers.items == [("content-length", "2"), ("x-end", "3")]
    assert not second.end_stream and second.request.authority == "h"
    two_hosts = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    for _ in range(2):      # refused when read, and when remembered
        events = Http1ServerCodec().receive(two_hosts)
        assert events[0].status == 400
    client = Http1ClientCodec()
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
    for _ in range(2):
        head = _response_head(client, chunked + b"0\r\n\r\n")
        assert head.response.headers.items == [("x-a", "1")] and not head.end_stream


def test_response_head_written_in_one_pass():
    server = Http1ServerCodec()
    server.receive(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    server.send_head(1, Response(200, Headers([("connection", "x"), ("x-a", "1"),
                                               ("transfer-encoding", "chunked")])), True)
    assert server.data_to_send() == b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n"
    server.receive(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
    server.send_head(3, Response(404, Headers([("content-length", "2")]), "Nope"), False)
    server.send_body(3, b"no", True)
    assert server.data_to_send() == (b"HTTP/1.0 404 Nope\r\ncontent-length: 2\r\n"
                                     b"connection: close\r\n\r\nno")
