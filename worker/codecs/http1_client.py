"""HTTP/1.1, sans-IO, on httptools (llhttp): the client side, our connection to an upstream:
requests out, responses in, one at a time. The rules both sides keep: http1_common.py. Interface
and events: events.py.

Where Envoy 1.40 reads a response differently from llhttp, Envoy wins: an upstream response head
is limited to 100 headers and 80 KiB (its bytes as sent: status line, header lines, the empty
line), where Envoy gives 502.
"""

from __future__ import annotations

import httptools

from .events import Body, ProtocolError, ResponseHead
from .http1_common import (FRAMINGS, NO_BODY_STATUS, Http1Output, LimitExceeded, Outgoing,
                           end_body, frame_body, last_chunk)
from .http1_head import (HOP_BY_HOP, KNOWN_BYTES, KNOWN_RESPONSES, RESPONSE_LINES_GATE,
                         NO_LEADING, RESPONSES_GATE, KnownResponse, connection_keeps_alive,
                         learn_status_line, lookup_head, read_response, remember, response_by_lines)
from .message import Headers, Request, Response

__all__ = ["Http1ClientCodec", "UPSTREAM_MAX_HEADER_BYTES", "UPSTREAM_MAX_HEADERS"]

_NOT_FORWARDED = HOP_BY_HOP | {"host"}       # the request line's host is written separately
# The names send_head looks at in a request's pairs (the rest are written as they are): one set
# test a pair, not two.
_NOT_PLAIN = _NOT_FORWARDED | {"content-length"}
# A status line's bytes besides its reason phrase ("HTTP/1.1 200 " and CRLF), and the empty line.
_STATUS_LINE_FRAME = len("HTTP/1.1 200 \r\n") + len("\r\n")
UPSTREAM_MAX_HEADER_BYTES = 80 * 1024     # Envoy 1.40's limit on an upstream response head
UPSTREAM_MAX_HEADERS = 100                # common_http_protocol_options.max_headers_count


