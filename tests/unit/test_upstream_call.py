"""The worker's own one-request calls (worker/proxy/http/upstream_call.py, ext_authz's): an
answer is collected whole, so a body past the cluster's buffer limit ends the call as a
failure and resets its stream instead of growing the worker."""

from __future__ import annotations

from types import SimpleNamespace

from baton.worker.codecs.events import Body, ResponseHead
from baton.worker.codecs.message import Response
from baton.worker.proxy.http.upstream_call import UpstreamCall


class FakeH2Connection:
    closed = False

    def __init__(self):
        self.pool = SimpleNamespace(http2=True)
        self.streams = {1: "the call"}
        self.resets, self.consumed, self.done = [], 0, []
        self.codec = SimpleNamespace(reset=self.resets.append,
                                     consumed=lambda sid, n: setattr(self, "consumed", self.consumed + n))

    def flush(self):
        pass

    def stream_done(self, stream_id, reusable):
        self.done.append(stream_id)             # the connection serves on (HTTP/2)


def test_a_body_past_the_buffer_limit_fails_the_call_and_resets_its_stream():
    answers = []
    call = UpstreamCall(SimpleNamespace(), SimpleNamespace(buffer_limit=10),
                        lambda *answer: answers.append(answer))
    conn = call.conn = FakeH2Connection()
    call.stream_id = 1
    call.on_upstream_event(ResponseHead(1, Response(200, []), False))
    call.on_upstream_event(Body(1, b"123456", False))
    assert answers == [] and conn.consumed == 6
    call.on_upstream_event(Body(1, b"7890x", False))
    assert answers == [(None, b"", None, "response body over the cluster's buffer limit")]
    assert conn.resets == [1] and 1 not in conn.streams and conn.done == [1]
    call.on_upstream_event(Body(1, b"more", True))       # after the end: nothing more happens
    assert len(answers) == 1
