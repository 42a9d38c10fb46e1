"""Envoy's HTTP/2 protections in the lean server codec (h2limits.py, h2server.py), on raw
frames: the flood limits with Envoy 1.40's defaults (each edge measured against a real Envoy
on the same frames), the premature-reset check, the per-turn frame budget, the flow control
that stays linear in streams, and the config fields that set them."""

from __future__ import annotations

import struct

import pytest
from hpack import Encoder

from baton.worker.codecs.events import (HeadersRefused, ProtocolError, RequestHead, StreamReset,
                                        WindowOpen)
from baton.worker.codecs.h2limits import ENVOY_DEFAULTS, RX_MESSAGING_ERROR
from baton.worker.codecs.h2server import HEADERS_COST, LeanHttp2ServerCodec
from baton.worker.codecs.http2 import H2_PREFACE
from baton.worker.codecs.message import Headers, Response
from baton.worker.proxy.http.config import _h2_options
from baton.xds import protos
from baton.xds.http import translate_http_connection_manager
from google.protobuf import json_format

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
GOOD = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.example"),
        (b":path", b"/")]


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">LBL", len(payload) << 8 | kind, flags, stream_id) + payload


def frames_of(data: bytes) -> list:
    out, pos = [], 0
    while pos + 9 <= len(data):
        length_type, flags, stream_id = struct.unpack_from(">LBL", data, pos)
        out.append((length_type & 0xFF, flags, stream_id))
        pos += 9 + (length_type >> 8)
    return out


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Peer:
    """A client on raw frames against a codec with Envoy's limits (as the config builds it)."""

    def __init__(self, **options):
        self.clock = Clock()
        settings = {**_h2_options({}), "frames_per_turn": None, **options}
        self.codec = LeanHttp2ServerCodec(clock=self.clock, **settings)
        self.codec.initiate()
        self.encoder = Encoder()
        self.codec.receive(H2_PREFACE + frame(SETTINGS, 0, 0))
        self.codec.data_to_send()
        self.codec.unsent(0)

    def send(self, data: bytes) -> list:
        return self.codec.receive(data)

    def request(self, stream_id: int, end_stream: bool = True) -> bytes:
        return frame(HEADERS, 0x4 | (0x1 if end_stream else 0), stream_id,
                     self.encoder.encode(GOOD))

    @property
    def flood(self):
        return self.codec.flood


def ended_by(events, codec, stat: str) -> bool:
    return codec.flood == stat and codec.closed and \
        [type(e) for e in events][-1:] == [ProtocolError] and codec.data_to_send() == b""


# -- inbound floods ----------------------------------------------------------------------------

def test_one_empty_data_frame_is_fine_two_in_a_row_end_the_connection():
    peer = Peer()
    peer.send(peer.request(1, end_stream=False))
    assert peer.send(frame(DATA, 0, 1) + frame(DATA, 0x1, 1))       # END_STREAM breaks the run
    peer.send(peer.request(3, end_stream=False))
    events = peer.send(frame(DATA, 0, 3) + frame(DATA, 0, 3))
    assert ended_by(events, peer.codec, "http2.inbound_empty_frames_flood")


def test_empty_continuations_end_the_connection_at_the_second():
    # Envoy 1.40: HEADERS (no END_HEADERS), an empty CONTINUATION and an empty CONTINUATION
    # with END_HEADERS: closed. Other frame types neither count nor break the run.
    peer = Peer()
    block = peer.encoder.encode(GOOD)
    assert peer.send(frame(HEADERS, 0x1, 1, block) + frame(CONTINUATION, 0, 1)) == []
    assert not peer.codec.closed
    events = peer.send(frame(CONTINUATION, 0x4, 1))
    assert ended_by(events, peer.codec, "http2.inbound_empty_frames_flood")


