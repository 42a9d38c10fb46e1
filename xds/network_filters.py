"""A filter chain's network filters, in order, the terminal one last -> plain chain config.

    translate_network_filters(chain_pb, path, errors, warnings, clusters)
        -> {"terminal": kind, kind: config, "network_filters": [...]} or None on error

Envoy runs a chain's network filters in order; the last must be a terminal filter (one that
owns the connection: tcp_proxy, the HTTP connection manager) and no terminal filter may come
before it. Istio puts its own filters in front (istio.metadata_exchange, istio_authn,
istio.stats), so a chain is a list here too:

- TERMINAL maps a typed_config type to (kind, translator). The chain config carries the
  terminal filter's config under its kind ("tcp_proxy", "http", ...), and "terminal" says
  which; the worker dispatches on it. Adding a terminal filter is one register_terminal() call.
- NON_TERMINAL maps a type (after unwrapping a TypedStruct) to a translator returning what the
  worker must run ({"name", "type", ...} in "network_filters"), or None when the filter has
  no effect Baton can have on that chain (it is accepted, with a warning saying what is not
  done). istio.stats is the one the worker runs (the tcp_proxy counts Istio's TCP metrics);
  see each translator for the others.
- Anything else is a NACK naming the filter's path.
"""

from __future__ import annotations

from . import protos
from .istio_filter_types import STATS_PLUGIN
from .istio_types import METADATA_EXCHANGE, unknown_field_numbers
from .parse import join

TYPED_STRUCTS = ("udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct")
ISTIO_AUTHN = "io.istio.network.authn.Config"

TERMINAL: dict[str, tuple[str, object]] = {}
NON_TERMINAL: dict[str, object] = {}


def register_terminal(type_name: str, kind: str, translate) -> None:
    """translate(typed_config Any, path, errors, warnings, clusters) -> config or None."""
    TERMINAL[type_name] = (kind, translate)


def _tcp_proxy(any_pb, path, errors, warnings, clusters):
    from .translate import translate_tcp_proxy
    config = protos.TcpProxy()
    any_pb.Unpack(config)
    return translate_tcp_proxy(config, path, errors, warnings, clusters)


def _http_connection_manager(any_pb, path, errors, warnings, clusters):
    from .http import translate_http_connection_manager
    from .tls import translate_xfcc
    hcm = protos.HttpConnectionManager()
    any_pb.Unpack(hcm)
    config = translate_http_connection_manager(hcm, path, errors, warnings, clusters)
    xfcc = translate_xfcc(hcm, path, errors)
    if config is not None and xfcc is not None:
        config["xfcc"] = xfcc
    return config


register_terminal(protos.TCP_PROXY_TYPE, "tcp_proxy", _tcp_proxy)
register_terminal(protos.HCM_TYPE, "http", _http_connection_manager)


def translate_network_filters(chain_pb, path, errors, warnings=None, clusters=None):
    filters_path = join(path, "filters")
    start = len(errors)
    if not chain_pb.filters:
        errors.append(f"{filters_path}: required (a terminal filter: "
                      f"{' or '.join(sorted(TERMINAL))})")
        return None
    last = len(chain_pb.filters) - 1
    result = {"terminal": None, "network_filters": []}
    undecoded = False
    for i, filter_pb in enumerate(chain_pb.filters):
        here = f"{filters_path}[{i}]"
        for field, _ in filter_pb.ListFields():
            if field.name not in ("name", "typed_config"):
                errors.append(f"{join(here, field.name)}: not supported")
        if not filter_pb.name:
            errors.append(f"{join(here, 'name')}: required")
        config_path = join(here, "typed_config")
        if not filter_pb.HasField("typed_config"):
            if not filter_pb.HasField("config_discovery"):   # that one is "not supported"
                errors.append(f"{config_path}: required")
            continue
        type_name = protos.type_name(filter_pb.typed_config.type_url)
        if not type_name:
            undecoded = True                # an Any that did not decode: already an error
            continue
        terminal_type = type_name
        if type_name in TYPED_STRUCTS:      # a terminal filter of Baton's own (xds/bolt.py)
            struct = protos.message_class(type_name)()
            filter_pb.typed_config.Unpack(struct)
            terminal_type = protos.type_name(struct.type_url)
        if terminal_type in TERMINAL:
            kind, translate = TERMINAL[terminal_type]
            if i != last:
                errors.append(f"{here}: terminal filter named {filter_pb.name} of type "
                              f"{type_name} must be the last filter in a filter chain")
                continue
            result["terminal"] = kind
            result[kind] = translate(filter_pb.typed_config, config_path, errors, warnings,
                                     clusters)
            continue
        inner_type, value, inner_path = type_name, filter_pb.typed_config, config_path
        if type_name in TYPED_STRUCTS:
            struct = protos.message_class(type_name)()
            filter_pb.typed_config.Unpack(struct)
            inner_type = protos.type_name(struct.type_url)
            value = protos.json_format.MessageToDict(struct.value) if struct.HasField("value") \
                else {}
            inner_path = join(config_path, "value")
        translate = NON_TERMINAL.get(inner_type)
        if translate is None:
            errors.append(f"{config_path}: {inner_type or 'an empty TypedStruct'} not supported "
                          "as a network filter")
            continue
        if i == last:
            errors.append(f"{here}: non-terminal filter named {filter_pb.name} of type "
                          f"{inner_type} is the last filter in a filter chain")
            continue
        entry = translate(value, inner_path, errors, warnings, chain_pb, filter_pb.name)
        if entry is not None:
            result["network_filters"].append(entry)
    if len(errors) > start or undecoded or result["terminal"] is None:
        return None
    return result


