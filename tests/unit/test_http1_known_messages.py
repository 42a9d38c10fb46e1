"""Messages known by their bytes (worker/codecs/http1_head.py, KNOWN_REQUESTS and
KNOWN_RESPONSES): a request or response head that llhttp read once is served from memory the
next time the same bytes come. Whatever the codec then reports and writes must be exactly what
it reports and writes when llhttp reads them: each case runs one codec with the memos as they
are and one with the memos emptied before every read (always parsed), and compares the two.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from baton.worker.codecs import http1_head
from baton.worker.codecs.events import Body, ProtocolError, RequestHead, ResponseHead
from baton.worker.codecs.http1_client import Http1ClientCodec
from baton.worker.codecs.http1_server import Http1ServerCodec
from baton.worker.codecs.message import Headers, Request, Response

from .http1_strategies import requests, responses, serialize_request, serialize_response

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
WRK = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:10000\r\n\r\n"
NGINX = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 05:05:00 GMT\r\n"
         b"Content-Type: text/plain\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\nbody")


class Untouchable:
    """A parser that must not be asked."""

    def __getattr__(self, name):
        raise AssertionError(f"the parser was asked: {name}")


_LINES_GATES = (http1_head.REQUEST_LINES_GATE, http1_head.RESPONSE_LINES_GATE)


def _forget(lines_gates: bool = True) -> None:
    """The known-message memos empty, and every memo's gate open (MemoGate: earlier tests'
    messages, all different, may have left one resting); the lines' gates too, unless
    `lines_gates` is False."""
    http1_head.KNOWN_REQUESTS.clear()
    http1_head.KNOWN_RESPONSES.clear()
    http1_head.STATUS_LINES.clear()
    for gate in (http1_head.REQUESTS_GATE, http1_head.RESPONSES_GATE, http1_head._HEADS_GATE):
        gate.__init__()
    if lines_gates:
        for gate in _LINES_GATES:
            gate.__init__()


def _unjudged(read):
    """read(), the lines' gates left as they were (a codec reading as llhttp only)."""
    saved = [(g.hits, g.resting, g.misses) for g in _LINES_GATES]
    try:
        return read()
    finally:
        for gate, (hits, resting, misses) in zip(_LINES_GATES, saved):
            gate.hits, gate.resting, gate.misses = hits, resting, misses


def described(events) -> list:
    """Everything an event says, as plain values."""
    out = []
    for e in events:
        if isinstance(e, RequestHead):
            r = e.request
            out.append(("request", e.stream_id, r.method, r.path, r.authority, r.scheme,
                        r.version, list(r.headers.items), e.end_stream, e.expect_continue,
                        e.upgrade))
        elif isinstance(e, ResponseHead):
            r = e.response
            out.append(("response", e.stream_id, r.status, r.reason, list(r.headers.items),
                        e.end_stream))
        elif isinstance(e, Body):
            out.append(("body", e.stream_id, e.data, e.end_stream))
        elif isinstance(e, ProtocolError):
            out.append(("error", e.stream_id, e.status))
        else:
            out.append((type(e).__name__, vars(e) if hasattr(e, "__dict__") else repr(e)))
    return out


def server_state(codec: Http1ServerCodec) -> tuple:
    return (list(map(tuple, codec._responses)), codec.closed, codec.close_after, codec._failed,
            codec._stream, codec._next_id, codec.idle, codec.receiving, codec.awaiting_head)


def client_state(codec: Http1ClientCodec) -> tuple:
    return (codec.reusable, codec.closed, codec._failed, codec._stream, codec._tunnel,
            codec.available_streams(), codec._body_expected)


class Pair:
    """Two codecs of a kind fed the same: `warm` with the memos, `cold` always parsed."""

    def __init__(self, make, state):
        self.warm, self.cold, self.state = make(), make(), state

    def call(self, method: str, *args):
        _forget()
        cold = getattr(self.cold, method)(*args)
        warm = getattr(self.warm, method)(*args)
        return warm, cold

    def receive(self, data: bytes) -> list:
        _forget()
        cold = self.cold.receive(data)
        warm = self.warm.receive(data)
        assert described(warm) == described(cold)
        assert self.state(self.warm) == self.state(self.cold)
        assert self.warm.data_to_send() == self.cold.data_to_send()
        return warm

    def send(self, method: str, *args) -> bytes:
        getattr(self.cold, method)(*args)
        getattr(self.warm, method)(*args)
        warm, cold = self.warm.data_to_send(), self.cold.data_to_send()
        assert warm == cold
        assert self.state(self.warm) == self.state(self.cold)
        return warm


