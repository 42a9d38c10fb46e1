"""Split invariance of the codecs: the same bytes fed in any split give the same events and the
same bytes out. A socket may hand a codec a message in one read or byte by byte; nothing it
decides may depend on where the reads fell. Checked for the HTTP/1.1 server and client codecs
(worker/codecs/http1_*.py) and the lean HTTP/2 server (worker/codecs/h2server.py), on generated
valid traffic and on the HTTP/2 fuzzer's conversations (valid, broken and mutated).

How events compare: Body events of one stream that follow each other are joined (a body may
arrive in as many pieces as there were reads; its bytes and where it ends may not change), and
repeated WindowOpen hints for the same stream count once (they say "you may flush now", once
per receive); everything else is compared field by field, in order.
"""

from __future__ import annotations

import importlib.util
import os
import random

from hypothesis import HealthCheck, given, settings, strategies as st

from baton.worker.codecs.events import (Body, GoAway, ProtocolError, RequestHead, ResponseHead,
                                        StreamReset, Trailers, WindowOpen)
from baton.worker.codecs.h2server import LeanHttp2ServerCodec
from baton.worker.codecs.http1_client import Http1ClientCodec
from baton.worker.codecs.http1_server import Http1ServerCodec
from baton.worker.codecs.message import Headers, Request, Response

from .http1_strategies import requests, responses, serialize_request, serialize_response

PROPERTY = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_HTTP2 = os.path.join(os.path.dirname(__file__), "..", "fuzz", "fuzz_http2.py")


def _fuzz_http2():
    spec = importlib.util.spec_from_file_location("fuzz_http2", FUZZ_HTTP2)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the comparison ------------------------------------------------------------------------------

def normalize(events) -> list:
    out = []
    for e in events:
        kind = type(e)
        if kind is Body:
            last = out[-1] if out else None
            if last is not None and last[0] == "Body" and last[1] == e.stream_id and not last[3]:
                out[-1] = ("Body", e.stream_id, last[2] + e.data, e.end_stream)
                continue
            out.append(("Body", e.stream_id, e.data, e.end_stream))
        elif kind is RequestHead:
            r = e.request
            out.append(("RequestHead", e.stream_id, r.method, r.path, r.authority, r.scheme,
                        r.version, list(r.headers.items), e.end_stream, e.expect_continue,
                        e.upgrade))
        elif kind is ResponseHead:
            out.append(("ResponseHead", e.stream_id, e.response.status,
                        list(e.response.headers.items), e.end_stream))
        elif kind is Trailers:
            out.append(("Trailers", e.stream_id, list(e.headers.items)))
        elif kind is StreamReset:
            out.append(("StreamReset", e.stream_id, e.code))
        elif kind is GoAway:
            out.append(("GoAway", e.last_stream_id, e.code))
        elif kind is WindowOpen:
            if ("WindowOpen", e.stream_id) not in out:
                out.append(("WindowOpen", e.stream_id))
        elif kind is ProtocolError:
            out.append(("ProtocolError", e.stream_id, e.status, e.reason))
        else:
            raise AssertionError(f"not an event of the interface: {e!r}")
    return out


