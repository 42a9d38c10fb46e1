"""Events that HTTP codecs produce, the same for HTTP/1.1 and HTTP/2, server and client side.

A codec is sans-IO (DESIGN.md): `receive(data) -> [event, ...]`; `send_*` methods queue bytes
that `data_to_send()` hands back. The connection manager and the upstream pool speak only in
these events, so HTTP/1.1 and HTTP/2 translate into each other on either side.

Stream ids: HTTP/2's own; an HTTP/1.1 codec numbers its requests 1, 3, 5, ... in arrival
order (pipelined requests are answered in that order).

Server side (downstream) a codec yields RequestHead, Body, Trailers, StreamReset, GoAway and
ProtocolError; client side (upstream) ResponseHead, Body, Trailers, StreamReset, GoAway and
ProtocolError. `end_stream` on a head or body means the message is complete.
"""

from __future__ import annotations

from .message import Headers, Request, Response

__all__ = ["RequestHead", "ResponseHead", "Body", "Trailers", "StreamReset", "GoAway",
           "ProtocolError", "WindowOpen", "Request", "Response", "Headers"]


class RequestHead:
    __slots__ = ("stream_id", "request", "end_stream", "expect_continue", "upgrade")

    def __init__(self, stream_id: int, request: Request, end_stream: bool,
                 expect_continue: bool = False, upgrade: str | None = None):
        self.stream_id = stream_id
        self.request = request
        self.end_stream = end_stream
        self.expect_continue = expect_continue   # "Expect: 100-continue" (the codec keeps it)
        self.upgrade = upgrade                   # "websocket", "connect", ...: a tunnel follows

    def __repr__(self) -> str:
        return f"RequestHead({self.stream_id}, {self.request!r}, end={self.end_stream})"


class ResponseHead:
    __slots__ = ("stream_id", "response", "end_stream")

    def __init__(self, stream_id: int, response: Response, end_stream: bool):
        self.stream_id = stream_id
        self.response = response
        self.end_stream = end_stream

    def __repr__(self) -> str:
        return f"ResponseHead({self.stream_id}, {self.response!r}, end={self.end_stream})"


class Body:
    __slots__ = ("stream_id", "data", "end_stream")

    def __init__(self, stream_id: int, data: bytes, end_stream: bool):
        self.stream_id = stream_id
        self.data = data
        self.end_stream = end_stream

    def __repr__(self) -> str:
        return f"Body({self.stream_id}, {len(self.data)} bytes, end={self.end_stream})"


class HeadersRefused:
    """HTTP/2: a request's headers were over the limits (`stat`: the codec stat that counts
    it); the codec has reset its stream and nothing of it reaches the manager but this."""
    __slots__ = ("stream_id", "stat")

    def __init__(self, stream_id: int, stat: str):
        self.stream_id = stream_id
        self.stat = stat


class Trailers:
    """Trailing headers; always end the stream."""
    __slots__ = ("stream_id", "headers")

    def __init__(self, stream_id: int, headers: Headers):
        self.stream_id = stream_id
        self.headers = headers


class StreamReset:
    """The peer reset one stream (HTTP/2 RST_STREAM); `code` is the HTTP/2 error code."""
    __slots__ = ("stream_id", "code")

    def __init__(self, stream_id: int, code: int = 0):
        self.stream_id = stream_id
        self.code = code


class GoAway:
    """The peer will open no stream above `last_stream_id` (HTTP/2 GOAWAY)."""
    __slots__ = ("last_stream_id", "code")

    def __init__(self, last_stream_id: int, code: int = 0):
        self.last_stream_id = last_stream_id
        self.code = code


class WindowOpen:
    """HTTP/2 flow control: the peer opened its window for `stream_id` (0: the connection), so
    bytes held back by `send_body` may now be flushed."""
    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int):
        self.stream_id = stream_id


class ProtocolError:
    """The peer broke the protocol; the connection cannot continue.

    `status` is the HTTP status a server should answer with before closing (400 malformed,
    431 headers too large, 413 body too large, 501 unsupported transfer-coding), when the
    current stream has not started its response; `stream_id` names that stream (0: none).
    """
    __slots__ = ("stream_id", "status", "reason")

    def __init__(self, reason: str, status: int = 400, stream_id: int = 0):
        self.stream_id = stream_id
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return f"ProtocolError({self.status}, {self.reason!r})"
