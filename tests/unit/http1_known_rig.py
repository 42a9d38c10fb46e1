"""The rig the known-message tests share (test_http1_known_messages.py: messages known by their
bytes; test_http1_read_by_lines.py: heads read by their lines): two codecs of a kind fed the
same, one as the memos and the lines make it, one as llhttp reads, and what each reports,
keeps and writes, as plain values to compare.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from baton.worker.codecs import http1_head
from baton.worker.codecs.events import Body, ProtocolError, RequestHead, ResponseHead
from baton.worker.codecs.http1_client import Http1ClientCodec
from baton.worker.codecs.http1_server import Http1ServerCodec
from baton.worker.codecs.message import Headers, Response

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
WRK = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:10000\r\n\r\n"
NGINX = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 05:05:00 GMT\r\n"
         b"Content-Type: text/plain\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\nbody")


class Untouchable:
    """A parser that must not be asked."""

    def __getattr__(self, name):
        raise AssertionError(f"the parser was asked: {name}")


LINES_GATES = (http1_head.REQUEST_LINES_GATE, http1_head.RESPONSE_LINES_GATE)


def forget(lines_gates: bool = True) -> None:
    """The known-message memos empty, and every memo's gate open (MemoGate: earlier tests'
    messages, all different, may have left one resting); the lines' gates too, unless
    `lines_gates` is False."""
    http1_head.KNOWN_REQUESTS.clear()
    http1_head.KNOWN_RESPONSES.clear()
    http1_head.STATUS_LINES.clear()
    for gate in (http1_head.REQUESTS_GATE, http1_head.RESPONSES_GATE, http1_head._HEADS_GATE):
        gate.__init__()
    if lines_gates:
        for gate in LINES_GATES:
            gate.__init__()


def unjudged(read):
    """read(), the lines' gates left as they were (a codec reading as llhttp only)."""
    saved = [(g.hits, g.resting, g.misses) for g in LINES_GATES]
    try:
        return read()
    finally:
        for gate, (hits, resting, misses) in zip(LINES_GATES, saved):
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
        forget()
        cold = getattr(self.cold, method)(*args)
        warm = getattr(self.warm, method)(*args)
        return warm, cold

    def receive(self, data: bytes) -> list:
        forget()
        cold = self.cold.receive(data)
        warm = self.warm.receive(data)
        assert described(warm) == described(cold)
        assert [e.reason for e in warm if isinstance(e, ProtocolError)] == \
            [e.reason for e in cold if isinstance(e, ProtocolError)]
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


def serve(pair: Pair, wire: bytes, times: int = 3) -> None:
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

