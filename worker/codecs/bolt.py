"""SOFA Bolt protocol v1 (protocol code 1), sans-IO.

Request (22-byte header), response (20-byte header), all big-endian:

    proto(1) type(1) cmdcode(2) ver2(1) requestId(4) codec(1)
    request:  timeout(4)       classLen(2) headerLen(2) contentLen(4)
    response: respstatus(2)    classLen(2) headerLen(2) contentLen(4)
    then className, header, content

type: 0 response, 1 request, 2 oneway request. cmdcode: 0 heartbeat, 1 request, 2 response.
codec: 1 Hessian2, 11 protobuf. The header is Bolt's simple string map: repeated
(int32 key length, key, int32 value length, value), a value length of -1 meaning null.
Routing reads the class name and the header map (SOFARPC puts the service there:
"sofa_head_target_service", "service", method...); the content travels as bytes.

Bolt v2 (protocol code 2) adds a version byte, a switch byte and an optional CRC32; it is
refused for now with a clear error.

Errors: `BoltError` (a ValueError) for anything malformed.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .rpc_framing import FrameDecoder

PROTOCOL_V1 = 1
PROTOCOL_V2 = 2

TYPE_RESPONSE = 0
TYPE_REQUEST = 1
TYPE_ONEWAY = 2

CMD_HEARTBEAT = 0
CMD_REQUEST = 1
CMD_RESPONSE = 2

CODEC_HESSIAN2 = 1
CODEC_PROTOBUF = 11

# Response statuses (com.alipay.remoting.ResponseStatus).
SUCCESS = 0x0000
ERROR = 0x0001
SERVER_EXCEPTION = 0x0002
UNKNOWN = 0x0003
SERVER_THREADPOOL_BUSY = 0x0004
ERROR_COMM = 0x0005
NO_PROCESSOR = 0x0006
TIMEOUT = 0x0007
CLIENT_SEND_ERROR = 0x0008
CODEC_EXCEPTION = 0x0009
CONNECTION_CLOSED = 0x0010
SERVER_SERIAL_EXCEPTION = 0x0011
SERVER_DESERIAL_EXCEPTION = 0x0012

REQUEST_HEADER_SIZE = 22
RESPONSE_HEADER_SIZE = 20
# A frame bigger than this is refused (Bolt itself has no limit; 8 MiB as Dubbo's payload).
DEFAULT_MAX_FRAME = 8 << 20

_REQUEST = struct.Struct(">BBHBIBiHHi")
_RESPONSE = struct.Struct(">BBHBIBHHHi")
_ID = struct.Struct(">I")
_LEN = struct.Struct(">i")


class BoltError(ValueError):
    """A malformed Bolt frame."""


class Frame(NamedTuple):
    type: int
    cmd_code: int
    version: int
    request_id: int
    codec: int
    timeout: int             # requests: milliseconds (0: none); responses: 0
    status: int              # responses: the response status; requests: 0
    class_len: int
    header_len: int
    raw: bytes               # the whole frame as received

    @property
    def header_size(self) -> int:
        return RESPONSE_HEADER_SIZE if self.type == TYPE_RESPONSE else REQUEST_HEADER_SIZE

    @property
    def is_heartbeat(self) -> bool:
        return self.cmd_code == CMD_HEARTBEAT

    @property
    def is_request(self) -> bool:
        return self.type != TYPE_RESPONSE

    @property
    def oneway(self) -> bool:
        return self.type == TYPE_ONEWAY

    @property
    def class_name(self) -> str:
        start = self.header_size
        try:
            return self.raw[start:start + self.class_len].decode()
        except UnicodeDecodeError:
            raise BoltError("class name: not UTF-8") from None

    def header(self) -> dict:
        start = self.header_size + self.class_len
        return decode_header_map(self.raw[start:start + self.header_len])

    @property
    def content(self) -> memoryview:
        return memoryview(self.raw)[self.header_size + self.class_len + self.header_len:]


class Decoder(FrameDecoder):
    """Bytes in, whole frames out. `max_frame`: the largest frame accepted."""

    __slots__ = ()

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        super().__init__(max_frame)

    def _frame_at(self, buf, pos):
        left = len(buf) - pos
        if left < 1:
            return None
        proto = buf[pos]
        if proto != PROTOCOL_V1:
            if proto == PROTOCOL_V2:
                raise BoltError("Bolt protocol v2 is not supported (v1 only)")
            raise BoltError(f"unknown protocol code {proto} (Bolt v1 is 1)")
        if left < 2:
            return None
        kind = buf[pos + 1]
        if kind == TYPE_RESPONSE:
            if left < RESPONSE_HEADER_SIZE:
                return None
            (_, kind, cmd, ver, rid, codec, status, class_len, header_len,
             content_len) = _RESPONSE.unpack_from(buf, pos)
            timeout, head = 0, RESPONSE_HEADER_SIZE
        elif kind in (TYPE_REQUEST, TYPE_ONEWAY):
            if left < REQUEST_HEADER_SIZE:
                return None
            (_, kind, cmd, ver, rid, codec, timeout, class_len, header_len,
             content_len) = _REQUEST.unpack_from(buf, pos)
            status, head = 0, REQUEST_HEADER_SIZE
        else:
            raise BoltError(f"unknown command type {kind} (0 response, 1 request, 2 oneway)")
        if cmd not in (CMD_HEARTBEAT, CMD_REQUEST, CMD_RESPONSE):
            raise BoltError(f"unknown command code {cmd}")
        if content_len < 0:
            raise BoltError(f"negative content length {content_len}")
        total = head + class_len + header_len + content_len
        if total > self.limit:
            raise BoltError(f"frame of {total} bytes beyond the limit of {self.limit}")
        if left < total:
            return None
        return (Frame(kind, cmd, ver, rid, codec, timeout, status, class_len, header_len,
                      bytes(buf[pos:pos + total])), pos + total)


def decode_header_map(data) -> dict:
    """Bolt's simple string map -> {str: str or None}."""
    result, pos, end = {}, 0, len(data)
    while pos < end:
        key, pos = _map_string(data, pos, end, "key")
        value, pos = _map_string(data, pos, end, "value")
        if key is None:
            raise BoltError("header map: a null key")
        result[key] = value
    return result


