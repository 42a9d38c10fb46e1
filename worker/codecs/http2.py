"""HTTP/2, sans-IO, on h2: the client side (our connection to an upstream). Interface and
events: events.py; the HTTP/1.1 codec (http1.py) speaks the same interface, so the pools drive
either. The server side (a client's connection to us) is h2server.py's own frame layer, without
h2, because h2 cost ten times its CPU per request there (bench/RESULTS.md); it is re-exported
here as Http2ServerCodec. The h2-based server that it is compared against in the tests builds
on `_Http2Codec` below: tests/reference/h2lib_server.py. Field validation: h2fields.py.

Rules of this file:
- h2 owns framing, HPACK, the stream and connection state machines, flow-control accounting,
  SETTINGS and PING answers. This file owns translation to the message model (message.py),
  header validation, flow-controlled sending (held bytes per stream), GOAWAY, and the line
  between stream errors and connection errors.
- h2's own header validation and normalisation are off both ways: one pass here validates and
  translates (RFC 9113 8.2 and 8.3), which is both faster and lets a malformed message be a
  *stream* error. h2 raises ProtocolError for a few stream-level faults (bad or conflicting
  content-length, a body longer than it, trailers without END_STREAM) and tears the whole
  connection down when it does; `_Stream` re-raises those as `_StreamMalformed`, which
  `_Connection` turns into RST_STREAM(PROTOCOL_ERROR) for that stream only.
- h2's connection state machine goes CLOSED on any GOAWAY, sent or received, after which it
  refuses to send anything (python-hyper/h2#1181). A graceful GOAWAY must let streams finish,
  so `_Connection` takes a received GOAWAY without changing state and the codec writes its
  own GOAWAY frames beside h2's output. Only a connection *error* closes h2's state machine.
- Connection errors (bad preface, framing, HPACK, flow control, ...) end the connection: h2
  queues GOAWAY, the codec reports ProtocolError and `closed` turns True. Anything else that
  escapes h2 while receiving is a bug; it is also reported as a connection error (a peer must
  never crash the worker) and kept on `internal_error` for the fuzzer and the logs.
- Stream errors (a malformed message, a refused stream) reset that stream and report
  StreamReset; the connection carries on. (On the reference server, oversized request headers
  are ProtocolError(431) for that stream: it stays open for the answer, its body discarded,
  `_StreamState.rejected`.)
- Flow control: inbound bytes are returned to the peer only when the proxy says it forwarded
  them (`consumed`), which is how backpressure reaches an HTTP/2 peer. Outbound bytes that the
  peer's windows cannot take yet are held per stream (`pending`) and flushed by the codec when
  a WINDOW_UPDATE or SETTINGS opens the window; WindowOpen reports each stream that drained.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.events import (ConnectionTerminated, DataReceived, InformationalResponseReceived,
                       RemoteSettingsChanged, ResponseReceived, StreamReset as H2StreamReset,
                       TrailersReceived, WindowUpdated)
from h2.exceptions import H2Error, StreamClosedError
from h2.settings import SettingCodes, Settings
from h2.stream import H2Stream
from hpack import NeverIndexedHeaderTuple
from hyperframe.frame import GoAwayFrame

from .events import (Body, GoAway, ProtocolError, ResponseHead, StreamReset, Trailers,
                     WindowOpen)
from .h2fields import (_CONNECTION_SPECIFIC, _SENSITIVE, _connection_nominated, _regular_field,
                       _trailers)
from .message import Headers, Request, Response

__all__ = ["Http2ServerCodec", "Http2ClientCodec", "StreamUnavailable",
           "NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "REFUSED_STREAM", "CANCEL", "H2_PREFACE"]

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# RFC 9113 section 7 error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
STREAM_CLOSED = 0x5
REFUSED_STREAM = 0x7
CANCEL = 0x8

_MAX_STREAM_ID = 2**31 - 1
_DEFAULT_WINDOW = 65535                  # every connection window starts here (RFC 9113 6.9.2)


class StreamUnavailable(Exception):
    """send_head on a client connection that can open no more streams (GOAWAY received, the
    peer's concurrency limit reached, or the connection is closed)."""


# -- h2, adjusted --------------------------------------------------------------------------------

class _StreamMalformed(Exception):
    """A stream-level fault that h2 would have made a connection error."""

    def __init__(self, stream_id: int, reason: str):
        super().__init__(reason)
        self.stream_id = stream_id
        self.reason = reason


class _Malformed:
    """h2-level event: a stream was reset by us for a stream-level fault."""
    __slots__ = ("stream_id", "reason")

    def __init__(self, stream_id: int, reason: str):
        self.stream_id = stream_id
        self.reason = reason


class _Stream(H2Stream):
    """H2Stream whose stream-level ProtocolErrors are marked as such (see the file's rules)."""

    def receive_headers(self, headers, end_stream, header_encoding):
        try:
            return super().receive_headers(headers, end_stream, header_encoding)
        except StreamClosedError:
            raise
        except H2Error as exc:
            raise _StreamMalformed(self.stream_id, str(exc)) from None

    def receive_data(self, data, end_stream, flow_control_len):
        try:
            return super().receive_data(data, end_stream, flow_control_len)
        except StreamClosedError:
            raise
        except H2Error as exc:
            raise _StreamMalformed(self.stream_id, str(exc)) from None


class _Connection(H2Connection):
    """H2Connection with stream errors kept to their stream, REFUSED_STREAM instead of a
    connection error past SETTINGS_MAX_CONCURRENT_STREAMS, and GOAWAY that does not close the
    state machine (graceful drain)."""

    def __init__(self, config: H2Configuration):
        super().__init__(config)
        self._admitting = False

    def _begin_new_stream(self, stream_id, allowed_ids):
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        # H2Connection builds H2Stream itself; _Stream adds no state, only error marking.
        stream.__class__ = _Stream
        return stream

    @property
    def open_inbound_streams(self) -> int:
        # h2 checks the concurrency limit with this count and raises a connection error; we
        # check it first (in _receive_headers_frame) and refuse the one stream instead.
        if self._admitting:
            return 0
        return H2Connection.open_inbound_streams.fget(self)

    def _receive_headers_frame(self, frame):
        stream_id = frame.stream_id
        refuse = False
        if stream_id not in self.streams and stream_id % 2 == int(not self.config.client_side):
            # Also prunes closed streams from h2's table (h2 does so only while counting).
            count = H2Connection.open_inbound_streams.fget(self)
            refuse = count >= self.local_settings.max_concurrent_streams
        self._admitting = True
        try:
            frames, events = super()._receive_headers_frame(frame)
        except _StreamMalformed as exc:
            return self._reset_malformed(exc, 0)
        finally:
            self._admitting = False
        if refuse:
            self._reset_quietly(stream_id, REFUSED_STREAM)
            return frames, []
        return frames, events

    def _receive_data_frame(self, frame):
        try:
            return super()._receive_data_frame(frame)
        except _StreamMalformed as exc:
            # h2 had taken the bytes off the connection window: give them back.
            return self._reset_malformed(exc, frame.flow_controlled_length)

    def _receive_goaway_frame(self, frame):
        # Unlike h2, the state machine stays open: streams up to last_stream_id may finish.
        event = ConnectionTerminated()
        event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _reset_malformed(self, exc: _StreamMalformed, flow_controlled: int):
        self._reset_quietly(exc.stream_id, PROTOCOL_ERROR)
        if flow_controlled:
            self.acknowledge_received_data(flow_controlled, exc.stream_id)
        return [], [_Malformed(exc.stream_id, exc.reason)]

    def _reset_quietly(self, stream_id: int, code: int) -> None:
        try:
            self.reset_stream(stream_id, code)
        except H2Error:
            pass    # already closed: nothing to reset


# -- per-stream state ----------------------------------------------------------------------------

class _StreamState:
    """What the codec tracks beside h2 for one open stream."""
    __slots__ = ("local_closed", "remote_closed", "held", "end_held", "trailers_held",
                 "rejected")

    def __init__(self):
        self.local_closed = False     # we sent END_STREAM (or it is queued behind held data)
        self.remote_closed = False    # the peer sent END_STREAM
        self.held: bytearray | None = None   # body bytes waiting for window
        self.end_held = False         # END_STREAM goes out after the held bytes
        self.trailers_held = None     # encoded trailers go out after the held bytes
        self.rejected = False         # 431: the manager answers; the request body is dropped


# -- translation ---------------------------------------------------------------------------------

def _encode_fields(items, out: list, skip_host: bool) -> None:
    """Append `items` (str pairs) to `out` as HTTP/2 fields: connection-specific headers, the
    names `connection` lists, "te" other than "trailers", pseudo-headers and (for requests,
    where :authority says it) "host" are left out."""
    nominated = None
    for name, value in items:
        if name in _CONNECTION_SPECIFIC or name == "te" or name[:1] == ":" or \
                (skip_host and name == "host"):
            if name == "te" and value.strip().lower() == "trailers":
                out.append((b"te", b"trailers"))
            elif name == "connection" and nominated is None:
                nominated = _connection_nominated(items)
            continue
        if name in _SENSITIVE or (name == "cookie" and len(value) < 20):
            out.append(NeverIndexedHeaderTuple(name.encode("latin-1"), value.encode("latin-1")))
        else:
            out.append((name.encode("latin-1"), value.encode("latin-1")))
    if nominated:
        out[:] = [kv for kv in out if kv[0].decode("latin-1") not in nominated]


# -- the codecs ----------------------------------------------------------------------------------

class _Http2Codec:
    """An h2 connection adjusted as the rules above say: sending with flow control,
    consuming, resets, GOAWAY, output. The client codec below is the product's one subclass;
    the h2-based reference server (tests/reference/h2lib_server.py) is the other."""

    __slots__ = ("_conn", "_streams", "_held", "_unacked", "_out", "_dead", "_peer_goaway",
                 "_goaway_sent", "internal_error", "_max_header_bytes",
                 "_initial_connection_window", "_handlers", "_events")

    _client_side = False

    def __init__(self, *, max_header_bytes: int, initial_stream_window: int,
                 initial_connection_window: int, max_concurrent_streams: int):
        config = H2Configuration(
            client_side=self._client_side, header_encoding=None,
            validate_outbound_headers=False, normalize_outbound_headers=False,
            validate_inbound_headers=False, normalize_inbound_headers=False)
        conn = self._conn = _Connection(config)
        # Past max_header_bytes a request is answered 431 and the connection lives on; HPACK
        # still decodes the block (its table must stay in step). Past this hard cap the block
        # is a decompression bomb and the connection ends (ENHANCE_YOUR_CALM).
        hard_cap = max(4 * max_header_bytes, 256 * 1024)
        conn.local_settings = Settings(client=self._client_side, initial_values={
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: initial_stream_window,
            SettingCodes.MAX_HEADER_LIST_SIZE: hard_cap,
        })
        conn.decoder.max_header_list_size = hard_cap
        self._max_header_bytes = max_header_bytes
        self._initial_connection_window = initial_connection_window
        self._streams: dict[int, _StreamState] = {}
        self._held: dict[int, _StreamState] = {}     # streams with bytes waiting for window
        self._unacked: dict[int, int] = {}           # body bytes reported but not consumed
        self._out = bytearray()                      # our own frames, after h2's bytes
        self._dead = False
        self._peer_goaway = False
        self._goaway_sent = False                    # a GOAWAY with the real last stream id
        self.internal_error: BaseException | None = None
        self._events: list = []
        self._handlers = {
            DataReceived: self._on_data,
            TrailersReceived: self._on_trailers,
            H2StreamReset: self._on_reset,
            WindowUpdated: self._on_window_update,
            RemoteSettingsChanged: self._on_settings,
            ConnectionTerminated: self._on_goaway,
            _Malformed: self._on_malformed,
        }

    # -- interface ---------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue our preface (client) and SETTINGS, and open the connection window."""
        conn = self._conn
        conn.initiate_connection()
        extra = self._initial_connection_window - _DEFAULT_WINDOW
        if extra > 0:
            conn.increment_flow_control_window(extra)

    def receive(self, data: bytes) -> list:
        """Events for `data`; b"" means the peer closed the connection."""
        if self._dead:
            return []
        if not data:
            return self._eof()
        events = self._events = []
        try:
            for event in self._conn.receive_data(data):
                handler = self._handlers.get(type(event))
                if handler is not None:
                    handler(event)
        except H2Error as exc:
            # h2 queued GOAWAY for most errors, not for a bad client preface.
            self._close_h2(PROTOCOL_ERROR)
            return self._connection_error(str(exc) or type(exc).__name__)
        except Exception as exc:     # a bug in h2 or here: still only this connection's end
            self.internal_error = exc
            self._close_h2(INTERNAL_ERROR)
            return self._connection_error(f"internal error: {type(exc).__name__}: {exc}")
        return events

    def send_body(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Queue `data` as far as the windows allow; the rest is held and flushed by the codec
        when the peer opens its window (pending() says how much is held)."""
        state = self._streams.get(stream_id)
        if state is None or state.local_closed or self._dead:
            return
        if state.held is not None:
            state.held += data
            state.end_held = state.end_held or end_stream
            return
        conn = self._conn
        size = len(data)
        if size <= conn.max_outbound_frame_size and \
                (size == 0 or size <= conn.local_flow_control_window(stream_id)):
            conn.send_data(stream_id, data, end_stream=end_stream)
            if end_stream:
                self._local_end(stream_id, state)
            return
        state.held = bytearray(data)
        state.end_held = end_stream
        self._held[stream_id] = state
        self._flush(stream_id, state)

    def pending(self, stream_id: int) -> int:
        """Body bytes of `stream_id` held back by flow control (the backpressure signal)."""
        state = self._streams.get(stream_id)
        if state is None or state.held is None:
            return 0
        return len(state.held)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """Trailers end the stream (after any held body bytes)."""
        state = self._streams.get(stream_id)
        if state is None or state.local_closed or self._dead:
            return
        fields: list = []
        _encode_fields(headers.items, fields, False)
        if state.held is not None:
            state.trailers_held = fields
            return
        self._conn.send_headers(stream_id, fields, end_stream=True)
        self._local_end(stream_id, state)

    def consumed(self, stream_id: int, n: int) -> None:
        """The proxy forwarded `n` body bytes of `stream_id`: give the peer its window back.
        Not needed after StreamReset or reset(): the codec returned that stream's bytes."""
        outstanding = self._unacked.get(stream_id)
        if not outstanding or n <= 0 or self._dead:
            return
        if n >= outstanding:
            n = outstanding
            del self._unacked[stream_id]
        else:
            self._unacked[stream_id] = outstanding - n
        self._conn.acknowledge_received_data(n, stream_id)

    def reset(self, stream_id: int, code: int = CANCEL) -> None:
        """Abort one stream (RST_STREAM); the connection carries on."""
        state = self._streams.pop(stream_id, None)
        if state is None or self._dead:
            return
        self._forget(stream_id)
        self._conn._reset_quietly(stream_id, code)

    def goaway(self, last_stream_id: int | None = None, code: int = NO_ERROR,
               graceful: bool = True) -> None:
        """Stop the peer opening streams: GOAWAY(last_stream_id, default the highest stream
        the peer opened); streams up to it finish. With an error code the connection ends once
        data_to_send() is flushed. (`graceful` is the server side's two-phase GOAWAY, which
        a client has no use for: it opens the streams itself.)"""
        if self._dead:
            return
        if code != NO_ERROR:
            self._conn.close_connection(code, last_stream_id=last_stream_id)
            self._dead = True
            return
        if last_stream_id is None:
            last_stream_id = self._conn.highest_inbound_stream_id
        self._final_goaway(last_stream_id)

    def data_to_send(self) -> bytes:
        """Every byte queued so far; the queue is then empty."""
        out = self._out
        if out:
            out += self._conn.data_to_send()
            self._out = bytearray()
            return bytes(out)
        return self._conn.data_to_send()

    def stream_ids(self) -> list:
        return list(self._streams)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def idle(self) -> bool:
        return not self._streams

    @property
    def tunnel(self) -> int:
        """HTTP/2 tunnels (CONNECT) are streams; the connection itself never becomes one."""
        return 0

    @property
    def closed(self) -> bool:
        """The connection is finished: close it once data_to_send() is flushed."""
        return self._dead or (not self._streams and (self._peer_goaway or self._goaway_sent))

    # -- internals: sending ---------------------------------------------------------------------

    def _send_head_fields(self, stream_id: int, fields: list, end_stream: bool,
                          state: _StreamState) -> None:
        self._conn.send_headers(stream_id, fields, end_stream=end_stream)
        if end_stream:
            self._local_end(stream_id, state)

    def _flush(self, stream_id: int, state: _StreamState) -> bool:
        """Send held bytes as far as the windows allow; whether anything went out."""
        conn = self._conn
        held = state.held
        window = conn.local_flow_control_window(stream_id)
        frame_size = conn.max_outbound_frame_size
        progressed = False
        while held and window > 0:
            size = min(len(held), window, frame_size)
            chunk = bytes(held[:size])
            del held[:size]
            last = not held and state.end_held and state.trailers_held is None
            conn.send_data(stream_id, chunk, end_stream=last)
            window -= size
            progressed = True
        if held:
            return progressed
        state.held = None
        self._held.pop(stream_id, None)
        if state.trailers_held is not None:
            conn.send_headers(stream_id, state.trailers_held, end_stream=True)
            state.trailers_held = None
            self._local_end(stream_id, state)
        elif state.end_held:
            if not progressed:      # nothing carried END_STREAM yet
                conn.send_data(stream_id, b"", end_stream=True)
            self._local_end(stream_id, state)
        return True

    def _flush_all(self, stream_ids) -> None:
        events = self._events
        for stream_id in stream_ids:
            state = self._held.get(stream_id)
            if state is not None and self._flush(stream_id, state):
                events.append(WindowOpen(stream_id))

    def _local_end(self, stream_id: int, state: _StreamState) -> None:
        state.local_closed = True
        if state.remote_closed:
            del self._streams[stream_id]

    def _send_goaway(self, last_stream_id: int, code: int = NO_ERROR) -> None:
        # Written beside h2 (not through close_connection) so h2 keeps sending on the streams
        # that may finish; h2's bytes so far go first to keep the order.
        self._out += self._conn.data_to_send()
        self._out += GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code).serialize()

    def _final_goaway(self, last_stream_id: int) -> None:
        self._send_goaway(last_stream_id)
        self._goaway_sent = True

    # -- internals: receiving -------------------------------------------------------------------

    def _forget(self, stream_id: int) -> None:
        """A stream ended by a reset: drop what is held for it and hand back its window."""
        self._held.pop(stream_id, None)
        unacked = self._unacked.pop(stream_id, 0)
        if unacked and not self._dead:
            self._conn.acknowledge_received_data(unacked, stream_id)

    def _discard(self, stream_id: int, flow_controlled: int) -> None:
        if flow_controlled:
            self._conn.acknowledge_received_data(flow_controlled, stream_id)

    def _on_data(self, event) -> None:
        stream_id = event.stream_id
        state = self._streams.get(stream_id)
        data = event.data
        flow = event.flow_controlled_length
        end = event.stream_ended is not None
        if state is None or state.rejected:
            self._discard(stream_id, flow)
            if state is not None and end:
                self._remote_end(stream_id, state)
            return
        size = len(data)
        if flow > size:     # padding: nobody forwards it, so it is returned at once
            self._conn.acknowledge_received_data(flow - size, stream_id)
        if size:
            self._unacked[stream_id] = self._unacked.get(stream_id, 0) + size
        self._events.append(Body(stream_id, data, end))
        if end:
            self._remote_end(stream_id, state)

    def _on_trailers(self, event) -> None:
        stream_id = event.stream_id
        state = self._streams.get(stream_id)
        if state is None:
            return
        if state.rejected:
            self._remote_end(stream_id, state)
            return
        headers = _trailers(event.headers)
        if isinstance(headers, str):
            self._malformed_stream(stream_id, headers)
            return
        self._events.append(Trailers(stream_id, headers))
        self._remote_end(stream_id, state)

    def _remote_end(self, stream_id: int, state: _StreamState) -> None:
        state.remote_closed = True
        if state.local_closed:
            del self._streams[stream_id]

    def _on_reset(self, event) -> None:
        stream_id = event.stream_id
        state = self._streams.pop(stream_id, None)
        if state is None:
            return
        self._forget(stream_id)
        self._events.append(StreamReset(stream_id, int(event.error_code)))

    def _on_malformed(self, event: _Malformed) -> None:
        # h2 already reset the stream (see _Connection); it may never have reached the manager.
        stream_id = event.stream_id
        if self._streams.pop(stream_id, None) is not None:
            self._forget(stream_id)
        self._events.append(StreamReset(stream_id, PROTOCOL_ERROR))

    def _malformed_stream(self, stream_id: int, reason: str) -> None:
        """Our own validation found a stream-level fault: reset it and say so."""
        if self._streams.pop(stream_id, None) is not None:
            self._forget(stream_id)
        self._conn._reset_quietly(stream_id, PROTOCOL_ERROR)
        self._events.append(StreamReset(stream_id, PROTOCOL_ERROR))

    def _on_window_update(self, event) -> None:
        if not self._held:
            return
        stream_id = event.stream_id
        if stream_id == 0:
            self._flush_all(list(self._held))
        elif stream_id in self._held:
            self._flush_all((stream_id,))

    def _on_settings(self, event) -> None:
        # A larger SETTINGS_INITIAL_WINDOW_SIZE opens every stream window at once.
        if self._held and (SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings or
                           SettingCodes.MAX_FRAME_SIZE in event.changed_settings):
            self._flush_all(list(self._held))

    def _on_goaway(self, event) -> None:
        self._peer_goaway = True
        code = int(event.error_code)
        if code != NO_ERROR:
            self._dead = True
        self._events.append(GoAway(event.last_stream_id, code))

    def _close_h2(self, code: int) -> None:
        """Queue GOAWAY(code) unless h2 already closed the connection."""
        conn = self._conn
        if conn.state_machine.state is not ConnectionState.CLOSED:
            try:
                conn.close_connection(code)
            except Exception:
                pass    # nothing more can be said on this connection

    def _connection_error(self, reason: str) -> list:
        self._dead = True
        events = self._events
        self._failed_streams(events, reason)
        self._streams.clear()
        self._held.clear()
        return events

    def _failed_streams(self, events: list, reason: str) -> None:
        raise NotImplementedError

    def _eof(self) -> list:
        raise NotImplementedError


class Http2ClientCodec(_Http2Codec):
    """Our HTTP/2 connection to an upstream: requests out, responses in, many at once."""

    __slots__ = ()

    _client_side = True

    def __init__(self, *, max_header_bytes: int = 60 * 1024,
                 initial_stream_window: int = 268435456,
                 initial_connection_window: int = 268435456):
        # We accept no pushed streams, so the peer may open none.
        super().__init__(max_header_bytes=max_header_bytes,
                         initial_stream_window=initial_stream_window,
                         initial_connection_window=initial_connection_window,
                         max_concurrent_streams=0)
        self._handlers[ResponseReceived] = self._on_response
        self._handlers[InformationalResponseReceived] = self._on_informational

    def available_streams(self) -> int:
        """How many more streams the peer's SETTINGS_MAX_CONCURRENT_STREAMS allows now."""
        if self._dead or self._peer_goaway or self._goaway_sent:
            return 0
        conn = self._conn
        free = conn.remote_settings.max_concurrent_streams - conn.open_outbound_streams
        room = (_MAX_STREAM_ID - conn.highest_outbound_stream_id) // 2
        return max(0, min(free, room))

    @property
    def reusable(self) -> bool:
        return not (self._dead or self._peer_goaway or self._goaway_sent)

    def send_head(self, request: Request, end_stream: bool) -> int:
        """Open a stream for `request`; its id. StreamUnavailable when none can open."""
        if self._dead or self._peer_goaway or self._goaway_sent:
            raise StreamUnavailable("the connection is closing")
        conn = self._conn
        authority = request.authority or request.headers.get("host") or ""
        method = request.method
        if method == "CONNECT":
            fields = [(b":method", b"CONNECT"), (b":authority", authority.encode("latin-1"))]
        else:
            fields = [(b":method", method.encode("latin-1")),
                      (b":scheme", (request.scheme or "http").encode("latin-1")),
                      (b":authority", authority.encode("latin-1")),
                      (b":path", (request.path or "/").encode("latin-1"))]
        _encode_fields(request.headers.items, fields, True)
        try:
            stream_id = conn.get_next_available_stream_id()
        except H2Error as exc:
            raise StreamUnavailable(str(exc)) from None
        state = self._streams[stream_id] = _StreamState()
        try:
            self._send_head_fields(stream_id, fields, end_stream, state)
        except H2Error as exc:      # TooManyStreamsError: past the peer's concurrency limit
            self._streams.pop(stream_id, None)
            raise StreamUnavailable(str(exc)) from None
        return stream_id

    def _on_response(self, event) -> None:
        stream_id = event.stream_id
        state = self._streams.get(stream_id)
        if state is None:
            return
        end = event.stream_ended is not None
        response = self._response(event.headers)
        if isinstance(response, str):
            self._malformed_stream(stream_id, response)
            return
        self._events.append(ResponseHead(stream_id, response, end))
        if end:
            self._remote_end(stream_id, state)

    def _on_informational(self, event) -> None:
        stream_id = event.stream_id
        if stream_id not in self._streams:
            return
        response = self._response(event.headers)
        if isinstance(response, str):
            self._malformed_stream(stream_id, response)
            return
        self._events.append(ResponseHead(stream_id, response, False))

    def _response(self, raw) -> Response | str:
        """A response head, or why it is malformed (or too large: also a reset, which the
        router answers as an upstream reset)."""
        status = None
        items = []
        size = 0
        regular = False
        for name, value in raw:
            size += len(name) + len(value)
            if name[:1] == b":":
                if regular or name != b":status" or status is not None:
                    return f"unexpected pseudo-header {name!r}"
                if len(value) != 3 or not value.isdigit():
                    return "invalid :status"
                status = int(value)
                continue
            regular = True
            error = _regular_field(name, value)
            if error:
                return error
            items.append((name.decode("latin-1"), value.decode("latin-1")))
        if status is None or status < 100 or status == 101:
            return "missing or invalid :status"
        if size > self._max_header_bytes:
            return "response headers too large"
        return Response(status, Headers(items))

    def _failed_streams(self, events: list, reason: str) -> None:
        # Like an HTTP/1.1 upstream failing mid-response: each request in flight fails.
        if not self._streams:
            events.append(ProtocolError(reason, 502, 0))
        for stream_id in self._streams:
            events.append(ProtocolError(reason, 502, stream_id))

    def _on_goaway(self, event) -> None:
        super()._on_goaway(event)
        # Streams above last_stream_id were never processed: they may be retried elsewhere.
        # With an error code the rest fail too.
        last = event.last_stream_id
        code = int(event.error_code)
        for stream_id in [s for s in self._streams if s > last or self._dead]:
            del self._streams[stream_id]
            self._forget(stream_id)
            if stream_id > last:
                self._conn._reset_quietly(stream_id, CANCEL)
                self._events.append(StreamReset(stream_id, REFUSED_STREAM))
            else:
                self._events.append(StreamReset(stream_id, code))

    def _eof(self) -> list:
        self._dead = True
        events = [ProtocolError("upstream closed the connection", 502, stream_id)
                  for stream_id in self._streams]
        self._streams.clear()
        self._held.clear()
        return events


# The server side, so that this module names both sides (see the docstring).
from .h2server import LeanHttp2ServerCodec as Http2ServerCodec  # noqa: E402
