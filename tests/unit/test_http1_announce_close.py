"""Http1ServerCodec.announce_close (the idle timeout's drain window, close_policy.py): every
response from then on says `connection: close`, and the codec reads and serves the requests
that follow, as Envoy 1.40 serves them until its drain_timeout; goaway() instead ends the
connection after the response in progress."""

from __future__ import annotations

import pytest

from baton.worker.codecs.events import RequestHead
from baton.worker.codecs.http1_server import Http1ServerCodec
from baton.worker.codecs.message import Headers, Response

GET = b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n"


def _answer(codec: Http1ServerCodec, stream_id: int) -> bytes:
    codec.send_head(stream_id, Response(200, Headers([("content-length", "2")])), False)
    codec.send_body(stream_id, b"ok", True)
    return codec.data_to_send()


@pytest.mark.parametrize("pipelined", [False, True])
def test_announced_close_says_close_and_reads_on(pipelined):
    codec = Http1ServerCodec()
    codec.announce_close()
    heads = []
    if pipelined:
        heads += codec.receive(GET % 1 + GET % 2 + GET % 3)
    for n in range(1, 4):
        if not pipelined:
            heads += codec.receive(GET % n)
        head = heads[n - 1]
        assert isinstance(head, RequestHead) and head.request.path == f"/{n}"
        wire = _answer(codec, head.stream_id)
        assert b"\r\nconnection: close\r\n" in wire.partition(b"\r\n\r\n")[0] + b"\r\n"
        assert wire.endswith(b"\r\n\r\nok")
        assert not codec.closed
    assert len(heads) == 3


def test_goaway_still_ends_after_the_response():
    codec = Http1ServerCodec()
    (head,) = codec.receive(GET % 1)
    codec.goaway()
    wire = _answer(codec, head.stream_id)
    assert b"connection: close" in wire
    assert codec.closed
    assert codec.receive(GET % 2) == []
