"""Istio's HTTP filters around HBONE's CONNECT (istio/proxy
source/extensions/filters/http/connect_authority, connect_baggage), as istiod sends them in a
TypedStruct: translated here, run by the router's CONNECT termination
(worker/proxy/http/connect_tunnel.py connect_destination). A module of its own, importing
nothing heavy, because xds/http_filters_istio.py loads it at import time."""

from __future__ import annotations

from .parse import join

CONNECT_AUTHORITY = "io.istio.http.connect_authority.Config"
CONNECT_BAGGAGE = "io.istio.http.connect_baggage.Config"


def _struct_fields(value, path, errors, allowed) -> dict:
    for key in value:
        if key not in allowed:
            errors.append(f"{join(path, key)}: not supported")
    return value


def connect_authority_filter(value, path, errors, warnings):
    """The HTTP filter io.istio.http.connect_authority: it acts only where a route enables it
    (connect_authority_per_route), so the chain runs nothing for it."""
    _struct_fields(value, path, errors, ("enabled", "port"))
    return None, None


def connect_authority_per_route(any_pb, path, errors):
    """A route's typed_per_filter_config for connect_authority (a TypedStruct of
    {enabled, port}) -> {"connect_authority": {"port": port or None}}, {} when disabled, or
    None when `any_pb` is not one. Enabled, a terminated CONNECT's authority (its port
    replaced by `port` when set) is the original destination of the internal connection the
    route makes, what Istio's filter shares with the upstream connection once and
    set_internal_dst_address restores (worker/proxy/http/connect_tunnel.py)."""
    from . import protos
    from .network_filters import TYPED_STRUCTS
    type_name = protos.type_name(any_pb.type_url)
    if type_name not in TYPED_STRUCTS:
        return None
    struct = protos.message_class(type_name)()
    any_pb.Unpack(struct)
    if protos.type_name(struct.type_url) != CONNECT_AUTHORITY:
        return None
    value = protos.json_format.MessageToDict(struct.value) if struct.HasField("value") else {}
    value = _struct_fields(value, join(path, "value"), errors, ("enabled", "port"))
    port = value.get("port", 0)
    if not isinstance(port, (int, float)) or not 0 <= port <= 65535 or port != int(port):
        errors.append(f"{join(path, 'value.port')}: must be a port number")
        port = 0
    if value.get("enabled") is not True:
        return {"connect_authority": None}      # turned off here, whatever a wider level says
    return {"connect_authority": {"port": int(port) or None}}


def connect_baggage_filter(value, path, errors, warnings):
    """io.istio.http.connect_baggage: on a CONNECT it terminates, Istio's filter reads the
    `baggage` header (the peer workload's metadata) for the telemetry of the internal
    listener behind it; with `propagate` (istio/proxy's Config of that release: bool, field
    1) it writes instead, the downstream peer as a `baggage` header on the requests it
    forwards (worker/proxy/istio/connect_baggage.py)."""
    _struct_fields(value, path, errors, ("propagate",))
    propagate = value.get("propagate", False)
    if not isinstance(propagate, bool):
        errors.append(f"{join(path, 'propagate')}: must be true or false")
        propagate = False
    return "istio.connect_baggage", {"propagate": True} if propagate else {}


TYPED_STRUCT_FILTERS = {CONNECT_AUTHORITY: connect_authority_filter,
                        CONNECT_BAGGAGE: connect_baggage_filter}