def test_a_payload_breaks_the_run_of_empty_frames_but_a_ping_does_not():
    peer = Peer()
    peer.send(peer.request(1, end_stream=False))
    peer.send(frame(DATA, 0, 1) + frame(DATA, 0, 1, b"x") + frame(DATA, 0, 1))
    assert peer.flood is None
    events = peer.send(frame(PING, 0, 0, b"12345678") + frame(DATA, 0, 1))
    assert ended_by(events, peer.codec, "http2.inbound_empty_frames_flood")


def test_padding_alone_is_an_empty_payload():
    peer = Peer()
    peer.send(peer.request(1, end_stream=False))
    padded = frame(DATA, 0x8, 1, b"\x03\x00\x00\x00")
    events = peer.send(padded + padded)
    assert ended_by(events, peer.codec, "http2.inbound_empty_frames_flood")


def test_priority_frames_limit_grows_with_opened_streams():
    peer = Peer()
    priority = frame(PRIORITY, 0, 1, struct.pack(">LB", 0, 1))
    peer.send(priority * 100)
    assert peer.flood is None                     # 100 * (1 + 0 streams), as Envoy
    events = peer.send(priority)
    assert ended_by(events, peer.codec, "http2.inbound_priority_frames_flood")

    peer = Peer()
    peer.send(peer.request(1))
    peer.send(frame(PRIORITY, 0, 3, struct.pack(">LB", 0, 1)) * 200)
    assert peer.flood is None                     # 100 * (1 + 1 stream)
    events = peer.send(frame(PRIORITY, 0, 3, struct.pack(">LB", 0, 1)))
    assert ended_by(events, peer.codec, "http2.inbound_priority_frames_flood")


def test_window_updates_limit_counts_streams_and_data_frames_sent():
    update = frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 1))
    peer = Peer()
    peer.send(update * 5)                          # Envoy 1.40: 5 pass, the 6th closes
    assert peer.flood is None
    events = peer.send(update)
    assert ended_by(events, peer.codec, "http2.inbound_window_update_frames_flood")

    peer = Peer()
    peer.send(peer.request(1))
    peer.codec.send_head(1, Response(200, Headers([])), False)
    peer.codec.send_body(1, b"x", False)           # one DATA frame sent
    peer.codec.data_to_send()
    allowed = 5 + 2 * (1 + 10 * 1)
    peer.send(update * allowed)
    assert peer.flood is None
    assert ended_by(peer.send(update), peer.codec, "http2.inbound_window_update_frames_flood")


# -- outbound floods ---------------------------------------------------------------------------

def test_pings_whose_acks_are_never_read_end_the_connection():
    peer = Peer()
    ping = frame(PING, 0, 0, b"12345678")
    peer.send(ping * 500)
    out = peer.codec.data_to_send()
    assert len(frames_of(out)) == 500
    peer.codec.unsent(len(out))                  # the transport holds all of it
    peer.send(ping * 500)
    assert peer.flood is None                    # 1000 control frames: the limit itself
    events = peer.send(ping)
    assert ended_by(events, peer.codec, "http2.outbound_control_flood")


def test_acks_that_reached_the_kernel_no_longer_count():
    peer = Peer()
    ping = frame(PING, 0, 0, b"12345678")
    for _ in range(10):                          # 9,000 acks, 900 at a time, each written
        peer.send(ping * 900)
        assert peer.codec.data_to_send() and peer.flood is None
        peer.codec.unsent(0)
    # What the transport still holds counts by whole writes (data_to_send results): one ack
    # of the last write unsent keeps all 900 of it counted.
    peer.send(ping * 900)
    peer.codec.data_to_send()
    peer.codec.unsent(17)
    assert peer.flood is None
    events = peer.send(ping * 101)
    assert ended_by(events, peer.codec, "http2.outbound_control_flood")


def test_all_frames_count_against_max_outbound_frames():
    peer = Peer(max_outbound_frames=100)
    for stream_id in range(1, 100, 2):
        peer.send(peer.request(stream_id))
        peer.codec.send_head(stream_id, Response(200, Headers([])), False)
        peer.codec.send_body(stream_id, b"x", True)
    # 50 HEADERS + 50 DATA queued, then the 101st frame from a response: the manager finds
    # the codec closed, with nothing to send.
    assert peer.flood is None
    peer.send(peer.request(101))
    peer.codec.send_head(101, Response(200, Headers([])), True)
    assert peer.codec.data_to_send() == b""
    assert peer.flood == "http2.outbound_flood" and peer.codec.closed


