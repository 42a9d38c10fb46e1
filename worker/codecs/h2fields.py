"""HTTP/2 fields: what both HTTP/2 codecs (http2.py on h2, h2server.py without it) check and
translate the same way, so the two cannot drift: header validation (RFC 9113 8.2 and 8.3),
connection-specific fields, the request pseudo-headers."""

from __future__ import annotations

import re

from .message import Headers

# Fields that mean something only on one HTTP/1.1 hop: never sent in HTTP/2, and a request or
# response that carries them is malformed (RFC 9113 8.2.2). "te" is allowed as "trailers" only.
_CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection",
                                  "transfer-encoding", "upgrade"})
_CONNECTION_SPECIFIC_B = frozenset(name.encode() for name in _CONNECTION_SPECIFIC)
# Values HPACK should never put in its dynamic table (a compression oracle, as nghttp2 does).
_SENSITIVE = frozenset({"authorization", "proxy-authorization"})

# A field name is a lower-case token (RFC 9110 5.1, RFC 9113 8.2.1); a value has no NUL, CR or
# LF and no surrounding whitespace (RFC 9113 8.2.1). These also stop header injection into an
# HTTP/1.1 upstream, which would otherwise see a CR LF inside a value as a new line.
# A byte class is checked by bytes.translate into a table that maps every byte outside it to
# NUL, then a search for the int 0 (~0.8k instructions): a regex search costs ~1.75k a call,
# most of it before its first byte; `b"\0" in` would first try its needle as an int and clear
# the TypeError (~2.2k). A value's ends are checked apart (strip): one regex with anchored
# alternatives tries them at every byte.


def _byte_class(allowed: bytes) -> bytes:
    """The translate table of a byte class: 1 for the bytes `allowed`, 0 (NUL) for the rest."""
    return bytes(1 if byte in allowed else 0 for byte in range(256))


_TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_NAME_BYTES = _byte_class(_TOKEN)
_METHOD_BYTES = _byte_class(_TOKEN + b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_VALUE_BYTES = _byte_class(bytes(set(range(256)) - set(b"\x00\r\n")))
# :path and :authority: no control byte, space or DEL.
_TARGET_BYTES = _byte_class(bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100)))
_bad_scheme = re.compile(rb"\A[A-Za-z][A-Za-z0-9+.\-]*\Z").match      # a match means *good*
_USUAL_SCHEMES = frozenset({b"http", b"https"})     # good without the regex
_USUAL_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS",
                            b"TRACE", b"PATCH"})    # tokens, good without the translate


def _bad_name(name: bytes) -> bool:
    return 0 in name.translate(_NAME_BYTES)


def _bad_method(method: bytes) -> bool:
    return 0 in method.translate(_METHOD_BYTES)


def _bad_value(value: bytes) -> bool:
    return 0 in value.translate(_VALUE_BYTES) or value.strip(b" \t") != value


def _bad_target(target: bytes) -> bool:
    return 0 in target.translate(_TARGET_BYTES)


_STATUS_BYTES = {code: str(code).encode() for code in range(100, 1000)}


def _connection_nominated(items) -> frozenset:
    """Names that a `connection` header lists (hop-by-hop for the HTTP/1.1 hop it came from)."""
    listed = set()
    for name, value in items:
        if name == "connection":
            for token in value.split(","):
                token = token.strip().lower()
                if token:
                    listed.add(token)
    return frozenset(listed)


def _regular_field(name: bytes, value: bytes) -> str | None:
    """Why a received regular (non-pseudo) field is malformed, or None."""
    if not name or _bad_name(name):
        return f"invalid header name {name!r}"
    if _bad_value(value):
        return f"invalid value for header {name!r}"
    if name in _CONNECTION_SPECIFIC_B:
        return f"connection-specific header {name!r}"
    if name == b"te" and value != b"trailers":
        return "te other than trailers"
    return None