def _map_string(data, pos: int, end: int, what: str):
    if end - pos < 4:
        raise BoltError(f"header map: truncated {what} length")
    length = _LEN.unpack_from(data, pos)[0]
    pos += 4
    if length == -1:
        return None, pos
    if length < 0 or end - pos < length:
        raise BoltError(f"header map: {what} length {length} beyond the header")
    try:
        return bytes(data[pos:pos + length]).decode(), pos + length
    except UnicodeDecodeError:
        raise BoltError(f"header map: {what} is not UTF-8") from None


def encode_header_map(header: dict) -> bytes:
    out = bytearray()
    for key, value in header.items():
        raw = key.encode()
        out += _LEN.pack(len(raw)) + raw
        if value is None:
            out += _LEN.pack(-1)
        else:
            raw = value.encode()
            out += _LEN.pack(len(raw)) + raw
    return bytes(out)


# -- writing ----------------------------------------------------------------------------------

def with_request_id(raw: bytes, request_id: int) -> bytearray:
    out = bytearray(raw)
    _ID.pack_into(out, 5, request_id)
    return out


def request(request_id: int, class_name: str = "", header: dict | None = None,
            content: bytes = b"", *, codec: int = CODEC_HESSIAN2, timeout: int = 0,
            oneway: bool = False, cmd_code: int = CMD_REQUEST) -> bytes:
    name = class_name.encode()
    head = encode_header_map(header or {})
    return _REQUEST.pack(PROTOCOL_V1, TYPE_ONEWAY if oneway else TYPE_REQUEST, cmd_code, 1,
                         request_id, codec, timeout, len(name), len(head),
                         len(content)) + name + head + bytes(content)


def response(request_id: int, status: int = SUCCESS, class_name: str = "",
             header: dict | None = None, content: bytes = b"", *, codec: int = CODEC_HESSIAN2,
             cmd_code: int = CMD_RESPONSE) -> bytes:
    name = class_name.encode()
    head = encode_header_map(header or {})
    return _RESPONSE.pack(PROTOCOL_V1, TYPE_RESPONSE, cmd_code, 1, request_id, codec, status,
                          len(name), len(head), len(content)) + name + head + bytes(content)


def heartbeat_response(request: Frame) -> bytes:
    """Bolt's HeartbeatAckCommand: a response with the heartbeat command code, SUCCESS and
    nothing else."""
    return response(request.request_id, SUCCESS, codec=request.codec, cmd_code=CMD_HEARTBEAT)


def error_response(request: Frame, status: int) -> bytes:
    """A local reply: the status alone, no class, header or content (a SOFA client then
    reports the status)."""
    return response(request.request_id, status, codec=request.codec)
