"""A Hessian 2.0 reader for the values an RPC proxy routes on, and the few values it writes.

Dubbo request bodies and SOFA Bolt contents are Hessian 2.0. Baton routes on a handful of
strings at their start (service, version, method) and on the attachments map at the very end
of a Dubbo request, after the call's arguments. To reach that map every argument has to be
walked, whatever its type (Java objects with class definitions, typed lists, dates, binary...),
so the reader knows the whole grammar even though routing looks at strings and maps only.
Nothing read here is ever re-encoded: the proxy forwards the original bytes.

What a value becomes: str, int, float, bool, None, bytes, list, dict, `Date` (milliseconds
since the epoch) and `JavaObject` (class name and field dict). Typed lists and maps lose their
Java type name (routing never looks at it). References ('Q') resolve to the same Python object.

Errors: anything malformed or truncated raises `HessianError` (a ValueError), never another
exception; nesting deeper than `MAX_DEPTH` is refused rather than recursing without bound.

Grammar: the Hessian 2.0 serialization spec (caucho.com/resin-3.1/doc/hessian-2.0-spec.xtp),
byte ranges as listed there.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

MAX_DEPTH = 64          # lists in maps in objects...: deeper is garbage, not a real call

_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")
_U16 = struct.Struct(">H")


class HessianError(ValueError):
    """Malformed or truncated Hessian 2.0 data."""


class Date(NamedTuple):
    millis: int             # milliseconds since 1970-01-01 UTC


class JavaObject(NamedTuple):
    type: str               # the Java class name of its class definition
    fields: dict            # field name -> value


class _ClassDef(NamedTuple):
    name: str
    fields: tuple


class Reader:
    """Reads consecutive values from `data` starting at `pos`. One Reader per message: the
    reference, type and class-definition tables run over every value of the message, as a
    Java Hessian2Input reading one body does."""

    __slots__ = ("data", "pos", "end", "refs", "types", "classes", "_depth")

    def __init__(self, data, pos: int = 0, end: int | None = None):
        self.data = bytes(data) if not isinstance(data, bytes) else data
        self.pos = pos
        self.end = len(self.data) if end is None else end
        self.refs: list = []
        self.types: list[str] = []
        self.classes: list[_ClassDef] = []
        self._depth = 0

    # -- primitives ------------------------------------------------------------------------

    def _take(self, n: int) -> bytes:
        pos = self.pos
        if n < 0 or pos + n > self.end:
            raise HessianError(f"truncated: {n} byte(s) wanted at offset {pos}, "
                               f"{self.end - pos} left")
        self.pos = pos + n
        return self.data[pos:pos + n]

    def _byte(self) -> int:
        pos = self.pos
        if pos >= self.end:
            raise HessianError(f"truncated: a value expected at offset {pos}")
        self.pos = pos + 1
        return self.data[pos]

    @property
    def at_end(self) -> bool:
        return self.pos >= self.end

    # -- public ----------------------------------------------------------------------------

    def read(self):
        """The next value, whatever it is."""
        return self._value(self._byte())

    def read_string(self) -> str | None:
        """The next value, which must be a string (or null)."""
        tag = self._byte()
        if tag == 0x4E:
            return None
        if tag <= 0x1F or 0x30 <= tag <= 0x33 or tag in (0x52, 0x53):
            return self._string(tag)
        raise HessianError(f"expected a string at offset {self.pos - 1}, got tag 0x{tag:02x}")

    def read_int(self) -> int:
        tag = self._byte()
        value = self._number(tag)
        if value is None:
            raise HessianError(f"expected an int at offset {self.pos - 1}, got tag 0x{tag:02x}")
        return value

    def read_raw(self, n: int) -> bytes:
        """`n` bytes as they are (the Hessian 2.0 draft writes type names this way)."""
        return self._take(n)

    def skip(self) -> None:
        """Step over the next value (its references still count, for the values after)."""
        self._value(self._byte())

    # -- the grammar ------------------------------------------------------------------------

    def _number(self, tag: int):
        """An int or long starting with `tag`, or None if `tag` starts something else."""
        if 0x80 <= tag <= 0xBF:
            return tag - 0x90
        if 0xC0 <= tag <= 0xCF:
            return ((tag - 0xC8) << 8) | self._byte()
        if 0xD0 <= tag <= 0xD7:
            hi = self._take(2)
            return ((tag - 0xD4) << 16) | (hi[0] << 8) | hi[1]
        if tag == 0x49 or tag == 0x59:              # 'I', 'Y' (long as int32)
            return _I32.unpack(self._take(4))[0]
        if 0xD8 <= tag <= 0xEF:
            return tag - 0xE0
        if 0xF0 <= tag <= 0xFF:
            return ((tag - 0xF8) << 8) | self._byte()
        if 0x38 <= tag <= 0x3F:
            hi = self._take(2)
            return ((tag - 0x3C) << 16) | (hi[0] << 8) | hi[1]
        if tag == 0x4C:                             # 'L'
            return _I64.unpack(self._take(8))[0]
        return None

    def _value(self, tag: int):
        if tag <= 0x1F or 0x30 <= tag <= 0x33 or tag in (0x52, 0x53):
            return self._string(tag)
        number = self._number(tag)
        if number is not None:
            return number
        if tag == 0x4E:
            return None
        if tag == 0x54:
            return True
        if tag == 0x46:
            return False
        if 0x20 <= tag <= 0x2F or 0x34 <= tag <= 0x37 or tag in (0x41, 0x42):
            return self._binary(tag)
        if tag == 0x44:
            return _F64.unpack(self._take(8))[0]
        if tag == 0x5B:
            return 0.0
        if tag == 0x5C:
            return 1.0
        if tag == 0x5D:
            return float(int.from_bytes(self._take(1), "big", signed=True))
        if tag == 0x5E:
            raw = self._take(2)
            return float(int.from_bytes(raw, "big", signed=True))
        if tag == 0x5F:                             # double as int32 thousandths
            return _I32.unpack(self._take(4))[0] * 0.001
        if tag == 0x4A:
            return Date(_I64.unpack(self._take(8))[0])
        if tag == 0x4B:                             # minutes
            return Date(_I32.unpack(self._take(4))[0] * 60000)
        if tag == 0x51:                             # 'Q' reference
            index = self.read_int()
            if not 0 <= index < len(self.refs):
                raise HessianError(f"reference {index} to an unknown value "
                                   f"({len(self.refs)} so far)")
            return self.refs[index]
        if tag == 0x43:                             # 'C' class definition, then the value
            self._class_def()
            return self.read()
        return self._compound(tag)

    def _compound(self, tag: int):
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise HessianError(f"values nested deeper than {MAX_DEPTH}")
        try:
            if tag == 0x48:                         # 'H' untyped map
                return self._map_body()
            if tag == 0x4D:                         # 'M' typed map
                self._type()
                return self._map_body()
            if tag == 0x57:                         # 'W' variable untyped list
                return self._list_until_end()
            if tag == 0x55:                         # 'U' variable typed list
                self._type()
                return self._list_until_end()
            if tag == 0x58:                         # 'X' fixed untyped list
                return self._list_fixed(self.read_int())
            if tag == 0x56:                         # 'V' fixed typed list
                self._type()
                return self._list_fixed(self.read_int())
            if 0x70 <= tag <= 0x77:
                self._type()
                return self._list_fixed(tag - 0x70)
            if 0x78 <= tag <= 0x7F:
                return self._list_fixed(tag - 0x78)
            if tag == 0x4F:                         # 'O' object, class def by index
                return self._object(self.read_int())
            if 0x60 <= tag <= 0x6F:
                return self._object(tag - 0x60)
        finally:
            self._depth -= 1
        raise HessianError(f"unknown tag 0x{tag:02x} at offset {self.pos - 1}")

    def _string(self, tag: int) -> str:
        parts = []
        while True:
            if tag <= 0x1F:
                length, final = tag, True
            elif 0x30 <= tag <= 0x33:
                length, final = ((tag - 0x30) << 8) | self._byte(), True
            elif tag == 0x53 or tag == 0x52:        # 'S' final, 'R' non-final chunk
                length, final = _U16.unpack(self._take(2))[0], tag == 0x53
            else:
                raise HessianError(f"string chunk expected at offset {self.pos - 1}, "
                                   f"got tag 0x{tag:02x}")
            parts.append(self._chars(length))
            if final:
                break
            tag = self._byte()
        if len(parts) == 1:
            return parts[0]
        text = "".join(parts)
        # A surrogate pair may straddle two chunks: join it here, not per chunk.
        return text if text.isascii() else _join_surrogates(text)

    def _chars(self, count: int) -> str:
        """`count` UTF-16 units of Hessian's UTF-8 (Java writes a supplementary character
        as two 3-byte surrogates; a 4-byte sequence counts as two units too)."""
        data, pos, end = self.data, self.pos, self.end
        if pos + count <= end:
            chunk = data[pos:pos + count]
            if chunk.isascii():                     # the common case: one byte per unit
                self.pos = pos + count
                return chunk.decode("ascii")
        start, units = pos, 0
        while units < count:
            if pos >= end:
                raise HessianError(f"truncated string at offset {pos}")
            lead = data[pos]
            if lead < 0x80:
                pos += 1
                units += 1
            elif 0xC0 <= lead < 0xE0:
                pos += 2
                units += 1
            elif 0xE0 <= lead < 0xF0:
                pos += 3
                units += 1
            elif 0xF0 <= lead < 0xF8:
                pos += 4
                units += 2
            else:
                raise HessianError(f"invalid UTF-8 lead byte 0x{lead:02x} at offset {pos}")
        if pos > end or units != count:
            raise HessianError(f"truncated string at offset {start}")
        self.pos = pos
        try:
            return _join_surrogates(data[start:pos].decode("utf-8", "surrogatepass"))
        except UnicodeError as exc:
            raise HessianError(f"invalid UTF-8 in string at offset {start}: {exc.reason}") from None

    def _binary(self, tag: int) -> bytes:
        parts = []
        while True:
            if 0x20 <= tag <= 0x2F:
                length, final = tag - 0x20, True
            elif 0x34 <= tag <= 0x37:
                length, final = ((tag - 0x34) << 8) | self._byte(), True
            elif tag == 0x42 or tag == 0x41:        # 'B' final, 'A' non-final chunk
                length, final = _U16.unpack(self._take(2))[0], tag == 0x42
            else:
                raise HessianError(f"binary chunk expected at offset {self.pos - 1}, "
                                   f"got tag 0x{tag:02x}")
            parts.append(self._take(length))
            if final:
                return b"".join(parts)
            tag = self._byte()

    def _type(self) -> str:
        """A type name: a string (remembered) or an int naming an earlier one."""
        tag = self._byte()
        number = self._number(tag)
        if number is not None:
            if not 0 <= number < len(self.types):
                raise HessianError(f"type reference {number} to an unknown type")
            return self.types[number]
        if tag <= 0x1F or 0x30 <= tag <= 0x33 or tag in (0x52, 0x53):
            name = self._string(tag)
            self.types.append(name)
            return name
        raise HessianError(f"type name expected at offset {self.pos - 1}, got tag 0x{tag:02x}")

    def _end_marker(self) -> bool:
        if self.pos >= self.end:
            raise HessianError(f"truncated: 'Z' or a value expected at offset {self.pos}")
        if self.data[self.pos] == 0x5A:
            self.pos += 1
            return True
        return False

    def _map_body(self) -> dict:
        result: dict = {}
        self.refs.append(result)
        while not self._end_marker():
            key = self.read()
            value = self.read()
            try:
                result[key] = value
            except TypeError:                       # a list or map as a key: keep it apart
                result[_Unhashable(key)] = value
        return result

    def _list_until_end(self) -> list:
        result: list = []
        self.refs.append(result)
        while not self._end_marker():
            result.append(self.read())
        return result

    def _list_fixed(self, length: int) -> list:
        if length < 0 or length > self.end - self.pos:  # every element takes a byte at least
            raise HessianError(f"list length {length} beyond the data")
        result: list = []
        self.refs.append(result)
        for _ in range(length):
            result.append(self.read())
        return result

    def _class_def(self) -> None:
        name = self.read_string()
        count = self.read_int()
        if name is None or count < 0 or count > self.end - self.pos:
            raise HessianError(f"bad class definition {name!r} with {count} field(s)")
        fields = tuple(self.read_string() for _ in range(count))
        if any(f is None for f in fields):
            raise HessianError(f"class definition {name!r}: a field name is null")
        self.classes.append(_ClassDef(name, fields))

    def _object(self, index: int) -> JavaObject:
        if not 0 <= index < len(self.classes):
            raise HessianError(f"object of class definition {index}, "
                               f"{len(self.classes)} defined")
        definition = self.classes[index]
        obj = JavaObject(definition.name, {})
        self.refs.append(obj)
        for field in definition.fields:
            obj.fields[field] = self.read()
        return obj


def _join_surrogates(text: str) -> str:
    """Join surrogate pairs (Java's two 3-byte sequences) into one character; a lone
    surrogate stays as it is."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


class _Unhashable:
    """A map key that Python cannot hash (a list or a map): kept by identity."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self) -> str:
        return f"_Unhashable({self.value!r})"


# -- writing: only what local replies need ----------------------------------------------------

def write_string(text: str) -> bytes:
    """`text` as one Hessian 2.0 string: the compact forms, or 'R' chunks of 32768 UTF-16
    units and a final 'S' beyond 1023 units. Characters are written as Java does (modified
    UTF-8: a supplementary character as two 3-byte surrogates)."""
    if text.isascii():
        units = [bytes((c,)) for c in text.encode("ascii")] if len(text) > 1023 else None
        encoded = text.encode("ascii")
    else:
        raw = text.encode("utf-16-be", "surrogatepass")
        units = [_java_utf8(int.from_bytes(raw[i:i + 2], "big")) for i in range(0, len(raw), 2)]
        encoded = b"".join(units)
    count = len(units) if units is not None else len(text)
    if count <= 31:
        return bytes((count,)) + encoded
    if count <= 1023:
        return bytes((0x30 + (count >> 8), count & 0xFF)) + encoded
    out = bytearray()
    for start in range(0, count, 0x8000):
        chunk = units[start:start + 0x8000]
        final = start + 0x8000 >= count
        out += (b"S" if final else b"R") + _U16.pack(len(chunk)) + b"".join(chunk)
    return bytes(out)


def _java_utf8(code: int) -> bytes:
    """One UTF-16 unit in Java's modified UTF-8."""
    if code < 0x80:
        return bytes((code,))
    if code < 0x800:
        return bytes((0xC0 | code >> 6, 0x80 | code & 0x3F))
    return bytes((0xE0 | code >> 12, 0x80 | (code >> 6) & 0x3F, 0x80 | code & 0x3F))


NULL = b"N"