def _trailers(raw) -> Headers | str:
    """Received trailers as Headers, or why they are malformed."""
    items = []
    for name, value in raw:
        if name[:1] == b":":
            return "pseudo-header in trailers"
        error = _regular_field(name, value)
        if error:
            return error
        items.append((name.decode("latin-1"), value.decode("latin-1")))
    return Headers(items)


class TrailersAnalysis:
    """_trailers a slice of fields at a time, for trailers decoded in slices (h2slice.py):
    add() each slice in order, then result(). The first malformed field decides."""

    __slots__ = ("items", "error")

    def __init__(self):
        self.items: list = []
        self.error: str | None = None

    def add(self, raw) -> None:
        if self.error is None:
            checked = _trailers(raw)
            if isinstance(checked, str):
                self.error = checked
            else:
                self.items += checked.items

    def result(self) -> Headers | str:
        return self.error if self.error is not None else Headers(self.items)


# :authority values found good (most requests of a process name a few): the same one next time
# is good without its check. The process's, at most 256 of up to 255 bytes.
_good_authorities: set = set()
_GOOD_AUTHORITIES = 256
_GOOD_AUTHORITY_BYTES = 255


def _pseudo_error(method, path, scheme, authority, host) -> str | None:
    if method is None or method not in _USUAL_METHODS and (not method or _bad_method(method)):
        return "missing or invalid :method"
    if authority is not None and authority not in _good_authorities:
        if _bad_target(authority):
            return "invalid :authority"
        if len(authority) <= _GOOD_AUTHORITY_BYTES:
            if len(_good_authorities) >= _GOOD_AUTHORITIES:
                _good_authorities.clear()
            _good_authorities.add(authority)
    if host is not None and _bad_target(host):
        return "invalid host"
    if method == b"CONNECT":
        if path is not None or scheme is not None:
            return "CONNECT with :path or :scheme"
        if not authority:
            return "CONNECT without :authority"
        return None
    if scheme is None or scheme not in _USUAL_SCHEMES and not _bad_scheme(scheme):
        return "missing or invalid :scheme"
    if not path or _bad_target(path):
        return "missing or invalid :path"
    if path[0] != 0x2F and not (path == b"*" and method == b"OPTIONS"):   # "/"
        return "invalid :path"
    return None


_digits = frozenset(b"0123456789")

# Regular field names a request carried that passed _regular_field's name checks and mean
# nothing to the analysis but a name: their next field needs only its value checked (most
# names repeat from request to request, even when values change). Whether a name is good is
# the name's alone, so the verdicts are the process's, a bounded number of short names.
_plain_names: dict = {}
_PLAIN_NAMES = 512
_PLAIN_NAME_BYTES = 64
# Names whose value the analysis reads, or that a value may make malformed (te).
_NOT_PLAIN = frozenset({b"cookie", b"host", b"expect", b"content-length", b"te"})


def analyze_request(raw, max_header_bytes: int, max_headers: int) -> tuple | str:
    """What a request's fields say, independent of the stream (the lean codec caches it with
    the header block): why they are malformed, or (too large: why or None, method, path,
    authority, scheme, items, expect 100-continue, CONNECT, content-length or None); strings
    decoded, path and scheme None for CONNECT."""
    analysis = RequestAnalysis()
    analysis.add(raw)
    return analysis.result(max_header_bytes, max_headers)


