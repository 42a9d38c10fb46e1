"""HTTP/2 server codec, sans-IO, without h2: frames read and written with struct, HPACK
decoding through the `hpack` library, responses encoded without the dynamic table. It speaks
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
      in _streams, remote_closed ......... half-closed (remote): DATA or HEADERS is a stream
                                           error (STREAM_CLOSED); WINDOW_UPDATE, RST_STREAM ok
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
- At most `frames_per_turn` frames per receive(); the rest stay in the buffer for
  receive_more() (`backlog`), so that the manager can let other connections run between
  (one more only for an RST_STREAM right behind the HEADERS of its stream: reset in the same
  turn, the stream costs no upstream request; see _receive). A SETTINGS frame counts one
  more per 2 open streams (a window change walks them all, ~0.35 us each, half a PING), a
  header block one more per 4 fields past 32 (HPACK decodes ~2-3 us a field). A block over
  _WHOLE_BLOCK_BYTES is decoded and analyzed in slices (h2slice.py), each turn as many fields
  as its budget pays for, over as many turns as it takes: every frame behind it waits in the
  buffer, in order (a block of 5,000 fields held the loop 17 ms in one turn). What window
  openings send is bounded too: at most frames_per_turn full DATA frames' bytes per turn, the rest on the next
  (`_flush_later`, reported as a backlog). A
  HEADERS frame counts as HEADERS_COST frames: it opens a stream that the manager routes and
  starts, some 15-20 times the work of a control frame (measured: ~13 us against ~0.7 us for
  a PING), so a turn of new streams (a rapid reset, a flood of requests) stays as short as a
  turn of control frames; h2load's 10 requests per read still fit in one turn.
- Flow control: inbound bytes count against the windows when they arrive and are returned
  (WINDOW_UPDATE, once half a window has been returned) when the proxy says it forwarded them
  (`consumed`), or at once when nobody will (padding, closed or reset streams, 431 bodies).
  Outbound bytes that the peer's windows cannot take are held per stream and flushed when a
  WINDOW_UPDATE or SETTINGS opens them; WindowOpen reports each stream that drained. A
  connection WINDOW_UPDATE serves only the streams its window holds back (`_conn_blocked`),
  round robin: its cost is what it unblocks, never a walk of every stream.
- HPACK, received: a decoded block is cached per connection, keyed by its bytes, *only* when
  decoding it left the dynamic table as it found it (no insertion, no eviction, no size
  change); the entry is stamped with the table's generation, which every block that does
  change the table bumps, so a hit is always a block decoded against the very same table.
  With the fields it keeps what they say as a request (`_analyze`), which depends on nothing
  else. Only small blocks that decode small are kept, a few dozen per connection.
- HPACK, sent: no dynamic table (h2encode.py). The wire's constants and frame header are in
  h2frames.py; what a connection carries to another process, in h2movestate.py.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from hpack import Decoder
from hpack.exceptions import HPACKError, OversizedHeaderListError

from .events import (Body, GoAway, HeadersRefused, ProtocolError, RequestHead, StreamReset,
                     Trailers, WindowOpen)
from .h2encode import STATUS_FIELD, encode_block, encode_field
from .h2fields import RequestAnalysis, TrailersAnalysis, _trailers, analyze_request
from .h2frames import (CANCEL, COMPRESSION_ERROR, CONTINUATION, DATA, ENHANCE_YOUR_CALM,
                       F_ACK, F_END_HEADERS, F_END_STREAM, F_PADDED, F_PRIORITY,
                       FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, GOAWAY, H2_PREFACE, HEADERS,
                       INTERNAL_ERROR, NO_ERROR, PING, PRIORITY, PROTOCOL_ERROR, PUSH_PROMISE,
                       REFUSED_STREAM, RST_STREAM, S_ENABLE_PUSH, S_INITIAL_WINDOW_SIZE,
                       S_MAX_CONCURRENT_STREAMS, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE,
                       SETTINGS, STREAM_CLOSED, WINDOW_UPDATE, _DEFAULT_FRAME_SIZE,
                       _DEFAULT_WINDOW, _GOAWAY, _MAX_STREAM_ID, _MAX_WINDOW, _SETTING, _U32,
                       _frame, _head_pack, _head_unpack)
from .h2limits import HEADER_LIST_SIZE_TOO_LARGE, HEADER_OVERFLOW, Flood, FloodGuard
from .h2movestate import H2MoveState
from .h2slice import SlicedBlock
from .message import Headers, Request, Response

__all__ = ["LeanHttp2ServerCodec"]


_DRAIN_PING = b"baton\x00gw"
HEADERS_COST = 6        # frames_per_turn units of a HEADERS frame (see the rules above)
_DECODE_FREE_FIELDS = 32    # fields a header block decodes within HEADERS_COST; each 4 more: 1
_UNBOUNDED = 1 << 62    # the turn budget without frames_per_turn
# A header block longer than this is decoded in slices (h2slice.py), each turn as many fields
# as the turn's budget pays for (_SLICE_FIELDS_PER_UNIT, 16 at least): a block of
# this size decodes in ~0.7 ms at worst (1-byte indexed fields, ~2.7 us each).
_WHOLE_BLOCK_BYTES = 256
# A sliced field is decoded (~2-2.7 us), analyzed (~1 us) and scanned (~0.4 us), ~4 us: at 2
# a unit, a fresh turn of 64 units decodes ~128 fields, ~0.5 ms, about what a turn of other
# frames costs in the worker (1.2 ms p99 under the other attacks; at 4 fields a unit, the
# big-block attack's turns were 2.2 ms p99).
_SLICE_FIELDS_PER_UNIT = 2
_SLICE_MIN_FIELDS = 16
# Decoded header blocks kept per connection, and the largest kept (block bytes, decoded bytes):
# at most about 64 * 4 KiB * 2 (fields and their analysis) per connection.
_HEADER_CACHE_ENTRIES = 64
_HEADER_CACHE_BLOCK = 1024
_HEADER_CACHE_DECODED = 4096


class _ConnError(Exception):
    """A connection error found while reading: GOAWAY(code) and the end."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


