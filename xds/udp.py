"""UDP listeners: an Envoy v3 Listener whose address is UDP, with the
envoy.filters.udp_listener.udp_proxy listener filter -> a snapshot listener spec.

    {"name", "address", "port", "stat_name", "reuse_port", "protocol": "udp",
     "max_rx_datagram_size": int, "buffer_limit": 0, "tcp_proxy": None, "filter_chains": [],
     "udp_proxy": {"stat_prefix", "routes": [ROUTE...], "default_cluster": str | None,
                   "idle_timeout": float, "hash": {"source_ip": True} | {"key": str} | None,
                   "per_packet": bool, "max_rx_datagram_size": int,
                   "access_log": [...], "proxy_access_log": [...]}}
    ROUTE: {"input": "source_ip" | "source_port" | "destination_ip" | "destination_port",
            "exact": str | None, "prefix": str | None, "cluster": str}

Envoy's semantics (UdpProxyConfig): the route is `cluster` (deprecated) or `matcher`, whose
actions are udp_proxy Routes; a datagram no route matches is dropped and counted in
downstream_sess_no_route. `idle_timeout` defaults to 60 s. `hash_policies` holds at most one
policy (source_ip or key) and only matters to RING_HASH / MAGLEV clusters. Sessions are
logged by `access_log` when they end; `proxy_access_log` when the listener goes away.

Refused with a clear error (never silently ignored): use_original_src_ip, session_filters,
tunneling_config, access_log_options, matcher_tree and compound predicates, prefer_gro.
"""

from . import protos
from .fields import ALLOWED, WALK, SKIP, check_fields
from .parse import join

UDP_PROXY_FILTER = "envoy.filters.udp_listener.udp_proxy"
UDP_PROXY_TYPE = "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
ROUTE_TYPE = "envoy.extensions.filters.udp.udp_proxy.v3.Route"
DEFAULT_IDLE_TIMEOUT = 60.0               # UdpProxyConfig.idle_timeout
DEFAULT_MAX_RX_DATAGRAM_SIZE = 1500       # UdpSocketConfig.max_rx_datagram_size
MAX_DATAGRAM = 65535

_INPUTS = {   # matcher input type -> what the worker matches on
    "envoy.extensions.matching.common_inputs.network.v3.SourceIPInput": "source_ip",
    "envoy.extensions.matching.common_inputs.network.v3.SourcePortInput": "source_port",
    "envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput": "destination_ip",
    "envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput": "destination_port",
}

# What Baton implements of the UDP side of the API (merged into fields.ALLOWED, so that
# check_fields refuses anything else by path, as for every other resource).
ALLOWED_UDP = {
    "envoy.config.listener.v3.UdpListenerConfig": {"downstream_socket_config": WALK},
    "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig": {
        "stat_prefix": WALK, "cluster": WALK, "matcher": SKIP, "idle_timeout": WALK,
        "hash_policies": WALK, "upstream_socket_config": WALK,
        "use_per_packet_load_balancing": WALK, "access_log": SKIP, "proxy_access_log": SKIP},
    "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig.HashPolicy": {
        "source_ip": WALK, "key": WALK},
    "envoy.config.core.v3.UdpSocketConfig": {"max_rx_datagram_size": WALK},
}
for _type, _rules in ALLOWED_UDP.items():
    ALLOWED.setdefault(_type, {}).update(_rules)

# Listener fields that mean something for a UDP listener (the rest are TCP's and refused).
_LISTENER_FIELDS = {"name", "address", "stat_prefix", "enable_reuse_port", "listener_filters",
                    "udp_listener_config", "traffic_direction"}


def is_udp(pb) -> bool:
    """Whether a Listener message is a UDP listener (its socket address says so)."""
    return (pb.HasField("address") and pb.address.HasField("socket_address")
            and pb.address.socket_address.protocol == protos.SocketAddress.UDP)