def _fields_of(value, path, errors, allowed):
    """A config given either as a message (declared type) or as a TypedStruct's dict:
    -> dict of its fields, with an error for any field outside `allowed`."""
    if isinstance(value, dict):
        fields = value
    else:
        msg = protos.message_class(protos.type_name(value.type_url))()
        value.Unpack(msg)
        unknown = unknown_field_numbers(msg)
        if unknown:
            errors.append(f"{path}: field number {unknown[0]} of {msg.DESCRIPTOR.full_name} "
                          "not supported")
            return None
        fields = protos.json_format.MessageToDict(msg, preserving_proto_field_name=True)
    for key in fields:
        if key not in allowed:
            errors.append(f"{join(path, key)}: not supported")
            return None
    return fields


def _istio_stats(value, path, errors, warnings, chain_pb, name):
    """istio.stats on a TCP chain: Istio's istio_tcp_* metrics, counted by the tcp_proxy
    (worker/proxy/istio/tcp_stats.py); the connection is unaffected, as in Envoy, where the
    filter only observes. The peer's labels stay "unknown" (no TCP metadata exchange)."""
    from .http_filters_istio import istio_stats_config
    fields = _fields_of(value, path, errors, ("disable_host_header_fallback",
                                              "disableHostHeaderFallback", "reporter"))
    config = istio_stats_config(fields, path, errors) if fields is not None else None
    if config is None:
        return None
    return {"name": name, "type": "istio.stats",
            **({"reporter": config["reporter"]} if "reporter" in config else {})}


def _metadata_exchange(value, path, errors, warnings, chain_pb, name):
    """istio.metadata_exchange (TCP): exchanges workload metadata with the peer over the
    mTLS connection when the client negotiated the exchange's `protocol` (istio-peer-exchange)
    as ALPN (worker/proxy/istio/tls_session.py); any other connection goes through untouched,
    as with Istio's filter. `enable_discovery` (a lookup by address when no exchange
    happened) is accepted and not done: that peer stays unknown."""
    fields = _fields_of(value, path, errors, ("protocol", "enable_discovery",
                                              "enableDiscovery"))
    if fields is None:
        return None
    return {"name": name, "type": "istio.metadata_exchange",
            "protocol": fields.get("protocol") or ""}


def _istio_authn(value, path, errors, warnings, chain_pb, name):
    """istio_authn: the mTLS peer's and our SPIFFE ids as Istio's io.istio.peer_principal /
    local_principal filter state, for RBAC's filter_state matcher and for a terminated
    CONNECT to share (worker/proxy/istio/principal_state.py reads them where it runs)."""
    _fields_of(value, path, errors, ("shared",))
    return {"name": name, "type": "istio_authn"}


def _wasm(value, path, errors, warnings, chain_pb, name):
    """Istio 1.9 / 1.10's null-VM Wasm built-ins: the same as the native filters."""
    from .http_filters_istio import null_vm_builtin
    if not isinstance(value, dict):
        msg = protos.message_class(protos.type_name(value.type_url))()
        value.Unpack(msg)
        value = protos.json_format.MessageToDict(msg, preserving_proto_field_name=True)
    builtin = null_vm_builtin(value, path, errors)
    if builtin == "istio.stats":
        return {"name": name, "type": "istio.stats"}
    if builtin is not None:
        return _metadata_exchange({}, path, errors, warnings, chain_pb, name)
    return None


def unpack_native(value, type_name, path, errors, what):
    """A non-terminal filter's typed_config as its `type_name` message; None (and an error)
    when it came in a TypedStruct (`value` is then its JSON dict)."""
    if isinstance(value, dict):
        errors.append(f"{path}: {what} in a TypedStruct not supported")
        return None
    protos.import_type(type_name)
    msg = protos.message_class(type_name)()
    value.Unpack(msg)
    return msg


def _network_rbac(value, path, errors, warnings, chain_pb, name):
    """envoy.filters.network.rbac: evaluated when a tcp_proxy connection starts
    (worker/proxy/rbac_network.py); on a chain that ends in another filter it is refused."""
    from .rbac import translate_network_rbac
    last = chain_pb.filters[len(chain_pb.filters) - 1]
    if protos.type_name(last.typed_config.type_url) != protos.TCP_PROXY_TYPE:
        errors.append(f"{path}: network RBAC runs on tcp_proxy chains only in Baton (this "
                      f"chain ends in {last.name})")
        return None
    msg = unpack_native(value, NETWORK_RBAC, path, errors, "network RBAC")
    if msg is None:
        return None
    config = translate_network_rbac(msg, path, errors)
    if config is None:
        return None
    if config["delay_deny"] and warnings is not None:
        warnings.append(f"{join(path, 'delay_deny')}: not applied (a denied connection is "
                        "closed at once)")
    return {"name": name, "type": "envoy.filters.network.rbac", **config}


NETWORK_RBAC = "envoy.extensions.filters.network.rbac.v3.RBAC"
NON_TERMINAL[NETWORK_RBAC] = _network_rbac
NON_TERMINAL[STATS_PLUGIN] = _istio_stats
NON_TERMINAL["envoy.extensions.filters.network.wasm.v3.Wasm"] = _wasm
NON_TERMINAL[METADATA_EXCHANGE] = _metadata_exchange


def _set_filter_state(*args):
    from .internal import translate_set_filter_state     # a waypoint's: xds/internal.py
    return translate_set_filter_state(*args)


NON_TERMINAL["envoy.extensions.filters.network.set_filter_state.v3.Config"] = _set_filter_state
NON_TERMINAL[ISTIO_AUTHN] = _istio_authn

from . import bolt, dubbo, generic_proxy  # noqa: E402,F401 - register their terminal filters
