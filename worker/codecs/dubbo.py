"""Dubbo's wire protocol (the "dubbo://" protocol of Dubbo 2.x), sans-IO.

A frame is a 16-byte header and a body:

    0-1   magic 0xdabb
    2     flags: 0x80 request, 0x40 two-way, 0x20 event (heartbeat), low 5 bits the
          serialization id (2 = Hessian2, the only one Baton reads bodies of)
    3     status (responses: 20 OK, 30 client timeout, 31 server timeout, 60 service not
          found, 80 server error...)
    4-11  request id, unsigned 64-bit
    12-15 body length, signed 32-bit

A request body is a sequence of Hessian2 values: dubbo version, service path, service
version, method name, parameter types descriptor (JVM descriptors, "Ljava/lang/String;I"),
one value per parameter, then the attachments map (group, version, timeout, custom keys).
The proxy routes on those, so `invocation()` reads them; the frame itself travels as the
original bytes (only the request id is rewritten, in place in the header).

Errors: `DubboError` (a ValueError) for anything malformed; the Hessian reader's errors are
wrapped in it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .hessian2 import NULL, HessianError, Reader, write_string
from .rpc_framing import FrameDecoder

MAGIC = b"\xda\xbb"
HEADER_SIZE = 16
FLAG_REQUEST = 0x80
FLAG_TWO_WAY = 0x40
FLAG_EVENT = 0x20
SERIALIZATION_MASK = 0x1F
HESSIAN2 = 2
# Dubbo's default `payload` limit (8 MiB): a bigger body is refused as Dubbo refuses it.
DEFAULT_MAX_BODY = 8 << 20

# Response statuses (org.apache.dubbo.remoting.exchange.Response).
OK = 20
CLIENT_TIMEOUT = 30
SERVER_TIMEOUT = 31
BAD_REQUEST = 40
BAD_RESPONSE = 50
SERVICE_NOT_FOUND = 60
SERVICE_ERROR = 70
SERVER_ERROR = 80
CLIENT_ERROR = 90
SERVER_THREADPOOL_EXHAUSTED = 100

_HEADER = struct.Struct(">2sBBQi")
_ID = struct.Struct(">Q")


class DubboError(ValueError):
    """A malformed Dubbo frame or body."""


class Frame(NamedTuple):
    flags: int
    status: int
    request_id: int
    raw: bytes               # the whole frame, header and body, as received

    @property
    def is_request(self) -> bool:
        return bool(self.flags & FLAG_REQUEST)

    @property
    def two_way(self) -> bool:
        return bool(self.flags & FLAG_TWO_WAY)

    @property
    def is_event(self) -> bool:
        return bool(self.flags & FLAG_EVENT)

    @property
    def serialization(self) -> int:
        return self.flags & SERIALIZATION_MASK

    @property
    def body(self) -> memoryview:
        return memoryview(self.raw)[HEADER_SIZE:]

    @property
    def is_heartbeat(self) -> bool:
        """An event whose body is null: Dubbo's heartbeat (other events, such as
        "R" read-only notices, carry a string)."""
        return self.is_event and bytes(self.raw[HEADER_SIZE:]) in (b"", NULL)


class Invocation(NamedTuple):
    dubbo_version: str
    service: str             # the interface (service path)
    version: str             # the service version (body), "" if none
    method: str
    parameter_types: str
    arguments: tuple         # the decoded arguments (routing may match on them)
    attachments: dict        # str -> value; group, version, timeout, custom keys

    @property
    def group(self) -> str | None:
        value = self.attachments.get("group")
        return value if isinstance(value, str) else None


class Decoder(FrameDecoder):
    """Bytes in, whole frames out. `max_body`: the largest body accepted."""

    __slots__ = ()

    def __init__(self, max_body: int = DEFAULT_MAX_BODY):
        super().__init__(max_body)

    def _frame_at(self, buf, pos):
        if len(buf) - pos < HEADER_SIZE:
            return None
        magic, flags, status, request_id, length = _HEADER.unpack_from(buf, pos)
        if magic != MAGIC:
            raise DubboError(f"bad magic 0x{magic.hex()} (a Dubbo frame starts with 0xdabb)")
        if length < 0 or length > self.limit:
            raise DubboError(f"body length {length} beyond the limit of {self.limit}")
        end = pos + HEADER_SIZE + length
        if end > len(buf):
            return None
        return Frame(flags, status, request_id, bytes(buf[pos:end])), end


def invocation(frame: Frame, arguments: bool = True) -> Invocation:
    """The call a Hessian2 request carries. `arguments`: decode the arguments too (needed for
    parameter matches; otherwise still walked, to reach the attachments)."""
    if frame.serialization != HESSIAN2:
        raise DubboError(f"serialization {frame.serialization} not supported (Hessian2 is 2)")
    reader = Reader(frame.raw, HEADER_SIZE)
    try:
        dubbo_version = _text(reader, "dubbo version")
        service = _text(reader, "service path")
        version = reader.read_string() or ""
        method = _text(reader, "method name")
        types = reader.read_string() or ""
        values = []
        for _ in range(parameter_count(types)):
            if arguments:
                values.append(reader.read())
            else:
                reader.skip()
        attachments = {}
        if not reader.at_end:
            found = reader.read()
            if not isinstance(found, dict):
                raise DubboError(f"attachments: a map expected, got {type(found).__name__}")
            attachments = {k: v for k, v in found.items() if isinstance(k, str)}
    except HessianError as exc:
        raise DubboError(f"request body: {exc}") from None
    return Invocation(dubbo_version, service, version, method, types, tuple(values), attachments)


def _text(reader: Reader, what: str) -> str:
    value = reader.read_string()
    if value is None:
        raise DubboError(f"request body: {what} is null")
    return value


def parameter_count(descriptor: str) -> int:
    """How many parameters a JVM descriptor list names ("Ljava/lang/String;[II" -> 2)."""
    count, i, n = 0, 0, len(descriptor)
    while i < n:
        c = descriptor[i]
        while c == "[":
            i += 1
            if i >= n:
                raise DubboError(f"parameter types {descriptor!r}: '[' without a type")
            c = descriptor[i]
        if c == "L":
            end = descriptor.find(";", i)
            if end < 0:
                raise DubboError(f"parameter types {descriptor!r}: 'L' without ';'")
            i = end + 1
        elif c in "ZBCDFIJSV":
            i += 1
        else:
            raise DubboError(f"parameter types {descriptor!r}: unknown type {c!r}")
        count += 1
    return count


# -- writing ----------------------------------------------------------------------------------

def with_request_id(raw: bytes, request_id: int) -> bytearray:
    """`raw` (a frame) with another request id; the rest untouched."""
    out = bytearray(raw)
    _ID.pack_into(out, 4, request_id)
    return out


def frame(flags: int, status: int, request_id: int, body: bytes) -> bytes:
    return _HEADER.pack(MAGIC, flags, status, request_id, len(body)) + body


def heartbeat_response(request: Frame) -> bytes:
    """The answer to a heartbeat: an OK event response with a null body, in the request's
    serialization (what Dubbo's HeartbeatHandler sends back)."""
    return frame(FLAG_EVENT | request.serialization, OK, request.request_id, NULL)


def heartbeat_request(request_id: int, serialization: int = HESSIAN2) -> bytes:
    return frame(FLAG_REQUEST | FLAG_TWO_WAY | FLAG_EVENT | serialization, 0, request_id, NULL)


def error_response(request: Frame, status: int, message: str) -> bytes:
    """A local reply with a non-OK status in Dubbo's own format (ExchangeCodec): the body is
    the error message, one Hessian2 string.

    Envoy 1.40's dubbo_proxy writes the same status and message but puts the response type
    "with exception" (int 0) before the message, which a Dubbo consumer does not expect for
    a non-OK status: dubbo-remoting (Node.js) closes the connection on it, Java's Hessian
    reads the 0 as the message. Baton writes what the consumers read."""
    return frame(request.serialization or HESSIAN2, status, request.request_id,
                 write_string(message))
