"""Differential: the HTTP/2 server codec on raw frames, where a client library would not go: the
last stream a connection error's GOAWAY names, a malformed request, streams past
max_concurrent_streams, and Envoy's HTTP/2 codec counters (http2.*) for what both codecs
do."""

from __future__ import annotations

import socket
import urllib.request
import struct

import pytest
from hpack import Encoder

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.compare import differential
from .differential.proxies import module_pair


def h2codec_bootstrap(upstreams: dict[str, int]):
    """test_differential_protocol.py's `proto` listener, and `h2max`: max_concurrent_streams 2."""
    route_config = {"name": "h2codec", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "direct\n"}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def template(ports: dict[str, int], admin: int) -> dict:
        return bootstrap(admin, [
            http_listener("proto", ports["proto"], route_config, max_request_headers_kb=8),
            http_listener("h2max", ports["h2max"], route_config,
                          http2_protocol_options={"max_concurrent_streams": 2}),
        ], [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-h2codec", h2codec_bootstrap, ["proto", "h2max"])

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GET = [(":method", "GET"), (":scheme", "http"), (":authority", "diff.test"), (":path", "/direct")]
HEADERS, CONTINUATION, RST_STREAM, PING, GOAWAY = 1, 9, 3, 6, 7
END_STREAM, END_HEADERS = 1, 4
UNDECODABLE = b"\x80"       # HPACK index 0: a decoding error (COMPRESSION_ERROR)


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">L", len(payload))[1:] + bytes([kind, flags]) + \
        struct.pack(">L", stream_id) + payload


def exchange(port: int, frames: bytes, quiet: float = 1.0, report_close: bool = False) -> list:
    """Send the preface, an empty SETTINGS and `frames`; read until the proxy closes, sends
    a GOAWAY with an error code (both proxies close after it; Envoy up to its 1 s
    delayed_close_timeout later), or `quiet` seconds pass without a byte. What came back,
    but for the proxy's SETTINGS, WINDOW_UPDATE and PING frames (their values differ by
    design): ("GOAWAY", last, code), ("RST_STREAM", stream, code), ("HEADERS" or "DATA",
    stream, flags); with `report_close`, "closed" last when the proxy closed."""
    seen, received = [], bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=quiet) as sock:
        sock.sendall(PREFACE + frame(4, 0, 0) + frames)
        try:
            while not (seen and seen[-1][0] == "GOAWAY" and seen[-1][2]):
                chunk = sock.recv(65536)
                if not chunk:
                    if report_close:
                        seen.append("closed")
                    break
                received += chunk
                while len(received) >= 9 and len(received) >= 9 + int.from_bytes(received[:3], "big"):
                    seen += _frame_seen(received)
        except (socket.timeout, ConnectionResetError):
            pass
    return seen


def _frame_seen(received: bytearray) -> list:
    """The first frame of `received`, taken from it, as exchange() reports it."""
    length = int.from_bytes(received[:3], "big")
    kind, flags = received[3], received[4]
    stream_id = int.from_bytes(received[5:9], "big") & 0x7FFFFFFF
    payload = bytes(received[9:9 + length])
    del received[:9 + length]
    if kind == GOAWAY:
        return [("GOAWAY", *struct.unpack(">LL", payload[:8]))]
    if kind == RST_STREAM:
        return [("RST_STREAM", stream_id, struct.unpack(">L", payload)[0])]
    if kind in (0, HEADERS):
        return [("DATA" if kind == 0 else "HEADERS", stream_id, flags)]
    return []


def request(encoder: Encoder, stream_id: int, flags: int = END_STREAM | END_HEADERS,
            fields=GET) -> bytes:
    return frame(HEADERS, flags, stream_id, encoder.encode(fields))


def _bad_first(enc):
    return frame(HEADERS, END_STREAM | END_HEADERS, 1, UNDECODABLE)


def _bad_second(enc):
    return request(enc, 1) + frame(HEADERS, END_STREAM | END_HEADERS, 3, UNDECODABLE)


def _bad_after_a_gap(enc):
    return request(enc, 1) + frame(HEADERS, END_STREAM | END_HEADERS, 5, UNDECODABLE)


def _bad_in_continuation(enc):
    return request(enc, 1, END_STREAM) + frame(CONTINUATION, END_HEADERS, 1, UNDECODABLE)