# -- premature resets --------------------------------------------------------------------------

def rapid_resets(peer: Peer, first: int, count: int) -> list:
    data = bytearray()
    for i in range(count):
        stream_id = first + 2 * i
        data += peer.request(stream_id) + frame(RST_STREAM, 0, stream_id, struct.pack(">L", 8))
    return peer.send(bytes(data))


def test_rapid_reset_closes_the_connection_at_half_of_500():
    peer = Peer()
    rapid_resets(peer, 1, 249)
    assert peer.flood is None
    events = rapid_resets(peer, 499, 1)
    assert ended_by(events, peer.codec, "downstream_rq_too_many_premature_resets")


def test_answered_or_old_streams_are_not_premature():
    peer = Peer()
    for i in range(300):                          # answered before the reset: not premature
        stream_id = 1 + 2 * i
        peer.send(peer.request(stream_id, end_stream=False))
        peer.codec.send_head(stream_id, Response(200, Headers([])), False)
        peer.send(frame(RST_STREAM, 0, stream_id, struct.pack(">L", 8)))
    assert peer.flood is None
    for i in range(300):                          # reset 2 s after it began: not premature
        stream_id = 601 + 2 * i
        peer.send(peer.request(stream_id, end_stream=False))
        peer.clock.now += 2.0
        peer.send(frame(RST_STREAM, 0, stream_id, struct.pack(">L", 8)))
    assert peer.flood is None
    # 600 closed streams: now half of all closed streams must be premature.
    rapid_resets(peer, 1201, 599)
    assert peer.flood is None
    assert rapid_resets(peer, 1201 + 2 * 599, 1)
    assert peer.flood == "downstream_rq_too_many_premature_resets"


def test_streams_answered_in_full_count_as_closed_not_premature():
    peer = Peer()
    for i in range(600):
        stream_id = 1 + 2 * i
        peer.send(peer.request(stream_id))
        peer.codec.send_head(stream_id, Response(200, Headers([])), True)
        peer.codec.data_to_send()
    rapid_resets(peer, 1201, 299)
    assert peer.flood is None                     # 299 of 899 closed: fewer than half


# -- the per-turn budget -----------------------------------------------------------------------

def test_frames_past_the_budget_wait_for_receive_more_in_order():
    peer = Peer(frames_per_turn=4 * HEADERS_COST)      # 4 requests a turn
    data = b"".join(peer.request(1 + 2 * i) for i in range(10))
    events = peer.send(data)
    assert [e.stream_id for e in events] == [1, 3, 5, 7] and peer.codec.backlog
    assert [e.stream_id for e in peer.codec.receive_more()] == [9, 11, 13, 15]
    assert [e.stream_id for e in peer.codec.receive_more()] == [17, 19]
    assert not peer.codec.backlog and peer.codec.receive_more() == []


