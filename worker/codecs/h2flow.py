"""The HTTP/2 server codec's streams and flow control: what a stream holds, the windows both
ways, the body bytes held back until the client's windows take them. A part of h2server.py's
LeanHttp2ServerCodec (its base: the fields are the codec's).

Rules of this file:
- Flow control: inbound bytes count against the windows when they arrive and are returned
  (WINDOW_UPDATE, once half a window has been returned) when the proxy says it forwarded them
  (`consumed`), or at once when nobody will (padding, closed or reset streams, 431 bodies).
  Outbound bytes that the peer's windows cannot take are held per stream and flushed when a
  WINDOW_UPDATE or SETTINGS opens them; WindowOpen reports each stream that drained. A
  connection WINDOW_UPDATE serves only the streams its window holds back (`_conn_blocked`),
  round robin: its cost is what it unblocks, never a walk of every stream.
"""

from __future__ import annotations

from .events import WindowOpen
from .h2frames import DATA, F_END_STREAM, WINDOW_UPDATE, _U32, _frame, _head_pack


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


_new = object.__new__


class H2FlowControl:
    """The flow-control part of LeanHttp2ServerCodec."""

    __slots__ = ()

    def pending(self, stream_id: int) -> int:
        """Body bytes of `stream_id` held back by flow control (the backpressure signal)."""
        state = self._streams.get(stream_id)
        if state is None or state.held is None:
            return 0
        return len(state.held)

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

    def held_stream_ids(self) -> list:
        """Streams whose response bytes wait for the client's window (`pending`), including
        ones the manager has finished."""
        return list(self._held)

    def _flush(self, stream_id: int, state: _Stream) -> bool:
        """Send held bytes as far as the windows allow; whether anything went out."""
        held = state.held
        frame_size = self._peer_frame_size
        out = self.out
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

    def _give_back(self, stream_id: int, n: int) -> None:
        """`n` bytes received on `stream_id` are gone from our buffers: announce the window
        once half of it has come back."""
        returned = self._returned + n
        if returned >= self._local_conn_window >> 1:
            self.out += _frame(WINDOW_UPDATE, 0, 0, _U32.pack(returned))
            self._recv_window += returned
            returned = 0
        self._returned = returned
        state = self._streams.get(stream_id)
        if state is None or state.remote_closed:
            return          # the peer sends no more on it: its window does not matter
        returned = state.returned + n
        if returned >= self._local_stream_window >> 1:
            self.out += _frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(returned))
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
