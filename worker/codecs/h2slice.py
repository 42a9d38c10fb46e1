"""A big HPACK header block decoded a slice at a time, over several turns of the event loop
(issue 13: the `hpack` library took ~2 us a field and ~0.12 us a Huffman-coded byte, so a
block of 5,000 fields held the loop 15-23 ms in one `decode()` call; hpack_decoder.py, which
replaced it, is several times cheaper, and the slices are kept as they were).

Rules of this file:
- A slice always ends on a field boundary. The boundaries are found by reading only each
  representation's first byte, its integers and its string lengths (RFC 7541 6); nothing is
  decoded here, so the scan costs a fraction of the decoding.
- Each slice goes to the connection's own decoder (hpack_decoder.py's, or an
  `hpack.Decoder`: the same decode()), in order, so its dynamic table is
  exactly what one `decode()` of the whole block would leave, field by field.
- What one `decode()` call checks for its whole input holds across the slices too:
  - a dynamic table size update is accepted only before the block's first field (RFC 7541
    4.2); the scan refuses one that follows a field of an earlier slice, which `decode()` of
    that later slice alone would take;
  - the decoded size cap (`max_header_list_size`) counts the whole block: each slice is
    decoded with what the earlier ones left of it.
  Errors are the library's own exceptions, so the codec answers as for a whole block.
- A malformed representation (truncated integer or string) ends the slice at the block's
  end: the library then decodes up to it and raises its own error.
- A string literal longer than 65,536 bytes on the wire is a decoding error (the connection's
  COMPRESSION_ERROR), as in Envoy 1.40 (nghttp2's NGHTTP2_HD_MAX_NV, per string: a 65,537-byte
  value is GOAWAY(COMPRESSION_ERROR), a 65,536-byte one or a 40,000-byte name with a
  40,000-byte value only too large; probed on this machine). It also bounds what the one
  indivisible field can cost: ~8 ms of Huffman decoding at most, not the whole block's.
- Cost, in field units (about 2 us each): 1 a field, 1 more per 16 Huffman-coded bytes.
  A slice takes fields until it has spent `allowance`, and always at least one field (a
  single field is not divisible: its cost is bounded only by the block's size).
"""

from __future__ import annotations

from hpack.exceptions import HPACKDecodingError

__all__ = ["SlicedBlock", "slice_end"]

_HUFFMAN_BYTES_PER_FIELD = 16       # Huffman bytes that cost about as much as one field
MAX_STRING = 65536                  # the longest string literal taken (see the rules above)


class _TooLong(Exception):
    pass


def _skip_int(block: bytes, pos: int, mask: int) -> int:
    """The position after an HPACK integer whose prefix is `block[pos] & mask`."""
    if block[pos] & mask != mask:
        return pos + 1
    pos += 1
    while block[pos] & 0x80:
        pos += 1
    return pos + 1


def _string(block: bytes, pos: int) -> tuple[int, int]:
    """(the position after an HPACK string literal at `pos`, its Huffman-coded byte count)."""
    first = block[pos]
    length = first & 0x7F
    pos += 1
    if length == 0x7F:
        shift = 0
        while True:
            byte = block[pos]
            pos += 1
            length += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
    if length > MAX_STRING:
        raise _TooLong
    end = pos + length
    if end > len(block):
        raise IndexError
    return end, length if first & 0x80 else 0


def slice_end(block: bytes, pos: int, allowance: int, fields_before: bool) -> tuple[int, int]:
    """(end, cost): the slice of `block` from `pos` (a field boundary) holding as many whole
    fields as `allowance` field units pay for, at least one. `fields_before`: the block
    already had a field (a table size update is then an error)."""
    size = len(block)
    start = pos
    cost = 0
    seen = fields_before
    try:
        while pos < size:
            field = pos
            first = block[pos]
            if first & 0x80:                    # indexed field: 1xxxxxxx
                pos = _skip_int(block, pos, 0x7F)
                cost += 1
                seen = True
                if cost >= allowance:
                    break
                continue
            if first & 0xE0 == 0x20:            # dynamic table size update: 001xxxxx
                if seen:
                    # Refused, once the fields before it are decoded (as decode() would).
                    if pos > start:
                        break
                    raise HPACKDecodingError("Table size update not at the start of the block")
                pos = _skip_int(block, pos, 0x1F)
                # Charged like a field: legal up to the first field, 262,143 one-byte updates
                # were one slice of ~340 ms.
                cost += 1
                if cost >= allowance:
                    break
                continue
            # A literal: 01xxxxxx (indexed), 0000xxxx or 0001xxxx (not, never indexed), the
            # name an index in the prefix or a string after it, then the value.
            mask = 0x3F if first & 0x40 else 0x0F
            huffman = 0
            if first & mask:
                pos = _skip_int(block, pos, mask)
            else:
                pos, huffman = _string(block, pos + 1)
            pos, value_huffman = _string(block, pos)
            cost += 1 + (huffman + value_huffman) // _HUFFMAN_BYTES_PER_FIELD
            seen = True
            if cost >= allowance:
                break
    except IndexError:
        return size, cost + 1       # malformed: the library decodes to it and raises
    except _TooLong:
        if field > start:
            return field, cost      # refused once the fields before it are decoded
        raise HPACKDecodingError(f"a string literal longer than {MAX_STRING} bytes") from None
    return pos, cost


class SlicedBlock:
    """A header block being decoded, and what its stream waits for. `step()` decodes the next
    slice; `done` once every field is decoded (`fields`)."""

    __slots__ = ("block", "pos", "fields", "inflated", "cap", "stream_id", "end",
                 "self_dependent", "snapshot", "analysis")

    def __init__(self, block: bytes, cap: int, stream_id: int, end: bool,
                 self_dependent: bool, snapshot):
        self.block = block
        self.pos = 0
        self.fields: list = []
        self.inflated = 0           # the decoded size so far, as hpack counts it
        self.cap = cap              # the decoder's max_header_list_size for the whole block
        self.stream_id = stream_id
        self.end = end              # END_STREAM was set
        self.self_dependent = self_dependent
        self.snapshot = snapshot    # the table before the block (the codec's decode cache)
        self.analysis = None        # the codec's check of the fields (request or trailers), slice by slice

    @property
    def done(self) -> bool:
        return self.pos >= len(self.block)

    def step(self, decoder, allowance: int) -> int:
        """Decode the next slice (at least one field, about `allowance` field units); its
        cost in field units. Raises what `decoder.decode` raises."""
        block = self.block
        start = self.pos
        end, cost = slice_end(block, start, allowance, bool(self.fields))
        # What the earlier slices left of the cap: the check is the whole block's, field by
        # field, as in one decode() call (hpack raises OversizedHeaderListError past it).
        decoder.max_header_list_size = self.cap - self.inflated
        try:
            fields = decoder.decode(block[start:end], raw=True)
        finally:
            decoder.max_header_list_size = self.cap
        self.inflated += sum(len(name) + len(value) + 32 for name, value in fields)
        self.fields += fields
        self.pos = end
        return cost