def pieces(data: bytes, cuts) -> list:
    """`data` cut at the given offsets (any order, repeats allowed: empty pieces are skipped,
    since an empty receive() means end of stream)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def run(make, data: bytes, cuts, answer=None) -> tuple:
    """Feed `data` in the pieces `cuts` makes to a fresh codec from `make`, then let
    `answer(codec, events)` play the proxy's side once, on everything reported (answering
    between reads would make the bytes out depend on the reads: a response would go out
    before the answer to a later PING). Returns (normalized events, every byte sent)."""
    codec = make()
    events, sent = [], bytearray(codec.data_to_send())
    for piece in pieces(data, cuts):
        events += codec.receive(piece)
        sent += codec.data_to_send()
    if answer is not None:
        answer(codec, events)
        sent += codec.data_to_send()
    return normalize(events), bytes(sent)


def cut_points(data: bytes):
    return st.lists(st.integers(0, max(len(data), 1)), max_size=12)


# -- HTTP/1.1 server -----------------------------------------------------------------------------

def answer_requests(codec, events) -> None:
    """Answer each request once its body is in (and each error): the bytes out must match."""
    for e in events:
        if (type(e) is RequestHead and e.end_stream) or (type(e) is Body and e.end_stream):
            codec.send_head(e.stream_id, Response(200, Headers([("content-length", "2")])), False)
            codec.send_body(e.stream_id, b"ok", True)
        elif type(e) is ProtocolError and e.stream_id:
            codec.send_head(e.stream_id, Response(e.status, Headers([("content-length", "0")])), True)


@PROPERTY
@given(st.lists(requests(), min_size=1, max_size=4), st.data())
def test_http1_server_any_split_same_events_and_bytes(reqs, data):
    wire = b"".join(serialize_request(r) for r in reqs)
    whole = run(Http1ServerCodec, wire, [], answer_requests)
    split = run(Http1ServerCodec, wire, data.draw(cut_points(wire)), answer_requests)
    assert split == whole
    assert len([e for e in whole[0] if e[0] == "RequestHead"]) == len(reqs)


@PROPERTY
@given(st.binary(max_size=300), st.data())
def test_http1_server_any_split_of_any_bytes(wire, data):
    # Garbage too: the same error (status and reason) at the same point, whatever the split.
    whole = run(Http1ServerCodec, wire, [], answer_requests)
    split = run(Http1ServerCodec, wire, data.draw(cut_points(wire)), answer_requests)
    assert split == whole


@PROPERTY
@given(st.lists(requests(), min_size=1, max_size=3), st.integers(0, 5), st.data())
def test_http1_server_any_split_of_damaged_requests(reqs, seed, data):
    # Valid traffic with a few bytes changed: the inputs where a parser's state at a read
    # boundary matters most.
    wire = bytearray(b"".join(serialize_request(r) for r in reqs))
    rng = random.Random(seed)
    for _ in range(rng.randrange(1, 4)):
        pos = rng.randrange(len(wire))
        wire[pos:pos + 1] = rng.choice((b"\r", b"\n", b" ", b":", b"\x00", b"0", b"", b"\r\n\r\n"))
    wire = bytes(wire)
    whole = run(Http1ServerCodec, wire, [], answer_requests)
    split = run(Http1ServerCodec, wire, data.draw(cut_points(wire)), answer_requests)
    assert split == whole


# -- HTTP/1.1 client -----------------------------------------------------------------------------

def client_for(method: str):
    def make():
        codec = Http1ClientCodec()
        codec.send_head(Request(method, "/", "up.test", Headers()), True)
        return codec
    return make


@PROPERTY
@given(responses(), st.sampled_from(["GET", "HEAD"]), st.data())
def test_http1_client_any_split_same_events(resp, method, data):
    wire = serialize_response(resp, head_request=method == "HEAD")
    whole = run(client_for(method), wire, [])
    split = run(client_for(method), wire, data.draw(cut_points(wire)))
    assert split == whole
    assert whole[0][0][0] == "ResponseHead" and whole[0][0][2] == resp.status


@PROPERTY
@given(st.binary(max_size=300), st.data())
def test_http1_client_any_split_of_any_bytes(wire, data):
    whole = run(client_for("GET"), wire, [])
    split = run(client_for("GET"), wire, data.draw(cut_points(wire)))
    assert split == whole


# -- HTTP/2 server (lean) ------------------------------------------------------------------------

def lean_server():
    # Small limits, as the fuzzer's, so that limits are reached inside these conversations.
    codec = LeanHttp2ServerCodec(max_header_bytes=2048, max_headers=30, max_concurrent_streams=8,
                                 initial_stream_window=70_000, initial_connection_window=100_000)
    codec.initiate()
    return codec


def answer_streams(codec, events) -> None:
    """Answer every request at once and give back the body bytes it reads (consumed), so the
    window updates and responses are part of the bytes compared."""
    for e in events:
        if type(e) is RequestHead:
            codec.send_head(e.stream_id, Response(200, Headers([("x-r", "1")])), False)
            codec.send_body(e.stream_id, b"ok", True)
        elif type(e) is Body and e.data:
            codec.consumed(e.stream_id, len(e.data))


@PROPERTY
@given(st.integers(0, 2**32), st.data())
def test_lean_http2_server_any_split_same_events_and_bytes(seed, data):
    fuzz = _fuzz_http2()
    recorded = fuzz.generate(random.Random(seed))
    wire = b"".join(recorded[1:].split(fuzz.CHUNK_SEP))
    if recorded[:1] != b"s":
        wire = fuzz.H2_PREFACE + wire          # a client-side conversation, sent to a server
    whole = run(lean_server, wire, [], answer_streams)
    split = run(lean_server, wire, data.draw(cut_points(wire)), answer_streams)
    assert split[0] == whole[0]
    assert split[1] == whole[1]
