"""Messages known by their bytes (worker/codecs/http1_head.py, KNOWN_REQUESTS and
KNOWN_RESPONSES): a request or response head that llhttp read once is served from memory the
next time the same bytes come. Whatever the codec then reports and writes must be exactly what
it reports and writes when llhttp reads them: each case runs one codec with the memos as they
are and one with the memos emptied before every read (always parsed), and compares the two.
"""

from __future__ import annotations
import pytest
from hypothesis import given, strategies as st

from baton.worker.codecs import http1_head
from baton.worker.codecs.events import ProtocolError, RequestHead
from baton.worker.codecs.http1_client import Http1ClientCodec
from baton.worker.codecs.http1_server import Http1ServerCodec
from baton.worker.codecs.message import Headers, Request, Response

from .http1_known_rig import (NGINX, PROPERTY, WRK, Pair, Untouchable, client_state, described,
                              forget, serve, server_state)
from .http1_strategies import requests, responses, serialize_request, serialize_response


def test_a_known_request_is_served_without_the_parser_and_reports_the_same():
    forget()
    pair = Pair(Http1ServerCodec, server_state)
    serve(pair, WRK, 4)
    assert WRK in http1_head.KNOWN_REQUESTS
    # Served from memory now: the parser is never asked (nor made: a codec makes it on the
    # first read that needs it).
    codec = pair.warm
    codec._parser = Untouchable()
    events = codec.receive(WRK)
    assert described(events) == [("request", 9, "GET", "/", "127.0.0.1:10000", "http", "1.1",
                                  [], True, False, None)]
    fresh = Http1ServerCodec()
    assert described(fresh.receive(WRK))[0][1:] == (1, "GET", "/", "127.0.0.1:10000", "http",
                                                    "1.1", [], True, False, None)
    assert fresh._parser is None
    # Each request gets a list of its own.
    events[0].request.headers.items.append(("x-added", "1"))
    assert http1_head.KNOWN_REQUESTS[WRK].kept == ()


@pytest.mark.parametrize("wire", [
    WRK,
    b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
    b"GET http://user@abs.test:8080/p HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: x-hop\r\nX-Hop: 1\r\nTE: trailers\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:  spaced \r\n\r\n",                 # not canonical: parsed each time
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",             # 400 each time
    b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: upgrade, http2-settings\r\n"
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab",
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",   # pipelined
    b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n\r\n",
])
def test_requests_read_again_report_and_answer_as_parsed(wire):
    serve(Pair(Http1ServerCodec, server_state), wire)


def test_a_known_request_still_meets_each_codecs_limits():
    forget()
    wire = b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n"
    Http1ServerCodec().receive(wire)
    assert wire in http1_head.KNOWN_REQUESTS
    (error,) = Http1ServerCodec(max_headers=2).receive(wire)
    assert isinstance(error, ProtocolError) and error.status == 431
    (error,) = Http1ServerCodec(max_header_bytes=len(wire) - 1).receive(wire)
    assert isinstance(error, ProtocolError) and error.status == 431
    assert isinstance(Http1ServerCodec(max_header_bytes=len(wire)).receive(wire)[0], RequestHead)


def test_a_draining_codec_stops_reading_after_a_known_request():
    pair = Pair(Http1ServerCodec, server_state)
    serve(pair, WRK, 2)
    pair.call("goaway")
    pair.receive(WRK)
    pair.receive(WRK)       # nothing more is read


@PROPERTY
@given(requests())
def test_generated_requests_read_again_report_and_answer_as_parsed(m):
    serve(Pair(Http1ServerCodec, server_state), serialize_request(m), 2)


def _fetch(pair: Pair, method: str, wires: list) -> None:
    """One request sent, then its response read in the pieces of `wires`."""
    request = Request(method, "/", "h", Headers([]), "http", "1.1")
    pair.send("send_head", request, True)
    for wire in wires:
        pair.receive(wire)


