"""Heads read by their lines (worker/codecs/http1_head.py, plain_response and plain_request):
a head not known by its bytes, in the layout llhttp would read the same way, is read without
the parser. Whatever the codec then reports, keeps and writes must be exactly what it does when
llhttp reads the head: each case runs one codec that may read by the lines and one that never
does, and compares the two.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from baton.worker.codecs import http1_head
from baton.worker.codecs.events import ProtocolError
from baton.worker.codecs.http1_client import Http1ClientCodec
from baton.worker.codecs.http1_server import Http1ServerCodec
from baton.worker.codecs.message import Headers, Request, Response

from .http1_known_rig import (NGINX, PROPERTY, WRK, Pair, Untouchable, client_state, described,
                              forget, server_state, unjudged)


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
    forget(lines_gates=False)
    expected = described(unjudged(lambda: cold.receive(wire)))
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
    forget()
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
    forget()
    _read_by_lines_and_parsed(_varied(0))
    _read_by_lines_and_parsed(wire, by_lines=by_lines)


def test_a_name_llhttp_never_read_keeps_a_head_off_the_lines():
    forget()
    _read_by_lines_and_parsed(_varied(0))
    wire = _varied(1).replace(b"x-path", b"x-a-name-llhttp-never-read")
    assert http1_head.plain_response(wire, wire.index(b"\r\n\r\n") + 4) is None
    assert http1_head.plain_response(_varied(1), _varied(1).index(b"\r\n\r\n") + 4)


def test_a_response_read_by_its_lines_still_meets_each_codecs_limits():
    forget()
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
    forget()
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
    forget()
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
    forget(lines_gates=False)
    by_lines_read = http1_server.plain_request
    http1_server.plain_request = lambda data: None
    try:
        expected = described(unjudged(lambda: cold.receive(wire)))
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
    forget()
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
    forget()
    _request_by_lines_and_parsed(_PRIMER)
    _request_by_lines_and_parsed(wire, by_lines)


def test_a_request_read_by_its_lines_still_meets_each_codecs_limits():
    forget()
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
    forget()
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
    forget()
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
    forget()
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


def test_a_line_read_before_reads_the_same_on_each_side():
    """The lines' memos (_RESPONSE_LINE_READS, _REQUEST_LINE_READS): a head read again from the
    memo reads as it did, into lists of its own; a line reads as its side reads it (Host and
    Expect pass on in a response, not in a request; Content-Length the other way)."""
    forget()
    response = NGINX.replace(b"\r\n\r\n", b"\r\nHost: h\r\nExpect: e\r\nx-n: 1\r\n\r\n")
    _request_by_lines_and_parsed(_PRIMER)
    _read_by_lines_and_parsed(response)         # llhttp reads its names (and status line)
    http1_head._RESPONSE_LINE_READS.clear()
    http1_head._REQUEST_LINE_READS.clear()
    end = response.index(b"\r\n\r\n") + 4
    first, again = (http1_head.plain_response(response, end) for _ in range(2))
    assert first == again and first[1] is not again[1]
    assert ("host", "h") in first[1] and ("expect", "e") in first[1]
    assert http1_head.plain_request(b"GET / HTTP/1.1\r\nHost: h\r\nExpect: e\r\n\r\n") is None
    request = b"GET / HTTP/1.1\r\nHost: h\r\nx-n: 1\r\n\r\n"
    first, again = (http1_head.plain_request(request) for _ in range(2))
    assert first == again == ("GET", "/", "h", [("x-n", "1")], 2) and first[3] is not again[3]
    assert http1_head.plain_request(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n") \
        is None
    assert http1_head.plain_request(b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n") is None
    for wire in (_varied(1), request):          # and the codecs report as llhttp reads
        if wire is request:
            _request_by_lines_and_parsed(wire, by_lines=True)
        else:
            _read_by_lines_and_parsed(wire, by_lines=True)