class Http1ClientCodec(Http1Output):
    """Our HTTP/1.1 connection to an upstream: one request at a time (no pipelining)."""

    __slots__ = ("_parser", "_events", "_out", "_next_id", "_stream", "_method", "_headers",
                 "_failed", "_framing", "_head_sent", "_body_expected", "_header_bytes",
                 "_max_header_bytes", "_max_headers", "_status", "reusable", "closed", "_tunnel",
                 "_trailers", "_in_trailers", "_framed", "_between", "_learned", "_leading")

    def __init__(self, *, max_header_bytes: int = UPSTREAM_MAX_HEADER_BYTES,
                 max_headers: int = UPSTREAM_MAX_HEADERS):
        self._parser = None             # made by _feed when first needed
        self._events: list = []
        self._out: list = []             # bytes for the socket, joined by data_to_send
        self._next_id = 1
        self._stream = 0            # the request in flight, 0 when idle
        self._method = ""
        self._headers: list = []
        self._failed = False
        self._framing: Outgoing | None = None
        self._head_sent = False
        self._body_expected = False  # the response head came and a body follows
        self._header_bytes = 0
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._status = 0
        self.reusable = True        # may carry another request after this one
        self.closed = False
        self._tunnel = 0
        self._trailers = None
        self._in_trailers = False
        self._framed = False
        self._between = True        # the parser is between responses (none begun)
        self._learned = None        # the response just read, if it may become known
        self._leading = NO_LEADING  # what the last head read by its lines began with

    def initiate(self) -> None:
        """Nothing to say first in HTTP/1.1."""

    def _new_parser(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self)

    def available_streams(self) -> int:
        return 0 if (self._stream or not self.reusable or self._failed) else 1

    def send_head(self, request: Request, end_stream: bool) -> int:
        stream_id = self._next_id
        self._next_id += 2
        self._stream = stream_id
        self._method = request.method
        self._status = 0
        method = request.method
        out = [f"{method} {request.path} HTTP/1.1\r\nhost: {request.authority}\r\n"]
        # One pass: the header lines, the first Content-Length and Upgrade. The codec that
        # parsed this request removed what its Connection header listed; a hop-by-hop name
        # added since (by a header mutation) still must not go out.
        length = upgrade = None
        for name, value in request.headers.items:
            if name in _NOT_PLAIN:
                if name == "content-length":
                    if length is None:
                        length = value
                else:
                    if name == "te" and value == "trailers":
                        out.append("te: trailers\r\n")
                    elif upgrade is None and name == "upgrade" and method != "CONNECT":
                        upgrade = value
                    continue
            out.append(f"{name}: {value}\r\n")
        chunked = False
        if upgrade:
            out.append(f"connection: upgrade\r\nupgrade: {upgrade}\r\n")
        elif length is None and not end_stream and request.method != "CONNECT":
            # (A CONNECT has no body framing: after its 2xx the connection is a tunnel.)
            chunked = True
            out.append("transfer-encoding: chunked\r\n")
        out.append("\r\n")
        self._out.append("".join(out).encode("latin-1"))
        self._framing = FRAMINGS[chunked, False]
        if upgrade or request.method == "CONNECT":
            self._tunnel = -stream_id   # becomes a tunnel when the 101 / 2xx arrives
        return stream_id

    def send_body(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if self._tunnel == stream_id:
            if data:
                self._out.append(bytes(data))
            if end_stream:
                self.closed = True
            return
        if self._framing is not None:
            frame_body(self._out, self._framing, data, end_stream)
            if end_stream:
                self._framing = None

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        if self._framing is not None and self._framing.chunked:
            self._out.append(last_chunk(headers))
        self._framing = None

    def reset(self, stream_id: int, code: int = 0) -> None:
        self.closed = True
        self.reusable = False
        self._failed = True

    def receive(self, data: bytes) -> list:
        if self._tunnel > 0:
            return [Body(self._tunnel, data, not data)]
        if self._failed:
            return []
        if not data:
            return self._eof()
        boundary = self._between and self._stream and not self._tunnel and \
            self._method != "HEAD"
        if boundary:
            end = data.find(b"\r\n\r\n") + 4
            if 3 < end <= KNOWN_BYTES:
                gate = RESPONSES_GATE
                if gate.resting:
                    gate.resting -= 1
                else:
                    known = KNOWN_RESPONSES.get(data[:end])
                    if known is not None:
                        gate.hits += 1
                        if len(data) - end == known.length and \
                                known.size <= self._max_header_bytes and \
                                known.count <= self._max_headers:
                            return self._known_response(known, data[end:])
                # Not known by its bytes: by its lines (a status line and names llhttp read).
                lines = RESPONSE_LINES_GATE
                if lines.resting:
                    lines.resting -= 1
                else:
                    read = response_by_lines(data, end, self._leading)
                    if read is None or len(data) - end != read[2]:
                        lines.missed()
                    elif end <= self._max_header_bytes and read[3] <= self._max_headers:
                        lines.hits += 1
                        status, kept, length, count, self._leading = read
                        if not gate.resting:
                            remember(KNOWN_RESPONSES, gate, data[:end], KnownResponse(
                                status, tuple(kept), length, True, end, count))
                        return self._whole_response(status, kept, True, data[end:])
            elif RESPONSES_GATE.resting:
                RESPONSES_GATE.resting -= 1
        events = self._feed(data, 502)
        if boundary and events and not self._failed and events[0].__class__ is ResponseHead:
            learn_status_line(data, events[0].response.status)
        learned = self._learned
        if learned is not None:
            self._learned = None
            # The read was this one response, whole: its head is known from now on.
            if boundary and len(events) == 2 and not self._stream and not self._failed and \
                    events[1].__class__ is Body and events[1].end_stream:
                end = data.find(b"\r\n\r\n") + 4
                if end == learned.size and len(data) - end == learned.length:
                    remember(KNOWN_RESPONSES, RESPONSES_GATE, data[:end], learned)
        return events

    def _known_response(self, known: KnownResponse, body: bytes) -> list:
        """What the parser's callbacks would do for a response whose head was read before from
        these same bytes, its whole body following (http1_head.py)."""
        return self._whole_response(known.status, list(known.kept), known.keep_alive, body)

    def _whole_response(self, status: int, kept: list, keep_alive: bool, body: bytes) -> list:
        """A response read without the parser, framed by its Content-Length, its whole body
        in the same read: what the parser's callbacks would do."""
        stream = self._stream
        self._stream = 0
        if not keep_alive:
            self.reusable = False
        self._status = status
        self._framed = True
        self._body_expected = self._in_trailers = False
        return [ResponseHead(stream, Response(status, Headers(kept)), False),
                Body(stream, body, True)]

    def _upgraded(self, rest: bytes) -> None:
        if self._tunnel > 0 and rest:
            self._events.append(Body(self._tunnel, rest, False))

    def _fail(self, reason: str, status: int) -> None:
        self._protocol_error(reason, status)

    def _eof(self) -> list:
        self.reusable = False
        self.closed = True
        stream = self._stream
        if not stream:
            return []
        if self._body_expected and not self._in_trailers and self._close_delimited():
            self._stream = 0
            return [Body(stream, b"", True)]
        self._failed = True
        return [ProtocolError("upstream closed the connection", 502, stream)]

    def _close_delimited(self) -> bool:
        return not self._framed

    def _protocol_error(self, reason: str, status: int) -> None:
        self._failed = True
        self.reusable = False
        self.closed = True
        self._events.append(ProtocolError(reason, status, self._stream))

    # -- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._between = False
        self._learned = None
        self._headers = []
        self._header_bytes = _STATUS_LINE_FRAME
        self._framed = False        # the response head has Content-Length or Transfer-Encoding
        self._body_expected = False
        self._in_trailers = False

    def on_status(self, reason: bytes) -> None:
        self._header_bytes += len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._max_header_bytes:
            raise LimitExceeded(502, "upstream response headers too large")
        headers = self._headers
        if len(headers) >= self._max_headers:
            raise LimitExceeded(502, "too many upstream response headers")
        headers.append((name, value))           # decoded together at the end of the head

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        head = lookup_head(self._headers, self._header_bytes)
        raw = head.pairs
        self._headers = []
        if not self._stream:
            self._protocol_error("response without a request", 502)
            return
        if 100 <= status < 200 and status != 101:
            self._events.append(ResponseHead(self._stream, Response(status, Headers([])), False))
            return
        keep_alive = parser.should_keep_alive()
        if not keep_alive and not (
                self._method == "HEAD" and
                connection_keeps_alive(raw, parser.get_http_version() == "1.1")):
            self.reusable = False
        reading = head.response
        if reading is None:
            reading = head.response = read_response(raw)
        kept, length, self._framed = reading
        headers = Headers(list(kept))
        method = self._method
        no_body = method == "HEAD" or status in NO_BODY_STATUS
        tunnel = self._tunnel < 0 and (status == 101 or
                                       (method == "CONNECT" and 200 <= status < 300))
        if tunnel:
            self._tunnel = self._stream
            self.reusable = False
            if status == 101:
                upgrade = None
                for name, value in raw:
                    if name == "upgrade":
                        upgrade = value
                if upgrade:
                    headers.add("upgrade", upgrade)
        end = no_body or tunnel is False and length is not None and length.strip() == "0"
        self._status = status
        self._events.append(ResponseHead(self._stream, Response(status, headers), end and not tunnel))
        if end and not tunnel:
            self._stream = 0
            if method == "HEAD":
                # llhttp cannot be told a HEAD response has no body (framed, it expects one;
                # unframed, it reads to the close): a new parser takes the next response, the
                # old one's callbacks are ignored.
                self._parser = httptools.HttpResponseParser(self)
                self._between = True
        else:
            self._body_expected = True
            if not tunnel and method != "CONNECT" and status >= 200 and \
                    length is not None and length.isdigit() and int(length) and \
                    not RESPONSES_GATE.resting:     # (resting: it would not be remembered)
                self._learned = KnownResponse(status, kept, int(length), keep_alive,
                                              self._header_bytes, len(raw))

    def on_body(self, body: bytes) -> None:
        if self._stream:
            self._events.append(Body(self._stream, body, False))

    def on_message_complete(self) -> None:
        self._between = True
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return
        if self._tunnel > 0:
            return          # a 101 or a CONNECT's 2xx: what follows is the tunnel, not the end
        if self._stream and self._body_expected:
            end_body(self._events, self._stream)
            self._stream = 0
        self._body_expected = False
