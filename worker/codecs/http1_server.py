"""HTTP/1.1, sans-IO, on httptools (llhttp): the server side, a client's connection to us:
requests in, responses out. The rules both sides keep: http1_common.py. Interface and events:
events.py.

Where Envoy 1.40 answers a request differently from llhttp, Envoy wins (each checked against the
real Envoy in tests/integration/test_differential_protocol.py): a Transfer-Encoding other than
exactly "chunked" is a 501; any one-digit version other than 1.1 (0.9, 1.2, 2.0, ...) and a
request line without a version are HTTP/1.0 requests (426 unless accept_http_10); an
absolute-form target loses its userinfo and must be a valid http(s) URL (else 400); a head is
limited by its bytes as sent (request or status line, header lines, the empty line).
"""

from __future__ import annotations

import re
from collections import deque

import httptools

from .events import Body, ProtocolError, RequestHead
from .http1_common import (FRAMINGS, NO_BODY_STATUS, REASONS, Http1Output, LimitExceeded,
                           Outgoing, end_body, frame_body, last_chunk)
from .http1_head import (HOP_BY_HOP, KNOWN_BYTES, KNOWN_REQUESTS, REQUEST_LINES_GATE,
                         REQUESTS_GATE, KnownRequest, connection_keeps_alive, lookup_head,
                         plain_request, read_request, remember)
from .message import Headers, Request, Response

__all__ = ["Http1ServerCodec"]

_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS",
                                    "PATCH", "CONNECT", "TRACE")}
_STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n" for code, reason in REASONS.items()}
# The names send_head looks at in a response's pairs (the rest are written as they are): one
# set test a pair, not two.
_NOT_PLAIN = HOP_BY_HOP | {"content-length"}
# The bytes of a request head that the parser's callbacks do not hand over: the spaces around
# the target, " HTTP/1.1" and its CRLF, and the empty line (the method is added once known).
_REQUEST_LINE_FRAME = len("  HTTP/1.1\r\n") + len("\r\n")


def _request_parser(codec) -> httptools.HttpRequestParser:
    parser = httptools.HttpRequestParser(codec)
    # llhttp refuses versions such as 1.2 or 9.9 as malformed (400); Envoy serves any one-digit
    # version other than 1.1 as HTTP/1.0 (426 unless accepted), so they must reach us.
    parser.set_dangerous_leniencies(lenient_version=True)
    return parser


class _InvalidUrl(Exception):
    pass


# What Envoy accepts as the host of an absolute-form target: a name of letters, digits, dots
# and dashes, or a bracketed IPv6 literal; an optional port of 1-5 digits.
_URL_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?\Z")


def _split_target(method: str, target: str) -> tuple[str | None, str]:
    """(authority, path) of a request target: no authority for origin form ("/p?q") and an
    OPTIONS "*"; for absolute form (RFC 9112 3.2.2) the URL's host and port, userinfo dropped,
    as Envoy forwards it. _InvalidUrl for anything else (another scheme, a bad host or port, two
    '@', "*" for another method)."""
    if target[:1] == "/" or target == "*" and method == "OPTIONS":
        return None, target
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise _InvalidUrl(target)
    cut = len(rest)
    for stop in "/?":
        i = rest.find(stop)
        if 0 <= i < cut:
            cut = i
    authority, path = rest[:cut], rest[cut:] or "/"
    userinfo, at, host = authority.rpartition("@")
    match = _URL_HOST.match(host)
    if "@" in userinfo or not match or match.group(1) is not None and \
            not 0 < int(match.group(1)) <= 65535:
        raise _InvalidUrl(target)
    if path[0] == "?":
        path = "/" + path
    return host, path


