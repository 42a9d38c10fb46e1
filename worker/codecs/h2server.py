"""HTTP/2 server codec, sans-IO, without h2: frames read and written with struct, HPACK
decoding by hpack_decoder.py, responses encoded without the dynamic table. It speaks
exactly the interface of the h2-based server codec (http2.py, `H2LibServerCodec`), which
stays as the reference and the fallback; http2.py chooses which one is `Http2ServerCodec`.

Rules of this file:
- One frame type, one handler (`_FRAME_HANDLERS`); an unknown type is ignored, except inside
  a header block (HEADERS ... CONTINUATION), where any other frame is a connection error.
- Stream states (RFC 9113 5.1) as the server sees them:

      id > highest seen .................. idle: HEADERS opens it; anything else but PRIORITY
                                           is a connection error (PROTOCOL_ERROR)
      in _streams, remote open ........... open: DATA, trailers (HEADERS + END_STREAM),
                                           RST_STREAM, WINDOW_UPDATE
      in _streams, remote_closed ......... half-closed (remote): DATA is a stream error
                                           (STREAM_CLOSED), HEADERS a connection error (no
                                           GOAWAY, as Envoy); WINDOW_UPDATE, RST_STREAM ok
      id <= highest seen, not in _streams  closed: DATA is dropped (its window returned),
                                           HEADERS answered RST_STREAM(STREAM_CLOSED),
                                           the rest ignored

- Every header block is decoded, whatever becomes of its stream: the HPACK table must stay in
  step with the peer's.
- Connection errors end the connection: GOAWAY(highest stream, code), ProtocolError(stream 0)
  for the manager, `closed` True; nothing is read after. Stream errors reset one stream
  (RST_STREAM) and report StreamReset; a malformed request never reaches the manager (and,
  unless stream_error_on_invalid_http_message, ends the connection as a connection error).
- Envoy's flood limits and premature-reset check (h2limits.py): inbound frames are counted
  as they are read; what we queue, and the premature resets, at the end of each receive()
  and in data_to_send(). A limit crossed ends the connection with nothing more sent: `flood`
  names the stat, and the manager drops the connection.
- The codec's parts: the frame reader, the turn's budget and HPACK decoding in h2reader.py,
  streams and flow control in h2flow.py, the sender in h2send.py, the wire's constants and
  frame header in h2frames.py, what a connection carries to another process in
  h2movestate.py.
"""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict

from .events import (Body, GoAway, HeadersRefused, ProtocolError, RequestHead, StreamReset,
                     Trailers)
from .h2fields import RequestAnalysis, TrailersAnalysis, _trailers, analyze_request
from .h2flow import H2FlowControl, _new, _Stream
from .h2frames import (CANCEL, CONTINUATION, DATA, F_ACK, F_END_STREAM,
                       FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, GOAWAY, HEADERS, INTERNAL_ERROR,
                       NO_ERROR, PING, PRIORITY, PROTOCOL_ERROR, PUSH_PROMISE, REFUSED_STREAM,
                       RST_STREAM, S_ENABLE_PUSH, S_INITIAL_WINDOW_SIZE, S_MAX_CONCURRENT_STREAMS,
                       S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE, SETTINGS, STREAM_CLOSED,
                       WINDOW_UPDATE, _DEFAULT_FRAME_SIZE, _DEFAULT_WINDOW, _GOAWAY,
                       _MAX_STREAM_ID, _MAX_WINDOW, _SETTING, _U32, _frame)
from .h2limits import (CODEC_STATS, HEADER_LIST_SIZE_TOO_LARGE, HEADER_OVERFLOW,
                       RX_MESSAGING_ERROR, RX_RESET, STREAM_REFUSED_ERRORS, TRAILERS, Flood,
                       FloodGuard)
