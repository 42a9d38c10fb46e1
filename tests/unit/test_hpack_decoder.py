"""worker/codecs/hpack_decoder.py against the `hpack` library, its oracle: for any blocks and any
table before them, the same fields, the same dynamic table after, and the same errors (as the
codec maps them, h2reader.py: OversizedHeaderListError is ENHANCE_YOUR_CALM, any other hpack
error COMPRESSION_ERROR); and RFC 7541 Appendix C's examples, by hand."""

from __future__ import annotations

import hpack
import pytest
from hpack.exceptions import (HPACKDecodingError, HPACKError, InvalidTableIndex,
                              InvalidTableIndexError, InvalidTableSizeError,
                              OversizedHeaderListError)
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman as hpack_decode_huffman
from hypothesis import HealthCheck, given, settings, strategies as st

from baton.worker.codecs.hpack_decoder import Decoder, decode_huffman

huffman_encode = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode


# -- building blocks byte by byte (RFC 7541 5, 6), including what no encoder sends ---------------

def hpack_int(value: int, bits: int, first: int, redundant: int = 0) -> bytes:
    """`value` with a `bits`-bit prefix under `first`; `redundant` zero groups after its last
    (legal, and what hpack's limit of 5 continuation bytes counts)."""
    limit = (1 << bits) - 1
    if value < limit:
        return bytes((first | value,))
    value -= limit
    groups = []
    while value >= 0x80:
        groups.append(value & 0x7F | 0x80)
        value >>= 7
    groups.append(value)
    if redundant:
        groups[-1] |= 0x80
        groups += [0x80] * (redundant - 1) + [0]
    return bytes((first | limit,)) + bytes(groups)


def string_literal(data: bytes, huffman: bool, length_error: int = 0) -> bytes:
    """A string literal; `length_error` added to its length (a truncated block, or one that
    reads into the next representation)."""
    body = huffman_encode(data) if huffman else data
    return hpack_int(max(len(body) + length_error, 0), 7, 0x80 if huffman else 0) + body


def weighted(*choices):
    """One of the strategies, each drawn about `weight` times in the sum of the weights (most
    blocks must decode, or the property is about errors alone)."""
    return st.sampled_from([strategy for strategy, weight in choices
                            for _ in range(weight)]).flatmap(lambda strategy: strategy)


names = st.sampled_from([b":path", b":authority", b"cookie", b"x-a", b"x-request-id", b""]) | \
    st.binary(max_size=12)
values = st.sampled_from([b"", b"/", b"gzip", b"v" * 100, b"a" * 300]) | st.binary(max_size=30)
strings = st.builds(string_literal, values, st.booleans(),
                    weighted((st.just(0), 30), (st.sampled_from([-1, 1, 3]), 1)))
# Huffman bits of any sort: EOS inside, padding too long or not all ones, or valid.
any_huffman = st.binary(max_size=6).map(lambda body: hpack_int(len(body), 7, 0x80) + body)
string_or_bits = weighted((strings, 15), (any_huffman, 1))
# Mostly fields that exist (static 1-61, dynamic from 62), then index 0, past the table, huge.
indexes = weighted((st.integers(1, 61), 6), (st.integers(62, 70), 3), (st.integers(0, 80), 1),
                   (st.integers(0, 1 << 36), 1))
redundancy = weighted((st.just(0), 12), (st.sampled_from([1, 4, 5, 6]), 1))


@st.composite
def representation(draw) -> bytes:
    kind = draw(st.sampled_from(["indexed"] * 6 + ["literal"] * 8 + ["update", "bytes"]))
    if kind == "indexed":
        return hpack_int(draw(indexes), 7, 0x80, draw(redundancy))
    if kind == "update":
        size = draw(st.integers(min_value=0, max_value=5000) | st.sampled_from([0, 4096, 4097]))
        return hpack_int(size, 5, 0x20, draw(redundancy))
    if kind == "bytes":
        return draw(st.binary(max_size=8))
    first, bits = draw(st.sampled_from([(0x40, 6), (0x00, 4), (0x10, 4)]))
    name = hpack_int(draw(indexes.filter(bool)), bits, first, draw(redundancy)) \
        if draw(st.booleans()) else bytes((first,)) + draw(string_or_bits)
    return name + draw(string_or_bits)


blocks = weighted((st.lists(representation(), max_size=8).map(b"".join), 6),
                  (st.binary(max_size=40), 1))


@st.composite
def table_before(draw) -> tuple:
    """(entries inserted, oldest first; the table's size; the size allowed)."""
    entries = draw(st.lists(st.tuples(names, values), max_size=12))
    return entries, draw(weighted((st.just(4096), 4), (st.sampled_from([0, 32, 100]), 1),
                                  (st.integers(0, 4096), 1))), \
        draw(weighted((st.just(4096), 6), (st.just(100), 1), (st.integers(0, 5000), 1)))