def test_a_headers_frame_counts_as_several_control_frames():
    """A new stream costs the manager far more than a PING: a turn of the manager's budget
    holds 64 PINGs but 11 new streams, and h2load's 10 requests per read still fit in one."""
    budget = _h2_options({})["frames_per_turn"]
    peer = Peer(frames_per_turn=budget)
    events = peer.send(b"".join(peer.request(1 + 2 * i) for i in range(10)))
    assert len(events) == 10 and not peer.codec.backlog
    events = peer.send(b"".join(peer.request(21 + 2 * i) for i in range(30)))
    assert len(events) == -(-budget // HEADERS_COST) and peer.codec.backlog
    pings = Peer(frames_per_turn=budget)
    pings.send(frame(PING, 0, 0, b"12345678") * 100)
    assert pings.codec.backlog
    assert len(frames_of(pings.codec.data_to_send())) == budget


def test_the_reset_right_behind_the_last_stream_of_a_turn_is_read_in_that_turn():
    """A rapid reset's pairs straddle the budget: the RST_STREAM of the stream whose HEADERS
    spent it is read too (once), so the manager sees the stream reset before its batch ends
    and never sends its request upstream (pool.py, Batches)."""
    peer = Peer(frames_per_turn=2 * HEADERS_COST)       # two new streams a turn
    cancel = struct.pack(">L", 8)
    data = b"".join(peer.request(i) + frame(RST_STREAM, 0, i, cancel) for i in (1, 3, 5))
    events = peer.send(data + frame(RST_STREAM, 0, 3, cancel) * 3)
    assert [(type(e), e.stream_id) for e in events] == [
        (RequestHead, 1), (StreamReset, 1), (RequestHead, 3), (StreamReset, 3)]
    assert peer.codec.backlog           # only one frame past the budget, never a run of them
    assert [(type(e), e.stream_id) for e in peer.codec.receive_more()] == [
        (RequestHead, 5), (StreamReset, 5)]
    pings = Peer(frames_per_turn=2)     # no HEADERS: nothing read past the budget
    pings.send(frame(PING, 0, 0, b"12345678") * 2 + frame(RST_STREAM, 0, 0, cancel))
    assert pings.codec.backlog


def data_bytes(data: bytes) -> dict:
    """Body bytes per stream in what the codec sent, and the streams it ended."""
    sizes, ended, pos = {}, set(), 0
    while pos + 9 <= len(data):
        length_type, flags, stream_id = struct.unpack_from(">LBL", data, pos)
        if length_type & 0xFF == DATA:
            sizes[stream_id] = sizes.get(stream_id, 0) + (length_type >> 8)
            if flags & 0x1:
                ended.add(stream_id)
        pos += 9 + (length_type >> 8)
    return {"sizes": sizes, "ended": ended}


def test_what_a_window_opening_sends_is_bounded_per_turn():
    """A WINDOW_UPDATE that opens the way for every held byte sends at most frames_per_turn
    full DATA frames' worth in its turn; the rest follows turn by turn (backlog)."""
    peer = Peer(frames_per_turn=4)                      # 4 x 16 KiB a turn
    peer.send(frame(SETTINGS, 0, 0, struct.pack(">HL", 0x4, 1 << 20)))
    for stream_id in (1, 3):
        peer.send(peer.request(stream_id))
        peer.codec.send_head(stream_id, Response(200, Headers([])), False)
        peer.codec.send_body(stream_id, b"x" * 200_000, True)
    first = data_bytes(peer.codec.data_to_send())       # the connection's 65,535 bytes
    assert sum(first["sizes"].values()) == 65535
    peer.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 1 << 20)))
    turn = data_bytes(peer.codec.data_to_send())
    assert 0 < sum(turn["sizes"].values()) <= 4 * 16384 and peer.codec.backlog
    total, ended, turns = sum(turn["sizes"].values()), set(), 1
    while peer.codec.backlog:
        peer.codec.receive_more()
        turn = data_bytes(peer.codec.data_to_send())
        assert sum(turn["sizes"].values()) <= 4 * 16384
        total, ended, turns = total + sum(turn["sizes"].values()), ended | turn["ended"], turns + 1
    assert total == 400_000 - 65535 and ended == {1, 3} and turns >= 5
    assert peer.codec.pending(1) == peer.codec.pending(3) == 0


