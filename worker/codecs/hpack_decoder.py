"""HPACK decoding (RFC 7541) for the HTTP/2 server codec: the header blocks clients send.

The `hpack` library decodes a block that is not a byte-for-byte repeat at ~300k instructions
a request (bench/RESULTS.md, issue 17): more than the whole rest of a proxied request. Its
per-field Python (logging calls, HeaderTuple objects, a memoryview slice and a bytes copy a
field) and its Huffman decoder (a Python loop over 4-bit nibbles) are what this file does
without. `hpack` stays the encoder (tests, the upstream h2 codec) and the oracle.

Rules of this file:
- Exact: `Decoder.decode(block)` gives what `hpack.Decoder.decode(block, raw=True)` gives
  for any bytes and any table state before: the same fields, the same dynamic table after
  (and what a failing block inserted before it failed), and errors of the same classes,
  hpack's own (OversizedHeaderListError past `max_header_list_size`, any other
  HPACKDecodingError for a malformed block), so that the codec maps them as it always did
  (h2reader.py). tests/unit/test_hpack_decoder.py proves it against hpack with Hypothesis.
  hpack's limits are kept with its semantics: an integer of at most 5 bytes after its
  prefix (hpack's VARINT_MAX_LENGTH), a table size update only before the block's first
  field and within `max_allowed_table_size`, which the table must fit at the block's end.
- Lean: one loop over the block, a field is a plain (name, value) tuple of bytes, shared
  with the static or dynamic table it came from; a literal with incremental indexing is
  one tuple, the field and the table's entry. Both tables are one list, kept with each
  entry's size, so that an indexed field costs a lookup of its first byte and an addition
  (by callgrind, ~1.7k instructions against hpack's ~20k; a block of h2load's five fields
  and a new Huffman-coded x-request-id: ~35k against ~205k, of which ~14k the Huffman
  decoding of its 23 bytes against hpack's ~61k).
- Huffman: hpack's own decoding state machine (nghttp2's, huffman_table.py: a state and a
  nibble give the next state, at most one symbol, a failure on EOS, and whether the bits so
  far may end the string), composed at import into one that takes a byte a step. Built
  from hpack's table, not retyped, so it accepts and refuses what hpack does: EOS in the
  string, padding of more than 7 bits or not all ones.
- The static table is hpack's (`HeaderTable.STATIC_TABLE`).
"""

from __future__ import annotations

from hpack.exceptions import (HPACKDecodingError, InvalidTableIndexError,
                              InvalidTableSizeError, OversizedHeaderListError)
from hpack.huffman_table import (HUFFMAN_COMPLETE, HUFFMAN_EMIT_SYMBOL, HUFFMAN_FAIL,
                                 HUFFMAN_TABLE)
from hpack.table import HeaderTable

__all__ = ["Decoder", "DynamicTable", "decode_huffman"]

DEFAULT_TABLE_SIZE = 4096           # RFC 7540 6.5.2's SETTINGS_HEADER_TABLE_SIZE
DEFAULT_MAX_HEADER_LIST_SIZE = 65536    # as hpack's Decoder
_ENTRY_OVERHEAD = 32                # RFC 7541 4.1: an entry's size is its name, value and 32
# The table's list holds HPACK index i at i + 0x80: an indexed field's first byte (1xxxxxxx)
# is its position. Index 0 is no field (RFC 7541 6.1), nor is anything below it.
_AT = 0x80
_STATIC = [None] * (_AT + 1) + list(HeaderTable.STATIC_TABLE)
_STATIC_SIZES = [0] * (_AT + 1) + [_ENTRY_OVERHEAD + len(name) + len(value)
                                   for name, value in HeaderTable.STATIC_TABLE]
_DYNAMIC_AT = len(_STATIC)          # the position of the newest dynamic entry (index 62)


