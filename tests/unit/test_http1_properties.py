"""Properties of the HTTP/1.1 codec (worker/codecs/http1_*.py) that say what it reports, not only
that it does not raise: a generated valid request comes out with its head fields and body bytes,
chunked and Content-Length give the same message, pipelined requests come out in order, our
client's requests and our server's responses read back as what was sent; and invalid input is a
ProtocolError with a 4xx status (501 for a transfer-coding), never an exception of another type
and never followed by more events. Then the cases where the codec answers as Envoy 1.40 does
(issue 13; the differential tests compare them with the real Envoy)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from baton.worker.codecs.events import Body, ProtocolError, RequestHead, ResponseHead
from baton.worker.codecs.http1_client import Http1ClientCodec
from baton.worker.codecs.http1_server import Http1ServerCodec
from baton.worker.codecs.message import Headers, Request, Response

from .http1_strategies import Message, requests, responses, serialize_request, serialize_response

PROPERTY = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
PARSE_ERRORS = (400, 431, 501)          # what a server-side parse error may answer


def messages(events) -> list:
    """[(head event, body bytes, ended)] in order of the heads."""
    out, by_id = [], {}
    for e in events:
        if isinstance(e, (RequestHead, ResponseHead)):
            entry = [e, b"", e.end_stream]
            out.append(entry)
            by_id[e.stream_id] = entry
        elif isinstance(e, Body):
            entry = by_id[e.stream_id]
            assert not entry[2], "body after the end of its message"
            entry[1] += e.data
            entry[2] = e.end_stream
    return [tuple(m) for m in out]


def check_request(head: RequestHead, body: bytes, ended: bool, m: Message) -> None:
    r = head.request
    assert (r.method, r.path, r.authority, r.version) == (m.method, m.path, m.host, "1.1")
    assert list(r.headers.items) == m.expected_headers()
    assert body == (m.body or b"") and ended


# -- valid requests --------------------------------------------------------------------------

@PROPERTY
@given(requests())
def test_a_valid_request_round_trips(m):
    events = Http1ServerCodec().receive(serialize_request(m))
    assert not any(isinstance(e, ProtocolError) for e in events), events
    (got,) = messages(events)
    check_request(*got, m)
    # The head says whether a body follows: no body and Content-Length 0 end at the head.
    assert got[0].end_stream == (m.body is None or (not m.chunks and not m.body))


@PROPERTY
@given(requests(), st.lists(st.integers(1, 40), min_size=1, max_size=6))
def test_chunked_and_content_length_give_the_same_request(m, sizes):
    body = m.body or b"some body"
    by_length = Message(m.headers, m.wire_names, body, [], m.method, m.path, m.host)
    chunked = Message(m.headers, m.wire_names, body, sizes + [len(body)], m.method, m.path, m.host)
    chunked.chunks = _cover(sizes, len(body))
    (a,) = messages(Http1ServerCodec().receive(serialize_request(by_length)))
    (b,) = messages(Http1ServerCodec().receive(serialize_request(chunked)))
    assert a[1] == b[1] == body and a[2] and b[2]
    ra, rb = a[0].request, b[0].request
    assert (ra.method, ra.path, ra.authority) == (rb.method, rb.path, rb.authority)
    assert [kv for kv in ra.headers.items if kv[0] != "content-length"] == list(rb.headers.items)


def _cover(sizes: list, total: int) -> list:
    """Chunk sizes from `sizes` (cycled) that add up to `total`."""
    out, i = [], 0
    while total > 0:
        n = min(sizes[i % len(sizes)], total)
        out.append(n)
        total -= n
        i += 1
    return out or [0]


@PROPERTY
@given(st.lists(requests(), min_size=2, max_size=5))
def test_pipelined_requests_come_out_in_order(ms):
    codec = Http1ServerCodec()
    events = codec.receive(b"".join(serialize_request(m) for m in ms))
    got = messages(events)
    assert [g[0].stream_id for g in got] == [1 + 2 * i for i in range(len(ms))]
    for g, m in zip(got, ms):
        check_request(*g, m)
    # Answered in order, each response goes out whole and the connection stays open.
    for g in got:
        codec.send_head(g[0].stream_id, Response(204, Headers()), True)
    out = codec.data_to_send()
    assert out.count(b"HTTP/1.1 204 No Content\r\n") == len(ms) and not codec.closed


@PROPERTY
@given(requests())
def test_our_client_requests_read_back_as_sent(m):
    client = Http1ClientCodec()
    headers = Headers(list(m.headers))
    sid = client.send_head(Request(m.method, m.path, m.host, headers), m.body is None)
    if m.body is not None:
        client.send_body(sid, m.body, True)
    (got,) = messages(Http1ServerCodec().receive(client.data_to_send()))
    r = got[0].request
    assert (r.method, r.path, r.authority) == (m.method, m.path, m.host)
    assert list(r.headers.items) == m.headers      # no content-length given: sent chunked
    assert got[1] == (m.body or b"") and got[2]


@PROPERTY
@given(responses(), st.sampled_from(["GET", "HEAD"]))
def test_our_server_responses_read_back_as_sent(m, method):
    server = Http1ServerCodec()
    (head,) = server.receive(f"{method} / HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    headers = Headers(m.expected_headers() if not m.chunks else list(m.headers))
    server.send_head(head.stream_id, Response(m.status, headers), False)
    server.send_body(head.stream_id, m.body, True)
    client = Http1ClientCodec()
    client.send_head(Request(method, "/", "a", Headers()), True)
    (got,) = messages(client.receive(server.data_to_send()))
    assert got[0].response.status == m.status
    framing = ("content-length", "transfer-encoding")
    assert [kv for kv in got[0].response.headers.items if kv[0] not in framing] == m.headers
    assert got[1] == (b"" if method == "HEAD" else m.body) and got[2]
    assert client.available_streams() == 1          # the connection may carry the next one


@PROPERTY
@given(responses(), st.sampled_from(["GET", "HEAD"]))
def test_a_valid_response_round_trips(m, method):
    client = Http1ClientCodec()
    client.send_head(Request(method, "/", "a", Headers()), True)
    events = client.receive(serialize_response(m, head_request=method == "HEAD"))
    (got,) = messages(events)
    assert got[0].response.status == m.status
    assert list(got[0].response.headers.items) == m.expected_headers()
    assert got[1] == (b"" if method == "HEAD" else m.body) and got[2]


# -- invalid input ---------------------------------------------------------------------------

def only_interface_events(events, kinds) -> ProtocolError | None:
    """Every event is of the interface, and nothing follows a ProtocolError; that error."""
    error = None
    for e in events:
        assert isinstance(e, kinds), e
        assert error is None, f"{e!r} after {error!r}"
        if isinstance(e, ProtocolError):
            error = e
    return error


@PROPERTY
@given(st.lists(requests(), min_size=1, max_size=3), st.integers(0, 2**16), st.integers(1, 64))
def test_damaged_requests_are_a_4xx_protocol_error_or_parse(ms, seed, step):
    rng = random.Random(seed)
    wire = bytearray(b"".join(serialize_request(m) for m in ms))
    for _ in range(rng.randrange(1, 4)):
        pos = rng.randrange(len(wire))
        wire[pos:pos + rng.randrange(2)] = rng.choice(
            (b"\x00", b"\x7f", b" ", b"\t", b"\r", b"\n", b":", b"\r\n\r\n", b"zz\r\n", b"-1",
             b"Transfer-Encoding: chunked\r\n", b"Content-Length: 3\r\n", bytes([rng.randrange(256)])))
    codec = Http1ServerCodec()
    events = []
    for i in range(0, len(wire), step):
        events += codec.receive(bytes(wire[i:i + step]))
    error = only_interface_events(events, (RequestHead, Body, ProtocolError))
    if error is not None:
        assert error.status in PARSE_ERRORS and error.stream_id, error


@pytest.mark.parametrize("wire", [
    b"GET / HTTP/1.1\r\nHost: a\r\nx\x00y: v\r\n\r\n",                          # NUL in a name
    b"GET / HTTP/1.1\r\nHost: a\r\nx-a : v\r\n\r\n",                            # space before ':'
    b"GET / HTTP/1.1\r\nHost: a\r\nx-a: 1\r\n folded\r\n\r\n",                  # obs-fold
    b"GET / HTTP/1.1\nHost: a\n\n",                                             # bare LF
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",      # chunk size
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",                             # TLS hello
])
def test_invalid_requests_are_a_400_in_every_split(wire):
    for step in (1, 3, len(wire)):
        codec = Http1ServerCodec()
        events = []
        for i in range(0, len(wire), step):
            events += codec.receive(wire[i:i + step])
        error = only_interface_events(events, (RequestHead, Body, ProtocolError))
        assert error is not None and error.status == 400, (step, events)


@PROPERTY
@given(st.binary(max_size=400), st.integers(1, 64))
def test_any_bytes_to_the_client_are_events_or_a_502(data, step):
    client = Http1ClientCodec()
    client.send_head(Request("GET", "/", "a", Headers()), True)
    events = []
    for i in range(0, len(data), step):
        events += client.receive(data[i:i + step])
    events += client.receive(b"")
    error = only_interface_events(events, (ResponseHead, Body, ProtocolError))
    if error is not None:
        assert error.status == 502, error


# -- where the codec answers as Envoy 1.40 does (issue 13) -----------------------------------

def one_error(wire: bytes, **limits) -> ProtocolError:
    events = Http1ServerCodec(**limits).receive(wire)
    assert isinstance(events[-1], ProtocolError), events
    return events[-1]


@pytest.mark.parametrize("codings", [b"identity, chunked", b"gzip, chunked", b"chunked, chunked",
                                     b"chunked;a=1", b"identity", b"", b"chunked, gzip"])
def test_transfer_coding_other_than_chunked_is_501(codings):
    error = one_error(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + codings + b"\r\n\r\n")
    assert error.status == 501


def test_transfer_encoding_in_two_headers_is_501_and_capitals_are_chunked():
    assert one_error(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n").status == 501
    (got,) = messages(Http1ServerCodec().receive(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n"))
    assert got[1] == b"abc" and got[2]


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/9.9", b"HTTP/0.9"])
def test_other_versions_are_reported_as_http10(version):
    (head,) = Http1ServerCodec().receive(b"GET / " + version + b"\r\nHost: a\r\n\r\n")
    assert head.request.version == "1.0"


def test_a_request_line_without_version_is_answered_at_once_and_ends_reading():
    codec = Http1ServerCodec()
    events = codec.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /old\r\n")
    assert [(e.request.path, e.request.version, e.end_stream) for e in events] == \
        [("/", "1.1", True), ("/old", "1.0", True)]
    assert codec.receive(b"Host: a\r\n\r\nGET / HTTP/1.1\r\n\r\n") == []
    # The refusal (426) of a request taken for HTTP/1.0 goes out as HTTP/1.1, as Envoy's.
    codec.send_head(1, Response(200, Headers([("content-length", "0")])), True)
    codec.send_head(3, Response(426, Headers([("content-length", "0")])), True)
    out = codec.data_to_send()
    assert out.startswith(b"HTTP/1.1 200 OK") and b"HTTP/1.1 426 Upgrade Required" in out


def test_a_line_ending_in_the_target_is_not_taken_for_a_versionless_request():
    # A header value ending with the method and target, cut right after its CRLF, is a header.
    codec = Http1ServerCodec()
    assert codec.receive(b"GET /x HTTP/1.1\r\nx-a: aGET /x\r\n") == []
    (head,) = codec.receive(b"Host: a\r\n\r\n")
    assert head.request.version == "1.1" and head.request.headers.get("x-a") == "aGET /x"


@pytest.mark.parametrize("target, authority, path", [
    (b"http://user@abs.test/u", "abs.test", "/u"),
    (b"https://u:p@abs.test:8080/x?q=1", "abs.test:8080", "/x?q=1"),
    (b"HTTP://abs.test", "abs.test", "/"),
    (b"http://[::1]:80/v6", "[::1]:80", "/v6"),
])
def test_absolute_form_drops_userinfo(target, authority, path):
    (head,) = Http1ServerCodec().receive(b"GET " + target + b" HTTP/1.1\r\nHost: other\r\n\r\n")
    assert (head.request.authority, head.request.path) == (authority, path)


@pytest.mark.parametrize("target", [b"http://a@b@abs.test/", b"http://user@/x", b"http:///x",
                                    b"http://abs.test:99999/", b"http://abs.test:0/", b"http://abs.test:/",
                                    b"http://ab_s.test/", b"ftp://abs.test/", b"abs.test/x", b"*"])
def test_invalid_absolute_form_is_400(target):
    assert one_error(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n").status == 400


def test_an_asterisk_is_a_target_for_options_only():
    (head,) = Http1ServerCodec().receive(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert head.request.path == "*"


def head_of(size: int) -> bytes:
    base = b"GET /limit HTTP/1.1\r\nHost: a\r\nx-pad: \r\n\r\n"
    return base.replace(b"x-pad: ", b"x-pad: " + b"p" * (size - len(base)))


@pytest.mark.parametrize("step", [1, 7, 1000, 100_000])
def test_the_head_limit_is_the_head_as_sent_in_any_split(step):
    for size, passes in ((8192, True), (8193, False)):
        codec = Http1ServerCodec(max_header_bytes=8192)
        wire = head_of(size)
        events = []
        for i in range(0, len(wire), step):
            events += codec.receive(wire[i:i + step])
        assert isinstance(events[-1], RequestHead if passes else ProtocolError), (size, events)
        if not passes:
            assert events[-1].status == 431


def test_a_header_line_that_never_ends_is_refused_not_buffered():
    codec = Http1ServerCodec(max_header_bytes=8192)
    assert codec.receive(b"GET / HTTP/1.1\r\nHost: a\r\nx-endless: ") == []
    for sent in range(1, 100):
        events = codec.receive(b"v" * 1000)
        if events:
            break
    assert [e.status for e in events] == [431] and sent <= 10


def test_upstream_response_limits_are_envoys():
    def response(head_size: int = 0, count: int = 0) -> list:
        client = Http1ClientCodec()
        client.send_head(Request("GET", "/", "a", Headers()), True)
        if count:
            head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(count - 1))
            return client.receive(head + b"content-length: 0\r\n\r\n")
        start = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-pad: "
        return client.receive(start + b"p" * (head_size - len(start) - 4) + b"\r\n\r\n")
    assert isinstance(response(head_size=80 * 1024)[0], ResponseHead)
    assert response(head_size=80 * 1024 + 1)[0].status == 502
    assert isinstance(response(count=100)[0], ResponseHead)
    assert response(count=101)[0].status == 502


def test_an_unframed_head_response_leaves_the_upstream_connection_reusable():
    client = Http1ClientCodec()
    client.send_head(Request("HEAD", "/", "a", Headers()), True)
    (head,) = client.receive(b"HTTP/1.1 200 OK\r\n\r\n")
    assert head.end_stream and client.available_streams() == 1
    client.send_head(Request("GET", "/", "a", Headers()), True)
    (got,) = messages(client.receive(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"))
    assert got[1] == b"ok" and got[2]