def _serve(pair: Pair, wire: bytes, times: int = 3) -> None:
    """`wire` read `times` times on a keep-alive connection, each answered."""
    for _ in range(times):
        events = pair.receive(wire)
        heads = [e for e in events if isinstance(e, RequestHead)]
        if not heads or any(isinstance(e, ProtocolError) for e in events):
            return
        for head in heads:
            pair.send("send_head", head.stream_id,
                      Response(200, Headers([("content-length", "2")])), False)
            pair.send("send_body", head.stream_id, b"ok", True)
        if pair.warm.closed:
            return


def test_a_known_request_is_served_without_the_parser_and_reports_the_same():
    _forget()
    pair = Pair(Http1ServerCodec, server_state)
    _serve(pair, WRK, 4)
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
    _serve(Pair(Http1ServerCodec, server_state), wire)


def test_a_known_request_still_meets_each_codecs_limits():
    _forget()
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
    _serve(pair, WRK, 2)
    pair.call("goaway")
    pair.receive(WRK)
    pair.receive(WRK)       # nothing more is read


@PROPERTY
@given(requests())
def test_generated_requests_read_again_report_and_answer_as_parsed(m):
    _serve(Pair(Http1ServerCodec, server_state), serialize_request(m), 2)


def _fetch(pair: Pair, method: str, wires: list) -> None:
    """One request sent, then its response read in the pieces of `wires`."""
    request = Request(method, "/", "h", Headers([]), "http", "1.1")
    pair.send("send_head", request, True)
    for wire in wires:
        pair.receive(wire)


