"""What the HTTP/1.1 codecs share, sans-IO, on httptools (llhttp): the server side (a client's
connection to us, http1_server.py) and the client side (our connection to an upstream,
http1_client.py) queue bytes for the socket the same way, frame bodies the same way and read
through the same parse loop with the same limits. Interface and events: events.py.

Rules of the HTTP/1.1 codecs:
- Parsing is llhttp's (strict: Content-Length with Transfer-Encoding, bad chunk sizes, bare
  LF and the like are errors, so a request cannot be smuggled past us); the codec adds the
  proxy's limits (header bytes, header count) and turns every parser error into one
  ProtocolError event, after which the codec ignores input.
- Framing is recomputed on the way out, never copied: the message model carries no
  Transfer-Encoding, and the serializer writes Content-Length when the sender gave one, else
  chunked (HTTP/1.1 peers), else close-delimited (an HTTP/1.0 client's response).
- Hop-by-hop headers (Connection and the names it lists, Keep-Alive, Proxy-Connection,
  Transfer-Encoding, TE, Upgrade) never leave the codec that received them; an upgrade is
  reported as RequestHead.upgrade instead, and after it the connection is a byte tunnel: each
  receive() is one Body event.
- Requests are numbered 1, 3, 5, ... (odd, like HTTP/2 client streams). Pipelined requests are
  all parsed and reported; responses must be sent in the same order (the connection manager
  serialises them).
- Where Envoy 1.40 reads a message differently from llhttp, Envoy wins: the cases are listed
  where each side reads (http1_server.py, http1_client.py).
"""

from __future__ import annotations

import httptools

from .events import Body

__all__ = ["Http1Output", "LimitExceeded", "Outgoing", "FRAMINGS", "NO_BODY_STATUS", "REASONS",
           "end_body", "frame_body", "last_chunk"]

REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 202: "Accepted",
    203: "Non-Authoritative Information", 204: "No Content", 205: "Reset Content",
    206: "Partial Content", 300: "Multiple Choices", 301: "Moved Permanently", 302: "Found",
    303: "See Other", 304: "Not Modified", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Payload Too Large", 414: "URI Too Long", 415: "Unsupported Media Type",
    417: "Expectation Failed", 421: "Misdirected Request", 426: "Upgrade Required",
    429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}

NO_BODY_STATUS = frozenset({204, 304})


class LimitExceeded(Exception):
    """Raised inside a parser callback to stop llhttp; the codec reports `status`."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _serialize_headers(out: list, headers) -> None:
    out.extend([f"{name}: {value}\r\n" for name, value in headers])


def end_body(events: list, stream_id: int) -> None:
    """The message ended: mark its last body chunk of this batch as the end, or add an empty
    one (a response read in one piece is then one Body event, not two)."""
    if events:
        last = events[-1]
        if last.__class__ is Body and last.stream_id == stream_id and not last.end_stream:
            last.end_stream = True
            return
    events.append(Body(stream_id, b"", True))


# --- framing of what we send ----------------------------------------------------------------

class Outgoing:
    """How one outgoing message's body is framed: by length, chunked, or until close.
    Immutable: the four are shared (FRAMINGS)."""

    __slots__ = ("chunked", "no_body")

    def __init__(self, chunked: bool, no_body: bool):
        self.chunked = chunked
        self.no_body = no_body


FRAMINGS = {(chunked, no_body): Outgoing(chunked, no_body)
            for chunked in (False, True) for no_body in (False, True)}


def frame_body(out: list, framing: Outgoing, data: bytes, end_stream: bool) -> None:
    if framing.no_body:
        return
    if data.__class__ is not bytes:
        data = bytes(data)      # queued until data_to_send: not a buffer its owner reuses
    if framing.chunked:
        if data:
            out.append(b"%x\r\n" % len(data))
            out.append(data)
            out.append(b"\r\n")
        if end_stream:
            out.append(b"0\r\n\r\n")
    elif data:
        out.append(data)


def last_chunk(headers) -> bytes:
    """The terminating chunk, with trailers."""
    out = ["0\r\n"]
    _serialize_headers(out, headers)
    out.append("\r\n")
    return "".join(out).encode("latin-1")


class Http1Output:
    """What both sides share: bytes queued for the socket, and no per-stream flow control
    (HTTP/1.1's backpressure is the socket's own)."""

    __slots__ = ()

    def data_to_send(self) -> bytes:
        """The bytes queued since the last call. Queued as the pieces they were made in (a
        head, a body chunk): one piece, the usual request or bodiless write, goes as it is;
        more are joined once (no bytearray growing and copied again)."""
        out = self._out
        if not out:
            return b""
        self._out = []
        if len(out) == 1:
            data = out[0]
            if data.__class__ is bytes:     # (not a caller's buffer that may change)
                return data
        return b"".join(out)

    def pending(self, stream_id: int) -> int:
        return 0

    def consumed(self, stream_id: int, n: int) -> None:
        """Nothing to give back: there are no HTTP/2 windows here."""

    def _feed(self, data: bytes, error_status: int) -> list:
        """Parse `data` (both sides): an upgrade goes to `_upgraded`, a parser error or an
        exceeded limit becomes one `_fail`; the events gathered are returned."""
        parser = self._parser
        if parser is None:
            # Made on the first read that needs it: a connection whose messages are all
            # known (http1_head.py), a connection: close request from wrk say, never does.
            parser = self._parser = self._new_parser()
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0]:])
        except httptools.HttpParserCallbackError as exc:
            limit = exc.__context__
            if not isinstance(limit, LimitExceeded):
                raise
            self._fail(limit.reason, limit.status)
        except httptools.HttpParserError as exc:
            self._fail(str(exc) or type(exc).__name__, error_status)
        events, self._events = self._events, []
        return events
