"""The HTTP/2 server codec's sender: responses, bodies and trailers queued as frames, resets,
GOAWAY, and the queue handed to the manager (data_to_send). A part of h2server.py's
LeanHttp2ServerCodec (its base: the fields are the codec's).

Rules of this file:
- HPACK, sent: no dynamic table (h2encode.py).
- What goes out is counted for Envoy's outbound flood limits (h2limits.py): a frame queued
  behind counted frames is counted as it is queued, the rest in data_to_send().
"""

from __future__ import annotations

from .h2encode import STATUS_FIELD, encode_block, encode_field
from .h2flow import _Stream
from .h2frames import (CANCEL, CONTINUATION, DATA, F_END_HEADERS, F_END_STREAM, GOAWAY,
                       HEADERS, NO_ERROR, PING, RST_STREAM, _GOAWAY, _MAX_STREAM_ID, _U32,
                       _frame, _head_pack)
from .h2limits import TX_RESET, Flood
from .message import Headers, Response

_DRAIN_PING = b"baton\x00gw"


class H2Sender:
    """The sending part of LeanHttp2ServerCodec."""

    __slots__ = ()

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
        size = len(block)
        if size > self._peer_frame_size:
            self._send_block(stream_id, block, end_stream)
        else:
            # The usual head, one HEADERS frame: _send_block's first case, without the call.
            out = self.out
            counted = self._counted == len(out)
            out += _head_pack(size << 8 | HEADERS, F_END_HEADERS | end_stream, stream_id)
            out += block
            if counted:
                self._counted = len(out)
                self._guard.queued += 1
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
            out = self.out
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
                if state.answered and state.remote_closed:
                    # _local_end's usual case, without the call: an answered request that
                    # came whole leaves, counted as never premature.
                    state.local_closed = True
                    del self._streams[stream_id]
                    if self._track_resets:
                        self._guard.closed_streams += 1
                else:
                    self._local_end(stream_id, state)
            return
        state.held = bytearray(data)
        state.end_held = end_stream
        self._held[stream_id] = state
        self._flush(stream_id, state)

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

    def reset(self, stream_id: int, code: int = CANCEL) -> None:
        """Abort one stream (RST_STREAM); the connection carries on."""
        state = self._streams.pop(stream_id, None)
        if state is None or self._dead:
            return
        self._closed_stream(state)
        self._forget(stream_id)
        self._send_reset(stream_id, code)

    def reset_held(self, stream_id: int, code: int) -> None:
        """Drop what waits for the window on a stream the manager has finished, and reset it
        (the overload manager's reset_high_memory_stream: Envoy's stream lives, and is reset,
        until its last byte is sent)."""
        if stream_id in self._held and not self._dead:
            self._streams.pop(stream_id, None)
            self._forget(stream_id)
            self._send_reset(stream_id, code)

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
            self.out += _frame(PING, 0, 0, _DRAIN_PING)
            return
        if last_stream_id is None:
            last_stream_id = self._highest
        self._final_goaway(last_stream_id)

    def data_to_send(self) -> bytes:
        """Every byte queued so far; the queue is then empty."""
        out = self.out
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
        self.out = bytearray()
        self._counted = 0
        return bytes(out)

    @property
    def queued_bytes(self) -> int:
        """What data_to_send() would return now, in bytes: len(out), which the manager reads
        directly (it writes once a turn)."""
        return len(self.out)

    def _send_block(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        """HEADERS, and CONTINUATION frames when the block is larger than a frame."""
        size = self._peer_frame_size
        flags = F_END_STREAM if end_stream else 0
        out = self.out
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
        self._send_reset(stream_id, NO_ERROR)

    def _send_reset(self, stream_id: int, code: int) -> None:
        """RST_STREAM(code): Envoy's codec counts every one it sends (http2.tx_reset)."""
        self.out += _frame(RST_STREAM, 0, stream_id, _U32.pack(code))
        self._counters[TX_RESET] += 1

    def _send_goaway(self, last_stream_id: int, code: int = NO_ERROR) -> None:
        self.out += _frame(GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, code))

    def _final_goaway(self, last_stream_id: int) -> None:
        self._send_goaway(last_stream_id)
        self._goaway_sent = True
        self._accept_upto = min(self._accept_upto, last_stream_id)
