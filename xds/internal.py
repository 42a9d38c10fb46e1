"""Envoy's internal listeners in the API (Istio ambient's `main_internal`, `connect_originate`):
a listener with `internal_listener` and no address, reached only from this process by a
cluster whose endpoints are `envoy_internal_address {server_listener_name, endpoint_id}`,
through the `internal_upstream` transport socket that passes the host's metadata along, and
the listener filter `istio.set_internal_dst_address.v1.Config` that makes that metadata's
`envoy.filters.listener.original_dst` `local` the connection's destination.

The worker side: worker/proxy/internal_listener.py.
"""

from __future__ import annotations

from . import protos
from .fields import SKIP, WALK
from .parse import join

INTERNAL_UPSTREAM = "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport"
SET_INTERNAL_DST = "istio.set_internal_dst_address.v1.Config"
ORIGINAL_DST_KEY = "envoy.filters.listener.original_dst"

ALLOWED_INTERNAL = {
    # filter_chain_matcher: checked by xds/matcher_tree.py.
    "envoy.config.listener.v3.Listener": {"internal_listener": WALK, "filter_chain_matcher": SKIP},
    "envoy.config.listener.v3.Listener.InternalListenerConfig": {},
    "envoy.config.core.v3.Address": {"envoy_internal_address": WALK},
    "envoy.config.core.v3.EnvoyInternalAddress": {"server_listener_name": WALK,
                                                   "endpoint_id": WALK},
    # ORIGINAL_DST's idle host sweep: Baton's ORIGINAL_DST makes a host per connection and
    # keeps none, so there is nothing to sweep.
    "envoy.config.cluster.v3.Cluster": {"cleanup_interval": WALK},
    "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport": {
        "passthrough_metadata": SKIP, "transport_socket": SKIP},
    # bootstrap_extensions: checked by check_bootstrap_extensions below.
    "envoy.config.bootstrap.v3.Bootstrap": {"bootstrap_extensions": SKIP},
    # on_new_connection: checked by translate_set_filter_state below.
    "envoy.extensions.filters.network.set_filter_state.v3.Config": {"on_new_connection": SKIP},
}


def is_internal_upstream(socket_pb) -> bool:
    type_name = (protos.type_name(socket_pb.typed_config.type_url)
                 if socket_pb.HasField("typed_config") else None)
    return socket_pb.name == "envoy.transport_sockets.internal_upstream" or \
        type_name == INTERNAL_UPSTREAM


def translate_internal_upstream(pb, path, errors) -> dict:
    """A cluster's internal_upstream transport socket -> {"internal_upstream": {"metadata":
    [[kind, filter name]]}}: which metadata rides with a connection to an internal listener.
    The socket inside must be raw_buffer (no TLS inside the process)."""
    if not pb.HasField("transport_socket") or not is_internal_upstream(pb.transport_socket):
        return {}
    from .fields import check_fields
    from .tls import RAW_BUFFER_SOCKET, RAW_BUFFER_TYPE
    here = join(path, "transport_socket.typed_config")
    protos.import_type(INTERNAL_UPSTREAM)
    config = protos.message_class(INTERNAL_UPSTREAM)()
    pb.transport_socket.typed_config.Unpack(config)
    check_fields(config, here, errors, None)
    passed = []
    for i, entry in enumerate(config.passthrough_metadata):
        kind = entry.kind.WhichOneof("kind")
        if kind not in ("host", "cluster"):
            errors.append(f"{here}.passthrough_metadata[{i}].kind: {kind} not supported "
                          "(host or cluster)")
            continue
        passed.append([kind, entry.name])
    if config.HasField("transport_socket"):
        inner = config.transport_socket
        type_name = (protos.type_name(inner.typed_config.type_url)
                     if inner.HasField("typed_config") else None)
        if inner.name not in (RAW_BUFFER_SOCKET, "raw_buffer") and type_name != RAW_BUFFER_TYPE:
            errors.append(f"{here}.transport_socket: {inner.name or type_name!r} not supported "
                          "(raw_buffer only: the connection stays in this process)")
    return {"internal_upstream": {"metadata": passed}}


def internal_endpoint(lb_endpoint, where, errors):
    """An LbEndpoint at an envoy_internal_address -> (pseudo address, 0, {"internal":
    [listener, endpoint id, original_dst local or None]}), or None for any other address. The
    pseudo address ("internal:<listener>/<endpoint id>") names the host in stats and keeps
    two endpoint ids of one listener apart; `local` is the endpoint metadata's
    envoy.filters.listener.original_dst.local, what internal_upstream passes to the listener."""
    address_pb = lb_endpoint.endpoint.address
    if not address_pb.HasField("envoy_internal_address"):
        return None
    internal = address_pb.envoy_internal_address
    if not internal.server_listener_name:
        errors.append(f"{where}.envoy_internal_address.server_listener_name: required")
        return None
    name = internal.server_listener_name
    local = None
    fields = lb_endpoint.metadata.filter_metadata.get(ORIGINAL_DST_KEY)
    if fields is not None and "local" in fields.fields:
        local = fields.fields["local"].string_value or None
    return (f"internal:{name}/{internal.endpoint_id}", 0,
            {"internal": [name, internal.endpoint_id, local]})