def _bad_big_block(enc):
    # Over 256 bytes: Baton decodes it in slices (h2slice.py), over turns.
    fields = GET + [("x-%d" % i, "v" * 20) for i in range(20)]
    return frame(HEADERS, END_STREAM | END_HEADERS, 1, enc.encode(fields) + UNDECODABLE)


def _bad_trailers(enc):
    return request(enc, 1, END_HEADERS) + frame(HEADERS, END_STREAM | END_HEADERS, 1, UNDECODABLE)


def _ping_inside_a_block(enc):
    return request(enc, 1, END_STREAM) + frame(PING, 0, 0, b"12345678")


@pytest.mark.parametrize("frames, goaway", [
    (_bad_first, ("GOAWAY", 1, 9)),
    (_bad_second, ("GOAWAY", 3, 9)),
    (_bad_after_a_gap, ("GOAWAY", 5, 9)),
    (_bad_in_continuation, ("GOAWAY", 1, 9)),
    (_bad_big_block, ("GOAWAY", 1, 9)),
    (_bad_trailers, ("GOAWAY", 1, 9)),
    (_ping_inside_a_block, ("GOAWAY", 1, 1)),
], ids=["first-stream", "second-stream", "after-a-gap", "in-continuation", "big-block",
        "trailers", "ping-inside-a-block"])
def test_goaway_of_a_broken_header_block_names_its_stream(pair, frames, goaway):
    """A connection error in a request's header block: Envoy's GOAWAY names that stream as
    the last processed (nghttp2 counts it from its HEADERS frame on)."""
    def run(target):
        return exchange(target.port, frames(Encoder()))
    differential(pair, run, lambda obs: _check(obs[-1:] == [goaway], obs), at_once=True)


@pytest.mark.parametrize("fields", [GET + [("X-Up", "1")], GET[:3], GET + [("te", "gzip")],
                                    GET + [("content-length", "5")]],
                         ids=["upper-case-name", "no-path", "te-gzip", "content-length-no-body"])
def test_a_malformed_request_ends_the_connection_without_a_goaway(pair, fields):
    """override_stream_error_on_invalid_http_message false (Envoy's default): Envoy's codec
    fails and the connection closes (after its 1 s delayed close) with no GOAWAY and no
    answer to the request behind."""
    def run(target):
        enc = Encoder()
        return exchange(target.port, request(enc, 1, fields=fields) + request(enc, 3), quiet=3,
                        report_close=True)
    differential(pair, run, lambda obs: _check(obs == ["closed"], obs), at_once=True)


POST = [(":method", "POST"), (":scheme", "http"), (":authority", "diff.test"), (":path", "/up")]


@pytest.mark.parametrize("fields", [GET + [("X-Up", "1")], GET[:3],
                                    GET + [("content-length", "5")]],
                         ids=["upper-case-name", "no-path", "content-length-no-body"])
def test_a_malformed_request_counts_as_a_request_reset(pair, fields):
    """Envoy's connection manager makes a request's stream at its HEADERS, before the codec
    finds it malformed: downstream_rq_total, _http2_total and _rx_reset count it, with
    http2.rx_messaging_error."""
    names = ("http.proto.downstream_rq_total", "http.proto.downstream_rq_http2_total",
             "http.proto.downstream_rq_rx_reset", "http2.rx_messaging_error")

    def run(target):
        before = target.stats("")
        seen = exchange(target.port, request(Encoder(), 1, fields=fields), quiet=3,
                        report_close=True)
        after = target.stats("")
        return seen + [{name: after.get(name, 0) - before.get(name, 0) for name in names}]
    expected = ["closed", {name: 1 for name in names}]
    differential(pair, run, lambda obs: _check(obs == expected, obs), at_once=True)


DATA = 0


