"""The Cluster fields Istio sets on every cluster, beyond the HTTP-side features:
`metadata`, `common_lb_config.locality_weighted_lb_config` and `upstream_bind_config`.

    translate_upstream(pb, path, errors) -> dict merged into the snapshot's cluster dict,
    each key only when set:
        metadata           {"filter_metadata": {filter: {...}}, "typed_filter_metadata":
                            {filter: type URL}} or None: kept, shown in /config_dump (from
                            the resource itself), used by no filter Baton has
        locality_weighted  True: localities are picked by their load_balancing_weight times
                           their availability (worker/proxy/priority.py)
        source_address     the IP upstream connections bind to before connecting (port 0:
                           any), or None

Envoy's semantics, each checked against its documentation: a bind address is an IP literal
with port 0 or a fixed port (Envoy binds exactly what is given; a fixed port limits the
cluster to one connection per destination, which is the operator's business).
"""

from __future__ import annotations

from google.protobuf import json_format

from . import protos
from .parse import join

_BIND_FIELDS = ("source_address",)


def translate_upstream(pb, path, errors) -> dict:
    """Only the keys set: a cluster that uses none of them keeps the snapshot shape it had."""
    values = {"metadata": _metadata(pb, path, errors),
              "locality_weighted": pb.common_lb_config.HasField("locality_weighted_lb_config"),
              "source_address": _source_address(pb, path, errors)}
    return {key: value for key, value in values.items() if value}


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
