"""The client side of a CONNECT tunnel, sans-IO: tcp_proxy's `tunneling_config` (Envoy's TCP
tunneling over HTTP, Istio's HBONE) carries a TCP stream inside one HTTP CONNECT request.

Rules of this file:
- One tunnel per upstream connection: HTTP/2 (the cluster speaks HTTP/2: one stream on a
  connection of its own, as Envoy's tcp_proxy opens it) or HTTP/1.1 (`CONNECT host
  HTTP/1.1`, and after a 2xx the connection *is* the stream).
- The tunnel is up when a 2xx response head arrives (RFC 9110 9.3.6: any 2xx to CONNECT
  opens the tunnel). Any other status, a reset, or a connection error before it: `refused`
  says why and the caller treats it as a failed connect, as Envoy does.
- Bytes in: `receive(data)` -> the payload for the client (only once the tunnel is up; a
  payload cannot come before the head). Bytes out: `send(payload)`, `end()` (HTTP/2:
  END_STREAM; HTTP/1.1: nothing, the caller's FIN is the end), and whatever the protocol owes
  the peer (SETTINGS ACK, WINDOW_UPDATE, PING answers) from `data_to_send()`.
- After the tunnel is up, the peer ending the stream (END_STREAM, HTTP/1.1 EOF) is
  `remote_ended`; a reset or a connection error is `failed` (the caller closes at once).

HTTP/2 framing, HPACK and flow control are http2.py's client codec (h2); the HTTP/1.1 head is
written and read here (one request, one response head, then raw bytes).
"""

from __future__ import annotations

from .events import Body, ProtocolError, ResponseHead, StreamReset
from .message import Headers, Request

MAX_RESPONSE_HEAD = 64 * 1024           # an HTTP/1.1 response head longer than this: refused


class ConnectClient:
    """One CONNECT tunnel toward an upstream. `headers`: [(name, value)] to add to the
    request (tunneling_config.headers_to_add, already rendered)."""

    __slots__ = ("http2", "authority", "headers", "codec", "stream_id", "status", "refused",
                 "established", "remote_ended", "failed", "local_ended", "_head", "_out")

    def __init__(self, authority: str, headers=(), http2: bool = True):
        self.http2 = http2
        self.authority = authority
        self.headers = list(headers)
        self.codec = None
        self.stream_id = 0
        self.status = 0
        self.refused: str | None = None     # why the tunnel did not open
        self.established = False
        self.remote_ended = False
        self.failed: str | None = None      # why an open tunnel broke
        self.local_ended = False
        self._head = bytearray()            # HTTP/1.1: the response head so far
        self._out = bytearray()

    def start(self) -> bytes:
        """The request: the connection preface and HEADERS, or the HTTP/1.1 head."""
        if self.http2:
            from .http2 import Http2ClientCodec
            self.codec = Http2ClientCodec()
            self.codec.initiate()
            request = Request("CONNECT", "", self.authority, Headers(list(self.headers)),
                              version="2")
            self.stream_id = self.codec.send_head(request, False)
            return self.data_to_send()
        lines = [f"CONNECT {self.authority} HTTP/1.1", f"host: {self.authority}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    # -- bytes in ----------------------------------------------------------------------------

    def receive(self, data: bytes) -> bytes:
        """Bytes from the upstream (b"" at its EOF) -> the payload for the client."""
        if self.http2:
            return self._receive_h2(data)
        if self.established:
            if not data:
                self.remote_ended = True
            return data
        if not data:
            self._refuse("upstream closed the connection before the CONNECT response")
            return b""
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_RESPONSE_HEAD:
                self._refuse("CONNECT response head too large")
            return b""
        head, rest = bytes(self._head[:end]), bytes(self._head[end + 4:])
        self._head.clear()
        status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") or \
                not status_line[1].isdigit():
            self._refuse("malformed CONNECT response")
            return b""
        self._response(int(status_line[1]))
        return rest if self.established else b""

    def _receive_h2(self, data: bytes) -> bytes:
        payload = []
        sid = self.stream_id
        for event in self.codec.receive(data):
            kind = type(event)
            if kind is ResponseHead and event.stream_id == sid:
                if event.response.status >= 200 and not self.established:
                    self._response(event.response.status)
                    if event.end_stream and self.established:
                        self.remote_ended = True
            elif kind is Body and event.stream_id == sid:
                if self.established:
                    payload.append(event.data)
                    if event.data:
                        self.codec.consumed(sid, len(event.data))
                if event.end_stream:
                    if self.established:
                        self.remote_ended = True
                    else:
                        self._refuse("CONNECT stream ended before its response")
            elif kind is StreamReset and event.stream_id == sid:
                self._broken(f"CONNECT stream reset (code {event.code})")
            elif kind is ProtocolError:
                self._broken(event.reason)
        return b"".join(payload)

    def _response(self, status: int) -> None:
        self.status = status
        if 200 <= status < 300:
            self.established = True
        else:
            self._refuse(f"CONNECT answered {status}")

    def _refuse(self, reason: str) -> None:
        if self.refused is None and not self.established:
            self.refused = reason

    def _broken(self, reason: str) -> None:
        if self.established:
            self.failed = self.failed or reason
        else:
            self._refuse(reason)

    # -- bytes out ---------------------------------------------------------------------------

    def send(self, payload: bytes) -> bytes:
        """The bytes that carry `payload` to the upstream (held by h2 beyond its window)."""
        if not self.http2:
            return payload
        if payload:
            self.codec.send_body(self.stream_id, payload, False)
        return self.data_to_send()

    def end(self) -> bytes:
        """The client ended its stream: END_STREAM (HTTP/2; HTTP/1.1 has no frame for it)."""
        if self.local_ended:
            return b""
        self.local_ended = True
        if not self.http2:
            return b""
        self.codec.send_body(self.stream_id, b"", True)
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        if self.codec is None:
            return b""
        return self.codec.data_to_send()

    def held(self) -> int:
        """Payload bytes the peer's HTTP/2 windows hold back (0 over HTTP/1.1)."""
        return self.codec.pending(self.stream_id) if self.codec is not None else 0