def test_a_settings_frame_walks_the_streams_once_whatever_its_entries():
    """2,730 INITIAL_WINDOW_SIZE entries in one frame, 300 streams: the windows end as the
    last entry says (walking the streams for each entry held the loop 270 ms with 1,000), and
    the frame counts one more against the turn's budget per 2 open streams."""
    peer = Peer(frames_per_turn=64)
    for i in range(300):
        peer.send(peer.request(1 + 2 * i, end_stream=False))
    entries = b"".join(struct.pack(">HL", 0x4, 65535 + (i & 1) * 1000) for i in range(2730))
    peer.send(frame(SETTINGS, 0, 0, entries) + frame(PING, 0, 0, b"12345678"))
    assert peer.codec.backlog                           # the PING waits for the next turn
    peer.codec.send_body(1, b"x" * 70_000, False)
    assert peer.codec.pending(1) == 70_000 - 65535      # the window is the last entry's
    overflow = Peer()
    overflow.send(overflow.request(1, end_stream=False))
    overflow.send(frame(WINDOW_UPDATE, 0, 1, struct.pack(">L", 2**31 - 1 - 65535)))
    events = overflow.send(frame(SETTINGS, 0, 0, struct.pack(">HL", 0x4, 65536)
                                 + struct.pack(">HL", 0x4, 65535)))
    assert overflow.codec.closed and isinstance(events[-1], ProtocolError)


def test_a_header_block_of_many_fields_is_decoded_over_turns():
    """HPACK decodes ~2-3 us a field: a request of 2,000 fields (reset, the connection lives on)
    is decoded a slice a turn (h2slice.py), no slice more than the turn's budget pays for,
    and the frames behind it (the next request, a PING) wait for it, in order."""
    peer = Peer(frames_per_turn=64)
    slices = []
    decode = peer.codec._decoder.decode
    peer.codec._decoder.decode = lambda data, raw: slices.append(decode(data, raw)) or slices[-1]
    fields = GOOD + [(b"x-%d" % i, b"v" * 10) for i in range(2000)]      # ~90 KiB: reset
    data = b""
    for stream_id in (1, 3):
        block = peer.encoder.encode(fields)
        chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)]
        data += frame(HEADERS, 0x1, stream_id, chunks[0]) + b"".join(
            frame(CONTINUATION, 0x4 if i == len(chunks) - 1 else 0, stream_id, chunk)
            for i, chunk in enumerate(chunks[1:], 1))
    events = peer.send(data + frame(PING, 0, 0, b"12345678"))
    turns = [events]
    per_turn = [sum(map(len, slices))]
    while peer.codec.backlog and len(turns) < 100:
        assert frame(PING, 0x1, 0, b"12345678") not in peer.codec.data_to_send()
        turns.append(peer.codec.receive_more())
        per_turn.append(sum(map(len, slices)) - sum(per_turn))
    assert [(type(e).__name__, e.stream_id) for turn in turns for e in turn] == [
        ("HeadersRefused", 1), ("StreamReset", 1), ("HeadersRefused", 3), ("StreamReset", 3)]
    assert frame(PING, 0x1, 0, b"12345678") in peer.codec.data_to_send()
    # A turn decodes what its budget of 64 units pays for (2 fields each), a slice more at
    # most for the block it ends and the next it starts in it.
    assert max(per_turn) <= 2 * 2 * 64 and len(turns) >= 2 * 2004 // (2 * 2 * 64)
    assert [field for fields in slices for field in fields] == fields + fields
    small = Peer(frames_per_turn=64)                    # ordinary requests: HEADERS_COST only
    events = small.send(b"".join(small.request(1 + 2 * i) for i in range(10)))
    assert len(events) == 10 and not small.codec.backlog


def test_a_partial_frame_after_the_budget_waits_for_more_bytes():
    peer = Peer(frames_per_turn=1)
    data = peer.request(1) + peer.request(3)
    assert [e.stream_id for e in peer.send(data[:-3])] == [1]
    assert peer.codec.receive_more() == []
    assert [e.stream_id for e in peer.send(data[-3:])] == [3]


# -- flow control stays linear -----------------------------------------------------------------