def test_a_known_response_head_is_served_without_the_parser_and_reports_the_same():
    _forget()
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
    _forget()
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
    Connection: close"); a request known by its bytes never reaches llhttp, so such a request
    is never remembered: the same bytes again, before the answer, must not go upstream."""
    _forget()
    pair = Pair(Http1ServerCodec, server_state)
    first = pair.receive(wire)
    assert [type(e) for e in first] == [RequestHead]
    again = pair.receive(wire)
    assert [type(e) for e in again] == [ProtocolError] and again[0].status == 400
    assert wire not in http1_head.KNOWN_REQUESTS


@pytest.mark.parametrize("wire", [
    b"DELETE /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n",
], ids=["connection-close", "http/1.0"])
def test_a_known_request_after_one_that_ends_the_connection_is_refused_as_parsed(wire):
    """A request known from another connection (wrk's), after one that ends this connection:
    llhttp refuses it (400), so it must not be served from memory either (it went upstream)."""
    _forget()
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
    _forget()
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
    _forget()
    server = Http1ServerCodec()
    for _ in range(3 * http1_head._KNOWN_MAX):
        ask(WRK)
    assert gate.hits == 3 * http1_head._KNOWN_MAX - 1 and not gate.resting
    _serve(pair, WRK, 3)                # and what it serves is what llhttp reports


def test_the_response_and_head_memos_rest_too():
    """The client side's memo (KNOWN_RESPONSES) and the decoded-head memo (_HEADS) have their
    gates too: an upstream echoing each path in a header fills them without a hit."""
    _forget()
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


# -- responses read by their lines (http1_head.plain_response) ---------------------------------

def _varied(n: int) -> bytes:
    """nginx's answer to bench/wrk_varied.lua's n-th request: no two heads the same."""
    return NGINX.replace(b"\r\n\r\n", b"\r\nx-path: /v/%d\r\n\r\n" % n)


def _read_by_lines_and_parsed(wire: bytes, method: str = "GET", by_lines=None) -> list:
    """`wire` read by a codec that knows the status lines llhttp read so far and by one that
    knows none (llhttp reads it): the same events, state and what each writes next.
    `by_lines`: whether the first must have read it by its lines (None: either)."""
    warm, cold = Http1ClientCodec(), Http1ClientCodec()
    for codec in (warm, cold):
        codec.send_head(Request(method, "/", "h", Headers([]), "http", "1.1"), True)
        codec.data_to_send()
    before = dict(http1_head.STATUS_LINES)
    _forget(lines_gates=False)
    expected = described(_unjudged(lambda: cold.receive(wire)))
    learned = dict(http1_head.STATUS_LINES)
    http1_head.KNOWN_RESPONSES.clear()
    http1_head.STATUS_LINES.clear()
    http1_head.STATUS_LINES.update(before)
    got = described(warm.receive(wire))
    http1_head.STATUS_LINES.update(learned)
    assert got == expected
    if by_lines is not None:
        assert (warm._parser is None) is by_lines      # llhttp's parser is made when needed
    assert client_state(warm) == client_state(cold)
    request = Request("GET", "/next", "h", Headers([("x-a", "1")]), "http", "1.1")
    if warm.available_streams():
        warm.send_head(request, True)
        cold.send_head(request, True)
        assert warm.data_to_send() == cold.data_to_send()
    return got


def test_a_response_whose_status_line_and_names_llhttp_read_is_read_by_its_lines():
    _forget()
    _read_by_lines_and_parsed(_varied(0))       # llhttp reads it: its status line is known
    assert http1_head.STATUS_LINES == {b"HTTP/1.1 200 OK": 200}
    codec = Http1ClientCodec()
    for n in (1, 2):
        codec.send_head(Request("GET", "/", "h", Headers([]), "http", "1.1"), True)
        codec._parser = Untouchable()
        events = codec.receive(_varied(n))
        assert described(events) == [
            ("response", 2 * n - 1, 200, "", [
                ("server", "nginx/1.22.1"), ("date", "Mon, 07 Dec 2026 05:05:00 GMT"),
                ("content-type", "text/plain"), ("content-length", "4"),
                ("x-path", "/v/%d" % n)], False),
            ("body", 2 * n - 1, b"body", True)]
        assert codec.reusable and codec.available_streams() == 1
    assert _read_by_lines_and_parsed(_varied(3))[0][4][-1] == ("x-path", "/v/3")


@pytest.mark.parametrize("wire, by_lines", [
    (_varied(1).replace(b"x-path: /v/1", b"x-path:  /v/1"), False),  # padded: llhttp trims
    (_varied(1).replace(b"x-path: /v/1", b"x-path: /v/1 "), False),
    (_varied(1).replace(b"x-path: /v/1", b"x-path: /v/\t1"), True),
    (_varied(1).replace(b"x-path: /v/1", b"x-path: /v/\x001"), False),
    (_varied(1).replace(b"x-path: /v/1", b"x-path: /v/\r1"), False),
    (_varied(1).replace(b"x-path: /v/1", b"x-path: /v/\n1"), False),
    (_varied(1).replace(b"x-path: /v/1", b"x-path: /v/\x7f1"), False),
    (_varied(1).replace(b"x-path: /v/1", b"x-path: /v/\xe91"), True),  # obs-text
    (_varied(1).replace(b"x-path: /v/1", b"x-path: /v/1\r\n folded"), False),
    (_varied(1).replace(b"x-path: /v/1", b"x-path:/v/1"), False),
    (_varied(1).replace(b"x-path: /v/1", b"x-path : /v/1"), False),
    (_varied(1).replace(b"x-path: /v/1", b"x-path: "), False),
    (_varied(1).replace(b"x-path: /v/1", b"Content-Length: 4"), False),  # twice
    (_varied(1).replace(b"x-path: /v/1", b"Transfer-Encoding: chunked"), False),
    (_varied(1).replace(b"keep-alive", b"close"), False),
    (_varied(1).replace(b"keep-alive", b"Keep-Alive"), False),
    (_varied(1).replace(b"Content-Length: 4", b"Content-Length: 04"), True),
    (_varied(1).replace(b"Content-Length: 4", b"Content-Length: +4"), False),
    (_varied(1).replace(b"Content-Length: 4", b"Content-Length: 0"), False),
    (_varied(1).replace(b"Content-Length: 4", b"Content-Length: 5"), False),  # the body is short
    (_varied(1).replace(b"Content-Length: 4", b"Content-Length: 3"), False),  # bytes after it
    (_varied(1).replace(b"200 OK", b"200 Fine"), False),  # an unknown status line
    (_varied(1).replace(b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK"), False),
    (_varied(1).replace(b"\r\nServer", b"\nServer"), False),
    (_varied(1)[:-2], False),  # the body in two reads
])
def test_a_response_off_the_lines_reports_as_parsed(wire, by_lines):
    """Each case beside the lines' layout goes to llhttp (inner tabs, obs-text and a leading
    zero are in it: llhttp takes them as they are)."""
    _forget()
    _read_by_lines_and_parsed(_varied(0))
    _read_by_lines_and_parsed(wire, by_lines=by_lines)


def test_a_name_llhttp_never_read_keeps_a_head_off_the_lines():
    _forget()
    _read_by_lines_and_parsed(_varied(0))
    wire = _varied(1).replace(b"x-path", b"x-a-name-llhttp-never-read")
    assert http1_head.plain_response(wire, wire.index(b"\r\n\r\n") + 4) is None
    assert http1_head.plain_response(_varied(1), _varied(1).index(b"\r\n\r\n") + 4)


def test_a_response_read_by_its_lines_still_meets_each_codecs_limits():
    _forget()
    _read_by_lines_and_parsed(_varied(0))
    for codec in (Http1ClientCodec(max_headers=5), Http1ClientCodec(max_header_bytes=100)):
        codec.send_head(Request("GET", "/", "h", Headers([]), "http", "1.1"), True)
        (error,) = codec.receive(_varied(1))
        assert isinstance(error, ProtocolError) and error.status == 502


_PLAIN_VALUES = st.from_regex(rb"\A[!-~](?:[ !-~\t\x80-\xff]{0,10}[!-~])?\Z")
# Mostly values the lines may carry (so that most heads are read by them), else anything.
_LINE_BYTES = st.one_of(_PLAIN_VALUES, _PLAIN_VALUES, _PLAIN_VALUES, _PLAIN_VALUES,
                        st.binary(max_size=12),
                        st.sampled_from([b"", b" ", b"\t", b"a b", b"a\tb", b"\xff", b"\r",
                                         b"\n", b"\x00", b": ", b"0", b"4", b"keep-alive"]))
_LINE_NAMES = st.sampled_from([b"Server", b"x-path", b"Content-Type", b"X-PATH", b"Date",
                               b"x-path", b"Server", b"Date", b"Content-Length",
                               b"Connection", b"Transfer-Encoding", b"x-path "])


@settings(PROPERTY, max_examples=200)
@given(st.lists(st.tuples(_LINE_NAMES, _LINE_BYTES), max_size=5),
       st.binary(max_size=8), st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found",
                                               b"HTTP/1.1 200 OK", b"HTTP/1.1 204 No Content"]),
       st.integers(-1, 6), st.sampled_from([0, 0, 0, 0, -1, 1]))
def test_any_bytes_in_a_known_heads_lines_report_as_parsed(fields, body, status_line, at,
                                                             off):
    """Names llhttp read, any bytes for their values: read by the lines or by llhttp, the same
    report (values llhttp refuses or trims, framing, a body of any size). `at`: where a
    Content-Length line goes (-1: none), `off`: how far it is from the body's size."""
    _forget()
    _read_by_lines_and_parsed(_varied(0))
    _read_by_lines_and_parsed(NGINX.replace(b"200 OK", b"404 Not Found"))
    lines = [name + b": " + value for name, value in fields]
    if at >= 0:
        lines.insert(min(at, len(lines)), b"Content-Length: %d" % max(len(body) + off, 0))
    head = b"\r\n".join([status_line] + lines)
    _read_by_lines_and_parsed(head + b"\r\n\r\n" + body)


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from([b"Server", b"x-path", b"Content-Type", b"X-PATH",
                                           b"Date"]), _PLAIN_VALUES), max_size=6),
       st.binary(min_size=1, max_size=8), st.sampled_from([b"HTTP/1.1 200 OK",
                                                           b"HTTP/1.1 404 Not Found"]),
       st.integers(0, 6), st.booleans())