def decoders(table: tuple, cap: int) -> tuple:
    ours, theirs = Decoder(max_header_list_size=cap), hpack.Decoder(max_header_list_size=cap)
    entries, size, allowed = table
    for decoder in (ours, theirs):
        decoder.header_table.maxsize = size
        for name, value in entries:
            decoder.header_table.add(name, value)
        decoder.max_allowed_table_size = allowed
    return ours, theirs


def outcome(decode, block: bytes):
    """The fields, or the error as the codec tells them apart, and its class."""
    try:
        return decode(block, raw=True)
    except OversizedHeaderListError:
        return "ENHANCE_YOUR_CALM", OversizedHeaderListError
    except HPACKError as exc:
        # hpack raises InvalidTableIndex, the deprecated name of InvalidTableIndexError.
        kind = InvalidTableIndexError if type(exc) is InvalidTableIndex else type(exc)
        return "COMPRESSION_ERROR", kind


def table_of(decoder) -> tuple:
    table = decoder.header_table
    return list(table.dynamic_entries), table.maxsize


def check_same(ours, theirs, block: bytes) -> bool:
    """Decode `block` with both: the same outcome and table. Whether it was decoded."""
    expected = outcome(theirs.decode, block)
    assert outcome(ours.decode, block) == expected, block.hex()
    assert table_of(ours) == table_of(theirs), block.hex()
    table = ours.header_table
    assert table.size == sum(32 + len(n) + len(v) for n, v in table.dynamic_entries)
    return expected.__class__ is list


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(blocks, min_size=1, max_size=4), table_before(),
       st.sampled_from([65536, 65536, 200]) | st.integers(0, 2000))
def test_any_blocks_decode_as_hpack_decodes_them(sequence, table, cap):
    """Any bytes as blocks in a row, after any table: indexed fields (index 0, static, dynamic,
    out of range, overlong integers), literals of the three kinds with indexed or literal
    names, raw and Huffman strings (good ones and any bits), size updates anywhere, under
    any size limit and header list cap. Once a block fails, the connection is over: the
    tables are compared after it, and nothing more is decoded."""
    ours, theirs = decoders(table, cap)
    for block in sequence:
        if not check_same(ours, theirs, block):
            break


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(st.tuples(names, values, st.booleans()), max_size=20),
                          st.booleans(), st.none() | st.integers(0, 4096)),
                min_size=1, max_size=5))
def test_what_hpacks_encoder_sends_decodes_as_hpack_decodes_it(sequence):
    """Well-formed blocks as a client sends them: insertions, evictions, size changes."""
    encoder = hpack.Encoder()
    ours, theirs = decoders(([], 4096, 4096), 65536)
    for fields, huffman, size in sequence:
        if size is not None:
            encoder.header_table_size = size
        block = encoder.encode([hpack.NeverIndexedHeaderTuple(n, v) if never else (n, v)
                                for n, v, never in fields], huffman=huffman)
        assert check_same(ours, theirs, block)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=40) | st.binary(max_size=40).map(huffman_encode))
def test_huffman_decoding_is_hpacks(data):
    try:
        expected = hpack_decode_huffman(data)
    except HPACKDecodingError:
        with pytest.raises(HPACKDecodingError):
            decode_huffman(data)
    else:
        assert decode_huffman(data) == expected


# -- RFC 7541 Appendix C ---------------------------------------------------------------------------

