"""google.protobuf.Struct on the wire, both ways, without protobuf (sans-IO).

Istio's metadata exchange sends a workload's node metadata as a serialized Struct (base64 in
the x-envoy-peer-metadata header; inside an Any in the TCP exchange). The worker never
imports protobuf, so the few messages involved are coded here from their field numbers:

    Struct    { map<string, Value> fields = 1; }     map entry: key = 1, value = 2
    Value     { null_value = 1 (varint); number_value = 2 (double, fixed64);
                string_value = 3; bool_value = 4 (varint); struct_value = 5;
                list_value = 6 }
    ListValue { repeated Value values = 1; }
    Any       { string type_url = 1; bytes value = 2; }

Python values: None, float (int on encode), str, bool, dict, list. Unknown fields are
skipped, as protobuf does; malformed bytes raise ValueError.
"""

from __future__ import annotations

import struct

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
STRUCT_TYPE_URL = "type.googleapis.com/google.protobuf.Struct"


# --- encoding --------------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire)
    if wire == LENGTH:
        return key + _varint(len(payload)) + payload
    return key + payload


def encode_value(value) -> bytes:
    if value is None:
        return _field(1, VARINT, _varint(0))
    if isinstance(value, bool):
        return _field(4, VARINT, _varint(int(value)))
    if isinstance(value, (int, float)):
        return _field(2, FIXED64, struct.pack("<d", float(value)))
    if isinstance(value, str):
        return _field(3, LENGTH, value.encode())
    if isinstance(value, dict):
        return _field(5, LENGTH, encode_struct(value))
    if isinstance(value, (list, tuple)):
        return _field(6, LENGTH, b"".join(_field(1, LENGTH, encode_value(v)) for v in value))
    raise TypeError(f"a Struct cannot hold {type(value).__name__}")


def encode_struct(fields: dict) -> bytes:
    return b"".join(_field(1, LENGTH, _field(1, LENGTH, str(key).encode())
                           + _field(2, LENGTH, encode_value(value)))
                    for key, value in fields.items())


def encode_any(type_url: str, value: bytes) -> bytes:
    return _field(1, LENGTH, type_url.encode()) + _field(2, LENGTH, value)


# --- decoding --------------------------------------------------------------------------------

def _read_varint(data, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields_of(data) -> list[tuple[int, int, object]]:
    """(field number, wire type, int or bytes) for each field of a message."""
    out, pos, end = [], 0, len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _read_varint(data, pos)
        elif wire == FIXED64:
            value, pos = bytes(data[pos:pos + 8]), pos + 8
        elif wire == FIXED32:
            value, pos = bytes(data[pos:pos + 4]), pos + 4
        elif wire == LENGTH:
            size, pos = _read_varint(data, pos)
            value, pos = bytes(data[pos:pos + size]), pos + size
        else:
            raise ValueError(f"wire type {wire} not supported")
        if pos > end:
            raise ValueError("truncated field")
        out.append((number, wire, value))
    return out


def decode_value(data):
    result = None
    for number, wire, value in fields_of(data):
        if number == 1 and wire == VARINT:
            result = None
        elif number == 2 and wire == FIXED64:
            result = struct.unpack("<d", value)[0]
        elif number == 3 and wire == LENGTH:
            result = value.decode("utf-8", "replace")
        elif number == 4 and wire == VARINT:
            result = bool(value)
        elif number == 5 and wire == LENGTH:
            result = decode_struct(value)
        elif number == 6 and wire == LENGTH:
            result = [decode_value(v) for n, w, v in fields_of(value) if n == 1 and w == LENGTH]
    return result


def decode_struct(data) -> dict:
    result = {}
    for number, wire, entry in fields_of(data):
        if number != 1 or wire != LENGTH:
            continue
        key, value = "", None
        for n, w, v in fields_of(entry):
            if n == 1 and w == LENGTH:
                key = v.decode("utf-8", "replace")
            elif n == 2 and w == LENGTH:
                value = decode_value(v)
        result[key] = value
    return result


def decode_any(data) -> tuple[str, bytes]:
    type_url, value = "", b""
    for number, wire, field in fields_of(data):
        if number == 1 and wire == LENGTH:
            type_url = field.decode("utf-8", "replace")
        elif number == 2 and wire == LENGTH:
            value = field
    return type_url, value
