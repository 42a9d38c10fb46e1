"""Envoy's protections of an HTTP/2 server connection against a hostile client, sans-IO: the
frame-flood limits of `http2_protocol_options` (Envoy's ProtocolConstraints, codec_impl.cc)
and the premature-reset check of the connection manager (CVE-2023-44487, "rapid reset").

The lean server codec (h2server.py) feeds a `FloodGuard` what it reads and queues, and asks it
whether a limit is crossed; a crossed limit names the Envoy stat to count, and the connection
is closed at once, as Envoy closes it (no GOAWAY: the peer is either not reading, or flooding).

Rules, as measured against Envoy 1.40 on the same frames (see tests/unit/test_h2_protections.py):

- outbound: frames queued for the peer but not yet handed to the kernel (our output queue plus
  what the transport still buffers) may not exceed `max_outbound_frames`; PING, SETTINGS and
  RST_STREAM among them not `max_outbound_control_frames`. A client that never reads while it
  makes us answer (PING acks, SETTINGS acks, resets) is the flood.
- inbound, empty frames: more than `max_consecutive_inbound_frames_with_empty_payload` DATA,
  HEADERS or CONTINUATION frames in a row with no payload (padding excluded) and no END_STREAM.
  Frames of other types neither count nor break the run.
- inbound PRIORITY: more than `max_inbound_priority_frames_per_stream * (1 + opened streams)`
  over the connection's life.
- inbound WINDOW_UPDATE: more than `5 + 2 * (opened streams +
  max_inbound_window_update_frames_per_data_frame_sent * DATA frames sent)` over its life.
- premature resets (runtime `overload.premature_reset_total_stream_count`, 500, and
  `overload.premature_reset_min_stream_lifetime_seconds`, 1): a stream is premature when it
  ends, by a reset, before any response head went out and while its age in whole seconds is
  not above the minimum lifetime. Among the first `total` closed streams, `total / 2` premature
  ones close the connection; past `total` closed streams, half of them being premature does.

A limit of None is off: the codec built without options protects nothing (its unit tests and
its differential fuzzing against h2 run on bare RFC 9113); the config (xds/http.py) always
passes Envoy's defaults.
"""

from __future__ import annotations

import struct
from collections import deque

# Envoy's stat names (root scope, as Envoy's HTTP/2 codec stats are), and the connection
# manager's own (prefixed by `http.<stat_prefix>.` by the manager).
OUTBOUND_FLOOD = "http2.outbound_flood"
OUTBOUND_CONTROL_FLOOD = "http2.outbound_control_flood"
INBOUND_EMPTY_FRAMES_FLOOD = "http2.inbound_empty_frames_flood"
INBOUND_PRIORITY_FRAMES_FLOOD = "http2.inbound_priority_frames_flood"
INBOUND_WINDOW_UPDATE_FRAMES_FLOOD = "http2.inbound_window_update_frames_flood"
TOO_MANY_PREMATURE_RESETS = "downstream_rq_too_many_premature_resets"
# A request over max_headers_count / max_request_headers_kb: its stream is reset.
HEADER_OVERFLOW = "http2.header_overflow"
HEADER_LIST_SIZE_TOO_LARGE = "http2.header_list_size_too_large"
# Counted by the codec itself, as Envoy's codec (source/common/http/http2/codec_impl.cc) counts
# them: every RST_STREAM sent (onFrameSend); one received on an open stream (onFrameReceived);
# a HEADERS frame on an open stream, counted before its block is decoded (trailers); a
# malformed request (RFC 9113 8.1.1; nghttp2's HTTP messaging errors, onInvalidFrame); a
# stream refused past max_concurrent_streams before our SETTINGS were acknowledged.
TX_RESET = "http2.tx_reset"
RX_RESET = "http2.rx_reset"
TRAILERS = "http2.trailers"
RX_MESSAGING_ERROR = "http2.rx_messaging_error"
STREAM_REFUSED_ERRORS = "http2.stream_refused_errors"
CODEC_STATS = (OUTBOUND_FLOOD, OUTBOUND_CONTROL_FLOOD, INBOUND_EMPTY_FRAMES_FLOOD,
               INBOUND_PRIORITY_FRAMES_FLOOD, INBOUND_WINDOW_UPDATE_FRAMES_FLOOD,
               HEADER_OVERFLOW, HEADER_LIST_SIZE_TOO_LARGE, TX_RESET, RX_RESET, TRAILERS,
               RX_MESSAGING_ERROR, STREAM_REFUSED_ERRORS)