from .h2movestate import H2MoveState
from .h2reader import _UNBOUNDED, _WHOLE_BLOCK_BYTES, HEADERS_COST, H2FrameReader, _ConnError
from .h2send import _DRAIN_PING, H2Sender
from .h2slice import SlicedBlock
from .hpack_decoder import Decoder
from .message import Headers, Request

__all__ = ["LeanHttp2ServerCodec", "HEADERS_COST", "CANCEL", "INTERNAL_ERROR"]


# -- the codec -----------------------------------------------------------------------------------

class LeanHttp2ServerCodec(H2FrameReader, H2Sender, H2FlowControl, H2MoveState):
    """A client's HTTP/2 connection to us (prior knowledge / h2c preface): requests in,
    responses out."""

    __slots__ = ("_streams", "_held", "_unacked", "out", "_dead", "_peer_goaway",
                 "_goaway_sent", "_drain_pinged", "_accept_upto", "internal_error",
                 "_max_header_bytes", "_max_headers", "_max_concurrent", "_local_stream_window",
                 "_local_conn_window", "_recv_window", "_returned", "_send_window",
                 "_peer_stream_window", "_peer_frame_size", "_highest", "_buf", "_preface",
                 "_block", "_block_stream", "_block_end", "_block_self_dependent", "_decoder",
                 "_hard_cap", "_conn_blocked", "_guard", "flood", "_counted",
                 "_frames_per_turn", "_backlog", "_stream_error_on_invalid", "_clock",
                 "_track_resets", "_turn_time",
                 "_table_gen", "_header_cache", "_events", "_hold_new", "_flush_bytes",
                 "_flush_budget", "_flush_later", "_decode_cost", "_slicing", "_counters",
                 "_settings_acked")
    multiplexed = True      # streams interleave: a fault ends one stream; draining is GOAWAY

    def __init__(self, *, max_header_bytes: int = 60 * 1024, max_headers: int = 100,
                 max_concurrent_streams: int = 2**31 - 1,
                 initial_stream_window: int = 268435456,
                 initial_connection_window: int = 268435456,
                 stream_error_on_invalid_http_message: bool = True,
                 frames_per_turn: int | None = None, clock=time.monotonic, counters=None,
                 **limits):
        """`limits`: the flood limits of h2limits.FloodGuard (Envoy's field names), all off
        unless given. `frames_per_turn`: at most this many frames (a HEADERS frame counting
        as HEADERS_COST) are read per receive();
        the rest wait for receive_more() (`backlog` says so), so that one connection cannot
        hold the event loop. `stream_error_on_invalid_http_message` False: a malformed
        request ends the connection (Envoy's default) instead of only its stream.
        `counters`: the worker's counters (name -> count), where the codec counts Envoy's
        http2.* stats of what it does (h2limits.py: TX_RESET and the next three)."""
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._max_concurrent = max_concurrent_streams
        self._local_stream_window = initial_stream_window
        self._local_conn_window = max(initial_connection_window, _DEFAULT_WINDOW)
        self._recv_window = _DEFAULT_WINDOW      # what the peer may still send (connection)
        self._returned = 0                       # connection bytes returned, not announced
        self._send_window = _DEFAULT_WINDOW      # what we may still send (connection)
        self._peer_stream_window = _DEFAULT_WINDOW
        self._peer_frame_size = _DEFAULT_FRAME_SIZE
        self._highest = 0                        # highest stream id the peer opened
        self._streams: dict[int, _Stream] = {}
        self._held: dict[int, _Stream] = {}      # streams with bytes waiting for window
        # Held streams whose own window is open: only the connection window stops them. A
        # connection WINDOW_UPDATE serves these, round robin, and never looks at the others.
        # (An OrderedDict: taking from the front of a plain dict over and over rescans the
        # holes left at its start.)
        self._conn_blocked: OrderedDict[int, _Stream] = OrderedDict()
        self._unacked: dict[int, int] = {}       # body bytes reported but not consumed
        # The frames queued to send (data_to_send()); public so that the manager reads its
        # length once per response without queued_bytes' property call.
        self.out = bytearray()
        self._dead = False
        self._peer_goaway = False
        self._goaway_sent = False
        self._drain_pinged = False
        self._accept_upto = _MAX_STREAM_ID
        self.internal_error: BaseException | None = None
        self._buf = bytearray()
        self._preface = 0                        # preface bytes checked so far
        self._block: bytearray | None = None     # a header block waiting for CONTINUATION
        self._block_stream = 0
        self._block_end = False
        self._block_self_dependent = False
        # Past max_header_bytes a request is answered 431 and the connection lives on; HPACK
        # still decodes the block. Past this hard cap it is a decompression bomb: the end.
        self._hard_cap = max(4 * max_header_bytes, 256 * 1024)
        self._decoder = Decoder(max_header_list_size=self._hard_cap)
        self._table_gen = 0
        self._header_cache: dict = {}
        self._events: list = []
        self._guard = FloodGuard(**limits)
        self._counters = counters = defaultdict(int) if counters is None else counters
        if STREAM_REFUSED_ERRORS not in counters:
            # Listed (at 0) from the first HTTP/2 codec on, as Envoy creates its codec stats
            # (tests/integration/test_differential_http2_stats.py): one test a connection.
            for name in CODEC_STATS:
                counters[name] += 0
        self._settings_acked = False             # the peer acknowledged our SETTINGS
        self.flood: str | None = None            # the stat of the limit that ended us
        self._counted = 0                        # bytes of out whose frames the guard counted
        self._frames_per_turn = frames_per_turn
        self._backlog = False
        self._stream_error_on_invalid = stream_error_on_invalid_http_message
        self._clock = clock
        self._track_resets = self._guard.tracks_lifetimes
        self._turn_time = None                   # the clock, read once per turn (lazily)
        self._hold_new = False                   # a move waits: new streams stay unread
        # Body bytes that window openings (WINDOW_UPDATE, SETTINGS) may send per turn: as many
        # as frames_per_turn full DATA frames; the rest goes out on the next turn
        # (_flush_later), as a backlog. Unbounded outside receive(): send_body's own flush.
        self._flush_bytes = frames_per_turn * _DEFAULT_FRAME_SIZE if frames_per_turn \
            else _UNBOUNDED
        self._flush_budget = _UNBOUNDED
        self._flush_later = False
        self._decode_cost = 0                    # budget units of the last block decoded
        self._slicing: SlicedBlock | None = None   # a big block part decoded (h2slice.py)

    # -- interface ---------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue our SETTINGS and open the connection window."""
        settings = b"".join(_SETTING.pack(key, value) for key, value in (
            (S_ENABLE_PUSH, 0),
            (S_MAX_CONCURRENT_STREAMS, self._max_concurrent),
            (S_INITIAL_WINDOW_SIZE, self._local_stream_window),
            (S_MAX_HEADER_LIST_SIZE, self._hard_cap)))
        self.out += _frame(SETTINGS, 0, 0, settings)
        extra = self._local_conn_window - _DEFAULT_WINDOW
        if extra > 0:
            self.out += _frame(WINDOW_UPDATE, 0, 0, _U32.pack(extra))
            self._recv_window += extra

    def receive(self, data: bytes) -> list:
        """Events for `data`; b"" means the peer closed the connection."""
        if self._dead:
            return []
        if not data:
            return self._eof()
        return self._run(data)

    def receive_more(self) -> list:
        """Events for the frames that receive() left for later (`backlog`)."""
        if self._dead or not self._backlog:
            return []
        return self._run(b"")

    @property
    def backlog(self) -> bool:
        """Frames already received wait for receive_more() (frames_per_turn was reached)."""
        return self._backlog and not self._dead

    def unsent(self, buffered: int) -> None:
        """The transport still holds `buffered` bytes of what data_to_send() returned (the
        frames in them count against max_outbound_frames)."""
        guard = self._guard
        if guard.chunks:
            guard.unsent(buffered)

    def _run(self, data: bytes) -> list:
        events = self._events = []
        self._backlog = False
        self._turn_time = None
        self._flush_budget = self._flush_bytes
        try:
            if self._flush_later:
                self._flush_later = False
                self._flush_connection_blocked()
            budget = self._frames_per_turn or _UNBOUNDED
            if self._slicing is not None:
                budget = self._decode_slices(budget)
            if self._slicing is not None:
                # The block still decodes: every frame behind it waits, in order.
                self._buf += data
                self._backlog = True
            else:
                self._receive(data, budget)
            if self._flush_later:
                self._backlog = True        # the rest of what the windows opened: next turn
            out = self.out
            self._guard.settle(out, self._counted)
            self._counted = len(out)
        except _ConnError as exc:
            return self._connection_error(exc.code, exc.reason, exc.stream_id, exc.goaway)
        except Flood as exc:
            return self._flooded(exc)
        except Exception as exc:     # a bug here: still only this connection's end
            self.internal_error = exc
            return self._connection_error(INTERNAL_ERROR,
                                          f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._flush_budget = _UNBOUNDED
        return events

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

    # -- internals: receiving -------------------------------------------------------------------

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnError(PROTOCOL_ERROR, "DATA on stream 0")
        if stream_id > self._highest:
            raise _ConnError(PROTOCOL_ERROR, "DATA on an idle stream")
        flow = len(payload)
        self._recv_window -= flow
        if self._recv_window < 0:
            raise _ConnError(FLOW_CONTROL_ERROR, "connection flow-control window exceeded")
        data = self._unpad(flags, payload)
        end = flags & F_END_STREAM
        if data or end:
            self._guard.empty_run = 0
        else:
            self._guard.payload_frame(True)
        state = self._streams.get(stream_id)
        if state is None:
            self._give_back(stream_id, flow)      # closed: nobody forwards it
            return
        if state.remote_closed:
            self._give_back(stream_id, flow)
            self._stream_error(stream_id, STREAM_CLOSED)
            return
        state.recv_window -= flow
        if state.recv_window < 0:
            self._give_back(stream_id, flow)
            self._stream_error(stream_id, FLOW_CONTROL_ERROR)
            return
        size = len(data)
        if state.expected >= 0:
            state.received += size
            if state.received > state.expected or (end and state.received != state.expected):
                # A stream error whatever override_stream_error_on_invalid_http_message says,
                # and no rx_messaging_error: nghttp2 checks a body against its content-length
                # itself and resets the stream, and Envoy keeps the connection (measured
                # against Envoy 1.40, tests/integration/test_differential_http2_codec.py).
                self._give_back(stream_id, flow)
                self._stream_error(stream_id, PROTOCOL_ERROR)
                return
        if flow > size:     # padding: nobody forwards it, so it is returned at once
            self._give_back(stream_id, flow - size)
        if size:
            self._unacked[stream_id] = self._unacked.get(stream_id, 0) + size
        self._events.append(Body(stream_id, data, bool(end)))
        if end:
            self._remote_end(stream_id, state)

    def _on_block(self, block: bytes, stream_id: int, end: bool, self_dependent: bool,
                  entry: list | None = None, trailers=None) -> None:
        """A complete header block of `stream_id` (`end`: END_STREAM was set); `entry`: its
        decoding, when it was decoded in slices (and `trailers`, the fields checked as
        trailers then, when the stream was open)."""
        if entry is None:
            entry = self._header_cache.get(block)     # the only lookup (_decode has none)
            if entry is None or entry[0] != self._table_gen:
                # Always decoded: the HPACK table must stay in step. A big block in slices,
                # over turns (h2slice.py): the frames behind it wait in the buffer.
                if len(block) > _WHOLE_BLOCK_BYTES and self._frames_per_turn:
                    sliced = self._slicing = SlicedBlock(
                        block, self._hard_cap, stream_id, end, self_dependent,
                        self._table_snapshot())
                    sliced.analysis = TrailersAnalysis() if stream_id in self._streams \
                        else RequestAnalysis()
                    return
                entry = self._decode(block, stream_id)
        state = self._streams.get(stream_id)
        if state is not None:
            if state.remote_closed:
                # Half-closed (remote): Envoy 1.40 ends the connection, with no GOAWAY and
                # nothing counted in http2.* (measured, its response still to come;
                # tests/integration/test_differential_http2_codec.py).
                raise _ConnError(PROTOCOL_ERROR, "HEADERS on a half-closed stream", goaway=False)
            # Trailers depending on their own stream: Envoy takes them as trailers (measured).
            self._counters[TRAILERS] += 1
            self._on_trailers(stream_id, state, entry[1], end, trailers)
            return
        if stream_id <= self._highest:
            # A closed stream (RFC 9113 5.1): nothing on it is processed.
            self._send_reset(stream_id, STREAM_CLOSED)
            return
        self._highest = stream_id
        if self_dependent:
            # A new stream depending on itself: Envoy 1.40 ends the connection, no GOAWAY,
            # nothing counted in http2.* (measured, the differential test above).
            raise _ConnError(PROTOCOL_ERROR, "HEADERS depending on its own stream",
                             goaway=False)
        if len(self._streams) >= self._max_concurrent:
            # Past our concurrency limit. As Envoy's codec (nghttp2): before the client
            # acknowledged our SETTINGS, the stream is refused (never processed, so the client
            # may retry it; http2.stream_refused_errors); after, it is a connection error, and
            # Envoy's codec fails at once, with no GOAWAY (measured against Envoy 1.40,
            # tests/integration/test_differential_http2_codec.py).
            if self._settings_acked:
                raise _ConnError(PROTOCOL_ERROR, "max concurrent streams exceeded",
                                 goaway=False)
            self._counters[STREAM_REFUSED_ERRORS] += 1
            self._send_reset(stream_id, REFUSED_STREAM)
            return
        if stream_id > self._accept_upto:
            # Opened after our final GOAWAY: never processed, so the client may retry it.
            self._send_reset(stream_id, REFUSED_STREAM)
            return
        self._guard.opened_streams += 1
        request = entry[2]
        if request is None:
            request = entry[2] = self._analyze(entry[1])
        if request.__class__ is str or (end and request[8]):    # malformed; or content-length
            self._invalid_message(stream_id, True)               # but no body
            return
        too_large, method, path, authority, scheme, items, expect_continue, connect, length = \
            request
        opened_at = 0.0
        if self._track_resets:
            # Envoy judges lifetimes in whole seconds: one reading of the clock per turn.
            opened_at = self._turn_time
            if opened_at is None:
                opened_at = self._turn_time = self._clock()
        # _Stream(self._peer_stream_window, self._local_stream_window, opened_at), filled in
        # here without the constructor's frame and _new_stream's (two calls less a request;
        # test_h2server_objects checks every slot against the constructor).
        state = _new(_Stream)
        state.local_closed = state.end_held = state.answered = False
        state.remote_closed = end
        state.held = state.trailers_held = None
        state.send_window = self._peer_stream_window
        state.recv_window = self._local_stream_window
        state.returned = state.received = 0
        state.expected = -1
        state.opened_at = opened_at
        if too_large is not None:
            # Over max_headers_count or max_request_headers_kb: Envoy 1.40's HTTP/2 codec
            # resets the stream (INTERNAL_ERROR; http2.header_overflow or
            # header_list_size_too_large) and the connection carries on (measured against
            # Envoy; HTTP/1.1 answers 431). The stream counts as one reset early.
            self._streams[stream_id] = state
            self._events.append(HeadersRefused(stream_id, HEADER_LIST_SIZE_TOO_LARGE
                                               if too_large.endswith("large") else HEADER_OVERFLOW))
            self._stream_error(stream_id, INTERNAL_ERROR)
            return
        if connect:
            # As in HTTP/1.1, a CONNECT's target is its authority.
            head = RequestHead(stream_id, Request(method, authority, authority,
                                                  Headers(list(items)), "", "2"),
                               end, expect_continue, "connect")
        else:
            # RequestHead(stream_id, Request(method, path, authority, Headers(list(items)),
            # scheme, "2"), end, expect_continue), its three objects filled in here: a class
            # call runs its __init__ in a frame of its own, ~0.7k instructions each on
            # Python 3.11 (test_h2server_objects checks every slot against the constructors).
            headers = _new(Headers)
            headers.items = list(items)
            request = _new(Request)
            request.method = method
            request.path = path
            request.authority = authority
            request.scheme = scheme
            request.headers = headers
            request.version = "2"
            head = _new(RequestHead)
            head.stream_id = stream_id
            head.request = request
            head.end_stream = end
            head.expect_continue = expect_continue
            head.upgrade = None
            if length is not None:
                state.expected = length
        self._streams[stream_id] = state
        self._events.append(head)

    def _on_trailers(self, stream_id: int, state: _Stream, fields, end: bool,
                     checked=None) -> None:
        if not end:
            self._invalid_message(stream_id)    # trailers must end the stream
            return
        if state.expected >= 0 and state.received != state.expected:
            self._invalid_message(stream_id)
            return
        headers = _trailers(fields) if checked is None else checked
        if isinstance(headers, str):
            self._invalid_message(stream_id)
            return
        self._events.append(Trailers(stream_id, headers))
        self._remote_end(stream_id, state)

    def _invalid_message(self, stream_id: int, new: bool = False) -> None:
        """A malformed request (RFC 9113 8.1.1): Envoy ends the whole connection unless
        override_stream_error_on_invalid_http_message says to reset only the stream. It
        sends no GOAWAY then (its codec's dispatch fails; the connection closes once what was
        written is flushed): measured against Envoy 1.40 with an upper-case field name, no
        :path, `te: gzip`, `connection`, a content-length without a body
        (tests/integration/test_differential_http2_codec.py). A `new` stream's request, which
        Envoy's connection manager had made at its HEADERS, counts then as a request reset
        (downstream_rq_total, _rx_reset; HeadersRefused has the manager count those and
        rx_messaging_error), as measured there. (With the override, not measured: a reset
        stream the manager never saw, as before.)"""
        if new and not self._stream_error_on_invalid:
            self._events.append(HeadersRefused(stream_id, RX_MESSAGING_ERROR))
            raise _ConnError(PROTOCOL_ERROR, "invalid HTTP message", goaway=False)
        self._counters[RX_MESSAGING_ERROR] += 1
        if not self._stream_error_on_invalid:
            raise _ConnError(PROTOCOL_ERROR, "invalid HTTP message", goaway=False)
        self._stream_error(stream_id, PROTOCOL_ERROR)

    def _closed_stream(self, state: _Stream) -> None:
        """A stream left the connection (the premature-reset count). An answered stream is
        never premature: counted without reading the clock."""
        if self._track_resets:
            guard = self._guard
            if state.answered:
                guard.closed_streams += 1
            else:
                guard.stream_closed(guard.is_premature(self._clock() - state.opened_at, False))

    def _remote_end(self, stream_id: int, state: _Stream) -> None:
        state.remote_closed = True
        if state.local_closed:
            self._streams.pop(stream_id, None)

    def _stream_error(self, stream_id: int, code: int) -> None:
        """Reset one stream for a fault of the peer's and tell the manager."""
        state = self._streams.pop(stream_id, None)
        if state is not None:
            self._closed_stream(state)
            self._forget(stream_id)
        self._send_reset(stream_id, code)
        self._events.append(StreamReset(stream_id, code))

    def _on_priority(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnError(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise _ConnError(FRAME_SIZE_ERROR, "PRIORITY of the wrong length")
        # Counted for the flood guard, and otherwise ignored: one depending on its own stream
        # too, as Envoy 1.40 does (measured; RFC 9113 5.3 deprecates the priority signals).
        self._guard.priority_frame()

    def _on_rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise _ConnError(FRAME_SIZE_ERROR, "RST_STREAM of the wrong length")
        if stream_id > self._highest:
            raise _ConnError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        state = self._streams.pop(stream_id, None)
        if state is None:
            return
        self._counters[RX_RESET] += 1
        self._closed_stream(state)
        self._forget(stream_id)
        self._events.append(StreamReset(stream_id, _U32.unpack(payload)[0]))

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & F_ACK:
            if payload:
                raise _ConnError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            self._settings_acked = True
            return
        if len(payload) % 6:
            raise _ConnError(FRAME_SIZE_ERROR, "SETTINGS of the wrong length")
        reopen = False
        # INITIAL_WINDOW_SIZE moves every stream's window by the change (RFC 9113 6.9.2). The
        # streams are walked at most twice per frame, not once per entry (a 16 KiB frame holds
        # 2,730 entries; walking 1,000 streams for each held the loop 270 ms): once for the
        # largest window, against which each entry's overflow is checked in its turn, and once
        # to apply the frame's net change. The result, errors included, is the same.
        start = self._peer_stream_window
        highest_window = None
        for pos in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, pos)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise _ConnError(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE too large")
                if value > self._peer_stream_window and self._streams:
                    if highest_window is None:
                        highest_window = max(state.send_window
                                             for state in self._streams.values())
                    if highest_window + value - start > _MAX_WINDOW:
                        raise _ConnError(FLOW_CONTROL_ERROR, "stream window overflow")
                reopen = reopen or value > self._peer_stream_window
                self._peer_stream_window = value
            elif key == S_MAX_FRAME_SIZE:
                if not _DEFAULT_FRAME_SIZE <= value <= 2**24 - 1:
                    raise _ConnError(PROTOCOL_ERROR, "invalid SETTINGS_MAX_FRAME_SIZE")
                reopen = reopen or value > self._peer_frame_size
                self._peer_frame_size = value
            elif key == S_ENABLE_PUSH:
                if value > 1:
                    raise _ConnError(PROTOCOL_ERROR, "invalid SETTINGS_ENABLE_PUSH")
            # HEADER_TABLE_SIZE: we never index what we send. The others do not concern a
            # server that pushes nothing; unknown settings are ignored (RFC 9113 6.5.2).
        delta = self._peer_stream_window - start
        if delta:
            for state in self._streams.values():
                state.send_window += delta
        self.out += _frame(SETTINGS, F_ACK, 0)
        if reopen and self._held:
            self._flush_all(list(self._held))

    def _on_push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise _ConnError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnError(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise _ConnError(FRAME_SIZE_ERROR, "PING of the wrong length")
        if not flags & F_ACK:
            self.out += _frame(PING, F_ACK, 0, payload)
        elif self._drain_pinged and not self._goaway_sent and payload == _DRAIN_PING:
            self._final_goaway(self._highest)

    def _on_goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnError(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise _ConnError(FRAME_SIZE_ERROR, "GOAWAY too short")
        last, code = _GOAWAY.unpack_from(payload)
        last &= _MAX_STREAM_ID
        self._peer_goaway = True
        if code != NO_ERROR:
            self._dead = True
        self._events.append(GoAway(last, code))

    def _on_window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnError(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong length")
        self._guard.window_update_frame()
        increment = _U32.unpack(payload)[0] & _MAX_WINDOW
        if stream_id == 0:
            if not increment:
                raise _ConnError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > _MAX_WINDOW:
                raise _ConnError(FLOW_CONTROL_ERROR, "connection window overflow")
            if self._conn_blocked:
                self._flush_connection_blocked()
            return
        if stream_id > self._highest:
            raise _ConnError(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
        state = self._streams.get(stream_id)
        if state is None:
            return
        if not increment:
            self._stream_error(stream_id, PROTOCOL_ERROR)
            return
        state.send_window += increment
        if state.send_window > _MAX_WINDOW:
            self._stream_error(stream_id, FLOW_CONTROL_ERROR)
            return
        if state.held is not None:
            self._flush_all((stream_id,))

    # -- internals: requests ------------------------------------------------------------------

    def _analyze(self, raw) -> tuple | str:
        return analyze_request(raw, self._max_header_bytes, self._max_headers)

    # -- internals: the end -----------------------------------------------------------------

    def _connection_error(self, code: int, reason: str, block_stream: int = 0,
                          goaway: bool = True) -> list:
        """GOAWAY(code) (unless `goaway` is False) and the end. Its last stream is the
        highest processed, and a new stream counts as processed from its HEADERS frame on,
        even when its header block is then undecodable (`block_stream`) or never finished:
        Envoy's codec (nghttp2) counts a request's stream as processed once its HEADERS frame
        arrives, before decoding the block (measured against Envoy 1.40: a bad block on the
        first stream GOAWAY(1), on stream 5 after 1 GOAWAY(5), a PING inside stream 1's block
        GOAWAY(1, PROTOCOL_ERROR); tests/integration/test_differential_http2_codec.py)."""
        last = self._highest
        if not block_stream:
            if self._block is not None:
                block_stream = self._block_stream
            elif self._slicing is not None:
                block_stream = self._slicing.stream_id
        if last < block_stream <= self._accept_upto:
            last = block_stream
        elif block_stream:
            state = self._streams.get(block_stream)
            if state is not None and not state.remote_closed:
                self._counters[TRAILERS] += 1     # counted before the block was decoded
        if goaway:
            self._send_goaway(last, code)
        self._dead = True
        events = self._events
        # No stream can be answered: the manager aborts every stream of the connection.
        events.append(ProtocolError(reason, 400, 0))
        self._streams.clear()
        self._held.clear()
        self._conn_blocked.clear()
        return events

    def _flooded(self, flood: Flood) -> list:
        """A limit of h2limits crossed: the connection ends at once, nothing more is sent
        (Envoy closes without a GOAWAY); `flood` names the stat for the manager."""
        self.flood = flood.stat
        self._dead = True
        self.out = bytearray()
        self._streams.clear()
        self._held.clear()
        self._conn_blocked.clear()
        return [ProtocolError(flood.reason, 0, 0)]

    def _eof(self) -> list:
        self._dead = True
        events = [ProtocolError("downstream closed mid-request", 0, stream_id)
                  for stream_id in self._streams]
        self._streams.clear()
        self._held.clear()
        self._conn_blocked.clear()
        return events


_FRAME_HANDLERS = {
    DATA: LeanHttp2ServerCodec._on_data,
    HEADERS: LeanHttp2ServerCodec._on_headers,
    PRIORITY: LeanHttp2ServerCodec._on_priority,
    RST_STREAM: LeanHttp2ServerCodec._on_rst_stream,
    SETTINGS: LeanHttp2ServerCodec._on_settings,
    PUSH_PROMISE: LeanHttp2ServerCodec._on_push_promise,
    PING: LeanHttp2ServerCodec._on_ping,
    GOAWAY: LeanHttp2ServerCodec._on_goaway,
    WINDOW_UPDATE: LeanHttp2ServerCodec._on_window_update,
    CONTINUATION: LeanHttp2ServerCodec._on_continuation,
}
LeanHttp2ServerCodec._frame_handlers = _FRAME_HANDLERS