def test_heads_in_the_lines_layout_are_read_by_them_and_report_as_parsed(fields, body,
                                                                        status_line, at,
                                                                        keep_alive):
    _forget()
    _read_by_lines_and_parsed(_varied(0))
    _read_by_lines_and_parsed(NGINX.replace(b"200 OK", b"404 Not Found"))
    lines = [name + b": " + value for name, value in fields]
    lines.insert(min(at, len(lines)), b"Content-Length: %d" % len(body))
    if keep_alive:
        lines.append(b"Connection: keep-alive")
    head = b"\r\n".join([status_line] + lines)
    _read_by_lines_and_parsed(head + b"\r\n\r\n" + body, by_lines=True)



# -- requests read by their lines (http1_head.plain_request) -----------------------------------

_PRIMER = (b"GET /p HTTP/1.1\r\nHost: h\r\nx-n: 1\r\nX-N: 2\r\nUser-Agent: u\r\n"
           b"Accept: */*\r\n\r\n")


def _request_by_lines_and_parsed(wire: bytes, by_lines=None) -> list:
    """`wire` read by a server codec and by one that never reads by lines (llhttp reads it):
    the same events, state, answer written and next request read. `by_lines`: whether the
    first must have read it by its lines (None: either)."""
    from baton.worker.codecs import http1_server
    warm, cold = Http1ServerCodec(), Http1ServerCodec()
    _forget(lines_gates=False)
    by_lines_read = http1_server.plain_request
    http1_server.plain_request = lambda data: None
    try:
        expected = described(_unjudged(lambda: cold.receive(wire)))
    finally:
        http1_server.plain_request = by_lines_read
    http1_head.KNOWN_REQUESTS.clear()
    got = described(warm.receive(wire))
    assert got == expected
    assert server_state(warm) == server_state(cold)
    if by_lines is not None:
        assert (warm._parser is None) is by_lines      # llhttp's parser is made when needed
    pair = Pair(lambda: None, server_state)
    pair.warm, pair.cold = warm, cold
    for event in got:
        if event[0] == "request" or event[0] == "error":
            pair.send("send_head", event[1], Response(200, Headers([("content-length", "2")])),
                      False)
            pair.send("send_body", event[1], b"ok", True)
    if not warm.closed:
        pair.receive(WRK)
    return got


