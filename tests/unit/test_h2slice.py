"""worker/codecs/h2slice.py: a header block decoded in slices gives what one decode() of the
whole block gives (fields, dynamic table, errors), whatever the slices, the fields and the
table size."""

from __future__ import annotations

import struct

import pytest
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKDecodingError, HPACKError, OversizedHeaderListError
from hypothesis import HealthCheck, given, settings, strategies as st

from baton.worker.codecs.h2server import LeanHttp2ServerCodec
from baton.worker.codecs.h2slice import SlicedBlock, slice_end
from baton.worker.codecs.http2 import H2_PREFACE

CAP = 256 * 1024

names = st.binary(min_size=1, max_size=40) | st.sampled_from(
    [b":path", b"cookie", b"user-agent", b"x-a", b"accept"])
values = st.binary(max_size=300) | st.sampled_from([b"", b"v", b"/", b"gzip"])
field = st.tuples(names, values, st.booleans())     # the last: never indexed
header_lists = st.lists(field, min_size=0, max_size=60)
allowances = st.lists(st.integers(min_value=-3, max_value=40), min_size=1, max_size=20)


def sliced_decode(decoder: Decoder, block: bytes, allowances: list, cap: int = CAP) -> list:
    sliced = SlicedBlock(block, cap, 1, True, False, None)
    turn = 0
    while not sliced.done:
        sliced.step(decoder, allowances[turn % len(allowances)])
        turn += 1
    return sliced.fields


def outcome(decode):
    """The fields, or the exception's class (a decode error is an HPACK error either way)."""
    try:
        return decode()
    except OversizedHeaderListError:
        return OversizedHeaderListError
    except HPACKError:
        return HPACKError


def table(decoder: Decoder) -> tuple:
    return list(decoder.header_table.dynamic_entries), decoder.header_table.maxsize


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(header_lists, st.booleans(),
                          st.none() | st.integers(min_value=0, max_value=4096)),
                min_size=1, max_size=4),
       allowances)
def test_sliced_decode_is_whole_decode(blocks, allowances):
    """Blocks in a row on one connection (Huffman or not, table size updates at their start):
    every block's fields and the table after it are the same, sliced or whole."""
    encoder, whole, sliced = Encoder(), Decoder(max_header_list_size=CAP), Decoder()
    for headers, huffman, table_size in blocks:
        if table_size is not None:
            encoder.header_table_size = table_size
        block = encoder.encode([NeverIndexedHeaderTuple(n, v) if never else (n, v)
                                for n, v, never in headers], huffman=huffman)
        expected = whole.decode(block, raw=True)
        assert sliced_decode(sliced, block, allowances) == expected
        assert table(sliced) == table(whole)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), allowances, st.integers(min_value=40, max_value=2000))
def test_sliced_decode_of_any_bytes_is_whole_decode(block, allowances, cap):
    """Malformed blocks too: the same error (decoding, or over the decoded size cap) or the
    same fields, and the same table."""
    whole, sliced = Decoder(max_header_list_size=cap), Decoder(max_header_list_size=cap)
    expected = outcome(lambda: whole.decode(block, raw=True))
    got = outcome(lambda: sliced_decode(sliced, block, allowances, cap))
    assert got == expected
    if expected is not HPACKError and expected is not OversizedHeaderListError:
        assert table(sliced) == table(whole)


def test_a_table_size_update_after_a_field_is_refused_in_a_later_slice():
    """RFC 7541 4.2: only at the start of a block. decode() of the second slice alone would
    take it; the slices do not."""
    block = b"\x82" + b"\x3f\x01"          # :method GET, then a size update to 32
    assert outcome(lambda: Decoder().decode(block, raw=True)) is HPACKError
    decoder = Decoder()
    sliced = SlicedBlock(block, CAP, 1, True, False, None)
    sliced.step(decoder, 1)
    assert sliced.pos == 1
    with pytest.raises(HPACKDecodingError):
        sliced.step(decoder, 1)
    assert decoder.header_table.maxsize == 4096
    start = SlicedBlock(b"\x3f\x01\x82", CAP, 1, True, False, None)     # at the start: fine
    fresh = Decoder()
    start.step(fresh, 1)            # the update (charged as a field)
    start.step(fresh, 1)
    assert start.done and start.fields == [(b":method", b"GET")]
    assert fresh.header_table.maxsize == 32


def test_the_decoded_size_cap_counts_the_whole_block():
    fields = [(b"x-%d" % i, b"v" * 60) for i in range(20)]     # 20 x (~64 + 32) bytes
    block = Encoder().encode(fields, huffman=False)
    with pytest.raises(OversizedHeaderListError):
        sliced_decode(Decoder(), block, [1], cap=1000)
    assert sliced_decode(Decoder(), block, [1], cap=2000) == fields


def test_a_slice_ends_on_a_field_boundary_and_takes_one_field_at_least():
    block = Encoder().encode([(b"a", b"1"), (b"bb", b"22"), (b"ccc", b"333")], huffman=False)
    ends = []
    pos = 0
    while pos < len(block):
        pos, cost = slice_end(block, pos, 0, False)
        assert cost == 1
        ends.append(pos)
    assert len(ends) == 3 and ends[-1] == len(block)
    assert slice_end(block, 0, 100, False) == (len(block), 3)


