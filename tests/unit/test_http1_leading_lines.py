"""Response heads read from where the connection's last head stopped being known
(worker/codecs/http1_head.py, response_by_lines and its `leading`): an upstream's heads begin
alike, so a head that begins with the bytes of the last one's leading lines reads only the
lines after them. Whatever a codec then reports, keeps and writes must be what it does when
llhttp reads each head: a run of heads on one connection goes to a codec that reads by the
lines (and so by its leading lines) and to one that never does, and the two are compared after
each head.
"""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from baton.worker.codecs import http1_head
from baton.worker.codecs.http1_client import Http1ClientCodec
from baton.worker.codecs.message import Headers, Request

from .http1_known_rig import (LINES_GATES, NGINX, PROPERTY, Untouchable, client_state,
                              described, forget, unjudged)


def _varied(n: int, date: bytes = b"05:05:00") -> bytes:
    """nginx's answer to bench/wrk_varied.lua's n-th request: no two heads the same."""
    return NGINX.replace(b"\r\n\r\n", b"\r\nx-path: /v/%d\r\n\r\n" % n).replace(
        b"05:05:00", date)


def _asked(codec: Http1ClientCodec) -> None:
    codec.send_head(Request("GET", "/", "h", Headers([]), "http", "1.1"), True)
    codec.data_to_send()


def _primed() -> None:
    """No memo, and the status lines of _varied and of a 404 known (llhttp read them)."""
    forget()
    primer = Http1ClientCodec()
    for wire in (_varied(0), NGINX.replace(b"200 OK", b"404 Not Found")):
        _asked(primer)
        primer.receive(wire)
    http1_head.KNOWN_RESPONSES.clear()


def _connection(wires: list, parser_untouched: bool = False) -> Http1ClientCodec:
    """`wires` answered in turn on one connection: read by a codec that may read by its lines
    (the known-message memo emptied before each, so that none is known by its bytes) and by
    one that llhttp reads (no status line known to it): the same events and state after each,
    and the same request written after the last. Returns the first codec."""
    _primed()
    warm, cold = Http1ClientCodec(), Http1ClientCodec()
    if parser_untouched:
        warm._parser = Untouchable()
    for wire in wires:
        if not (warm.available_streams() and cold.available_streams()):
            break
        _asked(warm)
        _asked(cold)
        known = dict(http1_head.STATUS_LINES)
        http1_head.STATUS_LINES.clear()
        expected = described(unjudged(lambda: cold.receive(wire)))
        http1_head.STATUS_LINES.update(known)
        http1_head.KNOWN_RESPONSES.clear()
        for gate in LINES_GATES:
            gate.__init__()
        assert described(warm.receive(wire)) == expected
        assert client_state(warm) == client_state(cold)
    request = Request("GET", "/next", "h", Headers([("x-a", "1")]), "http", "1.1")
    if warm.available_streams():
        warm.send_head(request, True)
        cold.send_head(request, True)
        assert warm.data_to_send() == cold.data_to_send()
    return warm


def test_an_upstreams_heads_are_read_from_where_their_leading_lines_end():
    warm = _connection([_varied(n) for n in range(1, 5)], parser_untouched=True)
    # Every line before the echoed path leads (its Connection line is read, and dropped).
    assert warm._leading[0] == _varied(1)[:_varied(1).index(b"x-path")]
    assert warm._leading[1:] == (200, (
        ("server", "nginx/1.22.1"), ("date", "Mon, 07 Dec 2026 05:05:00 GMT"),
        ("content-type", "text/plain"), ("content-length", "4")), 4, 5)


def test_heads_that_leave_the_leading_lines_early_or_late_report_as_parsed():
    warm = _connection([
        _varied(1), _varied(2),
        _varied(3, date=b"05:05:01"),           # the next second: Date leads no more
        _varied(4, date=b"05:05:01"),           # and again once read twice
        NGINX.replace(b"200 OK", b"404 Not Found").replace(b"\r\n\r\n", b"\r\nx: 1\r\n\r\n"),
        _varied(5, date=b"05:05:01"),
        _varied(6, date=b"05:05:01").replace(b"x-path: /v/6\r\n", b""),    # the leading, whole
        _varied(7, date=b"05:05:01"),
    ], parser_untouched=True)
    assert warm._leading[0].endswith(b"Connection: keep-alive\r\n")


