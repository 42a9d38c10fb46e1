"""The HTTP/2 server codec's frame reader: frames cut from what the client sent, the budget of
one turn, header blocks put together (HEADERS ... CONTINUATION) and decoded, whole or in
slices (h2slice.py). A part of h2server.py's LeanHttp2ServerCodec (its base: the fields are
the codec's), where the frame handlers and the stream states are.

Rules of this file:
- At most `frames_per_turn` frames per receive(); the rest stay in the buffer for
  receive_more() (`backlog`), so that the manager can let other connections run between
  (one more only for an RST_STREAM right behind the HEADERS of its stream: reset in the same
  turn, the stream costs no upstream request; see _receive). A SETTINGS frame counts one
  more per 2 open streams (a window change walks them all, ~0.35 us each, half a PING), a
  header block one more per 4 fields past 32 (the `hpack` library decoded ~2-3 us a field;
  hpack_decoder.py is several times cheaper, the budget kept as it was). A block over
  _WHOLE_BLOCK_BYTES is decoded and analyzed in slices (h2slice.py), each turn as many fields
  as its budget pays for, over as many turns as it takes: every frame behind it waits in the
  buffer, in order (a block of 5,000 fields held the loop 17 ms in one turn). What window
  openings send is bounded too: at most frames_per_turn full DATA frames' bytes per turn, the rest on the next
  (`_flush_later`, reported as a backlog). A
  HEADERS frame counts as HEADERS_COST frames: it opens a stream that the manager routes and
  starts, some 15-20 times the work of a control frame (measured: ~13 us against ~0.7 us for
  a PING), so a turn of new streams (a rapid reset, a flood of requests) stays as short as a
  turn of control frames; h2load's 10 requests per read still fit in one turn.
- HPACK, received: a decoded block is cached per connection, keyed by its bytes, *only* when
  decoding it left the dynamic table as it found it (no insertion, no eviction, no size
  change); the entry is stamped with the table's generation, which every block that does
  change the table bumps, so a hit is always a block decoded against the very same table.
  With the fields it keeps what they say as a request (`_analyze`), which depends on nothing
  else. Only small blocks that decode small are kept, a few dozen per connection.
"""

from __future__ import annotations

from hpack.exceptions import HPACKError, OversizedHeaderListError

from .events import HeadersRefused
from .h2fields import RequestAnalysis
from .h2frames import (COMPRESSION_ERROR, CONTINUATION, ENHANCE_YOUR_CALM, F_END_HEADERS,
                       F_END_STREAM, F_PADDED, F_PRIORITY, FRAME_SIZE_ERROR, H2_PREFACE, HEADERS,
                       PROTOCOL_ERROR, RST_STREAM, SETTINGS, _DEFAULT_FRAME_SIZE, _MAX_STREAM_ID,
                       _U32, _head_unpack)

HEADERS_COST = 6        # frames_per_turn units of a HEADERS frame (see the rules above)
_DECODE_FREE_FIELDS = 32    # fields a header block decodes within HEADERS_COST; each 4 more: 1
_UNBOUNDED = 1 << 62    # the turn budget without frames_per_turn
# A header block longer than this is decoded in slices (h2slice.py), each turn as many fields
# as the turn's budget pays for (_SLICE_FIELDS_PER_UNIT, 16 at least): a block of
# this size decodes in ~0.7 ms at worst (1-byte indexed fields, ~2.7 us each).
_WHOLE_BLOCK_BYTES = 256
# A sliced field was decoded by `hpack` (~2-2.7 us; hpack_decoder.py's several times less,
# the budget kept), analyzed (~1 us) and scanned (~0.4 us), ~4 us: at 2
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
_PLAIN_HEADERS_MASK = F_END_HEADERS | F_PADDED | F_PRIORITY


class _ConnError(Exception):
    """A connection error found while reading: GOAWAY(code) and the end (`goaway` False: the
    end alone). `stream_id`: the stream whose header block could not be decoded (see
    _connection_error)."""

    def __init__(self, code: int, reason: str, stream_id: int = 0, goaway: bool = True):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.stream_id = stream_id
        self.goaway = goaway


class H2FrameReader:
    """The reading part of LeanHttp2ServerCodec."""

    __slots__ = ()

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
        handlers = self._frame_handlers
        # A slice of bytes is bytes already; of the buffer (a bytearray), a copy is made: the
        # handlers keep payloads (header blocks are cache keys).
        copy = data.__class__ is not bytes
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
            payload = data[pos + 9:end]
            if copy:
                payload = bytes(payload)
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
            if kind == HEADERS and flags & _PLAIN_HEADERS_MASK == F_END_HEADERS and \
                    stream_id & 1 and payload:
                # The usual HEADERS, a whole block without padding or priority on a client
                # stream: what _on_headers checks holds, so straight to the block (a call
                # less per request).
                self._guard.empty_run = 0
                self._on_block(payload, stream_id, flags & F_END_STREAM == F_END_STREAM,
                               False)
            else:
                handler = handlers.get(kind)
                if handler is None:
                    continue
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

    def _decode(self, block: bytes, stream_id: int) -> list:
        """[table generation, fields, request analysis or None] for a header block that the
        cache did not hold (_on_block looked; see the file's rules for the cache; the analysis
        is filled in and kept by _on_block)."""
        decoder = self._decoder
        snapshot = decoder.header_table.changes     # _table_snapshot(), without the call
        try:
            fields = decoder.decode(block, raw=True)
        except OversizedHeaderListError as exc:
            raise _ConnError(ENHANCE_YOUR_CALM, str(exc), stream_id) from None
        except HPACKError as exc:
            if stream_id not in self._streams:  # a request Envoy made at HEADERS: counted (AL)
                self._events.append(HeadersRefused(stream_id, None))
            raise _ConnError(COMPRESSION_ERROR, str(exc) or type(exc).__name__,
                             stream_id) from None
        if len(fields) > _DECODE_FREE_FIELDS:
            # HPACK decodes ~2-3 us a field here: a block of up to 256 bytes (_WHOLE_BLOCK_BYTES)
            # may hold a few hundred; it ends its turn.
            self._decode_cost = (len(fields) - _DECODE_FREE_FIELDS) >> 2
        return self._decoded(block, fields, snapshot)

    def _table_snapshot(self) -> int:
        """What tells whether decoding a block changed the HPACK table (the cache's rule): the
        count of its insertions and size changes (hpack_decoder.py)."""
        return self._decoder.header_table.changes

    def _decoded(self, block: bytes, fields: list, snapshot: int) -> list:
        """The cache entry of a block decoded from the table of `snapshot`: kept when the
        table did not change, and the table's generation moved on when it did."""
        entry = [self._table_gen, fields, None]
        # Any insertion counts, even of a pair equal to one it evicted.
        if snapshot == self._decoder.header_table.changes:
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
            raise _ConnError(ENHANCE_YOUR_CALM, str(exc), sliced.stream_id) from None
        except HPACKError as exc:
            raise _ConnError(COMPRESSION_ERROR, str(exc) or type(exc).__name__,
                             sliced.stream_id) from None
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
