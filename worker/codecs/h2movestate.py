"""What an HTTP/2 server connection carries to another process (worker/proxy/http/h2move.py):
holding new streams back until none is open, then the state that export_state hands over and
import_state continues. A part of the server codec (h2server.py), kept apart because it is
used only when a connection moves: it reads and sets the codec's own fields."""

from __future__ import annotations


class H2MoveState:
    """The moving part of LeanHttp2ServerCodec (its base: the fields are the codec's)."""

    __slots__ = ()

    def hold_new_streams(self, on: bool = True) -> None:
        """While on, a HEADERS frame that would open a stream (and what follows it) stays
        unread in the input buffer: the streams open finish, and the connection becomes
        movable with the new ones still to read. Off: receive_more() reads them."""
        self._hold_new = on
        if not on and self._buf:
            self._backlog = True

    @property
    def buffered_input(self) -> int:
        return len(self._buf)

    @property
    def movable(self) -> bool:
        """No stream open, nothing to send or half-read, no GOAWAY either way: the state is
        the settings, windows, stream counter, HPACK table and unread bytes of export_state."""
        return not (self._streams or self._held or self._unacked or self.out or self._dead
                    or self._block is not None or self._slicing is not None
                    or self._preface < 24 or self._peer_goaway
                    or self._goaway_sent)

    def export_state(self) -> dict:
        """The connection's state for another process (`movable` must hold)."""
        table = self._decoder.header_table
        return {"local": [self._max_concurrent, self._local_stream_window,
                          self._local_conn_window],
                "windows": [self._recv_window, self._send_window, self._returned],
                "peer": [self._peer_stream_window, self._peer_frame_size],
                "highest": self._highest,
                # The flood checks' counts over the connection's life (h2limits.py): fresh
                # ones would take the WINDOW_UPDATEs of the client's past DATA for a flood.
                "guard": self._guard.lifetime_counts(),
                "hpack": {"size": table.maxsize,
                          "allowed": self._decoder.max_allowed_table_size,
                          "entries": [[n, v] for n, v in table.dynamic_entries]},
                "input": bytes(self._buf)}

    def import_state(self, state: dict) -> None:
        """Continue the connection another process exported, on a codec made with this
        process's options and never initiate()d (the peer already has our SETTINGS)."""
        (self._max_concurrent, self._local_stream_window,
         self._local_conn_window) = state["local"]
        self._recv_window, self._send_window, self._returned = state["windows"]
        self._peer_stream_window, self._peer_frame_size = state["peer"]
        self._highest = state["highest"]
        self._guard.continue_counts(state.get("guard") or ())
        self._preface = 24
        # Taken as acknowledged (the handoff record has no field for it): a client acks our
        # SETTINGS in its first round trip, as a rule long before its connection is idle.
        self._settings_acked = True
        hpack = state["hpack"]
        table = self._decoder.header_table
        self._decoder.max_allowed_table_size = hpack["allowed"]
        table.maxsize = hpack["size"]
        for name, value in reversed(hpack["entries"]):     # oldest first: add() prepends
            table.add(bytes(name), bytes(value))
        table.resized = False
        self._buf = bytearray(state["input"])
        self._backlog = bool(self._buf)