class Http1ServerCodec(Http1Output):
    """A client's HTTP/1.x connection: requests in, responses out."""

    __slots__ = ("_parser", "_events", "_out", "_next_id", "_stream", "_url", "_headers",
                 "_header_bytes", "_max_header_bytes", "_max_headers", "_failed", "_body_seen",
                 "_responses", "_tunnel", "_framing", "closed", "close_after", "_goaway", "_announce_close",
                 "_expect_continue", "_in_head", "_declined_upgrade", "_stalled", "_stall_mark",
                 "_line_tail", "_learned", "_ended", "_ended_unparsed")
    multiplexed = False     # one exchange at a time: a fault or an unread body ends the connection

    def __init__(self, *, max_header_bytes: int = 60 * 1024, max_headers: int = 100):
        self._parser = None             # made by _feed when first needed
        self._events: list = []
        self._out: list = []             # bytes for the socket, joined by data_to_send
        self._next_id = 1
        self._stream = 0                 # id of the request being parsed
        self._url = b""
        self._headers: list = []
        self._header_bytes = 0
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._failed = False
        self._body_seen = False
        # Requests waiting for (or getting) their response, in order: [stream_id, method,
        # keep_alive, version]
        self._responses: deque = deque()
        self._tunnel = 0                 # stream id once upgraded/CONNECTed: bytes pass through
        self._framing: dict[int, Outgoing] = {}
        self.closed = False              # the connection must close once data_to_send is flushed
        self.close_after = False         # close after the response in progress (no keep-alive)
        self._goaway = False
        self._announce_close = False     # announce_close(): say close, read on
        self._expect_continue = False
        self._in_head = False           # a request has begun and its head is not complete
        self._declined_upgrade = False  # an h2c upgrade request: served as HTTP/1.1
        # A head still open after a receive (see _open_head): bytes llhttp holds that no
        # callback has counted yet, the count when last looked, and the request line's tail.
        self._stalled = 0
        self._stall_mark = 0
        self._line_tail = b""
        self._learned = None            # the request just read, if it may become known
        # A request that ends the connection was read: llhttp refuses whatever follows it
        # (400), so nothing after it may be served past llhttp (from KNOWN_REQUESTS).
        self._ended = False
        # Such a request served from KNOWN_REQUESTS: its bytes, for the parser that reads
        # what follows (_new_parser).
        self._ended_unparsed = b""

    # -- interface ------------------------------------------------------------------------

    def initiate(self) -> None:
        """Nothing to say first in HTTP/1.1."""

    def _new_parser(self) -> httptools.HttpRequestParser:
        ended_unparsed = self._ended_unparsed
        if ended_unparsed:
            # What follows a known request that ended the connection meets llhttp as it would
            # after reading that request itself (CR and LF skipped, anything else a 400 "Data
            # after `Connection: close`" in the request's version): a parser made without
            # callbacks (the request was reported already) reads it first. No callback can
            # come after it: llhttp reads no message on a connection it closed.
            self._ended_unparsed = b""
            parser = _request_parser(None)
            parser.feed_data(ended_unparsed)
            return parser
        return _request_parser(self)

    def receive(self, data: bytes) -> list:
        if self._tunnel:
            return [Body(self._tunnel, data, not data)]
        if self._failed:
            return []
        if not data:
            return self._eof()
        boundary = not self._stream
        if boundary and len(data) <= KNOWN_BYTES and not self._ended:
            # (A large read is not hashed for nothing.)
            gate = REQUESTS_GATE
            if gate.resting:
                gate.resting -= 1
            else:
                known = KNOWN_REQUESTS.get(data)
                if known is not None:
                    gate.hits += 1
                    if known.size <= self._max_header_bytes and \
                            known.count <= self._max_headers:
                        return self._known_request(known, data)
            # Not known by its bytes: by its lines (names llhttp read, a plain target).
            lines = REQUEST_LINES_GATE
            if lines.resting:
                lines.resting -= 1
            else:
                read = plain_request(data)
                if read is None:
                    lines.missed()
                elif len(data) <= self._max_header_bytes and read[4] <= self._max_headers:
                    lines.hits += 1
                    method, target, authority, kept, count = read
                    if not gate.resting:
                        remember(KNOWN_REQUESTS, gate, data, KnownRequest(
                            method, target, authority, tuple(kept), "1.1", True, len(data),
                            count))
                    return self._plain_request(method, target, authority, kept, "1.1", True)
        events = self._feed(data, 400)
        if self._in_head and not self._failed:
            events += self._open_head(data)
        elif self._line_tail:
            self._line_tail = b""
        learned = self._learned
        if learned is not None:
            self._learned = None
            # The read was this one request, whole: known by its bytes from now on. A request
            # that ends the connection (Connection: close, HTTP/1.0 without keep-alive) too,
            # when llhttp and the codec agree on that (_known_request primes a parser for what
            # follows it); one that only the codec ends (HTTP/1.2 read as HTTP/1.0, llhttp
            # reading on) stays with llhttp.
            if boundary and len(events) == 1 and learned.size == len(data) and \
                    not self._stream and not self._failed and \
                    learned.keep_alive != self._ended:
                remember(KNOWN_REQUESTS, REQUESTS_GATE, data, learned)
        return events

    def _known_request(self, known: KnownRequest, data: bytes) -> list:
        """What on_message_begin, on_headers_complete and on_message_complete would do for a
        request read before from these same bytes (http1_head.py)."""
        if not known.keep_alive:
            # It ends the connection (llhttp said so when it read these bytes): what follows
            # goes to a parser that has read them (_new_parser), not to one that reads on.
            self._ended = True
            self._ended_unparsed = data
            self._parser = None
        return self._plain_request(known.method, known.target, known.authority,
                                   list(known.kept), known.version, known.keep_alive)

    def _plain_request(self, method: str, target: str, authority: str, kept: list,
                       version: str, keep_alive: bool) -> list:
        """A bodiless request read without the parser (known, or by its lines): what
        on_message_begin, on_headers_complete and on_message_complete would do."""
        stream = self._next_id
        self._next_id = stream + 2
        self._responses.append([stream, method, keep_alive, version])
        self._expect_continue = self._body_seen = False
        if self._line_tail:
            self._line_tail = b""
        if self._goaway:
            self._failed = True
        return [RequestHead(stream, Request(method, target, authority, Headers(kept), "http",
                                            version), True)]

    def _open_head(self, data: bytes) -> list:
        """A receive ended inside a request head: what llhttp cannot tell yet.

        llhttp holds a header line until the next one begins, with no callback: a client that
        never ends its line would grow that buffer without bound. Bytes fed while no callback
        counted anything are added up, so the head limit still holds (to within one read).

        A request line without a version (HTTP/0.9's "GET /x" CRLF) leaves llhttp waiting for
        headers; Envoy answers it at once, as an HTTP/1.0 request without headers. It is
        recognised as the method, target and CRLF that end the bytes received, as a whole line
        (a header line cannot be "GET /x": it has no colon)."""
        if self._header_bytes != self._stall_mark:
            self._stall_mark = self._header_bytes
            self._stalled = 0
        else:
            self._stalled += len(data)
        # Less the request line's frame: it may be among the stalled bytes, and this bound must
        # never refuse a head the exact count (on_header, on_headers_complete) would pass.
        if self._header_bytes - _REQUEST_LINE_FRAME + self._stalled > self._max_header_bytes:
            self._fail("request headers too large", 431)
        elif not self._headers and data[-1:] == b"\n":
            line = self._parser.get_method() + b" " + self._url + b"\r\n"
            tail = self._line_tail + data
            if tail.endswith(line) and (len(tail) == len(line) or tail[-len(line) - 1] == 10):
                self._simple_request()
        if not self._failed and not self._headers:
            self._line_tail = (self._line_tail + data)[-(len(self._url) + 32):]
        events, self._events = self._events, []
        return events

    def _simple_request(self) -> None:
        """The request line had no version: an HTTP/1.0 request of its own, with no headers
        (any that follow are not read), as Envoy takes it."""
        method = self._parser.get_method().decode("latin-1")
        try:
            authority, path = _split_target(method, self._url.decode("latin-1"))
        except _InvalidUrl:
            self._fail("invalid url", 400)
            return
        self._in_head = False
        self._failed = True
        self._responses.append([self._stream, method, False, "1.0"])
        self._events.append(RequestHead(self._stream, Request(method, path, authority or "",
                                                              Headers([]), "http", "1.0"), True))
        self._stream = 0

    def _upgraded(self, rest: bytes) -> None:
        if self._declined_upgrade:
            # llhttp paused for the upgrade we declined: a fresh parser reads on.
            self._declined_upgrade = False
            self._parser = _request_parser(self)
            if rest:
                before, self._events = self._events, []
                self._events = before + self.receive(rest)
        elif self._tunnel and rest:
            self._events.append(Body(self._tunnel, rest, False))

    def _eof(self) -> list:
        self._failed = True
        stream, self._stream = self._stream, 0
        if stream:  # EOF inside a request: the client gave up on it
            return [ProtocolError("downstream closed mid-request", 0, stream)]
        return []

    def send_head(self, stream_id: int, response: Response, end_stream: bool) -> None:
        """The response head for the oldest unanswered request (pipelining order).
        1xx heads (other than 101) are sent as they are and keep the request unanswered."""
        status = response.status
        if 100 <= status < 200 and status != 101:
            self._out.append(
                (_STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n").encode() + b"\r\n")
            return
        responses = self._responses
        if responses and responses[0][0] == stream_id:
            pending = responses[0]      # the oldest: the usual case
        else:
            pending = self._find(stream_id)
        _, method, keep_alive, version = pending
        # One pass: the header lines (hop-by-hop names left out) and the first Content-Length.
        line = _STATUS_LINES.get(status)
        if line is None or (response.reason and response.reason != REASONS.get(status)):
            line = f"HTTP/1.1 {status} {response.reason or REASONS.get(status, 'Unknown')}\r\n"
        if version == "1.0" and status != 426:
            # Answer in the client's version, as Envoy does; but its refusal of HTTP/1.0 (426)
            # goes out as HTTP/1.1, the version it asks for.
            line = "HTTP/1.0" + line[8:]
        out = [line]
        length = None
        for name, value in response.headers.items:
            if name in _NOT_PLAIN:
                if name != "content-length":
                    continue
                if length is None:
                    length = value
            out.append(f"{name}: {value}\r\n")
        # Envoy's refusal of HTTP/1.0 carries its body on a HEAD too (measured with 1.40).
        no_body = (method == "HEAD" and (status != 426 or version != "1.0")) or \
            status in NO_BODY_STATUS
        chunked = False
        if self._tunnel == stream_id and not (
                status == 101 or (method == "CONNECT" and 200 <= status < 300)):
            # The upgrade was refused (403, 404, 503, ...): no tunnel, and the bytes the client
            # may already have sent for it cannot be read as requests: close after.
            self._tunnel = 0
            keep_alive = False
        if status == 101 or (method == "CONNECT" and 200 <= status < 300):
            # The tunnel starts after this head.
            self._tunnel = stream_id
            no_body = True
        elif length is None and not no_body and not (end_stream and status >= 200):
            if version == "1.1":
                chunked = True
            else:
                keep_alive = False      # close-delimited body
        elif length is None and end_stream and not no_body:
            out.append("content-length: 0\r\n")
        elif length is None and method == "HEAD" and version == "1.1" and status >= 200 and \
                status not in NO_BODY_STATUS:
            # Envoy 1.40's codec names chunked framing on a HEAD response without a length
            # (encodeHeadersBase; no body follows, as for any HEAD).
            out.append("transfer-encoding: chunked\r\n")
        if self._goaway:
            keep_alive = False
        if chunked:
            out.append("transfer-encoding: chunked\r\n")
        if self._tunnel == stream_id:
            if status == 101:
                out.append("connection: upgrade\r\n")
                upgrade = response.headers.get("upgrade")
                if upgrade:
                    out.append(f"upgrade: {upgrade}\r\n")
        elif not keep_alive or self._announce_close:
            out.append("connection: close\r\n")
        elif version == "1.0":
            out.append("connection: keep-alive\r\n")
        out.append("\r\n")
        self._out.append("".join(out).encode("latin-1"))
        pending[2] = keep_alive
        framing = self._framing[stream_id] = FRAMINGS[chunked, no_body]
        if end_stream:
            self._finish_response(stream_id, framing)

    def send_body(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if self._tunnel == stream_id:
            if data:
                self._out.append(bytes(data))
            if end_stream:
                self.closed = True
            return
        framing = self._framing.get(stream_id)
        if framing is None:
            return
        if framing.chunked or framing.no_body or data.__class__ is not bytes:
            frame_body(self._out, framing, data, end_stream)
        elif data:
            # A body framed by its length, as bytes: queued as it is (frame_body's own case,
            # inline: a call a response less).
            self._out.append(data)
        if end_stream:
            self._finish_response(stream_id, framing)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        framing = self._framing.get(stream_id)
        if framing is None:
            return
        if framing.chunked:
            self._out.append(last_chunk(headers))   # the terminating chunk, with the trailers
        self._finish_response(stream_id, framing)

    def reset(self, stream_id: int, code: int = 0) -> None:
        """HTTP/1.1 can only abort a stream by closing the connection."""
        self.closed = True
        self._failed = True

    def goaway(self, last_stream_id=None, code: int = 0, graceful: bool = True) -> None:
        """Drain: the response in progress (or the next one) says `connection: close`."""
        self._goaway = True
        if not self._responses:
            self.closed = True

    def announce_close(self) -> None:
        """The responses from now on say `connection: close`, and the connection reads on:
        Envoy 1.40's drain window (its idle timeout's drain sequence) serves what comes until
        drain_timeout, when the connection manager closes."""
        self._announce_close = True

    @property
    def open_streams(self) -> int:
        return len(self._responses)

    @property
    def idle(self) -> bool:
        """No request in progress in either direction: the connection can move or close."""
        return not self._responses and not self._stream and not self._tunnel

    @property
    def tunnel(self) -> int:
        return self._tunnel

    @property
    def receiving(self) -> bool:
        """A request's bytes have begun to arrive and it is not complete."""
        return bool(self._stream)

    def send_raw(self, data: bytes) -> None:
        """Bytes another process framed for this connection (a response that was in flight
        when the connection moved, worker/proxy/http/inflight.py): written as they are."""
        self._out.append(bytes(data))

    @property
    def awaiting_head(self) -> bool:
        """A request began and its head has not all arrived (request_headers_timeout)."""
        return self._in_head

    def abandon_head(self) -> int:
        """Give up on the request whose head is late: its id, registered for a local reply;
        nothing more is read from this connection."""
        self._failed = True
        self._in_head = False
        stream = self._stream or self._next_id
        if not self._stream:
            self._next_id += 2
        self._stream = 0
        if not any(p[0] == stream for p in self._responses):
            self._responses.append([stream, "GET", False, "1.1"])
        return stream

    # -- internals ------------------------------------------------------------------------

    def _find(self, stream_id: int) -> list:
        for pending in self._responses:
            if pending[0] == stream_id:
                return pending
        raise KeyError(f"no request {stream_id} awaits a response")

    def _finish_response(self, stream_id: int, framing: Outgoing) -> None:
        self._framing.pop(stream_id, None)
        if self._tunnel == stream_id:
            return
        responses = self._responses
        if responses and responses[0][0] == stream_id:
            keep_alive = responses.popleft()[2]
        else:
            for i, pending in enumerate(responses):
                if pending[0] == stream_id:
                    keep_alive = pending[2]
                    del responses[i]
                    break
            else:
                return
        if not keep_alive:
            self.closed = True
            self._failed = True     # nothing after this response is read

    def _fail(self, reason: str, status: int) -> None:
        if status == 400 and "Transfer-Encoding" in reason and "Content-Length" not in reason:
            # llhttp's refusal of a coding list ("chunked, gzip", empty): Envoy's 501.
            status = 501
        self._failed = True
        self._in_head = False
        stream = self._stream
        if not stream:
            stream = self._next_id
            self._next_id += 2
        if not any(p[0] == stream for p in self._responses):
            # The request never reached the manager: it answers this id with `status`, in
            # HTTP/1.0 if that is what the request line said (as Envoy).
            version = "1.0" if self._parser.get_http_version() == "1.0" else "1.1"
            self._responses.append([stream, "GET", False, version])
        self._events.append(ProtocolError(reason, status, stream))
        self._stream = 0

    # -- parser callbacks (llhttp calls these from inside feed_data) -----------------------

    def on_message_begin(self) -> None:
        self._stream = self._next_id
        self._next_id += 2
        self._url = b""
        self._headers = []
        self._header_bytes = _REQUEST_LINE_FRAME
        self._stall_mark = -1
        self._body_seen = False
        self._in_head = True
        self._learned = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._max_header_bytes:
            raise LimitExceeded(431, "request headers too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only the limits here; names and values are decoded together at the end of the head.
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._max_header_bytes:
            raise LimitExceeded(431, "request headers too large")
        headers = self._headers
        if len(headers) >= self._max_headers:
            raise LimitExceeded(431, "too many request headers")
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        method = parser.get_method()
        if self._header_bytes + len(method) > self._max_header_bytes:
            raise LimitExceeded(431, "request headers too large")
        method = _METHODS.get(method) or method.decode("latin-1")
        version = parser.get_http_version()
        keep_alive = parser.should_keep_alive()
        if not keep_alive:
            self._ended = True
        head = lookup_head(self._headers, self._header_bytes)
        raw = head.pairs
        self._headers = list(raw)    # trailers' lines are counted on after it (on_header)
        if version != "1.1" and version != "1.0":
            version = "1.0"
            keep_alive = connection_keeps_alive(raw, False)
        reading = head.request
        if reading is None:
            reading = head.request = read_request(raw)
        kept, authority, hosts, te, has_body, expect_continue, upgrade_seen = reading
        if hosts > 1:
            # RFC 9112 3.2: one Host, or 400; two could route two ways.
            raise LimitExceeded(400, "more than one Host header")
        if te is not None and te.strip().lower() != "chunked":
            # Envoy implements chunked alone: "identity, chunked" is a 501 there, where llhttp
            # would read the body as chunked (the last coding).
            raise LimitExceeded(501, "transfer-encoding other than chunked")
        headers = list(kept)
        upgrade = None
        if method == "CONNECT":
            upgrade = "connect"
            authority = self._url.decode("latin-1")
        elif upgrade_seen and parser.should_upgrade():
            for name, value in raw:
                if name == "upgrade":
                    upgrade = value.lower()
                    break
            if upgrade == "h2c":
                # As Envoy: an HTTP/1.1 -> h2c upgrade is declined and the request served as
                # HTTP/1.1 (its Upgrade and HTTP2-Settings headers are hop-by-hop, gone).
                if has_body:
                    # llhttp ends an upgrade request at its head: a body would be read as the
                    # next request (smuggling). Refused rather than risked.
                    raise LimitExceeded(400, "h2c upgrade request with a body")
                upgrade = None
                self._declined_upgrade = True
            else:
                headers.append(("upgrade", upgrade))
        target = self._url.decode("latin-1")
        if target[:1] != "/" and method != "CONNECT":
            # Absolute form: the authority in the target wins over Host.
            try:
                target_authority, target = _split_target(method, target)
            except _InvalidUrl:
                raise LimitExceeded(400, "invalid url") from None
            if target_authority is not None:
                authority = target_authority
        request = Request(method, target, authority, Headers(headers), "http", version)
        self._responses.append([self._stream, method, keep_alive, version])
        # Is a body coming? llhttp knows (Content-Length > 0 or chunked); the manager needs to
        # know at the head whether the request is complete. Decided at on_message_complete:
        # the head is emitted there for bodiless requests, here otherwise.
        self._expect_continue = expect_continue
        self._body_seen = has_body
        self._events.append(RequestHead(self._stream, request, not has_body and not upgrade,
                                        expect_continue, upgrade))
        if not (has_body or upgrade or expect_continue or self._declined_upgrade or
                REQUESTS_GATE.resting):     # (resting: it would not be remembered)
            self._learned = KnownRequest(method, target, authority, kept, version, keep_alive,
                                         self._header_bytes + len(method), len(raw))
        if upgrade:
            self._tunnel = self._stream

    def on_body(self, body: bytes) -> None:
        self._events.append(Body(self._stream, body, False))

    def on_message_complete(self) -> None:
        if self._body_seen:
            end_body(self._events, self._stream)
        self._stream = 0
        if self._goaway:
            self._failed = True