# Envoy 1.40's defaults (Http2ProtocolOptions; runtime overload.premature_reset_*).
ENVOY_DEFAULTS = {
    "max_outbound_frames": 10000,
    "max_outbound_control_frames": 1000,
    "max_consecutive_inbound_frames_with_empty_payload": 1,
    "max_inbound_priority_frames_per_stream": 100,
    "max_inbound_window_update_frames_per_data_frame_sent": 10,
    "premature_reset_min_stream_lifetime": 1,
    "premature_reset_total_stream_count": 500,
}

_PING, _SETTINGS, _RST_STREAM, _DATA = 6, 4, 3, 0
_CONTROL = frozenset((_PING, _SETTINGS, _RST_STREAM))
_frame_head = struct.Struct(">LB").unpack_from     # (length << 8 | type), flags


class Flood(Exception):
    """A limit was crossed: `stat` names the counter; the connection ends without a word."""

    def __init__(self, stat: str, reason: str):
        super().__init__(reason)
        self.stat = stat
        self.reason = reason


class FloodGuard:
    """One connection's counters and Envoy's rules over them (see the module's docstring)."""

    __slots__ = ("max_outbound", "max_control", "max_empty", "max_priority",
                 "max_window_updates", "min_lifetime", "reset_total", "queued", "queued_control",
                 "in_flight", "in_flight_control", "chunks", "handed", "data_frames",
                 "opened_streams", "empty_run", "priority_frames", "window_updates",
                 "closed_streams", "premature")

    def __init__(self, max_outbound_frames=None, max_outbound_control_frames=None,
                 max_consecutive_inbound_frames_with_empty_payload=None,
                 max_inbound_priority_frames_per_stream=None,
                 max_inbound_window_update_frames_per_data_frame_sent=None,
                 premature_reset_min_stream_lifetime=None,
                 premature_reset_total_stream_count=None):
        self.max_outbound = max_outbound_frames
        self.max_control = max_outbound_control_frames
        self.max_empty = max_consecutive_inbound_frames_with_empty_payload
        self.max_priority = max_inbound_priority_frames_per_stream
        self.max_window_updates = max_inbound_window_update_frames_per_data_frame_sent
        self.min_lifetime = premature_reset_min_stream_lifetime
        self.reset_total = premature_reset_total_stream_count
        self.queued = self.queued_control = 0          # in the codec's output queue
        self.in_flight = self.in_flight_control = 0    # handed out, still in the transport
        self.chunks: deque = deque()      # (end offset in `handed`, frames, control frames)
        self.handed = 0                   # bytes handed out so far
        self.data_frames = 0              # DATA frames sent, over the connection's life
        self.opened_streams = 0
        self.empty_run = 0
        self.priority_frames = 0
        self.window_updates = 0
        self.closed_streams = 0
        self.premature = 0

    @property
    def tracks_lifetimes(self) -> bool:
        return self.reset_total is not None

    _LIFETIME = ("data_frames", "opened_streams", "priority_frames", "window_updates",
                 "closed_streams", "premature", "empty_run")

    def lifetime_counts(self) -> list:
        """What the inbound checks count over the connection's life, for the process it
        moves to (h2server.py export_state); the outbound queue counts are empty then."""
        return [getattr(self, name) for name in self._LIFETIME]

    def continue_counts(self, counts) -> None:
        for name, value in zip(self._LIFETIME, counts):
            setattr(self, name, value)

    # -- outbound ---------------------------------------------------------------------------

    def count_queued(self, out, start: int) -> None:
        """Count the frames appended to the output queue `out` from offset `start` on. (The
        codec counts the frames of a plain response itself as it queues them, and comes here
        only for the rest: a walk of the queue costs more than the response's own frames.)"""
        size = len(out)
        pos = start
        frames = control = data = 0
        while pos < size:
            length_type, _ = _frame_head(out, pos)
            kind = length_type & 0xFF
            frames += 1
            if kind == _DATA:
                data += 1
            elif kind in _CONTROL:
                control += 1
            pos += 9 + (length_type >> 8)
        self.queued += frames
        self.queued_control += control
        self.data_frames += data

    def settle(self, out, start: int) -> None:
        """count_queued(out, start), then every limit that what we queue or what the peer
        reset can cross (raises Flood): the codec's one call at the end of a receive()."""
        if len(out) > start:
            self.count_queued(out, start)
        if self.max_outbound is not None and \
                self.queued + self.in_flight > self.max_outbound:
            raise Flood(OUTBOUND_FLOOD, "too many frames in the outbound queue")
        if self.max_control is not None and \
                self.queued_control + self.in_flight_control > self.max_control:
            raise Flood(OUTBOUND_CONTROL_FLOOD, "too many control frames in the outbound queue")
        if self.premature:
            self.check_resets()

    def hand_out(self, out, start: int) -> None:
        """settle(out, start), then the whole queue went to the transport (handed_out), in
        one call: the codec makes it for every batch of responses."""
        size = len(out)
        if size > start:
            self.count_queued(out, start)
        queued, control = self.queued, self.queued_control
        in_flight = self.in_flight + queued
        in_flight_control = self.in_flight_control + control
        if self.max_outbound is not None and in_flight > self.max_outbound:
            raise Flood(OUTBOUND_FLOOD, "too many frames in the outbound queue")
        if self.max_control is not None and in_flight_control > self.max_control:
            raise Flood(OUTBOUND_CONTROL_FLOOD, "too many control frames in the outbound queue")
        if self.premature:
            self.check_resets()
        self.handed += size
        self.chunks.append((self.handed, queued, control))
        self.in_flight = in_flight
        self.in_flight_control = in_flight_control
        self.queued = self.queued_control = 0

    def handed_out(self, size: int) -> None:
        """The whole queue (`size` bytes) went to the transport."""
        self.handed += size
        self.chunks.append((self.handed, self.queued, self.queued_control))
        self.in_flight += self.queued
        self.in_flight_control += self.queued_control
        self.queued = self.queued_control = 0

    def unsent(self, buffered: int) -> None:
        """The transport still holds `buffered` bytes of what was handed out: the chunks
        before them reached the kernel and no longer count."""
        chunks = self.chunks
        if not buffered:
            # Everything reached the kernel (the usual case): nothing is in flight.
            if chunks:
                chunks.clear()
                self.in_flight = self.in_flight_control = 0
            return
        delivered = self.handed - buffered
        while chunks and chunks[0][0] <= delivered:
            _, frames, control = chunks.popleft()
            self.in_flight -= frames
            self.in_flight_control -= control

    # -- inbound ----------------------------------------------------------------------------

    def payload_frame(self, empty: bool) -> None:
        """A DATA, HEADERS or CONTINUATION frame; `empty`: no payload and no END_STREAM."""
        if not empty:
            self.empty_run = 0
            return
        self.empty_run += 1
        if self.max_empty is not None and self.empty_run > self.max_empty:
            raise Flood(INBOUND_EMPTY_FRAMES_FLOOD,
                        "too many consecutive frames with an empty payload")

    def priority_frame(self) -> None:
        self.priority_frames += 1
        if self.max_priority is not None and \
                self.priority_frames > self.max_priority * (1 + self.opened_streams):
            raise Flood(INBOUND_PRIORITY_FRAMES_FLOOD, "too many PRIORITY frames")

    def window_update_frame(self) -> None:
        self.window_updates += 1
        limit = self.max_window_updates
        if limit is not None and self.window_updates > \
                5 + 2 * (self.opened_streams + limit * self.data_frames):
            raise Flood(INBOUND_WINDOW_UPDATE_FRAMES_FLOOD, "too many WINDOW_UPDATE frames")

    # -- premature resets -------------------------------------------------------------------

    def stream_closed(self, premature: bool) -> None:
        self.closed_streams += 1
        if premature:
            self.premature += 1

    def is_premature(self, age: float, answered: bool) -> bool:
        # Envoy compares the age truncated to whole seconds, and only streams never answered
        # (no response code) count.
        return not answered and int(age) <= self.min_lifetime

    def check_resets(self) -> None:
        total = self.reset_total
        if total is None or not self.premature:
            return
        if self.closed_streams < total:
            # Even if every later stream were good, the connection would be closed once it
            # reached `total`: close it now.
            tripped = self.premature * 2 >= total
        else:
            tripped = self.premature * 2 >= self.closed_streams
        if tripped:
            raise Flood(TOO_MANY_PREMATURE_RESETS, "too many premature resets")