REQUESTS = ((b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
            (b":authority", b"www.example.com"))
REQUEST_EXAMPLES = [   # C.3 without Huffman, C.4 with: the same fields and tables
    ("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
     "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
     list(REQUESTS), [(b":authority", b"www.example.com")]),
    ("8286 84be 5808 6e6f 2d63 6163 6865",
     "8286 84be 5886 a8eb 1064 9cbf",
     list(REQUESTS) + [(b"cache-control", b"no-cache")],
     [(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")]),
    ("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
     "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
     [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"),
      (b":authority", b"www.example.com"), (b"custom-key", b"custom-value")],
     [(b"custom-key", b"custom-value"), (b"cache-control", b"no-cache"),
      (b":authority", b"www.example.com")]),
]
DATE_1, DATE_2 = b"Mon, 21 Oct 2013 20:13:21 GMT", b"Mon, 21 Oct 2013 20:13:22 GMT"
LOCATION = (b"location", b"https://www.example.com")
COOKIE = (b"set-cookie", b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")
RESPONSE_EXAMPLES = [  # C.5 without Huffman, C.6 with, a table of 256 bytes: evictions
    ("4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032"
     " 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63"
     " 6f6d",
     "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b"
     " ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
     [(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE_1), LOCATION],
     [LOCATION, (b"date", DATE_1), (b"cache-control", b"private"), (b":status", b"302")]),
    ("4803 3330 37c1 c0bf",
     "4883 640e ffc1 c0bf",
     [(b":status", b"307"), (b"cache-control", b"private"), (b"date", DATE_1), LOCATION],
     [(b":status", b"307"), LOCATION, (b"date", DATE_1), (b"cache-control", b"private")]),
    ("88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0"
     " 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851"
     " 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
     "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad"
     " 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160"
     " 65c0 03ed 4ee5 b106 3d50 07",
     [(b":status", b"200"), (b"cache-control", b"private"), (b"date", DATE_2), LOCATION,
      (b"content-encoding", b"gzip"), COOKIE],
     [COOKIE, (b"content-encoding", b"gzip"), (b"date", DATE_2)]),
]


@pytest.mark.parametrize("examples, table_size", [(REQUEST_EXAMPLES, 4096),
                                                  (RESPONSE_EXAMPLES, 256)])
@pytest.mark.parametrize("huffman", [False, True])
def test_rfc7541_appendix_c(examples, table_size, huffman):
    decoder = Decoder()
    decoder.header_table.maxsize = table_size
    for raw, coded, fields, table in examples:
        block = bytes.fromhex(coded if huffman else raw)
        assert decoder.decode(block) == fields
        assert list(decoder.header_table.dynamic_entries) == table
        assert decoder.header_table.size == sum(32 + len(n) + len(v) for n, v in table)


def test_rfc7541_c2_literals():
    decoder = Decoder()
    assert decoder.decode(bytes.fromhex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d"
                                        " 6865 6164 6572")) == [(b"custom-key", b"custom-header")]
    assert decoder.header_table.size == 55
    fresh = Decoder()
    assert fresh.decode(bytes.fromhex("040c 2f73 616d 706c 652f 7061 7468")) == \
        [(b":path", b"/sample/path")]
    assert fresh.decode(bytes.fromhex("1008 7061 7373 776f 7264 0673 6563 7265 74")) == \
        [(b"password", b"secret")]
    assert fresh.decode(b"\x82") == [(b":method", b"GET")]
    assert not fresh.header_table.dynamic_entries


# -- errors, by hand ---------------------------------------------------------------------------

A = b"\x1f"     # "a" (00011) and three bits of padding, all ones


@pytest.mark.parametrize("block, error", [
    (b"\x80", InvalidTableIndexError),                    # index 0
    (b"\xbe", InvalidTableIndexError),                    # 62: the dynamic table is empty
    (b"\xff\xff\xff\xff\xff\xff\x01", HPACKDecodingError),   # 6 continuation bytes
    (b"\x82\x20", HPACKDecodingError),                    # a size update after a field
    (b"\x3f\xe2\x1f", InvalidTableSizeError),             # 4097, over the 4096 allowed
    (b"\x00\x81\xff\x00", HPACKDecodingError),            # a name of EOS (30 ones) and more
    (b"\x00\x82" + A + b"\xff\x00", HPACKDecodingError),  # "a", then 11 bits of padding
    (b"\x00\x81\x18\x00", HPACKDecodingError),            # "a", then padding 000
    (b"\x00\x81\x1c\x00", HPACKDecodingError),            # "a", then padding 100
    (b"\x00\x85abc", HPACKDecodingError),                 # a name longer than the block
    (b"\x00", HPACKDecodingError),                        # a literal cut after its first byte
    (b"\x00\x01a", HPACKDecodingError),                   # no value
])
def test_malformed_blocks(block, error):
    with pytest.raises(HPACKError) as ours:
        Decoder().decode(block)
    assert type(ours.value) is error
    check_same(Decoder(), hpack.Decoder(), block)      # and hpack refuses it too


def test_what_is_taken_at_the_limits():
    decoder = Decoder()
    assert decoder.decode(b"\x00\x81" + A + b"\x00") == [(b"a", b"")]
    # Five continuation bytes, the last 0: 4096 (hpack's limit, as hpack reads it).
    assert decoder.decode(b"\x3f\xe1\x9f\x80\x80\x00\x82") == [(b":method", b"GET")]
    assert decoder.decode(b"\x20\x3f\xe1\x1f\x82") == [(b":method", b"GET")]   # two updates
    decoder.decode(b"\x40\x01x\x01y")
    assert decoder.decode(b"\xbe") == [(b"x", b"y")]
    with pytest.raises(InvalidTableIndexError):
        decoder.decode(b"\xbf")


def test_a_table_larger_than_allowed_must_shrink_at_the_block_start():
    decoder = Decoder()
    decoder.max_allowed_table_size = 100
    with pytest.raises(InvalidTableSizeError):
        decoder.decode(b"\x82")
    assert decoder.decode(b"\x3f\x45\x82") == [(b":method", b"GET")]      # 31 + 69 = 100
    assert decoder.header_table.maxsize == 100


def test_the_header_list_cap_counts_the_block():
    fields = [(b"x-%d" % i, b"v" * 60) for i in range(10)]
    block = hpack.Encoder().encode(fields, huffman=False)
    listed = sum(32 + len(name) + len(value) for name, value in fields)    # RFC 7541 4.1
    assert Decoder(max_header_list_size=listed).decode(block) == fields
    with pytest.raises(OversizedHeaderListError):
        Decoder(max_header_list_size=listed - 1).decode(block)