def _huffman_machine() -> tuple:
    """(the root row, `fill`) of the byte-wise Huffman decoder: one row per state of hpack's
    nibble machine (and a last one for a failed string), each a list of 256 (next row,
    decoded bytes) and, at [256], whether a string may end in this state: True, False
    (incomplete), or None (failed). A row is filled the first time a string reaches it
    (`fill(row)`, 256 steps): all of them at import cost ~150M instructions (~40 ms) a
    process, and the strings of real requests reach a few dozen."""
    states = len(HUFFMAN_TABLE) // 16
    rows: list = [[] for _ in range(states + 1)]
    failed = rows[states]
    failed_step = (failed, b"")
    failed += [failed_step] * 256
    failed.append(None)
    # Each state's 16 nibble steps, as (next row, bytes) tuples ready to be reused whole.
    nibble_steps = []
    ends: dict = {}
    for state in range(states):
        steps = []
        for nibble in range(16):
            target, flags, symbol = HUFFMAN_TABLE[state * 16 + nibble]
            if flags & HUFFMAN_FAIL:
                steps.append(failed_step)
                continue
            steps.append((rows[target], bytes((symbol,)) if flags & HUFFMAN_EMIT_SYMBOL else b""))
            # Whether a string may end here is the state's own (the same flag on every step
            # into it), so it is kept per row.
            if ends.setdefault(target, bool(flags & HUFFMAN_COMPLETE)) != \
                    bool(flags & HUFFMAN_COMPLETE):
                raise RuntimeError("hpack's Huffman table: an end flag not its state's")
        nibble_steps.append(steps)
    row_index = {id(row): index for index, row in enumerate(rows)}

    def fill(row: list) -> list:
        state = row_index[id(row)]
        for high_row, high_bytes in nibble_steps[state]:
            if high_row is failed:
                row += [failed_step] * 16
            elif high_bytes:
                row += [(low_row, high_bytes + low_bytes) if low_row is not failed
                        else failed_step
                        for low_row, low_bytes in nibble_steps[row_index[id(high_row)]]]
            else:
                row += nibble_steps[row_index[id(high_row)]]
        row.append(ends[state])
        return row

    return rows[0], fill


_HUFFMAN_ROOT, _fill_row = _huffman_machine()


def decode_huffman(data: bytes) -> bytes:
    """A Huffman-coded string literal (RFC 7541 5.2), decoded; HPACKDecodingError as hpack's
    decode_huffman raises it."""
    while True:
        row = _HUFFMAN_ROOT
        parts: list = []
        append = parts.append
        try:
            for byte in data:
                row, decoded = row[byte]
                append(decoded)
            end = row[256]
            break
        except IndexError:          # a row not filled yet: filled, and the string decoded again
            _fill_row(row)
    if not end and data:
        raise HPACKDecodingError("Invalid Huffman string" if end is None
                                 else "Incomplete Huffman string")
    return b"".join(parts)


def _integer(data: bytes, pos: int, value: int) -> tuple[int, int]:
    """(the integer, the position after it) of an integer whose prefix is full (`value`), its
    continuation bytes from `pos` (RFC 7541 5.1); at most 5 of them, as hpack takes."""
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift == 35:
            raise HPACKDecodingError("HPACK integer longer than 5 bytes after its prefix")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    """(the string, the position after it) of a string literal at `pos` (RFC 7541 5.2)."""
    first = data[pos]
    pos += 1
    length = first & 0x7F
    if length == 0x7F:
        length, pos = _integer(data, pos, length)
    end = pos + length
    if end > len(data):
        raise HPACKDecodingError("Truncated header block")
    if first & 0x80:
        return decode_huffman(data[pos:end]), end
    return data[pos:end], end