# -- per-stream state ----------------------------------------------------------------------------

class _Stream:
    __slots__ = ("local_closed", "remote_closed", "held", "end_held", "trailers_held",
                 "send_window", "recv_window", "returned", "expected", "received",
                 "opened_at", "answered")

    def __init__(self, send_window: int, recv_window: int, opened_at: float = 0.0):
        self.local_closed = False     # we sent END_STREAM (or it is queued behind held data)
        self.remote_closed = False    # the peer sent END_STREAM
        self.held: bytearray | None = None   # body bytes waiting for window
        self.end_held = False
        self.trailers_held: bytes | None = None   # encoded trailers, after the held bytes
        self.send_window = send_window
        self.recv_window = recv_window
        self.returned = 0             # bytes returned but not yet announced (WINDOW_UPDATE)
        self.expected = -1            # content-length, -1: none
        self.received = 0             # body bytes received
        self.opened_at = opened_at    # monotonic time (0 unless premature resets are checked)
        self.answered = False         # a final response head went out


# -- the codec -----------------------------------------------------------------------------------

class LeanHttp2ServerCodec(H2MoveState):
    """A client's HTTP/2 connection to us (prior knowledge / h2c preface): requests in,
    responses out."""

    __slots__ = ("_streams", "_held", "_unacked", "_out", "_dead", "_peer_goaway",
                 "_goaway_sent", "_drain_pinged", "_accept_upto", "internal_error",
                 "_max_header_bytes", "_max_headers", "_max_concurrent", "_local_stream_window",
                 "_local_conn_window", "_recv_window", "_returned", "_send_window",
                 "_peer_stream_window", "_peer_frame_size", "_highest", "_buf", "_preface",
                 "_block", "_block_stream", "_block_end", "_block_self_dependent", "_decoder",
                 "_hard_cap", "_conn_blocked", "_guard", "flood", "_counted",
                 "_frames_per_turn", "_backlog", "_stream_error_on_invalid", "_clock",
                 "_track_resets", "_turn_time",
                 "_table_gen", "_header_cache", "_events", "_hold_new", "_flush_bytes",
                 "_flush_budget", "_flush_later", "_decode_cost", "_slicing")
    multiplexed = True      # streams interleave: a fault ends one stream; draining is GOAWAY

    def __init__(self, *, max_header_bytes: int = 60 * 1024, max_headers: int = 100,
                 max_concurrent_streams: int = 2**31 - 1,
                 initial_stream_window: int = 268435456,
                 initial_connection_window: int = 268435456,
                 stream_error_on_invalid_http_message: bool = True,
                 frames_per_turn: int | None = None, clock=time.monotonic, **limits):
        """`limits`: the flood limits of h2limits.FloodGuard (Envoy's field names), all off
        unless given. `frames_per_turn`: at most this many frames (a HEADERS frame counting
        as HEADERS_COST) are read per receive();
        the rest wait for receive_more() (`backlog` says so), so that one connection cannot
        hold the event loop. `stream_error_on_invalid_http_message` False: a malformed
        request ends the connection (Envoy's default) instead of only its stream."""
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
        self._out = bytearray()
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
        self.flood: str | None = None            # the stat of the limit that ended us
        self._counted = 0                        # bytes of _out whose frames the guard counted
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
        self._out += _frame(SETTINGS, 0, 0, settings)
        extra = self._local_conn_window - _DEFAULT_WINDOW
        if extra > 0:
            self._out += _frame(WINDOW_UPDATE, 0, 0, _U32.pack(extra))
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
            out = self._out
            self._guard.settle(out, self._counted)
            self._counted = len(out)
        except _ConnError as exc:
            return self._connection_error(exc.code, exc.reason)
        except Flood as exc:
            return self._flooded(exc)
        except Exception as exc:     # a bug here: still only this connection's end
            self.internal_error = exc
            return self._connection_error(INTERNAL_ERROR,
                                          f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._flush_budget = _UNBOUNDED
        return events

    def send_head(self, stream_id: int, response: Response, end_stream: bool) -> None:
        """The response head; a 1xx head (not 101, which HTTP/2 does not have) leaves the
        stream open for the final one."""
        state = self._streams.get(stream_id)
        if state is None or state.local_closed or self._dead:
            return
        status = response.status
        if status == 101:
            return
        status_field = STATUS_FIELD.get(status) or \
            encode_field(b":status", str(status).encode(), False)
        block = encode_block(status_field, response.headers.items)
        if status < 200:
            self._send_block(stream_id, block, False)
            return
        state.answered = True
        self._send_block(stream_id, block, end_stream)
        if end_stream:
            self._local_end(stream_id, state)

    def send_body(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Queue `data` as far as the windows allow; the rest is held and flushed when the
        peer opens its window (pending() says how much is held)."""
        state = self._streams.get(stream_id)
        if state is None or state.local_closed or self._dead:
            return
        if state.held is not None:
            state.held += data
            state.end_held = state.end_held or end_stream
            return
        size = len(data)
        if size <= self._peer_frame_size and \
                (size == 0 or (size <= state.send_window and size <= self._send_window)):
            state.send_window -= size
            self._send_window -= size
            out = self._out
            counted = self._counted == len(out)
            out += _head_pack(size << 8 | DATA, end_stream, stream_id)
            out += data
            if counted:
                # Everything queued before is counted (h2limits): count this DATA frame here
                # rather than by a walk of the queue.
                self._counted = len(out)
                guard = self._guard
                guard.queued += 1
                guard.data_frames += 1
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
        block = encode_block(b"", headers.items)
        if state.held is not None:
            state.trailers_held = block
            return
        self._send_block(stream_id, block, True)
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
        self._give_back(stream_id, n)

    def reset(self, stream_id: int, code: int = CANCEL) -> None:
        """Abort one stream (RST_STREAM); the connection carries on."""
        state = self._streams.pop(stream_id, None)
        if state is None or self._dead:
            return
        self._closed_stream(state)
        self._forget(stream_id)
        self._out += _frame(RST_STREAM, 0, stream_id, _U32.pack(code))

    def held_stream_ids(self) -> list:
        """Streams whose response bytes wait for the client's window (`pending`), including
        ones the manager has finished."""
        return list(self._held)

    def reset_held(self, stream_id: int, code: int) -> None:
        """Drop what waits for the window on a stream the manager has finished, and reset it
        (the overload manager's reset_high_memory_stream: Envoy's stream lives, and is reset,
        until its last byte is sent)."""
        if stream_id in self._held and not self._dead:
            self._streams.pop(stream_id, None)
            self._forget(stream_id)
            self._out += _frame(RST_STREAM, 0, stream_id, _U32.pack(code))

    def goaway(self, last_stream_id: int | None = None, code: int = NO_ERROR,
               graceful: bool = True) -> None:
        """Stop the peer opening streams. Graceful (code 0): GOAWAY(2^31-1) and a PING now, the
        GOAWAY with the real last stream id when the PING's ack comes back; streams up to it
        finish. With an error code the connection ends once data_to_send() is flushed."""
        if self._dead:
            return
        if code != NO_ERROR:
            self._send_goaway(self._highest if last_stream_id is None else last_stream_id,
                              code)
            self._dead = True
            return
        if graceful and last_stream_id is None:
            if self._drain_pinged or self._goaway_sent:
                return
            self._drain_pinged = True
            self._send_goaway(_MAX_STREAM_ID)
            self._out += _frame(PING, 0, 0, _DRAIN_PING)
            return
        if last_stream_id is None:
            last_stream_id = self._highest
        self._final_goaway(last_stream_id)

    def data_to_send(self) -> bytes:
        """Every byte queued so far; the queue is then empty."""
        out = self._out
        if not out:
            return b""
        if self._dead:
            self._guard.handed_out(len(out))
        else:
            # Frames queued outside receive() (responses) count too.
            try:
                self._guard.hand_out(out, self._counted)
            except Flood as exc:
                self._flooded(exc)
                return b""
        self._out = bytearray()
        self._counted = 0
        return bytes(out)

    @property
    def queued_bytes(self) -> int:
        """What data_to_send() would return now, in bytes (the manager writes once a turn)."""
        return len(self._out)

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

    def _send_block(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        """HEADERS, and CONTINUATION frames when the block is larger than a frame."""
        size = self._peer_frame_size
        flags = F_END_STREAM if end_stream else 0
        out = self._out
        if len(block) <= size:
            counted = self._counted == len(out)
            out += _head_pack(len(block) << 8 | HEADERS, flags | F_END_HEADERS, stream_id)
            out += block
            if counted:     # as in send_body: counted here, not by a walk of the queue
                self._counted = len(out)
                self._guard.queued += 1
            return
        out += _frame(HEADERS, flags, stream_id, block[:size])
        for pos in range(size, len(block), size):
            chunk = block[pos:pos + size]
            last = pos + size >= len(block)
            out += _frame(CONTINUATION, F_END_HEADERS if last else 0, stream_id, chunk)

    def _flush(self, stream_id: int, state: _Stream) -> bool:
        """Send held bytes as far as the windows allow; whether anything went out."""
        held = state.held
        frame_size = self._peer_frame_size
        out = self._out
        progressed = False
        while held:
            window = min(state.send_window, self._send_window)
            if window <= 0:
                break
            budget = self._flush_budget
            if budget <= 0:
                self._flush_later = True    # the turn's bytes are spent (see __init__)
                break
            size = min(len(held), window, frame_size, budget)
            self._flush_budget = budget - size
            last = size == len(held) and state.end_held and state.trailers_held is None
            out += _head_pack(size << 8 | DATA, F_END_STREAM if last else 0, stream_id)
            out += held[:size]
            del held[:size]
            state.send_window -= size
            self._send_window -= size
            progressed = True
        if held:
            if state.send_window > 0:
                self._conn_blocked[stream_id] = state
            else:
                self._conn_blocked.pop(stream_id, None)
            return progressed
        state.held = None
        self._held.pop(stream_id, None)
        self._conn_blocked.pop(stream_id, None)
        if state.trailers_held is not None:
            self._send_block(stream_id, state.trailers_held, True)
            state.trailers_held = None
            self._local_end(stream_id, state)
        elif state.end_held:
            if not progressed:      # nothing carried END_STREAM yet
                out += _frame(DATA, F_END_STREAM, stream_id)
            self._local_end(stream_id, state)
        return True

    def _flush_all(self, stream_ids) -> None:
        events = self._events
        for stream_id in stream_ids:
            state = self._held.get(stream_id)
            if state is not None and self._flush(stream_id, state):
                events.append(WindowOpen(stream_id))

    def _flush_connection_blocked(self) -> None:
        """The connection window opened: serve the streams only it held back, round robin
        (one taken from the front goes to the back if it still waits), until it is spent.
        Streams that wait for their own window are not even looked at: a client that sends a
        WINDOW_UPDATE per DATA frame costs each time what it unblocks, not a walk of every
        stream."""
        blocked = self._conn_blocked
        events = self._events
        while blocked and self._send_window > 0:
            if self._flush_budget <= 0:
                self._flush_later = True
                break
            stream_id, state = blocked.popitem(last=False)
            if self._flush(stream_id, state):
                events.append(WindowOpen(stream_id))

    def _local_end(self, stream_id: int, state: _Stream) -> None:
        state.local_closed = True
        del self._streams[stream_id]
        if self._track_resets:
            if state.answered:      # the usual end: counted, never premature (_closed_stream)
                self._guard.closed_streams += 1
            else:
                self._closed_stream(state)
        if state.remote_closed:
            return
        # The response is complete but the request is not: ask the client to stop sending
        # (RFC 9113 8.1, RST_STREAM NO_ERROR) and hand back the window of what it sent.
        self._forget(stream_id)
        self._out += _frame(RST_STREAM, 0, stream_id, _U32.pack(NO_ERROR))

    def _send_goaway(self, last_stream_id: int, code: int = NO_ERROR) -> None:
        self._out += _frame(GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, code))

    def _final_goaway(self, last_stream_id: int) -> None:
        self._send_goaway(last_stream_id)
        self._goaway_sent = True
        self._accept_upto = min(self._accept_upto, last_stream_id)

    # -- internals: flow control of what we receive -----------------------------------------

    def _give_back(self, stream_id: int, n: int) -> None:
        """`n` bytes received on `stream_id` are gone from our buffers: announce the window
        once half of it has come back."""
        returned = self._returned + n
        if returned >= self._local_conn_window >> 1:
            self._out += _frame(WINDOW_UPDATE, 0, 0, _U32.pack(returned))
            self._recv_window += returned
            returned = 0
        self._returned = returned
        state = self._streams.get(stream_id)
        if state is None or state.remote_closed:
            return          # the peer sends no more on it: its window does not matter
        returned = state.returned + n
        if returned >= self._local_stream_window >> 1:
            self._out += _frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(returned))
            state.recv_window += returned
            returned = 0
        state.returned = returned

    def _forget(self, stream_id: int) -> None:
        """A stream ended by a reset: drop what is held for it and hand back its window."""
        self._held.pop(stream_id, None)
        self._conn_blocked.pop(stream_id, None)
        unacked = self._unacked.pop(stream_id, 0)
        if unacked and not self._dead:
            self._give_back(stream_id, unacked)

    # -- internals: receiving -------------------------------------------------------------------

    def _receive(self, data: bytes, budget: int) -> None:
        if self._preface < 24:
            need = 24 - self._preface
            head = data[:need]
            if head != H2_PREFACE[self._preface:self._preface + len(head)]:
                raise _ConnError(PROTOCOL_ERROR, "invalid HTTP/2 preface")
            self._preface += len(head)
            data = data[need:]
            if not data:
                return
        buf = self._buf
        if buf:
            buf += data
            data = buf
        size = len(data)
        pos = 0
        handlers = _FRAME_HANDLERS
        while size - pos >= 9:
            length_type, flags, stream_id = _head_unpack(data, pos)
            if budget <= 0:
                if budget < -HEADERS_COST or length_type != (4 << 8 | RST_STREAM) or \
                        stream_id != self._highest or not stream_id or size - pos < 13:
                    self._backlog = True
                    break
                # The RST_STREAM right behind the HEADERS that opened its stream is read in
                # the same turn (one frame past the budget, once: the budget then falls
                # below -HEADERS_COST): the stream is reset before the manager's batch ends,
                # so its upstream request is never sent (pool.py, Batches).
                budget -= HEADERS_COST
            budget -= 1
            length = length_type >> 8
            if length > _DEFAULT_FRAME_SIZE:
                raise _ConnError(FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE")
            end = pos + 9 + length
            if end > size:
                break
            if self._hold_new and length_type & 0xFF == HEADERS and \
                    stream_id & _MAX_STREAM_ID > self._highest:
                break       # a new stream: it is read where the connection moves to
            payload = bytes(data[pos + 9:end])
            pos = end
            kind = length_type & 0xFF
            if kind == HEADERS:
                budget -= HEADERS_COST - 1
            elif kind == SETTINGS:
                # It may walk every stream (a window change): ~0.35 us each, half a PING.
                budget -= len(self._streams) >> 1
            stream_id &= _MAX_STREAM_ID
            if self._block is not None and kind != CONTINUATION:
                raise _ConnError(PROTOCOL_ERROR, "header block interrupted")
            handler = handlers.get(kind)
            if handler is not None:
                handler(self, flags, stream_id, payload)
                if self._dead:
                    return
                if kind == HEADERS or kind == CONTINUATION:
                    budget -= self._decode_cost
                    self._decode_cost = 0
                    if self._slicing is not None:
                        budget = self._decode_slices(budget)
                        if self._dead:
                            return
                        if self._slicing is not None:
                            self._backlog = True    # the frames behind it wait for it
                            break
        if pos == size:
            self._buf = bytearray()
        elif data is buf:
            del buf[:pos]
        else:
            self._buf = bytearray(data[pos:])

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if flags & F_PADDED:
            if not payload:
                raise _ConnError(FRAME_SIZE_ERROR, "padded frame without pad length")
            pad = payload[0]
            if pad >= len(payload):
                raise _ConnError(PROTOCOL_ERROR, "padding longer than the frame")
            return payload[1:len(payload) - pad]
        return payload

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
                self._give_back(stream_id, flow)
                self._invalid_message(stream_id)
                return
        if flow > size:     # padding: nobody forwards it, so it is returned at once
            self._give_back(stream_id, flow - size)
        if size:
            self._unacked[stream_id] = self._unacked.get(stream_id, 0) + size
        self._events.append(Body(stream_id, data, bool(end)))
        if end:
            self._remote_end(stream_id, state)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnError(PROTOCOL_ERROR, "HEADERS on stream 0")
        if not stream_id & 1:
            raise _ConnError(PROTOCOL_ERROR, "HEADERS on a server stream id")
        block = self._unpad(flags, payload) if flags & F_PADDED else payload
        if block or flags & F_END_STREAM:
            self._guard.empty_run = 0
        else:
            self._guard.payload_frame(True)
        self_dependent = False
        if flags & F_PRIORITY:
            if len(block) < 5:
                raise _ConnError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            # Priority is ignored (RFC 9113 5.3.2), but a stream may not depend on itself.
            self_dependent = _U32.unpack_from(block)[0] & _MAX_STREAM_ID == stream_id
            block = block[5:]
        if flags & F_END_HEADERS:       # the usual case: the whole block in this frame
            self._on_block(block, stream_id, bool(flags & F_END_STREAM), self_dependent)
            return
        self._block_self_dependent = self_dependent
        self._block_end = bool(flags & F_END_STREAM)
        self._block_stream = stream_id
        self._block = bytearray(block)

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        block = self._block
        if block is None or stream_id != self._block_stream:
            raise _ConnError(PROTOCOL_ERROR, "unexpected CONTINUATION")
        if payload or flags & F_END_STREAM:
            self._guard.empty_run = 0
        else:
            self._guard.payload_frame(True)
        block += payload
        if len(block) > self._hard_cap:
            raise _ConnError(ENHANCE_YOUR_CALM, "header block too large")
        if flags & F_END_HEADERS:
            self._block = None
            self._on_block(bytes(block), stream_id, self._block_end,
                           self._block_self_dependent)

    def _decode(self, block: bytes) -> list:
        """[table generation, fields, request analysis or None] for a header block (see the
        file's rules for the cache; the analysis is filled in and kept by _on_block)."""
        cache = self._header_cache
        hit = cache.get(block)
        if hit is not None and hit[0] == self._table_gen:
            return hit
        snapshot = self._table_snapshot()
        try:
            fields = self._decoder.decode(block, raw=True)
        except OversizedHeaderListError as exc:
            raise _ConnError(ENHANCE_YOUR_CALM, str(exc)) from None
        except HPACKError as exc:
            raise _ConnError(COMPRESSION_ERROR, str(exc) or type(exc).__name__) from None
        if len(fields) > _DECODE_FREE_FIELDS:
            # HPACK decodes ~2-3 us a field here: a block of up to 256 bytes (_WHOLE_BLOCK_BYTES)
            # may hold a few hundred; it ends its turn.
            self._decode_cost = (len(fields) - _DECODE_FREE_FIELDS) >> 2
        return self._decoded(block, fields, snapshot)

    def _table_snapshot(self) -> tuple:
        """What tells whether decoding a block changed the HPACK table (the cache's rule)."""
        table = self._decoder.header_table
        entries = table.dynamic_entries
        return len(entries), entries[0] if entries else None, table.maxsize

    def _decoded(self, block: bytes, fields: list, snapshot: tuple) -> list:
        """The cache entry of a block decoded from the table of `snapshot`: kept when the
        table did not change, and the table's generation moved on when it did."""
        entry = [self._table_gen, fields, None]
        count, first, maxsize = snapshot
        now_count, now_first, now_maxsize = self._table_snapshot()
        # The first entry by identity: an equal pair inserted anew (evicting another) is a
        # change.
        if count == now_count and first is now_first and maxsize == now_maxsize:
            if len(block) <= _HEADER_CACHE_BLOCK and \
                    sum(len(n) + len(v) for n, v in fields) <= _HEADER_CACHE_DECODED:
                cache = self._header_cache
                if len(cache) >= _HEADER_CACHE_ENTRIES:
                    cache.clear()
                cache[block] = entry
        else:
            self._table_gen += 1    # every entry cached so far was decoded against another table
        return entry

    def _decode_slices(self, budget: int) -> int:
        """The next slice of the big block being decoded (self._slicing): as many fields as
        `budget` pays for (_SLICE_FIELDS_PER_UNIT); once the block is whole,
        its stream goes on as for any block. Returns the budget left."""
        sliced = self._slicing
        allowance = max(budget * _SLICE_FIELDS_PER_UNIT, _SLICE_MIN_FIELDS)
        decoded = len(sliced.fields)
        try:
            cost = sliced.step(self._decoder, allowance)
        except OversizedHeaderListError as exc:
            raise _ConnError(ENHANCE_YOUR_CALM, str(exc)) from None
        except HPACKError as exc:
            raise _ConnError(COMPRESSION_ERROR, str(exc) or type(exc).__name__) from None
        budget -= cost // _SLICE_FIELDS_PER_UNIT
        analysis = sliced.analysis
        # The fields are checked as they come too (~1 us a field), as a request or trailers.
        analysis.add(sliced.fields[decoded:])
        if sliced.done:
            self._slicing = None
            entry = self._decoded(sliced.block, sliced.fields, sliced.snapshot)
            trailers = None
            if analysis.__class__ is RequestAnalysis:
                entry[2] = analysis.result(self._max_header_bytes, self._max_headers)
            else:
                trailers = analysis.result()      # not kept with the block: not a request's
            self._on_block(sliced.block, sliced.stream_id, sliced.end, sliced.self_dependent,
                           entry, trailers)
        return budget

    def _on_block(self, block: bytes, stream_id: int, end: bool, self_dependent: bool,
                  entry: list | None = None, trailers=None) -> None:
        """A complete header block of `stream_id` (`end`: END_STREAM was set); `entry`: its
        decoding, when it was decoded in slices (and `trailers`, the fields checked as
        trailers then, when the stream was open)."""
        if entry is None:
            entry = self._header_cache.get(block)     # _decode's cache hit, without the call
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
                entry = self._decode(block)
        state = self._streams.get(stream_id)
        if state is not None and state.remote_closed:
            # Half-closed (remote): HEADERS is STREAM_CLOSED (RFC 9113 5.1), whatever else is
            # wrong with it (a priority on itself included), as nghttp2 answers in Envoy.
            self._stream_error(stream_id, STREAM_CLOSED)
            return
        if self_dependent and (state is not None or stream_id > self._highest):
            self._highest = max(self._highest, stream_id)
            self._stream_error(stream_id, PROTOCOL_ERROR)
            return
        if state is not None:
            self._on_trailers(stream_id, state, entry[1], end, trailers)
            return
        if stream_id <= self._highest:
            # A closed stream (RFC 9113 5.1): nothing on it is processed.
            self._out += _frame(RST_STREAM, 0, stream_id, _U32.pack(STREAM_CLOSED))
            return
        self._highest = stream_id
        if stream_id > self._accept_upto or len(self._streams) >= self._max_concurrent:
            # Opened after our final GOAWAY, or past our concurrency limit: never processed,
            # so the client may retry it.
            self._out += _frame(RST_STREAM, 0, stream_id, _U32.pack(REFUSED_STREAM))
            return
        self._guard.opened_streams += 1
        request = entry[2]
        if request is None:
            request = entry[2] = self._analyze(entry[1])
        if request.__class__ is str or (end and request[8]):    # malformed; or content-length
            self._invalid_message(stream_id)                     # but no body
            return
        too_large, method, path, authority, scheme, items, expect_continue, connect, length = \
            request
        opened_at = 0.0
        if self._track_resets:
            # Envoy judges lifetimes in whole seconds: one reading of the clock per turn.
            opened_at = self._turn_time
            if opened_at is None:
                opened_at = self._turn_time = self._clock()
        state = _Stream(self._peer_stream_window, self._local_stream_window, opened_at)
        state.remote_closed = end
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
            head = RequestHead(stream_id, Request(method, path, authority, Headers(list(items)),
                                                  scheme, "2"),
                               end, expect_continue)
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

    def _invalid_message(self, stream_id: int) -> None:
        """A malformed request (RFC 9113 8.1.1): Envoy ends the whole connection unless
        override_stream_error_on_invalid_http_message says to reset only the stream."""
        if not self._stream_error_on_invalid:
            raise _ConnError(PROTOCOL_ERROR, "invalid HTTP message")
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
        self._out += _frame(RST_STREAM, 0, stream_id, _U32.pack(code))
        self._events.append(StreamReset(stream_id, code))

    def _on_priority(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnError(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise _ConnError(FRAME_SIZE_ERROR, "PRIORITY of the wrong length")
        self._guard.priority_frame()
        if _U32.unpack_from(payload)[0] & _MAX_STREAM_ID == stream_id and \
                stream_id in self._streams:
            self._stream_error(stream_id, PROTOCOL_ERROR)     # may not depend on itself

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
        self._closed_stream(state)
        self._forget(stream_id)
        self._events.append(StreamReset(stream_id, _U32.unpack(payload)[0]))

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & F_ACK:
            if payload:
                raise _ConnError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
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
        self._out += _frame(SETTINGS, F_ACK, 0)
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
            self._out += _frame(PING, F_ACK, 0, payload)
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

    def _connection_error(self, code: int, reason: str) -> list:
        self._send_goaway(self._highest, code)
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
        self._out = bytearray()
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
