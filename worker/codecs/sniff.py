"""Sans-IO protocol sniffer for listener filters (tls_inspector, http_inspector).

``sniff(data)`` looks at the first bytes a client sent on an intercepted connection and says
what they are, in Envoy's vocabulary:

* ``Sniffed("tls", alpn, sni)``          -- a TLS ClientHello (possibly spread over several
  records); ``alpn`` is the ClientHello's ALPN list in order, ``sni`` the lowercased host_name.
* ``Sniffed("raw_buffer", ("http/1.1",), None)`` -- a complete HTTP/1.x request line.
* ``Sniffed("raw_buffer", ("h2c",), None)``      -- the full HTTP/2 connection preface.
* ``Sniffed("raw_buffer", ("dubbo",), None)``    -- Dubbo's magic 0xdabb (Baton's rpc_inspector;
  the names are Baton's, for filter_chain_match.application_protocols).
* ``Sniffed("raw_buffer", ("bolt",), None)``     -- the start of a SOFA Bolt v1 request or
  heartbeat: protocol code 1, type request or oneway, command code heartbeat or request.
* ``Sniffed("raw_buffer", (), None)``            -- anything else, including malformed TLS.
* ``None`` -- undecided: ``data`` is a proper prefix of something recognisable. The caller peeks
  more (never beyond ``MAX_SNIFF``) or gives up on a timeout and treats the connection as
  ``raw_buffer``/().

Decisions depend only on a prefix of ``data``: once ``sniff(data)`` is not None,
``sniff(data + more)`` returns the same thing. Data beyond ``MAX_SNIFF`` is ignored, and a
verdict still pending at ``MAX_SNIFF`` bytes becomes raw_buffer. ``sniff`` never raises for any
bytes input.

No I/O here (worker/codecs/ is sans-IO by rule).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_SNIFF", "Sniffed", "sniff", "RAW", "HTTP1", "H2C", "DUBBO", "BOLT"]

MAX_SNIFF = 16 * 1024

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass(frozen=True)
class Sniffed:
    transport: str                 # "tls" or "raw_buffer"
    protocols: tuple[str, ...]     # ALPN list for TLS; ("http/1.1",) / ("h2c",) / () cleartext
    server_name: str | None        # TLS SNI host_name, lowercased; None otherwise


RAW = Sniffed("raw_buffer", (), None)
HTTP1 = Sniffed("raw_buffer", ("http/1.1",), None)
H2C = Sniffed("raw_buffer", ("h2c",), None)
DUBBO = Sniffed("raw_buffer", ("dubbo",), None)
BOLT = Sniffed("raw_buffer", ("bolt",), None)


def sniff(data: bytes) -> Sniffed | None:
    """Classify the first bytes of a connection; None means "need more bytes"."""
    data = bytes(data[:MAX_SNIFF])
    if not data:
        return None
    first = data[0]
    if first == 0x16:
        result = _sniff_tls(data)
    elif first in _TCHAR:             # 'P' of the h2 preface is a token char too
        result = _sniff_cleartext(data)
    elif first in _RPC_STARTS:
        result = _sniff_rpc(data)
    else:
        return RAW
    if result is None and len(data) >= MAX_SNIFF:
        return RAW
    return result


# -- HTTP/1.x and the h2c preface --------------------------------------------------------------

# RFC 7230 tchar. Any token of up to _MAX_METHOD chars is accepted as a method; this covers the
# usual GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH and extension methods.
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_MAX_METHOD = 20
# request-target: visible ASCII plus obs-text (raw UTF-8 in paths is seen in the wild).
_TARGET = frozenset(range(0x21, 0x7F)) | frozenset(range(0x80, 0x100))
_DIGITS = frozenset(b"0123456789")


def _sniff_cleartext(data: bytes) -> Sniffed | None:
    if data[:len(H2_PREFACE)] == H2_PREFACE[:len(data)]:
        return H2C if len(data) >= len(H2_PREFACE) else None
    return _sniff_http1(data)


def _sniff_http1(data: bytes) -> Sniffed | None:
    """METHOD SP request-target SP "HTTP/1." DIGIT CRLF, judged on whatever prefix is there."""
    n = len(data)
    i = 0
    while i < n and i <= _MAX_METHOD and data[i] in _TCHAR:
        i += 1
    if i == 0 or i > _MAX_METHOD:
        return RAW
    if i == n:
        return None
    if data[i] != 0x20:
        return RAW
    i += 1
    start = i
    while i < n and data[i] in _TARGET:
        i += 1
    if i == n:
        return None
    if i == start or data[i] != 0x20:
        return RAW
    i += 1
    tail = data[i:i + 10]             # b"HTTP/1.1\r\n"
    for k, b in enumerate(tail):
        if k == 7:
            ok = b in _DIGITS
        else:
            ok = b == b"HTTP/1.x\r\n"[k]
        if not ok:
            return RAW
    return HTTP1 if len(tail) == 10 else None


# -- Dubbo and SOFA Bolt -----------------------------------------------------------------------

# What each one's first bytes may be, byte by byte (worker/codecs/dubbo.py, bolt.py): Dubbo's
# magic; Bolt v1's protocol code 1, type request (1) or oneway (2), command code heartbeat
# (0x0000) or request (0x0001). What a client sends first is one of those.
_RPC_PATTERNS = ((DUBBO, (b"\xda", b"\xbb")),
                 (BOLT, (b"\x01", b"\x01\x02", b"\x00", b"\x00\x01")))
_RPC_STARTS = frozenset(pattern[0][0] for _, pattern in _RPC_PATTERNS)


def _sniff_rpc(data: bytes) -> Sniffed | None:
    for verdict, pattern in _RPC_PATTERNS:
        for i, allowed in enumerate(pattern):
            if i == len(data):
                return None
            if data[i] not in allowed:
                break
        else:
            return verdict
    return RAW


# -- TLS ClientHello ---------------------------------------------------------------------------

_RECORD_HEADER = 5
_MAX_RECORD = 1 << 14                 # TLSPlaintext.length limit
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16


class _Malformed(Exception):
    pass


def _sniff_tls(data: bytes) -> Sniffed | None:
    hs = _reassemble(data)
    if hs is None or isinstance(hs, Sniffed):
        return hs
    try:
        return _parse_client_hello(hs)
    except _Malformed:
        return RAW


def _reassemble(data: bytes) -> bytes | Sniffed | None:
    """Concatenate handshake-record fragments until the ClientHello message is complete.

    Returns the ClientHello body, RAW if the framing is wrong, or None if more bytes are needed.
    """
    pos = 0
    hs = bytearray()
    need: int | None = None           # full handshake message length (header included)
    n = len(data)
    while True:
        header = data[pos:pos + _RECORD_HEADER]
        if len(header) >= 1 and header[0] != _HANDSHAKE:
            return RAW
        if len(header) >= 2 and header[1] != 3:
            return RAW
        if len(header) >= 3 and not 1 <= header[2] <= 4:
            return RAW
        if len(header) < _RECORD_HEADER:
            return None
        length = header[3] << 8 | header[4]
        if length == 0 or length > _MAX_RECORD:
            return RAW
        pos += _RECORD_HEADER
        hs += data[pos:pos + length]
        available = min(length, n - pos)
        pos += available
        if need is None and len(hs) >= 4:
            if hs[0] != _CLIENT_HELLO:
                return RAW
            need = 4 + (hs[1] << 16 | hs[2] << 8 | hs[3])
            # Cannot fit in MAX_SNIFF even with one record: give up now rather than wait.
            if need == 4 or need + _RECORD_HEADER > MAX_SNIFF:
                return RAW
        elif need is None and hs and hs[0] != _CLIENT_HELLO:
            return RAW
        if need is not None and len(hs) >= need:
            return bytes(hs[4:need])
        if available < length:
            return None               # inside this record; more bytes will come


class _Reader:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None):
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, count: int) -> bytes:
        if count < 0 or count > self.end - self.pos:
            raise _Malformed
        out = self.buf[self.pos:self.pos + count]
        self.pos += count
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        b = self.take(2)
        return b[0] << 8 | b[1]

    def vec(self, width: int, minimum: int = 0) -> "_Reader":
        """A sub-reader over a length-prefixed vector (length field of `width` bytes)."""
        length = self.u8() if width == 1 else self.u16()
        if length < minimum:
            raise _Malformed
        start = self.pos
        self.take(length)
        return _Reader(self.buf, start, start + length)


def _parse_client_hello(body: bytes) -> Sniffed:
    r = _Reader(body)
    if r.u8() != 3:                   # legacy_version major
        raise _Malformed
    r.u8()
    r.take(32)                        # random
    session_id = r.vec(1)
    if session_id.remaining() > 32:
        raise _Malformed
    ciphers = r.vec(2, minimum=2)
    if ciphers.remaining() % 2:
        raise _Malformed
    r.vec(1, minimum=1)               # compression_methods
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    if r.remaining():                 # extensions are optional before TLS 1.3
        exts = r.vec(2)
        if r.remaining():
            raise _Malformed
        seen: set[int] = set()
        while exts.remaining():
            ext_type = exts.u16()
            ext = exts.vec(2)
            if ext_type in seen:
                raise _Malformed
            seen.add(ext_type)
            if ext_type == _EXT_SERVER_NAME:
                server_name = _parse_sni(ext)
            elif ext_type == _EXT_ALPN:
                alpn = _parse_alpn(ext)
    return Sniffed("tls", alpn, server_name)


def _parse_sni(ext: _Reader) -> str | None:
    names = ext.vec(2, minimum=1)
    if ext.remaining():
        raise _Malformed
    host: str | None = None
    while names.remaining():
        name_type = names.u8()
        name = _rest(names.vec(2))
        if name_type == 0 and host is None:
            # host_name: 1..255 visible ASCII bytes (no NUL, no spaces, no UTF-8).
            if not 1 <= len(name) <= 255 or any(not 0x21 <= b <= 0x7E for b in name):
                raise _Malformed
            host = name.decode("ascii").lower()
    return host


def _parse_alpn(ext: _Reader) -> tuple[str, ...]:
    names = ext.vec(2, minimum=2)
    if ext.remaining():
        raise _Malformed
    out = []
    while names.remaining():
        # ALPN ids are opaque bytes; latin-1 keeps every byte and decodes ASCII unchanged.
        out.append(_rest(names.vec(1, minimum=1)).decode("latin-1"))
    return tuple(out)


def _rest(r: _Reader) -> bytes:
    return r.take(r.remaining())
