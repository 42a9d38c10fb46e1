"""envoy.filters.http.buffer (envoy.extensions.filters.http.buffer.v3.Buffer) and its
per-route BufferPerRoute -> worker config (worker/proxy/http/buffer.py).

    translate_buffer(pb, path, errors, warnings) -> ("envoy.filters.http.buffer",
        {"max_request_bytes": int})
    translate_buffer_per_route(pb, path, errors, warnings) -> {"disabled": True} or
        {"disabled": False, "max_request_bytes": int}

Envoy's validation (buffer.proto): max_request_bytes is required and above 0; a
BufferPerRoute sets exactly one of disabled (which must be true) or buffer.
"""

from __future__ import annotations

from .parse import join

NAME = "envoy.filters.http.buffer"
TYPE = "envoy.extensions.filters.http.buffer.v3.Buffer"
PER_ROUTE_TYPE = "envoy.extensions.filters.http.buffer.v3.BufferPerRoute"


def translate_buffer(pb, path, errors, warnings=None):
    return NAME, {"max_request_bytes": _max_bytes(pb, path, errors)}


def _max_bytes(pb, path, errors) -> int:
    here = join(path, "max_request_bytes")
    if not pb.HasField("max_request_bytes"):
        errors.append(f"{here}: value is required")
        return 0
    value = pb.max_request_bytes.value
    if value <= 0:
        errors.append(f"{here}: value must be greater than 0")
    return value


def translate_buffer_per_route(pb, path, errors, warnings=None):
    which = pb.WhichOneof("override")
    if which is None:
        errors.append(f"{path}: one of disabled or buffer is required")
        return None
    if which == "disabled":
        if not pb.disabled:
            errors.append(f"{join(path, 'disabled')}: value must equal true")
        return {"disabled": True}
    return {"disabled": False,
            "max_request_bytes": _max_bytes(pb.buffer, join(path, "buffer"), errors)}
