"""The objects the HTTP/2 server codec fills in without their constructors (h2server._on_block,
its _Stream: a class call costs a frame of its own on Python 3.11) are what the
constructors make, every slot of them: a slot added to RequestHead, Request, Headers or _Stream
and not set there fails here, not as an AttributeError in a request."""

from __future__ import annotations

import struct

from hpack import Encoder

from baton.worker.codecs.events import RequestHead
from baton.worker.codecs.h2flow import _Stream
from baton.worker.codecs.h2server import LeanHttp2ServerCodec
from baton.worker.codecs.http2 import H2_PREFACE
from baton.worker.codecs.message import Headers, Request


def _slots(obj) -> dict:
    names = [name for cls in type(obj).__mro__ for name in getattr(cls, "__slots__", ())]
    return {name: getattr(obj, name) for name in names}


def _headers_frame(stream_id: int, fields: list, flags: int = 0x4 | 0x1) -> bytes:
    block = Encoder().encode(fields)
    return struct.pack(">LBL", len(block) << 8 | 1, flags, stream_id) + block


def test_request_head_has_every_slot_the_constructors_set():
    codec = LeanHttp2ServerCodec()
    codec.initiate()
    fields = [(":method", "POST"), (":scheme", "https"), (":authority", "a.example"),
              (":path", "/p?q=1"), ("content-length", "3"), ("x-a", "1"), ("x-a", "2")]
    (head,) = codec.receive(H2_PREFACE + _headers_frame(1, fields, flags=0x4))
    made = RequestHead(1, Request("POST", "/p?q=1", "a.example",
                                  Headers([("content-length", "3"), ("x-a", "1"), ("x-a", "2")]),
                                  "https", "2"), False, False)
    assert type(head) is RequestHead and type(head.request) is Request
    assert type(head.request.headers) is Headers
    request, made_request = head.request, made.request
    assert {k: v for k, v in _slots(head).items() if k != "request"} == \
        {k: v for k, v in _slots(made).items() if k != "request"}
    assert {k: v for k, v in _slots(request).items() if k != "headers"} == \
        {k: v for k, v in _slots(made_request).items() if k != "headers"}
    assert _slots(request.headers) == _slots(made_request.headers)
    # Each request its own header list (the stream edits it), never the decode cache's.
    (again,) = codec.receive(_headers_frame(3, fields, flags=0x4))
    assert again.request.headers.items == request.headers.items
    assert again.request.headers.items is not request.headers.items


def test_stream_state_matches_the_constructor():
    fields = [(":method", "GET"), (":scheme", "http"), (":authority", "a.example"),
              (":path", "/")]
    plain = LeanHttp2ServerCodec(initial_stream_window=1 << 20)
    plain.initiate()
    plain.receive(H2_PREFACE + _headers_frame(1, fields, flags=0x4))
    # With the premature-reset check the stream's opening time is the clock's.
    timed = LeanHttp2ServerCodec(clock=lambda: 12.5, premature_reset_total_stream_count=500,
                                 premature_reset_min_stream_lifetime=1)
    timed.initiate()
    timed.receive(H2_PREFACE + _headers_frame(1, fields))
    for codec, args, remote_closed in ((plain, (65535, 1 << 20, 0.0), False),
                                       (timed, (65535, 268435456, 12.5), True)):
        made = _Stream(*args)
        made.remote_closed = remote_closed
        assert _slots(codec._streams[1]) == _slots(made)
