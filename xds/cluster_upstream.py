"""The Cluster fields Istio sets on every cluster, beyond the HTTP-side features:
`metadata`, `common_lb_config.locality_weighted_lb_config`, `upstream_bind_config` and
`filters` (upstream network filters).

    translate_upstream(pb, path, errors) -> dict merged into the snapshot's cluster dict,
    each key only when set:
        metadata           {"filter_metadata": {filter: {...}}, "typed_filter_metadata":
                            {filter: type URL}} or None: kept, shown in /config_dump (from
                            the resource itself), used by no filter Baton has
        locality_weighted  True: localities are picked by their load_balancing_weight times
                           their availability (worker/proxy/priority.py)
        source_address     the IP upstream connections bind to before connecting (port 0:
                           any), or None
        upstream_filters   [{"name", "type": "istio.metadata_exchange", "protocol"}]

Upstream network filters: only Istio's TCP metadata exchange. Istio's filter exchanges peer
metadata (worker/proxy/istio/peer_exchange.py) only on an upstream connection whose TLS
handshake negotiated its `protocol` as ALPN (istio-peer-exchange); on any other connection it
passes the bytes through untouched. On a plain cluster every connection is of the second
kind. On a cluster with upstream TLS (Istio's tlsMode-istio match offers
[istio-peer-exchange, istio]) a tcp_proxy connection offers the full list and, when the
upstream picks the exchange, runs it (worker/proxy/istio/tls_session.py); an HTTP pool's
connection offers the list without the exchange's protocol (`without_exchange_alpn`), as
Istio's istio.alpn filter does for HTTP. `enable_discovery` (Istio 1.18+) looks the peer up
by address when no exchange happened, which Baton does not: accepted, the peer then stays
unknown. Any other upstream filter, or field, is refused with its path.

Envoy's semantics, each checked against its documentation: a bind address is an IP literal
with port 0 or a fixed port (Envoy binds exactly what is given; a fixed port limits the
cluster to one connection per destination, which is the operator's business).
"""

from __future__ import annotations

from google.protobuf import json_format

from . import protos
from .istio_types import METADATA_EXCHANGE, unknown_field_numbers
from .parse import join

_BIND_FIELDS = ("source_address",)


def translate_upstream(pb, path, errors) -> dict:
    """Only the keys set: a cluster that uses none of them keeps the snapshot shape it had."""
    values = {"metadata": _metadata(pb, path, errors),
              "locality_weighted": pb.common_lb_config.HasField("locality_weighted_lb_config"),
              "source_address": _source_address(pb, path, errors),
              "upstream_filters": _upstream_filters(pb, path, errors)}
    return {key: value for key, value in values.items() if value}


def check_metadata(pb, path, errors) -> dict:
    """An endpoint's (or a locality's) metadata: kept in the resource, its typed entries
    checked. -> {"tls_match": {...}} when it has `envoy.transport_socket_match` entries
    (they choose the cluster's transport socket, tls_upstream.py), else {}."""
    _metadata(pb, path, errors)
    if not pb.HasField("metadata"):
        return {}
    from .tls_upstream import match_metadata
    match = match_metadata(pb.metadata)
    return {} if match is None else {"tls_match": match}


def _metadata(pb, path, errors):
    if not pb.HasField("metadata"):
        return None
    here = join(path, "metadata")
    typed = {}
    for key, value in pb.metadata.typed_filter_metadata.items():
        # Kept as its type URL; the type must be one Baton can decode, or /config_dump could
        # not show it (and a typo in the type would pass unnoticed).
        if protos.message_class(protos.type_name(value.type_url)) is None:
            errors.append(f"{here}.typed_filter_metadata[{key!r}]: unknown type "
                          f"'{protos.type_name(value.type_url)}'")
            continue
        typed[key] = value.type_url
    return {"filter_metadata": {key: json_format.MessageToDict(value)
                                for key, value in pb.metadata.filter_metadata.items()},
            "typed_filter_metadata": typed}