class RequestAnalysis:
    """analyze_request a slice of fields at a time, for a header block decoded in slices
    (h2slice.py): add() each slice in order, then result(). The first malformed field
    decides, as in one pass."""

    __slots__ = ("method", "path", "scheme", "authority", "host", "items", "cookies", "size",
                 "count", "regular", "expect_continue", "length", "error")

    def __init__(self):
        self.method = self.path = self.scheme = self.authority = self.host = None
        self.items: list = []
        self.cookies: list | None = None
        self.size = 0
        self.count = 0
        self.regular = False
        self.expect_continue = False
        self.length: int | None = None
        self.error: str | None = None

    def add(self, raw) -> None:
        if self.error is not None:
            return
        method, path, scheme, authority = self.method, self.path, self.scheme, self.authority
        items = self.items
        size = self.size
        regular = self.regular
        error = None
        self.count += len(raw)
        try:
            for name, value in raw:
                size += len(name) + len(value)
                if name[:1] == b":":
                    if regular:
                        error = "pseudo-header after regular header"
                    elif name == b":method":
                        error = "duplicate :method" if method is not None else None
                        method = value
                    elif name == b":path":
                        error = "duplicate :path" if path is not None else None
                        path = value
                    elif name == b":scheme":
                        error = "duplicate :scheme" if scheme is not None else None
                        scheme = value
                    elif name == b":authority":
                        error = "duplicate :authority" if authority is not None else None
                        authority = value
                    else:
                        error = f"unknown pseudo-header {name!r}"
                    if error:
                        return
                    continue
                regular = True
                decoded_name = _plain_names.get(name)
                if decoded_name is not None:
                    # A name found good and plain before: only its value is left to check
                    # (_bad_value, without the call: the field most requests have most of).
                    if 0 in value.translate(_VALUE_BYTES) or value.strip(b" \t") != value:
                        error = f"invalid value for header {name!r}"
                        return
                    items.append((decoded_name, value.decode("latin-1")))
                    continue
                error = _regular_field(name, value)
                if error:
                    return
                if name == b"cookie":
                    # RFC 9113 8.2.3: crumbs are joined into one field for HTTP/1.1.
                    if self.cookies is None:
                        self.cookies = [value]
                        items.append(None)      # the joined cookie goes here
                    else:
                        self.cookies.append(value)
                    continue
                if name == b"host":
                    self.host = value
                    continue
                if name == b"expect" and value.lower() == b"100-continue":
                    self.expect_continue = True
                    continue
                if name == b"content-length":
                    # RFC 9113 8.1.1: the body must be as long as it says.
                    length = self.length
                    if not value or not _digits.issuperset(value) or \
                            (length is not None and int(value) != length):
                        error = "invalid or conflicting content-length"
                        return
                    self.length = int(value)
                decoded_name = name.decode("latin-1")
                if name not in _NOT_PLAIN and len(name) <= _PLAIN_NAME_BYTES:
                    if len(_plain_names) >= _PLAIN_NAMES:
                        _plain_names.clear()
                    _plain_names[name] = decoded_name
                items.append((decoded_name, value.decode("latin-1")))
        finally:
            self.method, self.path, self.scheme, self.authority = method, path, scheme, authority
            self.size = size
            self.regular = regular
            self.error = error

    def result(self, max_header_bytes: int, max_headers: int) -> tuple | str:
        """As analyze_request: why the fields are malformed, or what they say."""
        if self.error is not None:
            return self.error
        method, path, scheme, authority = self.method, self.path, self.scheme, self.authority
        error = _pseudo_error(method, path, scheme, authority, self.host)
        if error is not None:
            return error
        too_large = None
        size = self.size
        if size > max_header_bytes or self.count > max_headers:
            # Envoy's codec counts the fields as they come: with small fields the count limit
            # is crossed first (http2.header_overflow), so it is named first.
            too_large = "request headers " + \
                ("too many" if self.count > max_headers else "too large")
        items = self.items
        if self.cookies is not None:
            items[items.index(None)] = ("cookie", b"; ".join(self.cookies).decode("latin-1"))
        if authority is None:
            authority = self.host if self.host is not None else b""
        connect = method == b"CONNECT"
        return (too_large, method.decode("latin-1"),
                None if connect else path.decode("latin-1"), authority.decode("latin-1"),
                None if connect else scheme.decode("latin-1"), tuple(items),
                self.expect_continue, connect, self.length)
