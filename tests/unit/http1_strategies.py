"""Hypothesis strategies for valid HTTP/1.1 messages, and their bytes on the wire: what the codec
properties (test_http1_properties.py, test_codec_split_invariance.py) generate and check
against. A generated message knows what a correct parser must report for it."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
STATUSES = (200, 201, 202, 203, 206, 301, 302, 307, 400, 403, 404, 409, 429, 500, 502, 503)

_names = st.from_regex(r"\Ax-[a-z0-9][a-z0-9-]{0,11}\Z")
# Visible ASCII, inner spaces allowed; no leading or trailing whitespace (a parser trims it).
_values = st.from_regex(r"\A[!-~](?:[ !-~]{0,20}[!-~])?\Z")
_paths = st.from_regex(r"\A/[A-Za-z0-9._~!$&'()*+,;=:@%/-]{0,30}(?:\?[A-Za-z0-9._~=&%-]{0,20})?\Z")
_hosts = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?(?:\.[a-z]{2,5})?(?::[1-9][0-9]{0,3})?\Z")


@dataclass
class Message:
    """A request (method, path, host) or a response (status); headers as a parser reports them
    (lower-case names, arrival order), sent with the names in `wire_names`' case."""
    headers: list
    wire_names: list
    body: bytes | None          # None: no body and no framing header
    chunks: list                # chunked: the chunk sizes; empty: Content-Length
    method: str = "GET"
    path: str = "/"
    host: str = ""
    status: int = 200

    @property
    def chunked(self) -> bool:
        return self.body is not None and bool(self.chunks)

    def expected_headers(self) -> list:
        """What the parser must report: the headers, then Content-Length when that frames it
        (Transfer-Encoding is hop-by-hop: never reported)."""
        if self.body is not None and not self.chunks:
            return [*self.headers, ("content-length", str(len(self.body)))]
        return list(self.headers)


@st.composite
def _fields(draw):
    names = draw(st.lists(_names, max_size=6, unique=True))
    headers = [(n, draw(_values)) for n in names]
    wire = [n.title() if draw(st.booleans()) else n for n in names]
    return headers, wire


@st.composite
def _body(draw):
    if draw(st.booleans()):
        return None, []
    body = draw(st.binary(max_size=200))
    if not draw(st.booleans()):
        return body, []                 # Content-Length
    sizes, left = [], len(body)
    while left:
        n = draw(st.integers(1, max(1, left)))
        sizes.append(n)
        left -= n
    return body, sizes or [0]           # [0]: chunked with no data chunk


@st.composite
def requests(draw):
    headers, wire = draw(_fields())
    body, chunks = draw(_body())
    return Message(headers, wire, body, chunks, method=draw(st.sampled_from(METHODS)),
                   path=draw(_paths), host=draw(_hosts))


@st.composite
def responses(draw):
    headers, wire = draw(_fields())
    body, chunks = draw(_body())
    if body is None:
        body, chunks = b"", []          # a response without framing would run to the close
    return Message(headers, wire, body, chunks, status=draw(st.sampled_from(STATUSES)))


def _framed(m: Message) -> bytes:
    out = bytearray()
    for (_, value), name in zip(m.headers, m.wire_names):
        out += f"{name}: {value}\r\n".encode("latin-1")
    if m.body is None:
        return bytes(out + b"\r\n")
    if not m.chunks:
        return bytes(out + b"Content-Length: %d\r\n\r\n" % len(m.body) + m.body)
    out += b"Transfer-Encoding: chunked\r\n\r\n"
    pos = 0
    for size in m.chunks:
        if size:
            out += b"%x\r\n" % size + m.body[pos:pos + size] + b"\r\n"
            pos += size
    return bytes(out + b"0\r\n\r\n")


def serialize_request(m: Message) -> bytes:
    return f"{m.method} {m.path} HTTP/1.1\r\nHost: {m.host}\r\n".encode("latin-1") + _framed(m)


def serialize_response(m: Message, head_request: bool = False) -> bytes:
    """A response; to a HEAD request its head alone (its Content-Length still says the size)."""
    data = f"HTTP/1.1 {m.status} Whatever\r\n".encode() + _framed(m)
    if head_request:
        return data[:data.index(b"\r\n\r\n") + 4]
    return data