def _source_address(pb, path, errors):
    if not pb.HasField("upstream_bind_config"):
        return None
    bind = pb.upstream_bind_config
    here = join(path, "upstream_bind_config")
    for field, _ in bind.ListFields():
        if field.name not in _BIND_FIELDS:
            errors.append(f"{here}.{field.name}: not supported (only source_address)")
    if not bind.HasField("source_address"):
        errors.append(f"{here}.source_address: required")
        return None
    sa = bind.source_address
    where = f"{here}.source_address"
    for field, _ in sa.ListFields():
        if field.name not in ("address", "port_value"):
            errors.append(f"{where}.{field.name}: not supported (address and port_value)")
    from .translate import _is_ip
    if not _is_ip(sa.address):
        errors.append(f"{where}.address: {sa.address!r} is not an IP address")
        return None
    return {"address": sa.address, "port": sa.port_value}


_TYPED_STRUCTS = ("udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct")


def _upstream_filters(pb, path, errors):
    result = []
    for i, filter_pb in enumerate(pb.filters):
        here = join(path, f"filters[{i}]")
        for field, _ in filter_pb.ListFields():
            if field.name not in ("name", "typed_config"):
                errors.append(f"{here}.{field.name}: not supported")
        if not filter_pb.HasField("typed_config"):
            errors.append(f"{here}.typed_config: required")
            continue
        protocol = _metadata_exchange(filter_pb.typed_config, f"{here}.typed_config", errors)
        if protocol is None:
            continue
        result.append({"name": filter_pb.name, "type": "istio.metadata_exchange",
                       "protocol": protocol})
    return result


def without_exchange_alpn(features: dict, path, warnings) -> None:
    """The exchange's protocols are offered by tcp_proxy connections only: each TLS spec of
    the cluster keeps its full list as "exchange_alpn" (what a tcp_proxy connection offers,
    worker/tls/client.py) and "alpn" without them (what an HTTP pool's connection offers:
    Istio's istio.alpn filter replaces the list on HTTP connections the same way, so an HTTP
    connection never lands on the upstream's exchange chain)."""
    protocols = {f["protocol"] for f in features.get("upstream_filters") or ()}
    specs = [features.get("transport_socket")] + [m["tls"] for m in
                                                   features.get("transport_socket_matches") or ()]
    for spec in specs:
        if spec is None or not protocols & set(spec["alpn"]):
            continue
        spec["exchange_alpn"] = list(spec["alpn"])
        spec["alpn"] = [name for name in spec["alpn"] if name not in protocols]


def _metadata_exchange(any_pb, here, errors):
    """-> the MetadataExchange's protocol, or None (with an error) for anything else."""
    type_name = protos.type_name(any_pb.type_url)
    if type_name in _TYPED_STRUCTS:
        struct = protos.message_class(type_name)()
        any_pb.Unpack(struct)
        inner = protos.type_name(struct.type_url)
        if inner != METADATA_EXCHANGE:
            errors.append(f"{here}.type_url: {inner or 'nothing'} not supported as an upstream "
                          f"network filter (only {METADATA_EXCHANGE})")
            return None
        value = json_format.MessageToDict(struct.value)
        extra = sorted(set(value) - {"protocol", "enable_discovery", "enableDiscovery"})
        if extra:
            errors.append(f"{here}.value.{extra[0]}: not supported")
            return None
        protocol = value.get("protocol", "")
        if not isinstance(protocol, str):
            errors.append(f"{here}.value.protocol: expected a string")
            return None
        return protocol
    if type_name != METADATA_EXCHANGE:
        errors.append(f"{here}: {type_name} not supported as an upstream network filter "
                      f"(only {METADATA_EXCHANGE})")
        return None
    config = protos.message_class(METADATA_EXCHANGE)()
    any_pb.Unpack(config)
    unknown = unknown_field_numbers(config)
    if unknown:
        errors.append(f"{here}: field number {unknown[0]} of {METADATA_EXCHANGE} not supported")
        return None
    return config.protocol