def test_a_head_after_the_leading_lines_is_still_held_to_the_lines_layout():
    """What follows the leading lines is read as any head's lines: off the layout, llhttp reads
    it (and a second Content-Length after one that leads is refused as llhttp refuses it)."""
    lead = [_varied(1), _varied(2)]
    for tail in (b"Content-Length: 4", b"Content-Length: 5", b"x-path:  /v/3",
                 b"x-path: /v/3 ", b"x-path: /v/\t3", b"x-path: /v/\x003", b"x-path: /v/\xe93",
                 b"Transfer-Encoding: chunked", b"Connection: close", b"x-unknown: 1",
                 b"x-path: /v/3\r\n folded", b"x-path: /v/3\nx: 1"):
        _connection(lead + [_varied(3).replace(b"x-path: /v/3", tail), _varied(4)])
    # A body that is not the read's rest: llhttp reads it, and the next head as before.
    _connection(lead + [_varied(3)[:-1], _varied(4)])
    _connection(lead + [_varied(3) + b"HTTP/1.1 200 OK\r\n", _varied(4)])
    # The codec's limits still count every line and byte of a head read after its leading lines.
    size = _varied(9).index(b"\r\n\r\n") + 4
    for limits, over in (({"max_headers": 6}, _varied(3).replace(b"x-path", b"x-a: 1\r\nx-path")),
                         ({"max_header_bytes": size}, _varied(13))):
        _primed()
        codec = Http1ClientCodec(**limits)
        for n in (1, 2):
            _asked(codec)
            http1_head.KNOWN_RESPONSES.clear()
            assert described(codec.receive(_varied(n)))[0][0] == "response"
        assert codec._leading[0]
        _asked(codec)
        http1_head.KNOWN_RESPONSES.clear()
        assert described(codec.receive(over)) == [("error", 5, 502)]


_PLAIN = st.from_regex(rb"\A[!-~](?:[ !-~\t\x80-\xff]{0,6}[!-~])?\Z")
# Mostly lines the lines' layout takes (so that most heads are read by them), else anything.
_VALUES = st.one_of(_PLAIN, _PLAIN, _PLAIN, _PLAIN, _PLAIN, _PLAIN,
                    st.sampled_from([b"", b" x", b"x ", b"\x00", b"\r", b"\n", b"keep-alive",
                                     b"close", b"4", b"0"]))
_NAMES = st.one_of(st.sampled_from([b"Server", b"x-path", b"Content-Type", b"X-PATH", b"Date"]),
                   st.sampled_from([b"Server", b"x-path", b"Content-Type", b"X-PATH", b"Date"]),
                   st.sampled_from([b"Content-Length", b"Connection", b"Transfer-Encoding",
                                    b"x-path ", b"x-unknown"]))
_LINES = st.tuples(_NAMES, _VALUES).map(lambda nv: nv[0] + b": " + nv[1])
_CHANGES = st.tuples(st.sampled_from(["same", "set", "insert", "drop", "status", "length"]),
                     st.integers(0, 6), _LINES)


def _run(lines: list, changes: list, body: bytes, at: int) -> list:
    """The heads of one connection: each the last one with one change applied (a line set,
    inserted or dropped, the status line swapped, the Content-Length off the body's size), a
    Content-Length line at `at` (-1: none), then the body."""
    status = b"HTTP/1.1 200 OK"
    size = len(body)
    wires = []
    for kind, where, line in changes:
        where = min(where, len(lines))
        if kind == "set" and where < len(lines):
            lines[where] = line
        elif kind == "insert":
            lines.insert(where, line)
        elif kind == "drop" and where < len(lines):
            del lines[where]
        elif kind == "status":
            status = b"HTTP/1.1 404 Not Found" if status == b"HTTP/1.1 200 OK" else \
                b"HTTP/1.1 200 OK"
        elif kind == "length":
            size = len(body) + (where % 3) - 1
        head = list(lines)
        if at >= 0:
            head.insert(min(at, len(head)), b"Content-Length: %d" % max(size, 0))
        wires.append(b"\r\n".join([status] + head) + b"\r\n\r\n" + body)
    return wires


@settings(PROPERTY, max_examples=150)
@given(st.lists(_LINES, max_size=5), st.lists(_CHANGES, min_size=1, max_size=6),
       st.binary(min_size=1, max_size=6), st.integers(-1, 6))
def test_a_run_of_heads_each_changed_somewhere_reports_as_parsed(lines, changes, body, at):
    """One connection's heads, each the last one changed in one place: every head reports as
    llhttp reads it, whether it begins with the last one's leading lines or not."""
    _connection(_run(lines, changes, body, at))


_PLAIN_LINES = st.tuples(st.sampled_from([b"Server", b"x-path", b"Content-Type", b"X-PATH",
                                          b"Date", b"Connection"]), _PLAIN).map(
    lambda nv: nv[0] + b": " + (b"keep-alive" if nv[0] == b"Connection" else nv[1]))


@PROPERTY
@given(st.lists(_PLAIN_LINES, max_size=5),
       st.lists(st.tuples(st.sampled_from(["same", "set", "insert", "drop", "status"]),
                          st.integers(0, 6), _PLAIN_LINES), min_size=1, max_size=6),
       st.binary(min_size=1, max_size=6), st.integers(0, 6))
def test_a_run_of_heads_in_the_lines_layout_is_read_by_them(lines, changes, body, at):
    """The same with every head in the lines' layout: none reaches llhttp, each reports as
    llhttp would read it."""
    _connection(_run(lines, changes, body, at), parser_untouched=True)