def test_a_known_response_head_is_served_without_the_parser_and_reports_the_same():
    forget()
    pair = Pair(Http1ClientCodec, client_state)
    for _ in range(3):
        _fetch(pair, "GET", [NGINX])
    head = NGINX[:NGINX.index(b"\r\n\r\n") + 4]
    assert head in http1_head.KNOWN_RESPONSES
    codec = pair.warm
    codec.send_head(Request("GET", "/", "h", Headers([]), "http", "1.1"), True)
    codec._parser = Untouchable()
    events = codec.receive(NGINX)
    assert described(events) == [
        ("response", 7, 200, "", [("server", "nginx/1.22.1"),
                                  ("date", "Mon, 07 Dec 2026 05:05:00 GMT"),
                                  ("content-type", "text/plain"), ("content-length", "4")],
         False),
        ("body", 7, b"body", True)]
    assert codec.reusable and codec.available_streams() == 1


@pytest.mark.parametrize("method, wires", [
    ("GET", [NGINX]),
    ("HEAD", [NGINX[:-4]]),                                   # never served from memory
    ("GET", [NGINX[:-2], NGINX[-2:]]),                        # the body in two reads
    ("GET", [NGINX[:40], NGINX[40:]]),                        # the head in two reads
    ("GET", [NGINX.replace(b"keep-alive", b"close")]),
    ("GET", [NGINX.replace(b"HTTP/1.1", b"HTTP/1.0").replace(b"Connection: keep-alive\r\n",
                                                            b"")]),
    ("GET", [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]),
    ("GET", [b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n"]),
    ("GET", [b"HTTP/1.1 100 Continue\r\n\r\n" + NGINX]),
    ("GET", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"]),
    ("GET", [b"HTTP/1.1 200 OK\r\nContent-Length:  4\r\n\r\nbody"]),   # not canonical
    ("GET", [b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 4\r\n\r\n"
             b"body"]),
    ("GET", [NGINX + b"HTTP/1.1 200 OK\r\n"]),                # bytes after the response: 502
])
def test_responses_read_again_report_as_parsed(method, wires):
    pair = Pair(Http1ClientCodec, client_state)
    for _ in range(3):
        if pair.warm.available_streams() != 1:
            break
        _fetch(pair, method, wires)


def test_a_known_response_still_meets_each_codecs_limits():
    forget()
    _fetch(Pair(Http1ClientCodec, client_state), "GET", [NGINX])
    _fetch(Pair(Http1ClientCodec, client_state), "GET", [NGINX])
    codec = Http1ClientCodec(max_headers=4)
    codec.send_head(Request("GET", "/", "h", Headers([]), "http", "1.1"), True)
    (error,) = codec.receive(NGINX)
    assert isinstance(error, ProtocolError) and error.status == 502


def test_a_known_response_is_not_an_answer_to_a_head_request():
    pair = Pair(Http1ClientCodec, client_state)
    _fetch(pair, "GET", [NGINX])
    _fetch(pair, "GET", [NGINX])
    codec = pair.warm
    codec.send_head(Request("HEAD", "/", "h", Headers([]), "http", "1.1"), True)
    events = codec.receive(NGINX[:-4])
    assert described(events)[0][-1] is True         # the head ends the response
    assert codec.available_streams() == 1


@PROPERTY
@given(responses(), st.sampled_from(["GET", "HEAD"]))
def test_generated_responses_read_again_report_as_parsed(m, method):
    pair = Pair(Http1ClientCodec, client_state)
    wire = serialize_response(m, head_request=method == "HEAD")
    for _ in range(2):
        if pair.warm.available_streams() != 1:
            break
        _fetch(pair, method, [wire])



def test_a_large_read_is_not_looked_up(monkeypatch):
    """Only reads the memos could hold are hashed: a large upload's first read is not."""
    from baton.worker.codecs import http1_client, http1_server

    asked = []

    class Spy(dict):
        def get(self, key, default=None):
            asked.append(len(key))
            return super().get(key, default)

    monkeypatch.setattr(http1_server, "KNOWN_REQUESTS", Spy())
    monkeypatch.setattr(http1_client, "KNOWN_RESPONSES", Spy())
    body = b"x" * (2 * http1_head.KNOWN_BYTES)
    Http1ServerCodec().receive(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"
                               % len(body) + body)
    Http1ServerCodec().receive(WRK)
    client = Http1ClientCodec()
    client.send_head(Request("GET", "/", "h", Headers([]), "http", "1.1"), True)
    client.receive(b"HTTP/1.1 200 OK\r\nX-Big: " + body + b"\r\nContent-Length: 4\r\n\r\nbody")
    client.send_head(Request("GET", "/", "h", Headers([]), "http", "1.1"), True)
    client.receive(NGINX)
    assert asked == [len(WRK), NGINX.index(b"\r\n\r\n") + 4]


@pytest.mark.parametrize("wire", [
    b"DELETE /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n",
], ids=["connection-close", "http/1.0"])
def test_a_request_after_one_that_ends_the_connection_is_refused_as_parsed(wire):
    """llhttp refuses bytes after a request that ends the connection (400, "Data after
    `Connection: close`"). Such a request is served from memory too (KNOWN_REQUESTS), and what
    follows it still meets llhttp: the same bytes again, before the answer, must not go
    upstream."""
    forget()
    pair = Pair(Http1ServerCodec, server_state)
    first = pair.receive(wire)
    assert [type(e) for e in first] == [RequestHead]
    assert wire in http1_head.KNOWN_REQUESTS and pair.warm._parser is None   # from memory
    again = pair.receive(wire)
    assert [type(e) for e in again] == [ProtocolError] and again[0].status == 400


def test_a_request_only_the_codec_ends_stays_with_llhttp():
    """HTTP/1.2 is read as HTTP/1.0 (no keep-alive asked: the codec closes after it) while
    llhttp reads on after it: served from memory, the parser for what follows could not be
    made as llhttp's, so it is not remembered; what follows is read as llhttp reads it."""
    forget()
    wire = b"GET /x HTTP/1.2\r\nHost: a\r\n\r\n"
    pair = Pair(Http1ServerCodec, server_state)
    (head,) = pair.receive(wire)
    assert head.request.version == "1.0" and wire not in http1_head.KNOWN_REQUESTS
    assert [type(e) for e in pair.receive(wire)] == [RequestHead]


_ENDING = [b"GET / HTTP/1.1\r\nHost: 127.0.0.1:10000\r\nConnection: close\r\n\r\n",
           b"HEAD /x HTTP/1.0\r\nHost: a\r\nx-n: 1\r\n\r\n"]
_AFTER_ENDING = [b"\r\n", b"\n\r\n\r\n", b"x", b" \r\n", WRK, b"\r\n" + WRK, _ENDING[1],
                 b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok",
                 b"GET /p HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"]


def _answer(pair: Pair, streams: list) -> None:
    """Each of `streams` that still awaits its response answered, in order, on both codecs."""
    for stream in streams:
        if any(pending[0] == stream for pending in pair.warm._responses):
            pair.send("send_head", stream, Response(200, Headers([("content-length", "2")])),
                      False)
            pair.send("send_body", stream, b"ok", True)


@pytest.mark.parametrize("after", _AFTER_ENDING)
@pytest.mark.parametrize("ending", _ENDING, ids=["connection-close", "http/1.0"])
def test_what_follows_a_known_request_that_ends_the_connection_reports_as_parsed(ending, after):
    """A request that ends the connection, served from memory, then any bytes in two reads
    (split at every offset), answered before or after them, then the client's EOF: the same
    events (errors with their reasons), codec state and bytes written as when llhttp read it
    all (Pair)."""
    for cut in range(len(after) + 1):
        for answered_first in (False, True):
            forget()
            pair = Pair(Http1ServerCodec, server_state)
            (head,) = pair.receive(ending)
            assert pair.warm._parser is None            # served from memory
            streams = [head.stream_id]
            if answered_first:
                _answer(pair, streams)
            for read in (after[:cut], after[cut:]):
                if read:
                    streams += [e.stream_id for e in pair.receive(read)
                                if isinstance(e, (RequestHead, ProtocolError))]
            _answer(pair, streams)
            pair.receive(b"")


@pytest.mark.parametrize("wire", [
    b"DELETE /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n",
], ids=["connection-close", "http/1.0"])
def test_a_known_request_after_one_that_ends_the_connection_is_refused_as_parsed(wire):
    """A request known from another connection (wrk's), after one that ends this connection:
    llhttp refuses it (400), so it must not be served from memory either (it went upstream)."""
    forget()
    parsed = Http1ServerCodec()
    parsed.receive(wire)
    expected = described(parsed.receive(WRK))
    Http1ServerCodec().receive(WRK)
    assert WRK in http1_head.KNOWN_REQUESTS
    codec = Http1ServerCodec()
    assert [type(e) for e in codec.receive(wire)] == [RequestHead]
    assert described(codec.receive(WRK)) == expected == [("error", 3, 400)]


def test_a_memo_that_is_seldom_hit_rests_and_comes_back():
    """MemoGate: messages that never repeat fill the memo without a hit; when it is full it
    rests for MemoGate.REST messages (not looked up, not filled: they are parsed, reporting
    the same), then starts again; a memo that hits is never judged, so never rests."""
    forget()
    gate = http1_head.REQUESTS_GATE
    server = Http1ServerCodec()

    def ask(wire: bytes) -> tuple:
        (head,) = server.receive(wire)
        server.send_head(head.stream_id, Response(204, Headers([])), True)
        return described([head])[0]

    for n in range(http1_head._KNOWN_MAX + 1):
        ask(b"GET /v/%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
    assert gate.resting == http1_head.MemoGate.REST and not http1_head.KNOWN_REQUESTS
    # Resting: read by its lines (plain_request; the same report), neither looked up nor
    # remembered.
    pair = Pair(Http1ServerCodec, server_state)
    http1_head.KNOWN_REQUESTS[WRK] = "never looked up while resting"
    server._parser = Untouchable()
    assert ask(WRK)[2:4] == ("GET", "/")
    assert gate.resting == http1_head.MemoGate.REST - 1
    assert http1_head.KNOWN_REQUESTS == {WRK: "never looked up while resting"}
    http1_head.KNOWN_REQUESTS.clear()
    gate.resting = 1                    # the rest ends with the next message: read,
    ask(WRK)                            # and the memo open again learns it
    assert not gate.resting and WRK in http1_head.KNOWN_REQUESTS
    server._parser = Untouchable()      # served from memory now
    ask(WRK)
    # A memo that hits: wrk's requests keep it open however long they go on.
    forget()
    server = Http1ServerCodec()
    for _ in range(3 * http1_head._KNOWN_MAX):
        ask(WRK)
    assert gate.hits == 3 * http1_head._KNOWN_MAX - 1 and not gate.resting
    serve(pair, WRK, 3)                # and what it serves is what llhttp reports


def test_the_response_and_head_memos_rest_too():
    """The client side's memo (KNOWN_RESPONSES) and the decoded-head memo (_HEADS) have their
    gates too: an upstream echoing each path in a header fills them without a hit."""
    forget()
    http1_head._HEADS.clear()
    client = Http1ClientCodec()

    def fetch(wire: bytes) -> list:
        client.send_head(Request("GET", "/", "h", Headers([]), "http", "1.1"), True)
        return described(client.receive(wire))

    for n in range(http1_head._KNOWN_MAX + 1):
        fetch(NGINX.replace(b"\r\n\r\n", b"\r\nX-Path: /v/%d\r\n\r\n" % n))
    assert http1_head.RESPONSES_GATE.resting > http1_head.MemoGate.REST - 10
    # All but the first were read by their lines (plain_response), not decoded by lookup_head;
    # heads llhttp must read (a hop-by-hop Keep-Alive keeps them off the lines) fill that memo.
    assert len(http1_head._HEADS) == 1
    for n in range(http1_head._KNOWN_MAX + 1):
        fetch(NGINX.replace(b"\r\n\r\n", b"\r\nKeep-Alive: timeout=%d\r\n\r\n" % n))
    assert http1_head._HEADS_GATE.resting > http1_head.MemoGate.REST - 10
    assert http1_head.RESPONSE_LINES_GATE.resting       # (those heads are off the lines too)
    http1_head.RESPONSE_LINES_GATE.__init__()
    client._parser = Untouchable()
    for _ in range(3):          # resting: each read by its lines, nothing remembered
        head, body = fetch(NGINX)
        assert head[2] == 200 and ("server", "nginx/1.22.1") in head[4] and body[2:] == \
            (b"body", True)
    assert not http1_head.KNOWN_RESPONSES and not http1_head._HEADS