def test_a_request_of_names_llhttp_read_and_a_plain_target_is_read_by_its_lines():
    _forget()
    _request_by_lines_and_parsed(_PRIMER)
    server = Http1ServerCodec()
    server._parser = Untouchable()
    (head,) = server.receive(b"GET /v/7?a=b HTTP/1.1\r\nHost: 127.0.0.1:10000\r\nx-n: 7\r\n"
                             b"Connection: keep-alive\r\n\r\n")
    assert described([head]) == [("request", 1, "GET", "/v/7?a=b", "127.0.0.1:10000", "http",
                                  "1.1", [("x-n", "7")], True, False, None)]
    _request_by_lines_and_parsed(b"GET /v/8 HTTP/1.1\r\nHost: h\r\nx-n: 8\r\n\r\n", True)


@pytest.mark.parametrize("wire, by_lines", [
    (b"GET /v/1 HTTP/1.1\r\nHost: h\r\nx-n:  1\r\n\r\n", False),
    (b"GET /v/1 HTTP/1.1\r\nHost: h\r\nx-n: 1 \r\n\r\n", False),
    (b"GET /v/1 HTTP/1.1\r\nHost: h\r\nx-n: \x001\r\n\r\n", False),
    (b"GET /v/1 HTTP/1.1\r\nHost: h\r\nx-n: 1\r2\r\n\r\n", False),
    (b"GET /v/1 HTTP/1.1\r\nHost: h\r\nx-n: 1\n2\r\n\r\n", False),
    (b"GET /v/1 HTTP/1.1\r\nHost: h\r\nx-n: 1\tb\xff\r\n\r\n", True),
    (b"GET /v/1 HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n", False),         # 400
    (b"GET /v/1 HTTP/1.1\r\nx-n: 1\r\n\r\n", False),                      # no Host
    (b"GET /v/1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", False),
    (b"GET /v/1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", False),
    (b"GET /v/1 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", True),
    (b"GET /v/1 HTTP/1.0\r\nHost: h\r\n\r\n", False),
    (b"GET /v/1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"GET  /v/1 HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"GET /v/1#f HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"GET /v/\"1 HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"GET /v/\xe91 HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"GET http://a/v/1 HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"CONNECT /v/1 HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"get /v/1 HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"DELETE /v/1 HTTP/1.1\r\nHost: h\r\n\r\n", True),
    (b"GET /v/1 HTTP/1.1\r\nHost: h\r\nx-n: 1\r\n folded\r\n\r\n", False),
    (b"GET /v/1 HTTP/1.1\nHost: h\r\n\r\n", False),
])
def test_a_request_off_the_lines_reports_and_answers_as_parsed(wire, by_lines):
    _forget()
    _request_by_lines_and_parsed(_PRIMER)
    _request_by_lines_and_parsed(wire, by_lines)


def test_a_request_read_by_its_lines_still_meets_each_codecs_limits():
    _forget()
    _request_by_lines_and_parsed(_PRIMER)
    wire = b"GET /v/1 HTTP/1.1\r\nHost: h\r\nx-n: 1\r\nx-n: 2\r\n\r\n"
    for codec in (Http1ServerCodec(max_headers=2), Http1ServerCodec(max_header_bytes=30)):
        (error,) = codec.receive(wire)
        assert isinstance(error, ProtocolError) and error.status == 431


_TARGETS = st.from_regex(rb"\A/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,20}\Z") | st.binary(max_size=10)
_REQUEST_NAMES = st.sampled_from([b"Host", b"x-n", b"X-N", b"User-Agent", b"Accept", b"x-n",
                                  b"Connection", b"Content-Length", b"Expect",
                                  b"Transfer-Encoding", b"x-n ", b"Upgrade"])


@settings(PROPERTY, max_examples=200)
@given(st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS", b"CONNECT", b"GETS", b""]),
       _TARGETS, st.lists(st.tuples(_REQUEST_NAMES, _LINE_BYTES), max_size=5), st.booleans())
def test_any_bytes_in_a_requests_lines_report_and_answer_as_parsed(method, target, fields,
                                                                   host):
    _forget()
    _request_by_lines_and_parsed(_PRIMER)
    lines = [name + b": " + value for name, value in fields]
    if host:
        lines.insert(0, b"Host: h")
    head = b"\r\n".join([method + b" " + target + b" HTTP/1.1"] + lines)
    _request_by_lines_and_parsed(head + b"\r\n\r\n")


@PROPERTY
@given(st.sampled_from([b"GET", b"HEAD", b"DELETE", b"OPTIONS"]),
       st.from_regex(rb"\A/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,20}\Z"),
       st.lists(st.tuples(st.sampled_from([b"x-n", b"X-N", b"User-Agent", b"Accept"]),
                          _PLAIN_VALUES), max_size=5), st.integers(0, 5), st.booleans())
def test_requests_in_the_lines_layout_are_read_by_them_and_report_as_parsed(
        method, target, fields, at, keep_alive):
    _forget()
    _request_by_lines_and_parsed(_PRIMER)
    lines = [name + b": " + value for name, value in fields]
    lines.insert(min(at, len(lines)), b"Host: h")
    if keep_alive:
        lines.append(b"Connection: keep-alive")
    head = b"\r\n".join([method + b" " + target + b" HTTP/1.1"] + lines)
    _request_by_lines_and_parsed(head + b"\r\n\r\n", by_lines=True)


def test_heads_seldom_read_by_their_lines_rest_the_lines_and_come_back():
    """LinesGate: a chunked upstream (every head off the lines) makes the response lines rest
    after JUDGED misses (llhttp reads each, reporting the same), then they are tried again;
    heads the lines read are never judged."""
    _forget()
    gate = http1_head.RESPONSE_LINES_GATE
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"
    _read_by_lines_and_parsed(_varied(0))       # (a miss: its status line not known yet)
    gate.__init__()
    for n in range(http1_head.LinesGate.JUDGED - 1):
        _read_by_lines_and_parsed(chunked, by_lines=False)
    assert not gate.resting
    _read_by_lines_and_parsed(chunked, by_lines=False)
    assert gate.resting == http1_head.MemoGate.REST
    _read_by_lines_and_parsed(_varied(1), by_lines=False)      # resting: llhttp reads it
    assert gate.resting == http1_head.MemoGate.REST - 1
    gate.resting = 0
    for n in range(3 * http1_head.LinesGate.JUDGED):
        _read_by_lines_and_parsed(_varied(n), by_lines=True)
    assert gate.hits == 3 * http1_head.LinesGate.JUDGED and not gate.misses
