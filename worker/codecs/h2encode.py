"""HPACK for what the server codec (h2server.py) sends: responses and trailers as header
blocks, without the dynamic table.

HPACK, sent: no dynamic table at all (static-table names and full matches, literals "without
indexing", "never indexed" for credentials), so a field's encoding depends on nothing but
the field and is cached process-wide (short values only); the peer's
SETTINGS_HEADER_TABLE_SIZE cannot matter. Larger on the wire than an indexing encoder.
"""

from __future__ import annotations

from hpack.table import HeaderTable

from .h2fields import _CONNECTION_SPECIFIC, _SENSITIVE, _STATUS_BYTES, _connection_nominated

__all__ = ["STATUS_FIELD", "encode_block", "encode_field"]


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytearray:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytearray((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return out


_STATIC_FULL: dict = {}      # (name, value) -> static index
_STATIC_NAME: dict = {}      # name -> first static index
for _i, (_n, _v) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_FULL.setdefault((_n, _v), _i)
    _STATIC_NAME.setdefault(_n, _i)

_field_cache: dict = {}      # (name, value, never) -> encoded bytes; process-wide
_FIELD_CACHE_ENTRIES = 4096
_FIELD_CACHE_VALUE = 256     # longer values are encoded each time, never kept


def encode_field(name: bytes, value: bytes, never: bool) -> bytes:
    """One field without the dynamic table: a static full match is indexed (0b1xxxxxxx); else
    a literal without indexing (0b0000xxxx) or never indexed (0b0001xxxx), name by static
    index when there is one, strings raw (no Huffman)."""
    key = (name, value, never)
    cached = _field_cache.get(key)
    if cached is not None:
        return cached
    index = None if never else _STATIC_FULL.get((name, value))
    if index is not None:
        out = bytes(_hpack_int(index, 7, 0x80))
    else:
        first = 0x10 if never else 0x00
        name_index = _STATIC_NAME.get(name)
        if name_index is not None:
            out = _hpack_int(name_index, 4, first)
        else:
            out = bytearray((first,)) + _hpack_int(len(name), 7, 0) + name
        out += _hpack_int(len(value), 7, 0)
        out += value
        out = bytes(out)
    if len(value) <= _FIELD_CACHE_VALUE:
        if len(_field_cache) >= _FIELD_CACHE_ENTRIES:
            _field_cache.clear()
        _field_cache[key] = out
    return out


_plain_cache: dict = {}      # (name, value) as str -> encoded bytes, for ordinary fields
# Whole blocks, keyed by the status field and the pairs: a proxy sends the same few heads over
# and over (an upstream's, with a date that changes each second). One lookup in place of one
# per field and the join; process-wide, small blocks only, cleared when full.
_block_cache: dict = {}
_BLOCK_CACHE_ENTRIES = 256
_BLOCK_CACHE_BYTES = 1024


def encode_block(status_field: bytes, items) -> bytes:
    """A response (or trailers) header block: `status_field` (encoded, or b"") then `items`
    (str pairs) as HTTP/2 fields, leaving out what http2._encode_fields leaves out."""
    key = (status_field, tuple(items))
    try:
        block = _block_cache.get(key)
    except TypeError:               # a list pair (unhashable): not kept
        return _encode_block(status_field, items)
    if block is None:
        block = _encode_block(status_field, items)
        if len(block) <= _BLOCK_CACHE_BYTES:
            if len(_block_cache) >= _BLOCK_CACHE_ENTRIES:
                _block_cache.clear()
            _block_cache[key] = block
    return block


def _encode_block(status_field: bytes, items) -> bytes:
    parts = [status_field] if status_field else []
    plain = _plain_cache
    nominated = None
    for item in items:
        try:
            encoded = plain.get(item)   # the pair itself is the key: no tuple built per field
        except TypeError:               # a list pair (unhashable): encoded below
            encoded = None
        if encoded is not None:
            parts.append(encoded)
            continue
        name, value = item
        if name in _CONNECTION_SPECIFIC or name == "te" or name[:1] == ":":
            if name == "te" and value.strip().lower() == "trailers":
                parts.append(encode_field(b"te", b"trailers", False))
            elif name == "connection" and nominated is None:
                nominated = _connection_nominated(items)
            continue
        never = name in _SENSITIVE or (name == "cookie" and len(value) < 20)
        encoded = encode_field(name.encode("latin-1"), value.encode("latin-1"), never)
        if len(value) <= _FIELD_CACHE_VALUE:
            if len(plain) >= _FIELD_CACHE_ENTRIES:
                plain.clear()
            plain[(name, value)] = encoded
        parts.append(encoded)
    if nominated:
        # Rare: a `connection` header names others to leave out; encode again without them.
        return _encode_block(status_field, [kv for kv in items
                                             if kv[0] not in nominated and kv[0] != "connection"])
    return b"".join(parts)


STATUS_FIELD = {code: encode_field(b":status", raw, False)
                 for code, raw in _STATUS_BYTES.items()}