def translate_udp_listener(pb, path, errors, warnings=None, clusters=None):
    """A UDP Listener -> snapshot listener spec (module docstring), or None on error.
    `clusters`: the cluster names a route may name (None: not checked, as for LDS)."""
    from .translate import _is_ip
    start = len(errors)
    for field, _ in pb.ListFields():
        if field.name not in _LISTENER_FIELDS:
            errors.append(f"{join(path, field.name)}: not supported on a UDP listener")
    downstream_size = DEFAULT_MAX_RX_DATAGRAM_SIZE
    if pb.HasField("udp_listener_config"):
        config = pb.udp_listener_config
        check_fields(config, join(path, "udp_listener_config"), errors, warnings)
        downstream_size = _datagram_size(config, "downstream_socket_config",
                                         join(path, "udp_listener_config"), errors)
    sa = pb.address.socket_address
    where = join(path, "address.socket_address")
    if not _is_ip(sa.address):
        errors.append(f"{where}.address: '{sa.address}' is not an IP address")
    if not sa.port_value or sa.port_value > 65535:
        errors.append(f"{where}.port_value: {sa.port_value} is not a port (1-65535)")
    proxy = None
    filters = list(pb.listener_filters)
    if len(filters) != 1:
        errors.append(f"{join(path, 'listener_filters')}: a UDP listener needs exactly one "
                      f"listener filter, {UDP_PROXY_FILTER} (got {len(filters)})")
    else:
        proxy = _udp_proxy(filters[0], f"{join(path, 'listener_filters')}[0]", errors, warnings,
                           clusters)
    if len(errors) > start or proxy is None:
        return None
    # Names as translate_listener makes them: "[::1]_53" / listener.[__1]_53.
    host = f"[{sa.address}]" if ":" in sa.address else sa.address
    return {
        "name": pb.name or f"{host}_{sa.port_value}",
        "address": sa.address,
        "port": sa.port_value,
        "protocol": "udp",
        # A longer datagram from a client is dropped (listener udp.downstream_rx_datagram_dropped).
        "max_rx_datagram_size": downstream_size,
        "stat_name": (pb.stat_prefix or f"{host}:{sa.port_value}").replace(":", "_"),
        "reuse_port": pb.enable_reuse_port.value if pb.HasField("enable_reuse_port") else True,
        "buffer_limit": 0,
        "tcp_proxy": None,
        "filter_chains": [],
        "udp_proxy": proxy,
    }


def _udp_proxy(filter_pb, here, errors, warnings, clusters):
    type_name = (protos.type_name(filter_pb.typed_config.type_url)
                 if filter_pb.HasField("typed_config") else None)
    if filter_pb.name != UDP_PROXY_FILTER and type_name != UDP_PROXY_TYPE:
        errors.append(f"{here}: {filter_pb.name or type_name or 'unnamed filter'} not supported on "
                      f"a UDP listener (only {UDP_PROXY_FILTER})")
        return None
    if type_name != UDP_PROXY_TYPE:
        errors.append(f"{join(here, 'typed_config')}: required ({UDP_PROXY_TYPE})")
        return None
    for field, _ in filter_pb.ListFields():
        if field.name not in ("name", "typed_config"):
            errors.append(f"{join(here, field.name)}: not supported")
    path = join(here, "typed_config")
    pb = protos.message_class(UDP_PROXY_TYPE)()
    filter_pb.typed_config.Unpack(pb)
    start = len(errors)
    check_fields(pb, path, errors, warnings)
    if not pb.stat_prefix:
        errors.append(f"{join(path, 'stat_prefix')}: required")
    routes, default = [], None
    which = pb.WhichOneof("route_specifier")
    if which == "cluster":
        default = pb.cluster
    elif which == "matcher":
        routes, default = _matcher(pb.matcher, join(path, "matcher"), errors)
    else:
        errors.append(f"{path}: one of cluster or matcher is required")
    if clusters is not None:
        named = [(r["cluster"], r["where"]) for r in routes]
        if default:
            named.append((default, join(path, "cluster" if which == "cluster"
                                        else "matcher.on_no_match.action.typed_config.cluster")))
        for name, where in named:
            if name not in clusters:
                errors.append(f"{where}: unknown cluster '{name}'")
    idle = DEFAULT_IDLE_TIMEOUT
    if pb.HasField("idle_timeout"):
        idle = pb.idle_timeout.seconds + pb.idle_timeout.nanos / 1e9
        if idle <= 0:
            errors.append(f"{join(path, 'idle_timeout')}: must be greater than 0s")
    hash_policy = None
    if len(pb.hash_policies) > 1:
        errors.append(f"{join(path, 'hash_policies')}: at most one hash policy (Envoy's max_items 1)")
    elif pb.hash_policies:
        hp = pb.hash_policies[0]
        kind = hp.WhichOneof("policy_specifier")
        if kind == "source_ip" and hp.source_ip:
            hash_policy = {"source_ip": True}
        elif kind == "key" and hp.key:
            hash_policy = {"key": hp.key}
        else:
            errors.append(f"{join(path, 'hash_policies')}[0]: source_ip: true or a non-empty key "
                          "is required")
    size = _datagram_size(pb, "upstream_socket_config", path, errors)
    from .http_filters import translate_access_logs
    access_log = translate_access_logs(pb.access_log, join(path, "access_log"), errors, warnings)
    proxy_log = translate_access_logs(pb.proxy_access_log, join(path, "proxy_access_log"),
                                      errors, warnings)
    if len(errors) > start:
        return None
    for route in routes:
        del route["where"]
    return {"stat_prefix": pb.stat_prefix, "routes": routes, "default_cluster": default or None,
            "idle_timeout": idle, "hash": hash_policy,
            "per_packet": pb.use_per_packet_load_balancing, "max_rx_datagram_size": size,
            "access_log": access_log, "proxy_access_log": proxy_log}