@pytest.mark.parametrize("body", [b"x" * 10, b"xyz"], ids=["over", "short"])
def test_a_body_against_its_content_length_resets_only_its_stream(pair, body):
    """Stream 1: a GET the upstream answers after 300 ms; stream 3: a POST with content-length
    5 whose DATA (END_STREAM) carries 10 or 3 bytes. Envoy's codec (nghttp2's DATA check)
    resets stream 3 alone (RST_STREAM PROTOCOL_ERROR, http2.tx_reset, no
    rx_messaging_error) and answers stream 1 on the connection it keeps."""
    def run(target):
        enc = Encoder()
        slow = GET[:3] + [(":path", "/slow"), ("x-test-key", target.key("cl")),
                          ("x-test-delay-ms", "300")]
        frames = request(enc, 1, fields=slow) + \
            request(enc, 3, END_HEADERS, POST + [("content-length", "5")]) + \
            frame(DATA, END_STREAM, 3, body)
        before = target.stats("http2.")
        seen = exchange(target.port, frames, quiet=2, report_close=True)
        after = target.stats("http2.")
        counted = {name: after.get(name, 0) - before.get(name, 0)
                   for name in ("http2.tx_reset", "http2.rx_messaging_error")}
        # How the answer's body is cut into DATA frames differs by design: its last one counts.
        return [s for s in seen if s != ("DATA", 1, 0)] + \
            [{name: n for name, n in counted.items() if n}]
    expected = [("RST_STREAM", 3, 1), ("HEADERS", 1, END_HEADERS), ("DATA", 1, END_STREAM),
                {"http2.tx_reset": 1}]
    differential(pair, run, lambda obs: _check(obs == expected, obs), at_once=True)


PRIORITY, PRIORITY_FLAG = 2, 0x20


def _self_dependent(stream_id: int) -> bytes:
    """A priority (exclusive off, weight 17) on `stream_id` itself."""
    return struct.pack(">LB", stream_id, 16)


@pytest.mark.parametrize("frames, expected", [
    # HEADERS again on a stream the client ended, its response not out yet.
    (lambda enc: request(enc, 1, fields=POST) + request(enc, 1, fields=[("x-t", "1")]),
     ["closed", {}]),
    # A new stream whose HEADERS depends on itself.
    (lambda enc: frame(HEADERS, END_STREAM | END_HEADERS | PRIORITY_FLAG, 1,
                       _self_dependent(1) + enc.encode(GET)), ["closed", {}]),
    # Trailers on an open stream depending on itself.
    (lambda enc: request(enc, 1, END_HEADERS, POST) + frame(
        HEADERS, END_STREAM | END_HEADERS | PRIORITY_FLAG, 1,
        _self_dependent(1) + enc.encode([("x-t", "1")])),
     [("DATA", 1, END_STREAM), ("DATA", 3, END_STREAM), ("HEADERS", 1, END_HEADERS),
      ("HEADERS", 3, END_HEADERS), {"http2.trailers": 1}]),
    # A PRIORITY frame depending on itself, on an open stream: ignored.
    (lambda enc: request(enc, 1, END_HEADERS, POST) + frame(PRIORITY, 0, 1, _self_dependent(1)),
     [("DATA", 3, END_STREAM), ("HEADERS", 3, END_HEADERS), {}]),
], ids=["headers-on-half-closed", "headers-self-dependent", "trailers-self-dependent",
        "priority-self-dependent"])
def test_headers_where_nghttp2_ends_the_connection(pair, frames, expected):
    """Envoy's codec (nghttp2) ends the connection, with no GOAWAY and nothing counted in
    http2.*, on HEADERS on a half-closed (remote) stream and on HEADERS that depend on their own
    stream, but not on trailers that do; a PRIORITY frame depending on its own stream it
    ignores. A GET on stream 3 behind. The frames back in order of their names: which stream
    is answered first is the upstream's doing."""
    def run(target):
        enc = Encoder()
        before = target.stats("http2.")
        seen = exchange(target.port, frames(enc) + request(enc, 3), quiet=2, report_close=True)
        after = target.stats("http2.")
        counted = {name: after.get(name, 0) - before.get(name, 0) for name in COUNTED}
        return sorted((s for s in seen if s[0] != "DATA" or s[2]), key=repr) + \
            [{name: n for name, n in counted.items() if n}]
    differential(pair, run, lambda obs: _check(obs == expected, obs), at_once=True)


