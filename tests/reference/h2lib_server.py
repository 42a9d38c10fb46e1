"""The h2-based HTTP/2 server codec: the reference that Baton's own server codec
(worker/codecs/h2server.py, the only one the proxy runs) is compared against, in
tests/unit/test_h2server.py (inbound events and outbound frames on the same conversations) and
by tests/fuzz/fuzz_http2.py --h2lib.

Why a reference and not the product: h2 cost about 100 us of CPU per request on the server
side, the lean codec about 10 (bench/RESULTS.md). Why keep it: h2 is a mature, independent
implementation of the same RFC 9113 state machines, so where the two disagree one of them is
wrong. It builds on http2.py's `_Http2Codec` (h2 adjusted for stream errors and graceful
GOAWAY), which the product keeps for the client side, and adds what only a server does: taking
requests and the two-phase graceful GOAWAY (GOAWAY(2^31-1) and a PING, then the real last
stream id at the PING's ack), both as the lean codec does them.
"""

from __future__ import annotations

from h2.events import PingAckReceived, RequestReceived

from baton.worker.codecs.events import ProtocolError, RequestHead
from baton.worker.codecs.h2fields import _STATUS_BYTES, analyze_request
from baton.worker.codecs.http2 import (_MAX_STREAM_ID, NO_ERROR, REFUSED_STREAM, _encode_fields,
                                       _Http2Codec, _StreamState)
from baton.worker.codecs.message import Headers, Request, Response

__all__ = ["H2LibServerCodec"]

_DRAIN_PING = b"baton\x00gw"             # opaque data of the PING that times a graceful GOAWAY


class H2LibServerCodec(_Http2Codec):
    """A client's HTTP/2 connection to us (prior knowledge / h2c preface): requests in,
    responses out; the interface of worker/codecs/h2server.py's LeanHttp2ServerCodec."""

    __slots__ = ("_max_headers", "_drain_pinged", "_accept_upto")

    _client_side = False
    multiplexed = True

    def __init__(self, *, max_header_bytes: int = 60 * 1024, max_headers: int = 100,
                 max_concurrent_streams: int = 2**31 - 1,
                 initial_stream_window: int = 268435456,
                 initial_connection_window: int = 268435456):
        super().__init__(max_header_bytes=max_header_bytes,
                         initial_stream_window=initial_stream_window,
                         initial_connection_window=initial_connection_window,
                         max_concurrent_streams=max_concurrent_streams)
        self._max_headers = max_headers
        self._drain_pinged = False                   # graceful GOAWAY phase one sent
        self._accept_upto = _MAX_STREAM_ID           # streams above are refused after GOAWAY
        self._handlers[RequestReceived] = self._on_request
        self._handlers[PingAckReceived] = self._on_ping_ack

    def send_head(self, stream_id: int, response: Response, end_stream: bool) -> None:
        """The response head; a 1xx head (not 101, which HTTP/2 does not have) leaves the
        stream open for the final one."""
        state = self._streams.get(stream_id)
        if state is None or state.local_closed or self._dead:
            return
        status = response.status
        if status == 101:
            return
        fields = [(b":status", _STATUS_BYTES.get(status) or str(status).encode())]
        _encode_fields(response.headers.items, fields, False)
        if status < 200:
            self._conn.send_headers(stream_id, fields, end_stream=False)
            return
        self._send_head_fields(stream_id, fields, end_stream, state)

    def goaway(self, last_stream_id: int | None = None, code: int = NO_ERROR,
               graceful: bool = True) -> None:
        """Graceful (code 0, no last stream id): GOAWAY(2^31-1) and a PING now, the GOAWAY with
        the real last stream id when the PING's ack comes back (what Envoy does: streams
        already in flight towards us are not lost). Otherwise as the client side's."""
        if self._dead:
            return
        if code == NO_ERROR and graceful and last_stream_id is None:
            if self._drain_pinged or self._goaway_sent:
                return
            self._drain_pinged = True
            self._send_goaway(_MAX_STREAM_ID)
            self._conn.ping(_DRAIN_PING)
            return
        super().goaway(last_stream_id, code, graceful)

    def _final_goaway(self, last_stream_id: int) -> None:
        super()._final_goaway(last_stream_id)
        self._accept_upto = min(self._accept_upto, last_stream_id)

    def _on_ping_ack(self, event) -> None:
        if self._drain_pinged and not self._goaway_sent and event.ping_data == _DRAIN_PING:
            self._final_goaway(self._conn.highest_inbound_stream_id)

    def _local_end(self, stream_id: int, state: _StreamState) -> None:
        state.local_closed = True
        if state.remote_closed:
            del self._streams[stream_id]
            return
        # The response is complete but the request is not: ask the client to stop sending
        # (RFC 9113 8.1, RST_STREAM NO_ERROR) and hand back the window of what it sent.
        del self._streams[stream_id]
        self._forget(stream_id)
        self._conn._reset_quietly(stream_id, NO_ERROR)

    def _on_request(self, event) -> None:
        stream_id = event.stream_id
        if stream_id > self._accept_upto:
            # Opened after our final GOAWAY: never processed, so the client may retry it.
            self._conn._reset_quietly(stream_id, REFUSED_STREAM)
            return
        end = event.stream_ended is not None
        head = self._request_head(stream_id, event.headers, end)
        if head is None:
            return
        state = _StreamState()
        state.remote_closed = end
        self._streams[stream_id] = state
        if isinstance(head, ProtocolError):
            state.rejected = True
        self._events.append(head)

    def _request_head(self, stream_id: int, raw, end_stream: bool):
        """RequestHead for a request's fields; ProtocolError(431) if they are too large; None
        (after resetting the stream) if they are malformed (h2fields.analyze_request, the
        lean codec's rules too)."""
        analysis = analyze_request(raw, self._max_header_bytes, self._max_headers)
        if isinstance(analysis, str):
            self._malformed_stream(stream_id, analysis)
            return None
        too_large, method, path, authority, scheme, items, expect_continue, connect, _ = analysis
        if too_large is not None:
            # The manager answers 431 on this stream; the connection carries on.
            return ProtocolError(too_large, 431, stream_id)
        if connect:
            # As in HTTP/1.1, a CONNECT's target is its authority.
            request = Request(method, authority, authority, Headers(list(items)), "", "2")
            return RequestHead(stream_id, request, end_stream, expect_continue, "connect")
        request = Request(method, path, authority, Headers(list(items)), scheme, "2")
        return RequestHead(stream_id, request, end_stream, expect_continue)

    def _failed_streams(self, events: list, reason: str) -> None:
        # No stream can be answered: the manager aborts every stream of the connection.
        events.append(ProtocolError(reason, 400, 0))

    def _eof(self) -> list:
        self._dead = True
        events = [ProtocolError("downstream closed mid-request", 0, stream_id)
                  for stream_id in self._streams]
        self._streams.clear()
        self._held.clear()
        return events