def _datagram_size(pb, field, path, errors):
    """`field` (a UdpSocketConfig)'s max_rx_datagram_size, Envoy's default 1500 if unset."""
    if not pb.HasField(field) or not getattr(pb, field).HasField("max_rx_datagram_size"):
        return DEFAULT_MAX_RX_DATAGRAM_SIZE
    size = getattr(pb, field).max_rx_datagram_size.value
    if not 0 < size <= MAX_DATAGRAM:
        errors.append(f"{join(path, field)}.max_rx_datagram_size: {size} is not between 1 and "
                      f"{MAX_DATAGRAM}")
    return size


def _matcher(pb, path, errors):
    """The subset of xds.type.matcher.v3.Matcher a UDP proxy route needs: a list of single
    predicates on the datagram's addresses (exact or prefix) and on_no_match, each action a
    udp_proxy Route. -> (routes, cluster on no match or None)."""
    if pb.HasField("matcher_tree"):
        errors.append(f"{join(path, 'matcher_tree')}: not supported (use matcher_list)")
    routes = []
    for i, m in enumerate(pb.matcher_list.matchers):
        here = f"{join(path, 'matcher_list.matchers')}[{i}]"
        which = m.predicate.WhichOneof("match_type")
        if which != "single_predicate":
            errors.append(f"{here}.predicate: {which or 'empty'} not supported (single_predicate)")
            continue
        single = m.predicate.single_predicate
        where = f"{here}.predicate.single_predicate"
        input_type = protos.type_name(single.input.typed_config.type_url)
        what = _INPUTS.get(input_type)
        if what is None:
            errors.append(f"{where}.input: {input_type or 'missing'} not supported (one of "
                          f"{', '.join(sorted(_INPUTS))})")
        value = single.value_match
        kind = value.WhichOneof("match_pattern") if single.HasField("value_match") else None
        if kind not in ("exact", "prefix") or value.ignore_case:
            errors.append(f"{where}.value_match: only exact or prefix (case-sensitive) are supported")
        cluster = _route_action(m.on_match, f"{here}.on_match", errors)
        if what and kind in ("exact", "prefix") and cluster is not None:
            routes.append({"input": what, "exact": value.exact if kind == "exact" else None,
                           "prefix": value.prefix if kind == "prefix" else None,
                           "cluster": cluster, "where": f"{here}.on_match.action.typed_config.cluster"})
    default = None
    if pb.HasField("on_no_match"):
        default = _route_action(pb.on_no_match, join(path, "on_no_match"), errors)
    return routes, default


def _route_action(on_match, path, errors):
    if on_match.HasField("matcher") or on_match.keep_matching:
        errors.append(f"{path}: nested matchers and keep_matching are not supported")
        return None
    action = on_match.action
    type_name = protos.type_name(action.typed_config.type_url) if action.HasField("typed_config") else None
    if type_name != ROUTE_TYPE:
        errors.append(f"{join(path, 'action.typed_config')}: {type_name or 'missing'} is not "
                      f"{ROUTE_TYPE}")
        return None
    route = protos.message_class(ROUTE_TYPE)()
    action.typed_config.Unpack(route)
    if not route.cluster:
        errors.append(f"{join(path, 'action.typed_config.cluster')}: required")
        return None
    return route.cluster