def test_table_size_updates_are_charged_like_fields():
    """Updates are legal until the first field, so a block may be almost all of them: each
    is paid for, and such a block is decoded over many slices (it was one)."""
    block = b"\x20" * 10_000 + b"\x82"       # size 0, ten thousand times, then :method GET
    assert slice_end(block, 0, 64, False) == (64, 64)
    decoder = Decoder()
    sliced = SlicedBlock(block, CAP, 1, True, False, None)
    steps = 0
    while not sliced.done:
        sliced.step(decoder, 64)
        steps += 1
    assert steps >= 10_000 // 64 and sliced.fields == [(b":method", b"GET")]
    assert sliced.fields == Decoder().decode(block, raw=True)


# -- through the codec: a connection with a turn budget (big blocks in slices) answers as one
# without (every block whole) -------------------------------------------------------------------

def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">LBL", len(payload) << 8 | kind, flags, stream_id) + payload


def _block_frames(stream_id: int, block: bytes, end_stream: bool) -> bytes:
    chunks = [block[i:i + 16384] for i in range(0, len(block), 16384)] or [b""]
    return _frame(1, (0x1 if end_stream else 0) | (0x4 if len(chunks) == 1 else 0), stream_id,
                  chunks[0]) + b"".join(
        _frame(9, 0x4 if i == len(chunks) - 1 else 0, stream_id, chunk)
        for i, chunk in enumerate(chunks[1:], 1))


def _conversation(codec, data: bytes) -> tuple[list, bytes]:
    codec.initiate()
    events = codec.receive(H2_PREFACE + _frame(4, 0, 0) + data)
    turns = 0
    while codec.backlog and turns < 10_000:
        events += codec.receive_more()
        turns += 1
    return [_event(e) for e in events], codec.data_to_send()


def _event(event) -> tuple:
    names = getattr(event, "__slots__", None) or sorted(vars(event))
    return (type(event).__name__,) + tuple(repr(getattr(event, name)) for name in names)


regular_fields = st.lists(st.tuples(
    st.sampled_from([b"x-a", b"x-b", b"cookie", b"accept", b"te", b"X-Upper", b"connection",
                     b":path", b"host", b"content-length"]),
    st.sampled_from([b"1", b"v" * 40, b"trailers", b"", b" x", b"gzip"])), max_size=300)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(regular_fields, regular_fields, st.booleans(), st.integers(min_value=1, max_value=80),
       st.integers(min_value=0, max_value=400))
def test_a_codec_with_a_turn_budget_answers_as_one_without(fields, trailer_fields, with_trailers,
                                                          budget, padding):
    """A request (and its trailers) of any fields, malformed or not, big or not (`padding`
    good fields before them), then a PING: the same events, in the same order, and the same
    bytes out, sliced or whole."""
    encoder = Encoder()
    pad = [(b"x-p%d" % i, b"v" * 8) for i in range(padding)]
    head = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a"),
            (b":path", b"/")] + pad + fields
    trailer_fields = pad + trailer_fields
    data = _block_frames(1, encoder.encode(head), not with_trailers)
    if with_trailers:
        data += _frame(0, 0, 1, b"body") + _block_frames(1, encoder.encode(trailer_fields), True)
    data += _block_frames(3, encoder.encode(head[:4]), True) + _frame(6, 0, 0, b"12345678")
    whole = _conversation(LeanHttp2ServerCodec(), data)
    sliced = _conversation(LeanHttp2ServerCodec(frames_per_turn=budget), data)
    assert sliced == whole


def test_a_string_literal_over_65536_bytes_is_refused_after_the_fields_before_it():
    """Envoy 1.40 (nghttp2) answers GOAWAY(COMPRESSION_ERROR) to a 65,537-byte literal and
    takes a 65,536-byte one; per string, not per field."""
    encoder = Encoder()
    ok = encoder.encode([(b"x-a", b"1"), (b"x-big", b"v" * 65536)], huffman=False)
    assert sliced_decode(Decoder(), ok, [10]) == [(b"x-a", b"1"), (b"x-big", b"v" * 65536)]
    pair = Encoder().encode([(b"n" * 40000, b"v" * 40000)], huffman=False)
    assert sliced_decode(Decoder(), pair, [10]) == [(b"n" * 40000, b"v" * 40000)]
    too_long = Encoder().encode([(b"x-a", b"1"), (b"x-big", b"v" * 65537)], huffman=False)
    decoder = Decoder()
    sliced = SlicedBlock(too_long, CAP, 1, True, False, None)
    sliced.step(decoder, 10)
    assert sliced.fields == [(b"x-a", b"1")]      # decoded first, as decode() would
    with pytest.raises(HPACKDecodingError):
        sliced.step(decoder, 10)


def test_the_codec_ends_the_connection_on_a_string_literal_over_65536_bytes():
    for size, closed in ((65536, False), (65537, True)):
        codec = LeanHttp2ServerCodec(frames_per_turn=64)
        block = Encoder().encode([(b":method", b"GET"), (b":scheme", b"http"),
                                  (b":authority", b"a"), (b":path", b"/"),
                                  (b"x-big", b"v" * size)], huffman=False)
        events, out = _conversation(codec, _block_frames(1, block, True))
        # COMPRESSION_ERROR; stream 1 counts as processed (its HEADERS came), as in Envoy
        goaway = _frame(7, 0, 0, struct.pack(">LL", 1, 9))
        assert codec.closed == closed and (goaway in out) == closed, (size, events)
        if not closed:
            assert events[0][0] == "HeadersRefused" and \
                "'http2.header_list_size_too_large'" in events[0]   # reset; the connection lives