def test_connection_window_serves_blocked_streams_round_robin():
    peer = Peer()
    peer.send(frame(SETTINGS, 0, 0, struct.pack(">HL", 0x4, 1_000_000)))  # big stream windows
    peer.send(peer.request(1) + peer.request(3))
    for stream_id in (1, 3):
        peer.codec.send_head(stream_id, Response(200, Headers([])), False)
        peer.codec.send_body(stream_id, b"x" * 40_000, True)
    peer.codec.data_to_send()
    # 65,535 bytes went out (40,000 on 1, 25,535 on 3); 3 waits for the connection window.
    assert peer.codec.pending(1) == 0 and peer.codec.pending(3) == 14_465
    events = peer.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 10_000)))
    assert [(type(e), e.stream_id) for e in events] == [(WindowOpen, 3)]
    assert peer.codec.pending(3) == 4_465


def test_streams_waiting_for_their_own_window_cost_nothing_on_a_connection_update():
    peer = Peer()
    peer.send(frame(SETTINGS, 0, 0, struct.pack(">HL", 0x4, 0)))           # stream windows 0
    for i in range(1000):
        stream_id = 1 + 2 * i
        peer.send(peer.request(stream_id))
        peer.codec.send_head(stream_id, Response(200, Headers([])), False)
        peer.codec.send_body(stream_id, b"x" * 10, True)
    assert not peer.codec._conn_blocked          # none is waiting for the connection
    events = peer.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 1)))
    assert events == []
    events = peer.send(frame(WINDOW_UPDATE, 0, 7, struct.pack(">L", 100)))
    assert [(type(e), e.stream_id) for e in events] == [(WindowOpen, 7)]


# -- malformed requests ------------------------------------------------------------------------

BAD = GOOD + [(b"connection", b"close")]


def test_a_malformed_request_ends_the_connection_by_default_without_a_goaway():
    # As Envoy 1.40 (tests/integration/test_differential_http2_codec.py): what was queued
    # before the request still goes out (a PING's ack here), then the connection closes.
    # The request counts as one reset (the manager counts what HeadersRefused names).
    peer = Peer()
    events = peer.send(frame(PING, 0, 0, b"12345678") +
                       frame(HEADERS, 0x5, 1, peer.encoder.encode(BAD)))
    assert [type(e) for e in events] == [HeadersRefused, ProtocolError] and peer.codec.closed
    assert (events[0].stream_id, events[0].stat) == (1, RX_MESSAGING_ERROR)
    assert [kind for kind, _, _ in frames_of(peer.codec.data_to_send())] == [PING]


@pytest.mark.parametrize("acked", [False, True])
def test_a_stream_past_max_concurrent_streams_is_refused_until_our_settings_are_acked(acked):
    # As Envoy's codec (tests/integration/test_differential_http2_codec.py).
    peer = Peer(max_concurrent_streams=2)
    if acked:
        peer.send(frame(SETTINGS, 0x1, 0))
    events = peer.send(peer.request(1, False) + peer.request(3, False) + peer.request(5, False))
    out = frames_of(peer.codec.data_to_send())
    if acked:
        assert [type(e) for e in events] == [RequestHead, RequestHead, ProtocolError]
        assert peer.codec.closed and out == []
    else:
        assert [type(e) for e in events] == [RequestHead, RequestHead]
        assert out == [(RST_STREAM, 0, 5)] and not peer.codec.closed
        assert peer.codec._counters["http2.stream_refused_errors"] == 1


def test_override_stream_error_resets_only_the_stream():
    peer = Peer(stream_error_on_invalid_http_message=True)
    events = peer.send(frame(HEADERS, 0x5, 1, peer.encoder.encode(BAD)))
    assert [(type(e), e.stream_id) for e in events] == [(StreamReset, 1)]
    assert [type(e) for e in peer.send(peer.request(3))] == [RequestHead]


# -- the config --------------------------------------------------------------------------------

def translate(http2: dict):
    pb = json_format.ParseDict({"stat_prefix": "in", "http2_protocol_options": http2,
                                "route_config": {"name": "r"}},
                               protos.HttpConnectionManager())
    errors: list = []
    return translate_http_connection_manager(pb, "hcm", errors), errors


