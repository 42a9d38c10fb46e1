"""Istio's HTTP metadata exchange: each sidecar tells the other who it is in two headers.

    x-envoy-peer-metadata-id   the sender's node id
    x-envoy-peer-metadata      base64 of a google.protobuf.Struct: the sender's node metadata
                               (workload.SHARED_KEYS), struct_codec.py

The filter reads (and removes, so the application never sees them) and adds them at four
points; the config says which (xds/http_filters_istio.py), as Istio's
io.istio.http.peer_metadata.Config does with its *_discovery / *_propagation lists:

    read_request     the downstream peer (inbound: the calling sidecar)
    write_request    this node, to the upstream (outbound)
    read_response    the upstream peer (outbound: the called sidecar)
    write_response   this node, back to the downstream (inbound)

The older filter (istio.metadata_exchange, Istio 1.9's null-VM built-in) has no such
settings: "auto" picks by the listener's direction, inbound reading the request and
answering in the response, outbound the other way round. The stats filter (http_stats.py)
finds the peers here at the end of the stream.
"""

from __future__ import annotations

import base64
import binascii

from ..http.filter import FilterFactory, StreamFilter, register
from . import struct_codec
from .direction import is_inbound, local_node
from .workload import UNKNOWN_WORKLOAD, Workload, from_metadata, shared_metadata

HEADER = "x-envoy-peer-metadata"
HEADER_ID = "x-envoy-peer-metadata-id"
FLAGS = ("read_request", "write_request", "read_response", "write_response")
_INBOUND = {"read_request": True, "write_response": True}
_OUTBOUND = {"write_request": True, "read_response": True}


def encode_header(metadata: dict) -> str:
    return base64.b64encode(struct_codec.encode_struct(metadata)).decode()


def decode_header(value: str) -> dict | None:
    """The header's Struct as a dict; None when it is not base64 of a Struct."""
    try:
        return struct_codec.decode_struct(base64.b64decode(value, validate=True))
    except (ValueError, binascii.Error):
        return None


def take_peer(headers) -> Workload | None:
    """Read and remove the peer headers; None when there were none (or they did not
    decode: Istio then knows no peer either)."""
    value = headers.get(HEADER)
    if value is None:
        headers.remove(HEADER_ID)
        return None
    headers.remove(HEADER)
    headers.remove(HEADER_ID)
    metadata = decode_header(value)
    if not metadata:
        return None
    from .connect_baggage import owner_kind, with_kind     # (the kind a baggage names it by)
    return with_kind(from_metadata(metadata),
                     owner_kind(metadata.get("OWNER"), metadata.get("WORKLOAD_NAME")))


@register("istio.metadata_exchange")
class PeerMetadataFactory(FilterFactory):
    def __init__(self, config: dict, context):
        super().__init__(config, context)
        node = local_node(context.worker)
        self.local_id = node.get("id") or ""
        self.local_header = encode_header(shared_metadata(node.get("metadata")))
        self.auto = bool(config.get("auto"))

    def create(self, stream):
        flags = self.config
        if self.auto:
            flags = _INBOUND if is_inbound(stream.conn.listener) else _OUTBOUND
        return PeerMetadataFilter(stream, self, flags)


class PeerMetadataFilter(StreamFilter):
    __slots__ = ("factory", "flags", "downstream_peer", "upstream_peer")

    def __init__(self, stream, factory, flags: dict):
        super().__init__(stream)
        self.factory = factory
        self.flags = flags
        self.downstream_peer = None
        self.upstream_peer = None

    def _write(self, headers) -> None:
        headers.set(HEADER_ID, self.factory.local_id)
        headers.set(HEADER, self.factory.local_header)

    def on_request_headers(self, request, end_stream: bool):
        if self.flags.get("read_request"):
            self.downstream_peer = take_peer(request.headers)
        if self.flags.get("write_request"):
            self._write(request.headers)
        return None

    def on_response_headers(self, response, end_stream: bool):
        if self.flags.get("read_response"):
            self.upstream_peer = take_peer(response.headers)
        if self.flags.get("write_response"):
            self._write(response.headers)
        return None


def peer_of(stream, inbound: bool) -> Workload:
    """The peer the exchange found for this stream: the downstream one on inbound traffic,
    the upstream one otherwise; unknown without an exchange filter or headers."""
    for stream_filter in stream.filters:
        if isinstance(stream_filter, PeerMetadataFilter):
            peer = stream_filter.downstream_peer if inbound else stream_filter.upstream_peer
            return peer or UNKNOWN_WORKLOAD
    return UNKNOWN_WORKLOAD
