"""A Hessian 2.0 writer for the tests (Baton itself only reads Hessian).

Written from the spec, independently of worker/codecs/hessian2.py, and able to write every
value in each of the forms the spec allows (compact or full ints, chunked strings, typed or
untyped, fixed or variable lists, class definitions, references), chosen by a `random.Random`
so that property tests see all of them.
"""

from __future__ import annotations

import random
import struct

from baton.worker.codecs.hessian2 import Date, JavaObject


class Writer:
    """`canonical`: always the shortest form, untyped maps and lists, no chunks (what
    dubbo-go and hessian.js write; Envoy 1.40's dubbo_proxy reads attachments only from an
    untyped map)."""

    def __init__(self, rng: random.Random | None = None, canonical: bool = False):
        self.rng = rng or random.Random(0)
        self.canonical = canonical
        self.out = bytearray()
        self.types: dict[str, int] = {}
        self.classes: dict[tuple, int] = {}
        self.refs: dict[int, int] = {}          # id(container) -> ref index
        self.ref_count = 0

    def _flip(self) -> bool:
        return self.rng.random() < 0.5

    def bytes(self) -> bytes:
        return bytes(self.out)

    def write(self, value) -> "Writer":
        out = self.out
        if value is None:
            out += b"N"
        elif value is True:
            out += b"T"
        elif value is False:
            out += b"F"
        elif isinstance(value, int):
            self.write_int(value)
        elif isinstance(value, float):
            self.write_double(value)
        elif isinstance(value, str):
            self.write_string(value)
        elif isinstance(value, (bytes, bytearray)):
            self.write_binary(bytes(value))
        elif isinstance(value, Date):
            if value.millis % 60000 == 0 and -2**31 <= value.millis // 60000 < 2**31 and self._flip():
                out += b"K" + struct.pack(">i", value.millis // 60000)
            else:
                out += b"J" + struct.pack(">q", value.millis)
        elif isinstance(value, (list, dict, JavaObject)):
            if id(value) in self.refs:
                out += b"Q"
                self.write_int(self.refs[id(value)])
                return self
            self.refs[id(value)] = self.ref_count
            self.ref_count += 1
            if isinstance(value, list):
                self._list(value)
            elif isinstance(value, dict):
                self._map(value)
            else:
                self._object(value)
        else:
            raise TypeError(f"cannot write {type(value)}")
        return self

    # -- numbers ---------------------------------------------------------------------------

    def write_int(self, v: int, as_long: bool | None = None) -> None:
        """An int (32-bit forms) or a long (64-bit forms); which one at random when both fit."""
        out = self.out
        fits32 = -2**31 <= v < 2**31
        if not -2**63 <= v < 2**63:
            raise ValueError("beyond 64 bits")
        if self.canonical:
            long_form, compact = not fits32 or bool(as_long), True
        else:
            long_form = (not fits32) or (as_long if as_long is not None else self._flip())
            compact = self._flip() or self._flip()
        if not long_form:
            if compact and -0x10 <= v <= 0x2F:
                out.append(0x90 + v)
            elif compact and -0x800 <= v <= 0x7FF:
                out += bytes((0xC8 + (v >> 8), v & 0xFF))
            elif compact and -0x40000 <= v <= 0x3FFFF:
                out += bytes((0xD4 + (v >> 16), (v >> 8) & 0xFF, v & 0xFF))
            else:
                out += b"I" + struct.pack(">i", v)
            return
        if compact and -8 <= v <= 15:
            out.append(0xE0 + v)
        elif compact and -0x800 <= v <= 0x7FF:
            out += bytes((0xF8 + (v >> 8), v & 0xFF))
        elif compact and -0x40000 <= v <= 0x3FFFF:
            out += bytes((0x3C + (v >> 16), (v >> 8) & 0xFF, v & 0xFF))
        elif fits32 and self._flip():
            out += b"Y" + struct.pack(">i", v)
        else:
            out += b"L" + struct.pack(">q", v)

    def write_double(self, v: float) -> None:
        out = self.out
        # The compact forms have no -0.0 (nor has Java's writer: it sends 0.0).
        compact = self._flip() and str(v) != "-0.0"
        if compact and v == 0.0:
            out.append(0x5B)
        elif compact and v == 1.0:
            out.append(0x5C)
        elif compact and v.is_integer() and -128 <= v <= 127:
            out += bytes((0x5D,)) + int(v).to_bytes(1, "big", signed=True)
        elif compact and v.is_integer() and -32768 <= v <= 32767:
            out += bytes((0x5E,)) + int(v).to_bytes(2, "big", signed=True)
        elif compact and (v * 1000).is_integer() and -2**31 <= v * 1000 < 2**31 \
                and int(v * 1000) * 0.001 == v:
            out += bytes((0x5F,)) + struct.pack(">i", int(v * 1000))
        else:
            out += b"D" + struct.pack(">d", v)

    # -- strings and binary ----------------------------------------------------------------

    @staticmethod
    def _units(text: str) -> list[bytes]:
        raw = text.encode("utf-16-be", "surrogatepass")
        units = []
        for i in range(0, len(raw), 2):
            c = int.from_bytes(raw[i:i + 2], "big")
            if c < 0x80:
                units.append(bytes((c,)))
            elif c < 0x800:
                units.append(bytes((0xC0 | c >> 6, 0x80 | c & 0x3F)))
            else:
                units.append(bytes((0xE0 | c >> 12, 0x80 | (c >> 6) & 0x3F, 0x80 | c & 0x3F)))
        return units

    def write_string(self, text: str, chunk: int | None = None) -> None:
        units = self._units(text)
        n = len(units)
        if self.canonical and chunk is None and n <= 0xFFFF:
            body = b"".join(units)
            if n <= 31:
                self.out += bytes((n,)) + body
            elif n <= 1023:
                self.out += bytes((0x30 + (n >> 8), n & 0xFF)) + body
            else:
                self.out += b"S" + struct.pack(">H", n) + body
            return
        if chunk is None and self._flip() and n > 1:
            chunk = self.rng.randint(1, n)
        out = self.out
        if chunk and n == 0:
            out += b"S\x00\x00"
            return
        if chunk:
            for start in range(0, n, chunk):
                part = units[start:start + chunk]
                final = start + chunk >= n
                out += (b"S" if final else b"R") + struct.pack(">H", len(part)) + b"".join(part)
            return
        body = b"".join(units)
        if n <= 31 and self._flip():
            out += bytes((n,)) + body
        elif n <= 1023 and self._flip():
            out += bytes((0x30 + (n >> 8), n & 0xFF)) + body
        else:
            self.write_string(text, chunk=0xFFFF if n > 0xFFFF or n == 0 else n)

    def write_binary(self, data: bytes) -> None:
        out = self.out
        n = len(data)
        if n <= 15 and self._flip():
            out += bytes((0x20 + n,)) + data
        elif n <= 1023 and self._flip():
            out += bytes((0x34 + (n >> 8), n & 0xFF)) + data
        else:
            chunk = self.rng.randint(1, max(1, n)) if n else 1
            start = 0
            while True:
                part = data[start:start + chunk]
                final = start + chunk >= n
                out += (b"B" if final else b"A") + struct.pack(">H", len(part)) + part
                start += chunk
                if final:
                    break

    # -- containers ------------------------------------------------------------------------

    def _type(self, name: str) -> None:
        if name in self.types:
            self.write_int(self.types[name], as_long=False)
        else:
            self.types[name] = len(self.types)
            self.write_string(name)

    def _list(self, items: list) -> None:
        out = self.out
        typed = self._flip() and not self.canonical
        n = len(items)
        form = "short" if self.canonical else self.rng.choice(("variable", "fixed", "short"))
        if form == "short" and n <= 7:
            out.append((0x70 if typed else 0x78) + n)
            if typed:
                self._type("java.util.ArrayList")
        elif form == "fixed" or form == "short":
            out += b"V" if typed else b"X"
            if typed:
                self._type("[object")
            self.write_int(n, as_long=False)
        else:
            out += b"U" if typed else b"W"
            if typed:
                self._type("java.util.List")
        for item in items:
            self.write(item)
        if form == "variable":
            out += b"Z"

    def _map(self, mapping: dict) -> None:
        if self._flip() and not self.canonical:
            self.out += b"M"
            self._type("java.util.HashMap")
        else:
            self.out += b"H"
        for key, value in mapping.items():
            self.write(key)
            self.write(value)
        self.out += b"Z"

    def _object(self, obj: JavaObject) -> None:
        key = (obj.type, tuple(obj.fields))
        if key not in self.classes:
            self.classes[key] = len(self.classes)
            self.out += b"C"
            self.write_string(obj.type)
            self.write_int(len(obj.fields), as_long=False)
            for name in obj.fields:
                self.write_string(name)
        index = self.classes[key]
        if index <= 15 and self._flip():
            self.out.append(0x60 + index)
        else:
            self.out += b"O"
            self.write_int(index, as_long=False)
        for value in obj.fields.values():
            self.write(value)


def encode(*values, rng: random.Random | None = None, canonical: bool = False) -> bytes:
    writer = Writer(rng, canonical)
    for value in values:
        writer.write(value)
    return writer.bytes()
