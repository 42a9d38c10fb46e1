"""Istio's TCP metadata exchange (`istio.metadata_exchange` network filter, ALPN
`istio-peer-exchange`), sans-IO: each side of an mTLS connection that negotiated the
exchange's protocol sends one frame first, and takes the peer's frame off the front of what
it receives; every byte after it is the application's.

    0                   4                   8
    +-------------------+-------------------+------------------------------+
    | magic 0x3D230467  | size (bytes)      | google.protobuf.Any          |
    | uint32, big end.  | uint32, big end.  | (size bytes)                 |
    +-------------------+-------------------+------------------------------+
    Any.type_url = type.googleapis.com/google.protobuf.Struct
    Any.value    = Struct {"x-envoy-peer-metadata": <node metadata Struct>,
                           "x-envoy-peer-metadata-id": <node id>}

(istio/proxy metadata_exchange_initial_header.h and metadata_exchange.cc.) A stream that
does not start with the magic is not an exchange: Istio's filter then marks the peer unknown
and passes the bytes on untouched, and so does FrameReader.
"""

from __future__ import annotations

import struct

from .struct_codec import STRUCT_TYPE_URL, decode_any, decode_struct, encode_any, encode_struct

MAGIC = 0x3D230467
HEADER = struct.Struct("!II")
METADATA_KEY = "x-envoy-peer-metadata"
ID_KEY = "x-envoy-peer-metadata-id"
MAX_FRAME = 1 << 20        # a larger "size" is no exchange (a peer's metadata is a few KiB)


def frame(node_id: str, metadata: dict) -> bytes:
    data = {METADATA_KEY: metadata}
    if node_id:
        data[ID_KEY] = node_id
    payload = encode_any(STRUCT_TYPE_URL, encode_struct(data))
    return HEADER.pack(MAGIC, len(payload)) + payload


class FrameReader:
    """The peer's frame off the front of one direction of a connection."""

    __slots__ = ("buffer", "done", "peer_id", "peer_metadata")

    def __init__(self):
        self.buffer = bytearray()
        self.done = False
        self.peer_id = ""
        self.peer_metadata: dict | None = None   # None: no exchange (or not yet)

    def feed(self, data) -> bytes:
        """Bytes received -> the bytes past the frame, for the application (b"" while the
        frame is incomplete)."""
        if self.done:
            return bytes(data)
        buffer = self.buffer
        buffer += data
        if len(buffer) < HEADER.size:
            return b""
        magic, size = HEADER.unpack_from(buffer)
        if magic != MAGIC or size > MAX_FRAME:
            return self._finish(0)             # not an exchange: everything passes on
        end = HEADER.size + size
        if len(buffer) < end:
            return b""
        try:
            type_url, value = decode_any(buffer[HEADER.size:end])
            data = decode_struct(value) if type_url == STRUCT_TYPE_URL else {}
        except ValueError:
            data = {}
        metadata = data.get(METADATA_KEY)
        self.peer_metadata = metadata if isinstance(metadata, dict) else {}
        peer_id = data.get(ID_KEY)
        self.peer_id = peer_id if isinstance(peer_id, str) else ""
        return self._finish(end)

    def _finish(self, consumed: int) -> bytes:
        rest = bytes(self.buffer[consumed:])
        self.buffer = bytearray()
        self.done = True
        return rest
