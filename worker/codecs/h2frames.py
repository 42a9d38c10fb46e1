"""HTTP/2 on the wire (RFC 9113): error codes, frame types and flags, settings identifiers,
the frame header; what the server codec (h2server.py) and its helpers read and write."""

from __future__ import annotations

import struct

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# RFC 9113 section 7 error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

# Frame types (RFC 9113 6) and flags.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
F_END_STREAM = 0x1
F_ACK = 0x1
F_END_HEADERS = 0x4
F_PADDED = 0x8
F_PRIORITY = 0x20

# SETTINGS identifiers.
S_HEADER_TABLE_SIZE = 0x1
S_ENABLE_PUSH = 0x2
S_MAX_CONCURRENT_STREAMS = 0x3
S_INITIAL_WINDOW_SIZE = 0x4
S_MAX_FRAME_SIZE = 0x5
S_MAX_HEADER_LIST_SIZE = 0x6

_MAX_STREAM_ID = 2**31 - 1
_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65535
_DEFAULT_FRAME_SIZE = 16384

# Frame header (RFC 9113 4.1), read and written as three fields:
#
#   +-----------------------------------------------+
#   |                 Length (24)                   |
#   +---------------+---------------+---------------+
#   |   Type (8)    |   Flags (8)   |
#   +-+-------------+---------------+-------------------------------+
#   |R|                 Stream Identifier (31)                      |
#   +=+=============================================================+
#
# ">LBL": (length << 8 | type), flags, (R bit | stream id).
_HEAD = struct.Struct(">LBL")
_head_unpack = _HEAD.unpack_from
_head_pack = _HEAD.pack
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_GOAWAY = struct.Struct(">LL")

def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _head_pack(len(payload) << 8 | kind, flags, stream_id) + payload
