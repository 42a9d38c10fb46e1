"""proxy-wasm properties: Envoy's attribute names, read from a stream context, and their
encoding (strings raw, integers 8-byte little-endian, booleans one byte, pairs as a map,
a dict as a google.protobuf.Struct)."""

from __future__ import annotations

import struct

from .maps import _raw, serialize_pairs

_I64 = struct.Struct("<q")


def encode_property(value) -> bytes | None:
    """A property's value as Envoy serializes it: strings raw, integers 8-byte little-endian,
    booleans one byte, a list of pairs as a map, a dict as a google.protobuf.Struct."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return _raw(value)
    if isinstance(value, bool):
        return b"\1" if value else b"\0"
    if isinstance(value, int):
        return _I64.pack(value)
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, list):
        return serialize_pairs([(_raw(k), _raw(v)) for k, v in value])
    if isinstance(value, dict):
        from google.protobuf import json_format, struct_pb2
        return json_format.ParseDict(value, struct_pb2.Struct()).SerializeToString()
    return None


def _address(pair):
    """(host, port) -> "host:port" ("[v6]:port"), as Envoy's Address::asString."""
    if not pair:
        return None
    host, port = pair[0], pair[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _nested(value, keys):
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _info(attribute):
    """A StreamInfo attribute's reader (None without a stream)."""
    return lambda ctx, info: getattr(info, attribute) if info is not None else None


def _request(read):
    # None once the request headers have gone on (maps[0] kept as None, worker/proxy/http/
    # wasm.py _gone): Envoy's attributes read them from the Context, which forgot them.
    return lambda ctx, info: read(ctx.request) if ctx.request is not None and \
        ctx.maps.get(0, ctx) is not None else None


def _request_headers(request):
    return [(":authority", request.authority), (":path", request.path),
            (":method", request.method), (":scheme", request.scheme), *request.headers.items]


def _response_code(ctx, info):
    if ctx.response is not None:
        return ctx.response.status
    return (info.response_code or None) if info is not None else None


def _response_headers(ctx, info):
    response = ctx.response
    return None if response is None else [(":status", str(response.status)),
                                          *response.headers.items]


def _side(attribute, part):
    def read(ctx, info):
        pair = getattr(info, attribute) if info is not None else None
        if not pair:
            return None
        return _address(pair) if part == "address" else int(pair[1])
    return read


# Envoy's attribute names ("Attributes" in its docs) -> reader(ctx, stream info or None).
PROPERTIES = {
    "plugin_name": lambda ctx, info: ctx.plugin.name,
    "plugin_root_id": lambda ctx, info: ctx.plugin.root_id,
    "plugin_vm_id": lambda ctx, info: ctx.plugin.vm_id,
    "listener_direction": lambda ctx, info: ctx.plugin.direction,
    "request.path": _request(lambda r: r.path),
    "request.url_path": _request(lambda r: r.path_only),
    "request.host": _request(lambda r: r.authority),
    "request.scheme": _request(lambda r: r.scheme),
    "request.method": _request(lambda r: r.method),
    "request.headers": _request(_request_headers),
    "request.query": _request(lambda r: r.query),
    "request.id": _request(lambda r: r.headers.get("x-request-id")),
    "request.useragent": _request(lambda r: r.headers.get("user-agent")),
    "request.referer": _request(lambda r: r.headers.get("referer")),
    "request.protocol": _info("protocol"),
    "request.time": lambda ctx, info: int(info.start_time * 1e9) if info is not None else None,
    "response.code": _response_code,
    "response.code_details": _info("response_code_details"),
    "response.headers": _response_headers,
    "source.address": _side("downstream_remote", "address"),
    "source.port": _side("downstream_remote", "port"),
    "destination.address": _side("downstream_local", "address"),
    "destination.port": _side("downstream_local", "port"),
    "connection.id": _info("connection_id"),
    "xds.cluster_name": _info("upstream_cluster"),
    "xds.route_name": _info("route_name"),
    "upstream.address": _info("upstream_host"),
}


def stream_property(ctx, node: dict, path: tuple[str, ...]):
    """The value of an attribute path (Envoy's attribute names) for `ctx`, or None."""
    if path[0] == "node":           # node, node.<field>, node.metadata[.<key>...]
        if len(path) == 1:
            return node or {}
        if path[1] == "metadata":
            return _nested(node.get("metadata") or {}, path[2:])
        return node.get(path[1]) if len(path) == 2 else None
    read = PROPERTIES.get(".".join(path))
    return None if read is None else read(ctx, getattr(ctx.stream, "info", None))
