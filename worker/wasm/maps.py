"""proxy-wasm header maps: the ABI's map encoding, and maps that view Baton's messages.

    serialize_pairs(pairs) / parse_pairs(data)       the encoding (count, sizes, NUL-ended)
    RequestMap(request) / ResponseMap(response)     views with Envoy's pseudo-headers
    PairsMap(items)                                 a plain list (trailers, call responses)

The pseudo-headers :authority, :path, :method, :scheme (request) and :status (response) are
the messages' attributes, in both directions. Baton's header values are latin-1 `str`
(worker/codecs/message.py); the guest sees bytes.
"""

from __future__ import annotations

import struct

_U32 = struct.Struct("<I")


def serialize_pairs(pairs) -> bytes:
    """[(key, value)] bytes pairs -> the ABI's map encoding: count, then (key size, value
    size) per pair, then each key and value followed by a NUL."""
    out = [_U32.pack(len(pairs))]
    out += [struct.pack("<II", len(k), len(v)) for k, v in pairs]
    for k, v in pairs:
        out.append(k + b"\0" + v + b"\0")
    return b"".join(out)


def parse_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """The map encoding -> pairs; empty or a single byte (some SDKs send b"\\0") is no pair.
    Raises ValueError on a truncated map, a missing NUL or bytes after the last pair."""
    if len(data) <= 1:
        return []
    (count,) = _U32.unpack_from(data, 0)
    if 4 + 8 * count > len(data):
        raise ValueError("map sizes run past the data")
    sizes = struct.unpack_from(f"<{2 * count}I", data, 4)
    pos = 4 + 8 * count
    pairs = []
    for i in range(count):
        key_size, value_size = sizes[2 * i], sizes[2 * i + 1]
        end = pos + key_size + value_size + 2
        if end > len(data):
            raise ValueError("map pair runs past the data")
        if data[pos + key_size] or data[end - 1]:
            raise ValueError("map key or value without its NUL")
        pairs.append((data[pos:pos + key_size], data[pos + key_size + 1:end - 1]))
        pos = end
    if pos != len(data):        # cpp-host's toPairs refuses the whole map (pairs_util.cc)
        raise ValueError("bytes after the map's last pair")
    return pairs


def _text(data: bytes) -> str:
    return data.decode("latin-1")


def _raw(text: str) -> bytes:
    return text.encode("latin-1", "replace")


# --- header maps ---------------------------------------------------------------------------

class PairsMap:
    """A map that is only a list of pairs (trailers, a map the stream has not got yet)."""

    __slots__ = ("items",)

    def __init__(self, items=None):
        self.items = items if items is not None else []     # [(str name, str value)]

    def pairs(self) -> list[tuple[bytes, bytes]]:
        return [(_raw(k), _raw(v)) for k, v in self.items]

    def get(self, key: bytes) -> bytes | None:
        name = _text(key).lower()
        values = [v for k, v in self.items if k == name]
        return _raw(",".join(values)) if values else None

    def add(self, key: bytes, value: bytes) -> None:
        self.items.append((_text(key).lower(), _text(value)))

    def replace(self, key: bytes, value: bytes) -> None:
        self.remove(key)
        self.add(key, value)

    def remove(self, key: bytes) -> None:
        name = _text(key).lower()
        self.items = [kv for kv in self.items if kv[0] != name]

    def set_pairs(self, pairs) -> None:
        self.items = []
        for k, v in pairs:
            self.add(k, v)


class HeadersMap(PairsMap):
    """A view of a worker/codecs/message.py Headers, plus pseudo-headers (subclasses)."""

    __slots__ = ("headers",)
    PSEUDO: tuple = ()

    def __init__(self, headers):
        self.headers = headers

    @property
    def items(self):
        return self.headers.items

    @items.setter
    def items(self, value):
        self.headers.items = value

    def pairs(self):
        return [(name, _raw(self._pseudo(_text(name)))) for name in self.PSEUDO] + \
            [(_raw(k), _raw(v)) for k, v in self.headers.items]

    def get(self, key: bytes) -> bytes | None:
        if key[:1] == b":":
            return _raw(self._pseudo(_text(key))) if key in self.PSEUDO else None
        return PairsMap.get(self, key)

    def add(self, key: bytes, value: bytes) -> None:
        if key[:1] == b":":
            self.replace(key, value)
        else:
            PairsMap.add(self, key, value)

    def replace(self, key: bytes, value: bytes) -> None:
        if key[:1] == b":":
            if key in self.PSEUDO:
                self._set_pseudo(_text(key), _text(value))
            return
        self.headers.set(_text(key).lower(), _text(value))

    def remove(self, key: bytes) -> None:
        if key[:1] == b":":
            return                      # a pseudo-header cannot go (Envoy keeps it too)
        PairsMap.remove(self, key)

    def set_pairs(self, pairs) -> None:
        self.headers.items = []
        for k, v in pairs:
            self.add(k, v)

    def _pseudo(self, name: str) -> str:
        raise NotImplementedError

    def _set_pseudo(self, name: str, value: str) -> None:
        raise NotImplementedError


class RequestMap(HeadersMap):
    """Request headers as Envoy's map holds them: :authority, :path, :method, :scheme first.

    `changed`: called after every change (the plugin layer sets it to the stream's
    clear_route_cache: Envoy's Wasm Context clears the route cache whenever a plugin changes
    the request headers, onHeadersModified)."""

    __slots__ = ("request", "changed")
    PSEUDO = (b":authority", b":path", b":method", b":scheme")
    _ATTRS = {":authority": "authority", ":path": "path", ":method": "method",
              ":scheme": "scheme"}

    def __init__(self, request):
        super().__init__(request.headers)
        self.request = request
        self.changed = None

    def add(self, key: bytes, value: bytes) -> None:
        HeadersMap.add(self, key, value)
        self._changed()

    def replace(self, key: bytes, value: bytes) -> None:
        HeadersMap.replace(self, key, value)
        self._changed()

    def remove(self, key: bytes) -> None:
        HeadersMap.remove(self, key)
        self._changed()

    def set_pairs(self, pairs) -> None:
        HeadersMap.set_pairs(self, pairs)
        self._changed()

    def _changed(self) -> None:
        if self.changed is not None:
            self.changed()

    def _pseudo(self, name):
        return getattr(self.request, self._ATTRS[name])

    def _set_pseudo(self, name, value):
        setattr(self.request, self._ATTRS[name], value)


class ResponseMap(HeadersMap):
    __slots__ = ("response",)
    PSEUDO = (b":status",)

    def __init__(self, response):
        super().__init__(response.headers)
        self.response = response

    def _pseudo(self, name):
        return str(self.response.status)

    def _set_pseudo(self, name, value):
        if value.isdigit():
            self.response.status = int(value)