@pytest.mark.parametrize("acked, expected", [
    (False, [("RST_STREAM", 5, 7), {"http2.stream_refused_errors": 1, "http2.tx_reset": 1}]),
    (True, ["closed", {}]),
], ids=["settings-not-acked", "settings-acked"])
def test_a_stream_past_max_concurrent_streams(pair, acked, expected):
    """Three requests still sending their bodies, two allowed: before the client acks the
    SETTINGS that announced the limit, Envoy's codec refuses the third stream (RST_STREAM
    REFUSED_STREAM, http2.stream_refused_errors); after, the connection ends, with no
    GOAWAY."""
    def run(target):
        before = target.stats("http2.")
        enc = Encoder()
        frames = (frame(4, 1, 0) if acked else b"") + b"".join(
            request(enc, stream_id, END_HEADERS, POST) for stream_id in (1, 3, 5))
        # Envoy closes after its 1 s delayed close; the refusal comes at once.
        seen = exchange(target.ports["h2max"], frames, quiet=2 if acked else 0.5,
                        report_close=True)
        after = target.stats("http2.")
        counted = {name: after.get(name, 0) - before.get(name, 0)
                   for name in ("http2.stream_refused_errors", "http2.tx_reset")}
        return seen + [{name: n for name, n in counted.items() if n}]
    differential(pair, run, lambda obs: _check(obs == expected, obs), at_once=True)


def _check(condition: bool, obs) -> None:
    if not condition:
        pytest.fail(f"unexpected observation: {obs}")


# ---- Envoy's HTTP/2 codec counters -------------------------------------------------------------

COUNTED = ("http2.tx_reset", "http2.rx_reset", "http2.trailers", "http2.rx_messaging_error",
           "http2.header_overflow")


def _counted(target, run) -> dict:
    """What `run()` added to COUNTED on `target`, by /stats, and each as /stats/prometheus
    names it (envoy_http2_tx_reset)."""
    before = target.stats("http2.")
    run()
    after = target.stats("http2.")
    with urllib.request.urlopen(f"http://127.0.0.1:{target.admin_port}/stats/prometheus",
                                timeout=5) as reply:
        prometheus = reply.read().decode()
    return {name: [after.get(name, 0) - before.get(name, 0),
                   f"\nenvoy_{name.replace('.', '_')}{{}} {after.get(name, 0)}\n" in prometheus
                   or f"\nenvoy_{name.replace('.', '_')} {after.get(name, 0)}\n" in prometheus]
            for name in COUNTED}


@pytest.mark.parametrize("frames, counted", [
    # RST_STREAM from the client on an open stream: rx_reset.
    (lambda enc: request(enc, 1, END_HEADERS) + frame(RST_STREAM, 0, 1, struct.pack(">L", 8)),
     {"http2.rx_reset": 1}),
    # ... and on a stream already closed: nothing.
    (lambda enc: request(enc, 1) + frame(RST_STREAM, 0, 1, struct.pack(">L", 8)) +
     frame(RST_STREAM, 0, 1, struct.pack(">L", 8)), {"http2.rx_reset": 1}),
    # Request trailers: trailers.
    (lambda enc: request(enc, 1, END_HEADERS) + request(enc, 1, fields=[("x-t", "1")]),
     {"http2.trailers": 1}),
    # The response ends before the request: RST_STREAM(NO_ERROR), tx_reset.
    (lambda enc: request(enc, 1, END_HEADERS, [(":method", "POST")] + GET[1:]),
     {"http2.tx_reset": 1}),
    # Too many header fields: the stream is reset (INTERNAL_ERROR), tx_reset.
    (lambda enc: request(enc, 1, fields=GET + [("x-h%d" % i, "v") for i in range(150)]),
     {"http2.tx_reset": 1, "http2.header_overflow": 1}),
    # A malformed request (an upper-case name): rx_messaging_error; the connection ends
    # (stream_error_on_invalid_http_message is false), no reset.
    (lambda enc: request(enc, 1, fields=GET + [("X-Up", "1")]), {"http2.rx_messaging_error": 1}),
    # Trailers that cannot be decoded: counted as trailers (before decoding), then the end.
    (_bad_trailers, {"http2.trailers": 1}),
], ids=["rx-reset", "rx-reset-once", "trailers", "tx-reset-no-error", "tx-reset-overflow",
        "messaging-error", "undecodable-trailers"])
def test_envoys_http2_codec_counters(pair, frames, counted):
    """Envoy's HTTP/2 codec counts what both codecs do: each RST_STREAM it sends (tx_reset),
    one received on an open stream (rx_reset), request trailers (trailers), a malformed
    request (rx_messaging_error); on /stats and /stats/prometheus."""
    def run(target):
        return _counted(target, lambda: exchange(target.port, frames(Encoder()), quiet=0.5))
    expected = {name: [counted.get(name, 0), True] for name in COUNTED}
    differential(pair, run, lambda obs: _check(obs == expected, obs), at_once=True)