def test_every_field_reaches_the_codec():
    hcm, errors = translate({
        "max_concurrent_streams": 10, "initial_stream_window_size": 70000,
        "initial_connection_window_size": 80000, "max_outbound_frames": 7,
        "max_outbound_control_frames": 6,
        "max_consecutive_inbound_frames_with_empty_payload": 5,
        "max_inbound_priority_frames_per_stream": 4,
        "max_inbound_window_update_frames_per_data_frame_sent": 3,
        "override_stream_error_on_invalid_http_message": True})
    assert errors == []
    options = _h2_options(hcm["http2"])
    assert options["max_concurrent_streams"] == 10 and options["initial_stream_window"] == 70000
    assert options["initial_connection_window"] == 80000
    assert options["max_outbound_frames"] == 7 and options["max_outbound_control_frames"] == 6
    assert options["max_consecutive_inbound_frames_with_empty_payload"] == 5
    assert options["max_inbound_priority_frames_per_stream"] == 4
    assert options["max_inbound_window_update_frames_per_data_frame_sent"] == 3
    assert options["stream_error_on_invalid_http_message"] is True
    codec = LeanHttp2ServerCodec(**options)
    codec.initiate()
    assert codec.data_to_send()


def test_defaults_are_envoys():
    hcm, errors = translate({})
    options = _h2_options(hcm["http2"])
    for key, value in ENVOY_DEFAULTS.items():
        assert options[key] == value
    assert options["stream_error_on_invalid_http_message"] is False
    codec = LeanHttp2ServerCodec(**options)
    codec.initiate()
    settings = dict(struct.unpack_from(">HL", out, 9 + i) for out in [codec.data_to_send()]
                    for i in range(0, 24, 6))
    assert settings[0x3] == 1024 and settings[0x4] == 16 * 1024 * 1024


@pytest.mark.parametrize("field", ["max_outbound_frames", "max_outbound_control_frames",
                                   "max_inbound_window_update_frames_per_data_frame_sent"])
def test_zero_is_refused_where_envoy_refuses_it(field):
    _, errors = translate({field: 0})
    assert errors == [f"hcm.http2_protocol_options.{field}: must be at least 1"]


# -- the connection manager reads a backlog one turn at a time -------------------------------

class FakeTransport:
    def __init__(self):
        self.paused = False
        self.written = bytearray()

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False

    def write(self, data):
        self.written += data

    def get_write_buffer_size(self):
        return 0


class FakeLoop:
    def __init__(self):
        self.soon = []

    def call_soon(self, callback, *args):
        self.soon.append(callback)
        return callback

    def turn(self):
        ready, self.soon = self.soon, []
        for callback in ready:
            callback()


def test_the_manager_reads_64_frames_per_turn_and_pauses_reading_meanwhile():
    from collections import deque
    from types import SimpleNamespace

    from baton.worker.proxy.http.connection_manager import HttpConnection

    conn = HttpConnection.__new__(HttpConnection)      # only what reading frames touches
    conn.transport, conn.loop = FakeTransport(), FakeLoop()
    conn.hcm = SimpleNamespace(request_headers_timeout=None, stream_idle_timeout=0)
    conn.codec = LeanHttp2ServerCodec(**_h2_options({}))
    conn.codec.initiate()
    conn.closed, conn.initial, conn.active, conn.streams = False, None, None, {}
    conn.queued, conn.dirty, conn.backlog, conn.read_pauses = deque(), False, None, 0
    conn.hold_timer = None                              # no move waiting (h2move.py)
    ping = frame(PING, 0, 0, b"12345678")
    conn.data_received(H2_PREFACE + frame(SETTINGS, 0, 0) + ping * 200)
    turns = [len([f for f in frames_of(bytes(conn.transport.written)) if f[0] == PING])]
    while conn.loop.soon:
        assert conn.transport.paused            # the rest waits: nothing more is read
        conn.transport.written.clear()
        conn.loop.turn()
        turns.append(len(frames_of(bytes(conn.transport.written))))
    assert turns == [63, 64, 64, 9]             # 64 frames a turn (the first: preface SETTINGS)
    assert not conn.transport.paused and conn.read_pauses == 0