class DynamicTable:
    """The dynamic table (RFC 7541 2.3.2, 4), after the static one in one list, `fields`: HPACK
    index i is fields[i + 0x80], the newest dynamic entry index 62; `sizes` the same
    positions' sizes (RFC 7541 4.1). One lookup for either table; an insertion moves at most
    ~130 pointers (4,096 bytes of 32 at least). What h2movestate.py reads and sets of it is
    what it used of hpack's HeaderTable: `dynamic_entries` (newest first), `maxsize`, `add`,
    `resized` (only hpack's encoder reads it). `changes` counts what changed it: the codec
    keeps a block's decoding only if the block left it as it found it (h2reader.py)."""

    __slots__ = ("fields", "sizes", "size", "_maxsize", "resized", "changes")

    def __init__(self):
        self.fields = list(_STATIC)
        self.sizes = list(_STATIC_SIZES)
        self.size = 0               # the dynamic entries' sizes added up
        self._maxsize = DEFAULT_TABLE_SIZE
        self.resized = False
        self.changes = 0

    @property
    def dynamic_entries(self) -> list:
        return self.fields[_DYNAMIC_AT:]

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, size: int) -> None:
        old = self._maxsize
        self._maxsize = size
        self.resized = size != old
        if size != old:
            self.changes += 1
        if size <= 0:
            self._clear()
        elif size < old:
            self._evict()

    def add(self, name: bytes, value: bytes) -> None:
        self._insert((name, value))

    def _insert(self, entry: tuple) -> None:
        """RFC 7541 4.4: an entry larger than the table empties it; otherwise the oldest go
        until it fits."""
        self.changes += 1
        size = _ENTRY_OVERHEAD + len(entry[0]) + len(entry[1])
        if size > self._maxsize:
            self._clear()
            return
        self.fields.insert(_DYNAMIC_AT, entry)
        self.sizes.insert(_DYNAMIC_AT, size)
        self.size += size
        if self.size > self._maxsize:
            self._evict()

    def _evict(self) -> None:
        fields, sizes = self.fields, self.sizes
        size = self.size
        while size > self._maxsize:
            fields.pop()
            size -= sizes.pop()
        self.size = size

    def _clear(self) -> None:
        del self.fields[_DYNAMIC_AT:]
        del self.sizes[_DYNAMIC_AT:]
        self.size = 0


class Decoder:
    """A connection's HPACK decoder: `decode()` a header block at a time, in the order they
    came (the dynamic table is the connection's). No __slots__: a test wraps `decode`."""

    def __init__(self, max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE):
        self.header_table = DynamicTable()
        # hpack's name and meaning: the fields' sizes (RFC 7541 4.1) a block may add up to.
        self.max_header_list_size = max_header_list_size
        # The table size the decoder allows (the SETTINGS_HEADER_TABLE_SIZE it announced).
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE

    def decode(self, data: bytes, raw: bool = True) -> list:
        """The fields of header block `data` (bytes), as (name, value) tuples of bytes.
        `raw`: hpack's argument, for callers of either decoder; only raw fields are made."""
        if not raw:
            raise ValueError("only raw (bytes) fields are decoded")
        table = self.header_table
        # The same lists throughout: the table changes them in place.
        indexed, sizes = table.fields, table.sizes
        fields: list = []
        size = len(data)
        pos = 0
        listed = 0                  # the fields' sizes so far (max_header_list_size)
        cap = self.max_header_list_size
        try:
            while pos < size:
                first = data[pos]
                pos += 1
                if first & 0x80:                        # indexed field: 1xxxxxxx
                    at = first
                    if at == 0xFF:
                        at, pos = _integer(data, pos, at)
                    if not _AT < at < len(indexed):
                        raise InvalidTableIndexError(f"Invalid table index {at - _AT}")
                    field = indexed[at]
                    listed += sizes[at]
                elif first & 0x40 or not first & 0x20:
                    # A literal: 01xxxxxx (incremental indexing), 0000xxxx (without
                    # indexing), 0001xxxx (never indexed); the name an index in the prefix
                    # (not 0) or a string literal after it, then the value.
                    mask = 0x3F if first & 0x40 else 0x0F
                    index = first & mask
                    if index:
                        if index == mask:
                            index, pos = _integer(data, pos, index)
                        if index + _AT >= len(indexed):
                            raise InvalidTableIndexError(f"Invalid table index {index}")
                        name = indexed[index + _AT][0]
                    else:
                        name, pos = _string(data, pos)
                    value, pos = _string(data, pos)
                    field = (name, value)
                    if mask == 0x3F:
                        table._insert(field)
                    listed += _ENTRY_OVERHEAD + len(name) + len(value)
                else:                                   # dynamic table size update: 001xxxxx
                    if fields:
                        raise HPACKDecodingError(
                            "Table size update not at the start of the block")
                    new_size = first & 0x1F
                    if new_size == 0x1F:
                        new_size, pos = _integer(data, pos, new_size)
                    if new_size > self.max_allowed_table_size:
                        raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                    table.maxsize = new_size
                    continue
                fields.append(field)
                if listed > cap:
                    raise OversizedHeaderListError(
                        f"A header list larger than {cap} has been received")
        except IndexError:
            raise HPACKDecodingError("Truncated header block") from None
        if table._maxsize > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        return fields