def internal_listener_address(pb, path, errors):
    """A listener with internal_listener: no address (Envoy refuses one), no socket."""
    if pb.HasField("address"):
        errors.append(f"{join(path, 'address')}: an internal listener has no address")
    return ("0.0.0.0", 0)


def set_internal_dst(filter_pb, struct_type: str | None) -> bool:
    """Whether a listener filter is Istio's set_internal_dst_address (no settings)."""
    return struct_type == SET_INTERNAL_DST or filter_pb.name == "istio.set_internal_dst_address"


# --- the network filter set_filter_state, as Istio's waypoint uses it ------------------------

SET_FILTER_STATE = "envoy.extensions.filters.network.set_filter_state.v3.Config"
LOCAL_IP_KEY = "envoy.filters.listener.original_dst.local_ip"
_OWN_DESTINATION = (f"%FILTER_STATE({LOCAL_IP_KEY}:PLAIN)%", "%DOWNSTREAM_LOCAL_ADDRESS%")


def translate_set_filter_state(value, path, errors, warnings, chain_pb, name):
    """set_filter_state's on_new_connection entries -> {"type": "set_filter_state",
    "original_dst": [ip, port] | None}. The one object Baton reads is Envoy's
    `envoy.filters.listener.original_dst.local_ip` shared with the upstream: the original
    destination of the internal connection a tcp_proxy of this chain makes, or an HTTP pool
    its connection manager's requests take (one pool per destination: worker/proxy/
    internal_listener.py SharedStatePool) (a waypoint's
    main_internal passes its own on with %FILTER_STATE(<that key>:PLAIN)%, None here: Baton
    passes a connection's destination on anyway; a literal "ip:port" replaces it). Other
    keys, formats and NONE sharing have no reader in Baton and are refused by path."""
    from .fields import check_fields
    from .network_filters import unpack_native
    config = unpack_native(value, SET_FILTER_STATE, path, errors, "set_filter_state")
    if config is None:
        return None
    check_fields(config, path, errors, warnings)
    destination = None
    for i, entry in enumerate(config.on_new_connection):
        here = f"{join(path, 'on_new_connection')}[{i}]"
        if entry.object_key != LOCAL_IP_KEY or entry.factory_key:
            errors.append(f"{join(here, 'object_key')}: {entry.object_key!r} not supported "
                          f"(Baton reads {LOCAL_IP_KEY} only)")
            continue
        share = type(entry).SharedWithUpstream.Name(entry.shared_with_upstream)
        if share == "NONE":
            errors.append(f"{join(here, 'shared_with_upstream')}: NONE not supported (Baton "
                          "always passes the destination to an internal listener)")
        fmt = entry.format_string
        which = fmt.WhichOneof("format")
        text = (fmt.text_format if which == "text_format" else
                fmt.text_format_source.inline_string if which == "text_format_source" and
                fmt.text_format_source.WhichOneof("specifier") == "inline_string" else None)
        if text is None:
            errors.append(f"{join(here, 'format_string')}: a text format (inline) is required")
            continue
        text = text.strip()
        if text in _OWN_DESTINATION:
            destination = None
            continue
        from ..worker.proxy.internal_listener import ip_and_port
        literal = ip_and_port(text) if "%" not in text else None
        if literal is None:
            errors.append(f"{join(here, 'format_string')}: {text!r} not supported "
                          f"({' or '.join(_OWN_DESTINATION)}, or an ip:port)")
            continue
        destination = list(literal)
    return {"name": name, "type": "set_filter_state", "original_dst": destination}



# --- the bootstrap extension Envoy needs before it runs internal listeners --------------------

INTERNAL_LISTENER_EXTENSION = "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"


def check_bootstrap_extensions(pb, errors, warnings) -> None:
    """Bootstrap.bootstrap_extensions: Envoy's internal listener extension (directly or in a
    TypedStruct, as Istio's bootstrap writes it) is accepted: Baton runs internal listeners
    without it. Its buffer_size_kb is moot (the kernel's socket pair buffers the bytes:
    worker/proxy/internal_listener.py). Any other extension is refused by path."""
    from .network_filters import TYPED_STRUCTS
    for i, extension in enumerate(pb.bootstrap_extensions):
        here = f"bootstrap_extensions[{i}].typed_config"
        type_name = protos.type_name(extension.typed_config.type_url)
        if type_name in TYPED_STRUCTS:
            struct = protos.message_class(type_name)()
            extension.typed_config.Unpack(struct)
            type_name = protos.type_name(struct.type_url)
        if type_name != INTERNAL_LISTENER_EXTENSION:
            errors.append(f"{here}: {type_name or 'an empty config'} not supported (the "
                          f"bootstrap extension {INTERNAL_LISTENER_EXTENSION} only)")
