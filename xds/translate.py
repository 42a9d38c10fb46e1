"""Envoy v3 protos -> snapshot pieces (plain values; shape in snapshot.py).

One function per resource type, so that xDS resources (Listener, Cluster,
ClusterLoadAssignment from a control plane) go through the same code as a bootstrap file:

    translate_listener(pb, path, errors, warnings=None, clusters=None) -> dict | None
    translate_cluster(pb, path, errors, warnings=None) -> dict | None
    translate_load_assignment(pb, path, errors, warnings=None, require_ip=True) -> dict | None
    translate_bootstrap(pb) -> (snapshot, errors)
    (and the pieces: translate_admin, translate_tcp_proxy)

Each appends "path: message" to `errors` (and to `warnings`, for fields accepted but
ignored) and returns None when the resource has any error, so that a caller never builds on
half a resource. Every check runs even after a first failure: the operator sees all problems.
Defaults and limits are Envoy's, so a file that loads here means the same in Envoy.
"""

import ipaddress
import socket

from . import protos
from .fields import check_fields
from .parse import join
from .snapshot import empty_snapshot
from .tls import translate_transport_socket

DEFAULT_BUFFER_LIMIT = 1024 * 1024        # per_connection_buffer_limit_bytes
DEFAULT_CONNECT_TIMEOUT = 5.0             # Cluster.connect_timeout
DEFAULT_DNS_REFRESH_RATE = 5.0            # Cluster.dns_refresh_rate
DEFAULT_IDLE_TIMEOUT = 3600.0             # TcpProxy.idle_timeout
DEFAULT_MAX_CONNECTIONS = 1024            # CircuitBreakers DEFAULT max_connections
DEFAULT_SNIFF_TIMEOUT = 15.0              # Listener.listener_filters_timeout

CLUSTER_TYPES = ("STATIC", "STRICT_DNS", "ORIGINAL_DST", "EDS")
LB_POLICIES = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV")
ORIGINAL_DST_FILTER = "envoy.filters.listener.original_dst"

_Cluster = protos.Cluster


# --- bootstrap -------------------------------------------------------------------------------

def translate_bootstrap(pb):
    """A Bootstrap message -> (snapshot, errors); snapshot["warnings"] has the warnings."""
    errors, warnings = [], []
    snap = empty_snapshot()
    check_fields(pb, "", errors, warnings)
    snap["node"] = _node(pb.node)
    if pb.HasField("admin"):
        snap["admin"] = translate_admin(pb.admin, "admin", errors, warnings)
    if pb.HasField("stats_config"):
        from .stats_config import translate_stats_config
        snap["stats_config"] = translate_stats_config(pb.stats_config, "stats_config", errors, warnings)
    if pb.bootstrap_extensions:        # envoy.bootstrap.internal_listener: xds/internal.py
        from .internal import check_bootstrap_extensions
        check_bootstrap_extensions(pb, errors, warnings)
    if pb.HasField("overload_manager"):
        from .overload import translate_overload_manager
        snap["overload"] = translate_overload_manager(pb.overload_manager, "overload_manager",
                                                      errors, warnings)

    # An `ads: {}` config source needs the ADS stream of dynamic_resources.ads_config: without
    # it nothing would ever fetch those endpoints or routes (Envoy refuses it too).
    has_ads = pb.HasField("dynamic_resources") and pb.dynamic_resources.HasField("ads_config")
    no_ads = "an 'ads: {}' config source needs dynamic_resources.ads_config"
    defined = {}  # cluster name -> path of its first definition
    for i, cluster_pb in enumerate(pb.static_resources.clusters):
        path = f"static_resources.clusters[{i}]"
        cluster = translate_cluster(cluster_pb, path, errors, warnings)
        if cluster is not None and cluster["eds"] and not has_ads:
            errors.append(f"{path}.eds_cluster_config.eds_config: {no_ads}")
        name = cluster_pb.name
        if name in defined:
            errors.append(f"{path}.name: duplicate cluster name '{name}' "
                          f"(first defined at {defined[name]})")
            continue
        if name:
            defined[name] = path
        if cluster is not None:
            snap["clusters"][name] = cluster

    if pb.HasField("dynamic_resources"):
        from .config_source import translate_dynamic_resources
        snap["xds"] = translate_dynamic_resources(pb.dynamic_resources, "dynamic_resources",
                                                  errors, {n: snap["clusters"].get(n) for n in defined})

    from ..worker.wasm.remote import use_clusters
    use_clusters(snap["clusters"])      # what a Wasm filter's remote code is fetched through
    names, addresses = {}, {}
    for i, listener_pb in enumerate(pb.static_resources.listeners):
        path = f"static_resources.listeners[{i}]"
        # A cluster that failed to translate is still defined: no extra "unknown cluster".
        listener = translate_listener(listener_pb, path, errors, warnings, clusters=defined)
        for j, chain in enumerate((listener or {}).get("filter_chains") or ()):
            if (chain.get("http") or {}).get("rds") and not has_ads:
                errors.append(f"{path}.filter_chains[{j}].filters[0].typed_config.rds"
                              f".config_source: {no_ads}")
        name = listener["name"] if listener is not None else listener_pb.name
        if name in names:
            errors.append(f"{path}.name: duplicate listener name '{name}' "
                          f"(first defined at {names[name]})")
            continue
        if name:
            names[name] = path
        if listener is None:
            continue
        if listener.get("internal"):
            snap["listeners"].append(listener)
            continue
        # A UDP and a TCP listener may share an address and port (DNS does), as in Envoy.
        key = (ipaddress.ip_address(listener["address"]), listener["port"],
               listener.get("protocol", "tcp"))
        if key in addresses:
            errors.append(f"{path}.address: {_hostport(*key[:2])} is already used by "
                          f"{addresses[key]}")
            continue
        addresses[key] = path
        snap["listeners"].append(listener)
    from .secrets import resolve_static, translate_static_secrets
    secrets = translate_static_secrets(pb.static_resources.secrets, "static_resources.secrets",
                                       errors, warnings)
    if secrets:
        snap["secrets"] = secrets            # only there when there are some
    resolve_static(snap, errors)
    if snap["xds"] is None and not errors:
        from .config_source import sds_only_xds
        snap["xds"] = sds_only_xds(snap)     # SDS alone needs the agent too (None if not)
    snap["warnings"] = warnings
    return snap, errors


def translate_admin(pb, path, errors, warnings=None):
    """Admin -> {"address", "port"}; None when it has no address (Envoy: no admin listener)."""
    start = len(errors)
    check_fields(pb, path, errors, warnings)
    if not pb.HasField("address"):
        return None
    hostport = _socket_address(pb.address, join(path, "address"), errors, ip_only=True)
    if hostport is None or len(errors) > start:
        return None
    return {"address": hostport[0], "port": hostport[1]}


def _node(pb):
    metadata = protos.json_format.MessageToDict(pb.metadata) if pb.HasField("metadata") else {}
    return {"id": pb.id, "cluster": pb.cluster, "metadata": metadata}


# --- listeners -------------------------------------------------------------------------------

def translate_listener(pb, path, errors, warnings=None, clusters=None):
    """Listener -> snapshot listener dict, or None on error.

    `clusters`: the cluster names tcp_proxy may refer to; None skips that check (an LDS
    listener may arrive before the CDS cluster it names).
    """
    if pb.address.socket_address.protocol == protos.SocketAddress.UDP:
        from .udp import translate_udp_listener     # udp_proxy listeners: xds/udp.py
        return translate_udp_listener(pb, path, errors, warnings, clusters)
    start = len(errors)
    check_fields(pb, path, errors, warnings)
    hostport = None
    internal = pb.HasField("internal_listener")     # no address, no socket: xds/internal.py
    if internal:
        from .internal import internal_listener_address
        hostport = internal_listener_address(pb, path, errors)
    elif pb.HasField("address"):
        hostport = _socket_address(pb.address, join(path, "address"), errors, ip_only=True)
    else:
        errors.append(f"{join(path, 'address')}: required")
    chains = _filter_chains(pb, path, errors, warnings, clusters)
    inspectors_disabled = {}
    extras = set()
    original_dst, inspectors = _listener_filters(pb, path, errors, inspectors_disabled, extras)
    access_log = None
    if pb.access_log:
        from .http_filters import translate_access_logs
        access_log = translate_access_logs(pb.access_log, join(path, "access_log"), errors,
                                           warnings)
        if warnings is not None and any(set(log.get("flags") or ("*",)) - {"NR"}
                                        for log in access_log):
            warnings.append(f"{join(path, 'access_log')}: written for connections no filter "
                            "chain matched (flag NR) and for tcp_proxy ones, not for those of "
                            "an HTTP connection manager")
    bind_to_port = _bind_to_port(pb, path, errors)
    # Envoy's use_original_dst implies the original_dst listener filter (Istio's
    # virtualOutbound names only the flag).
    use_original_dst = pb.use_original_dst.value if pb.HasField("use_original_dst") else False
    sniff_timeout = None
    if inspectors:
        # 0s: no timeout, Envoy waits for the inspectors to decide (Istio's outbound listeners).
        sniff_timeout = _duration(pb, "listener_filters_timeout", DEFAULT_SNIFF_TIMEOUT, path,
                                  errors, above=-1.0) or None
    from .matcher_tree import translate_filter_chain_matcher    # chains chosen by name
    chain_matcher = translate_filter_chain_matcher(pb, path, errors)
    if len(errors) > start or hostport is None or chains is None:
        return None
    default = next((c["tcp_proxy"] for c in chains if not c["match"] and not c.get("default")),
                   None)
    address, port = hostport
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    # Envoy's listener stat scope is listener.<stat_prefix or "host:port">., and Envoy makes
    # every ':' in a stat name '_' (envoyproxy/envoy#597, #20665): "[::1]:80" -> "[__1]_80".
    stat_name = (pb.stat_prefix or (pb.name if internal else f"{host}:{port}")).replace(":", "_")
    return {
        "name": pb.name or f"{host}_{port}",
        "address": address,
        "port": port,
        "stat_name": stat_name,
        "reuse_port": pb.enable_reuse_port.value if pb.HasField("enable_reuse_port") else True,
        "buffer_limit": _uint32(pb, "per_connection_buffer_limit_bytes", DEFAULT_BUFFER_LIMIT),
        "tcp_proxy": default,             # the chain without a match (None: unmatched -> closed)
        "filter_chains": chains,          # the default_filter_chain last, "default": True
        # tls_inspector / http_inspector: what the connection is sniffed for before a chain is chosen
        "inspectors": inspectors,
        "sniff_timeout": sniff_timeout,   # None: no timeout
        "sniff_continue": pb.continue_on_listener_filters_timeout,
        # filter_disabled: inspector -> [[start, end)] of destination ports it skips.
        **({"inspectors_disabled": inspectors_disabled} if inspectors_disabled else {}),
        # IP_TRANSPARENT: accept connections addressed anywhere (TPROXY); the master binds it.
        "transparent": pb.transparent.value if pb.HasField("transparent") else False,
        # The original_dst listener filter: recover the address the client really dialled.
        "original_dst": original_dst or use_original_dst,
        # Hand the connection to the listener bound to its original destination, if any.
        "use_original_dst": use_original_dst,
        # The overload manager's global connection limit does not apply (Envoy's field; the
        # key is only there when set, so listener specs without it stay as they were).
        **({"ignore_global_conn_limit": True} if pb.ignore_global_conn_limit else {}),
        # bind_to_port: false: no socket; reached only by a use_original_dst hand-off.
        **({"bind_to_port": False} if not bind_to_port else {}),
        # An internal listener: reached from this process only (worker/proxy/internal_listener.py).
        **({"internal": True, "bind_to_port": False} if internal else {}),
        **({"set_internal_dst": True} if "set_internal_dst" in extras else {}),
        **chain_matcher,
        # Listener access logs: connections no chain matched, and TCP chains' connections.
        **({"access_log": access_log} if access_log else {}),
        # INBOUND / OUTBOUND: which side Istio's filters report as (worker/proxy/istio/).
        **({"traffic_direction": type(pb).DESCRIPTOR.fields_by_name["traffic_direction"]
            .enum_type.values_by_number[pb.traffic_direction].name}
           if pb.traffic_direction else {}),
    }


def _bind_to_port(pb, path, errors):
    """bind_to_port, or the deprecated_v1 form Istio 1.9 and 1.10 still send."""
    if pb.HasField("deprecated_v1"):
        for field, _ in pb.deprecated_v1.ListFields():
            if field.name != "bind_to_port":
                errors.append(f"{join(path, 'deprecated_v1.' + field.name)}: not supported")
        if pb.HasField("bind_to_port"):
            errors.append(f"{join(path, 'deprecated_v1')}: bind_to_port is set twice")
        if pb.deprecated_v1.HasField("bind_to_port"):
            return pb.deprecated_v1.bind_to_port.value
    return pb.bind_to_port.value if pb.HasField("bind_to_port") else True


RPC_INSPECTOR = "baton.filters.listener.rpc_inspector"
RPC_INSPECTOR_TYPE = "baton.filters.listener.rpc_inspector.v1.RpcInspector"

INSPECTORS = {  # listener filter name -> (typed_config type, what it sniffs)
    ORIGINAL_DST_FILTER: ("envoy.extensions.filters.listener.original_dst.v3.OriginalDst", None),
    "envoy.filters.listener.tls_inspector": (
        "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector", "tls"),
    "envoy.filters.listener.http_inspector": (
        "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector", "http"),
    # Baton's own (MOSN's "Auto"): application protocol "dubbo" or "bolt" from the first bytes
    # (worker/codecs/sniff.py). No config: typed_config, if any, a TypedStruct of this type.
    RPC_INSPECTOR: (RPC_INSPECTOR_TYPE, "rpc"),
}


def _listener_filters(pb, path, errors, disabled=None, extras=None):
    """(original_dst configured, [inspectors]); any other listener filter is refused.
    `disabled` (a dict) receives, per inspector, the destination port ranges [start, end) its
    filter_disabled skips it for (Istio's inbound listener skips both on its own port)."""
    found, inspectors = False, []
    by_type = {type_name: name for name, (type_name, _) in INSPECTORS.items()}
    for i, filter_pb in enumerate(pb.listener_filters):
        here = f"{join(path, 'listener_filters')}[{i}]"
        type_name = protos.type_name(filter_pb.typed_config.type_url) if filter_pb.HasField("typed_config") else None
        if type_name in ("udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"):
            from .internal import set_internal_dst
            if extras is not None and set_internal_dst(filter_pb, _struct_type(filter_pb)):
                extras.add("set_internal_dst")      # Istio's: xds/internal.py
                continue
            type_name = _rpc_inspector_struct(filter_pb.typed_config, join(here, "typed_config"),
                                              errors)
            if type_name is None:
                continue
        name = filter_pb.name if filter_pb.name in INSPECTORS else by_type.get(type_name)
        if name is None:
            errors.append(f"{here}: {filter_pb.name or type_name or 'unnamed filter'} not supported "
                          f"(only {', '.join(INSPECTORS)})")
            continue
        expected, sniffs = INSPECTORS[name]
        if type_name is not None and type_name != expected:
            errors.append(f"{join(here, 'typed_config')}: {type_name} is not {expected}")
            continue
        if filter_pb.HasField("typed_config") and name != RPC_INSPECTOR:
            config = protos.message_class(expected)()
            filter_pb.typed_config.Unpack(config)
            check_fields(config, join(here, "typed_config"), errors, None)
        for field, _ in filter_pb.ListFields():
            if field.name not in ("name", "typed_config", "filter_disabled"):
                errors.append(f"{join(here, field.name)}: not supported")
        if filter_pb.HasField("filter_disabled"):
            ports = _port_range_predicate(filter_pb.filter_disabled,
                                          join(here, "filter_disabled"), errors)
            if ports is not None and sniffs is not None and disabled is not None:
                disabled.setdefault(sniffs, []).extend(ports)
            elif ports is not None and sniffs is None:
                errors.append(f"{join(here, 'filter_disabled')}: not supported on {name}")
        if sniffs is None:
            found = True
        elif sniffs not in inspectors:
            inspectors.append(sniffs)
    return found, inspectors


def _struct_type(filter_pb) -> str:
    struct = protos.message_class(protos.type_name(filter_pb.typed_config.type_url))()
    filter_pb.typed_config.Unpack(struct)
    return protos.type_name(struct.type_url)


def _rpc_inspector_struct(any_pb, path, errors) -> str | None:
    """The type a listener filter's TypedStruct carries, which must be Baton's rpc_inspector
    with no settings; None (and an error) otherwise."""
    struct = protos.message_class(protos.type_name(any_pb.type_url))()
    any_pb.Unpack(struct)
    inner = protos.type_name(struct.type_url)
    if inner != RPC_INSPECTOR_TYPE:
        errors.append(f"{path}: {inner or 'an empty TypedStruct'} not supported as a listener "
                      f"filter")
        return None
    if struct.HasField("value") and struct.value.fields:
        errors.append(f"{join(path, 'value')}: {RPC_INSPECTOR} has no settings")
        return None
    return inner


def _port_range_predicate(pb, path, errors):
    """ListenerFilterChainMatchPredicate -> [[start, end)], the ports it matches, for the
    forms Istio sends: a destination_port_range, or an or_match of them (Istio 1.19+ skips
    the HTTP inspector on 80 and 15006 that way)."""
    which = pb.WhichOneof("rule")
    if which == "or_match":
        ranges = []
        for i, rule in enumerate(pb.or_match.rules):
            ports = _port_range_predicate(rule, f"{join(path, 'or_match.rules')}[{i}]", errors)
            if ports is None:
                return None
            ranges.extend(ports)
        return ranges
    if which != "destination_port_range":
        errors.append(f"{join(path, which or 'rule')}: not supported (destination_port_range, "
                      "or an or_match of them)")
        return None
    start, end = pb.destination_port_range.start, pb.destination_port_range.end
    if not 0 <= start < end <= 65536:
        errors.append(f"{path}.destination_port_range: [{start}, {end}) is not a port range")
        return None
    return [[start, end]]


def _filter_chains(pb, path, errors, warnings, clusters):
    """Filter chains, each a list of network filters ending in a terminal one
    (xds/network_filters.py) with an optional filter_chain_match, then the
    default_filter_chain (marked "default": True) if there is one
    -> [{"match": {...} or None, "terminal": kind, "tcp_proxy": {...} or None,
         "http": {...} or None, ...}], or None on error.

    Every chain and filter is still checked, so all their errors show at once. As in Envoy,
    two chains with the same match are an error, and so is more than one chain without one.
    """
    chains_path = join(path, "filter_chains")
    chains = list(pb.filter_chains)
    if not chains and not pb.HasField("default_filter_chain"):
        errors.append(f"{chains_path}: required (one filter chain with a tcp_proxy or "
                      "http_connection_manager filter)")
    result, seen, ok = [], {}, True
    for i, chain in enumerate(chains):
        here = f"{chains_path}[{i}]"
        match = _filter_chain_match(chain, here, errors) if chain.HasField("filter_chain_match") else None
        key = repr(sorted((match or {}).items()))
        # Envoy 1.40 checks duplicate matches only without filter_chain_matcher, which
        # picks chains by name (checked with envoy --mode validate).
        if key in seen and not pb.HasField("filter_chain_matcher"):
            errors.append(f"{here}.filter_chain_match: the same match as filter_chains[{seen[key]}] "
                          "(Envoy: multiple filter chains with the same matching rules)")
        seen.setdefault(key, i)
        translated = _filter_chain(chain, here, match, errors, warnings, clusters)
        ok = ok and translated is not None
        result.append(translated)
    if pb.HasField("default_filter_chain"):
        here = join(path, "default_filter_chain")
        # Envoy ignores the default chain's filter_chain_match: it is what no match chose.
        translated = _filter_chain(pb.default_filter_chain, here, None, errors, warnings,
                                   clusters)
        ok = ok and translated is not None
        if translated is not None:
            translated["default"] = True
        result.append(translated)
    return result if ok and result else None


def _filter_chain(chain, here, match, errors, warnings, clusters):
    from .network_filters import translate_network_filters
    filters = translate_network_filters(chain, here, errors, warnings, clusters)
    tls = translate_transport_socket(chain, here, errors, warnings)
    if filters is None:
        return None
    kind = filters["terminal"]
    if tls is not None and kind in ("dubbo", "bolt", "generic_proxy"):  # rpc/: no TLS yet
        errors.append(f"{join(here, 'transport_socket')}: TLS in front of {kind} is not "
                      "supported yet")
        return None
    result = {"match": match, "terminal": kind, "tcp_proxy": filters.get("tcp_proxy"),
              "http": filters.get("http"), kind: filters[kind]}
    if filters[kind] is None:
        return None
    if filters["network_filters"]:
        result["network_filters"] = filters["network_filters"]
    if chain.name:
        result["name"] = chain.name
    if tls is not None:
        result["tls"] = tls
    return result


SOURCE_TYPES = ("ANY", "SAME_IP_OR_LOOPBACK", "EXTERNAL")


def _filter_chain_match(chain, here, errors):
    """FilterChainMatch -> the criteria Baton selects on (worker/proxy/chains.py), every one
    Istio uses; CIDR ranges become [network, prefix length] pairs."""
    m = chain.filter_chain_match
    where = f"{here}.filter_chain_match"
    match = {}
    if m.HasField("destination_port"):
        match["destination_port"] = m.destination_port.value
    for field in ("prefix_ranges", "source_prefix_ranges", "direct_source_prefix_ranges"):
        ranges = _cidr_ranges(getattr(m, field), join(where, field), errors)
        if ranges:
            match[field] = ranges
    if m.source_type:
        match["source_type"] = SOURCE_TYPES[m.source_type] \
            if m.source_type < len(SOURCE_TYPES) else str(m.source_type)
    if m.source_ports:
        match["source_ports"] = sorted(set(m.source_ports))
    if m.server_names:
        match["server_names"] = [n.lower() for n in m.server_names]
    if m.transport_protocol:
        if m.transport_protocol not in ("tls", "raw_buffer"):
            errors.append(f"{where}.transport_protocol: "
                          f"{m.transport_protocol!r} not supported (tls or raw_buffer)")
        match["transport_protocol"] = m.transport_protocol
    if m.application_protocols:
        match["application_protocols"] = list(m.application_protocols)
    return match


def _cidr_ranges(ranges, path, errors):
    """CidrRange list -> [[network address, prefix length]] (host bits cleared, as Envoy's
    range matching ignores them)."""
    result = []
    for i, cidr in enumerate(ranges):
        here = f"{path}[{i}]"
        length = cidr.prefix_len.value      # Envoy: unset is 0, the whole family
        try:
            ip = ipaddress.ip_address(cidr.address_prefix)
        except ValueError:
            errors.append(f"{here}.address_prefix: {cidr.address_prefix!r} is not an IP address")
            continue
        if length > ip.max_prefixlen:
            errors.append(f"{here}.prefix_len: {length} is longer than the address "
                          f"({ip.max_prefixlen} bits)")
            continue
        network = ipaddress.ip_network(f"{ip}/{length}", strict=False)
        result.append([str(network.network_address), length])
    return result


def translate_tcp_proxy(pb, path, errors, warnings=None, clusters=None):
    """TcpProxy filter config -> snapshot tcp_proxy dict, or None on error."""
    start = len(errors)
    check_fields(pb, path, errors, warnings)
    if not pb.stat_prefix:
        errors.append(f"{join(path, 'stat_prefix')}: required")  # Envoy: min_len 1

    targets = []  # [path of the name, name, weight]
    which = pb.WhichOneof("cluster_specifier")
    if which == "cluster":
        targets.append([join(path, "cluster"), pb.cluster, 1])
    elif which == "weighted_clusters":
        weighted_path = join(path, "weighted_clusters.clusters")
        if not pb.weighted_clusters.clusters:
            errors.append(f"{weighted_path}: at least one cluster is required")
        for i, entry in enumerate(pb.weighted_clusters.clusters):
            targets.append([f"{weighted_path}[{i}].name", entry.name, entry.weight])
            if entry.weight < 1:
                errors.append(f"{weighted_path}[{i}].weight: must be at least 1")
    else:
        errors.append(f"{path}: one of cluster or weighted_clusters is required")
    for name_path, name, _ in targets:
        if not name:
            errors.append(f"{name_path}: required")
        elif clusters is not None and name not in clusters:
            errors.append(f"{name_path}: unknown cluster '{name}'")

    idle_timeout = DEFAULT_IDLE_TIMEOUT
    if pb.HasField("idle_timeout"):
        idle_timeout = _seconds(pb.idle_timeout)
        if idle_timeout < 0:
            errors.append(f"{join(path, 'idle_timeout')}: must not be negative")
        idle_timeout = idle_timeout or None  # Envoy: 0s disables the idle timeout
    attempts = _uint32(pb, "max_connect_attempts", 1)
    if attempts < 1:
        errors.append(f"{join(path, 'max_connect_attempts')}: must be at least 1")

    access_log = None
    if pb.access_log:
        from .http_filters import translate_access_logs
        access_log = translate_access_logs(pb.access_log, join(path, "access_log"), errors,
                                           warnings)
    from .hbone import translate_tunneling_config
    tunneling = translate_tunneling_config(pb, path, errors, warnings)
    if len(errors) > start:
        return None
    return {"stat_prefix": pb.stat_prefix, **tunneling,
            "clusters": [[name, weight] for _, name, weight in targets],
            "idle_timeout": idle_timeout,
            "max_connect_attempts": attempts,
            **({"access_log": access_log} if access_log else {})}


# --- clusters --------------------------------------------------------------------------------

def translate_cluster(pb, path, errors, warnings=None):
    """Cluster -> snapshot cluster dict, or None on error."""
    start = len(errors)
    check_fields(pb, path, errors, warnings)
    if not pb.name:
        errors.append(f"{join(path, 'name')}: required")

    cluster_type = _Cluster.DiscoveryType.Name(pb.type)  # unset is STATIC, as in Envoy
    if cluster_type not in CLUSTER_TYPES:
        errors.append(f"{join(path, 'type')}: {cluster_type} not supported "
                      f"({' or '.join(CLUSTER_TYPES)})")
    lb_policy = _Cluster.LbPolicy.Name(pb.lb_policy)
    if lb_policy not in LB_POLICIES and lb_policy != "CLUSTER_PROVIDED":   # that one: below
        errors.append(f"{join(path, 'lb_policy')}: {lb_policy} not supported "
                      f"({', '.join(LB_POLICIES)})")

    connect_timeout = _duration(pb, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, path, errors)
    dns_refresh_rate = _duration(pb, "dns_refresh_rate", DEFAULT_DNS_REFRESH_RATE, path,
                                 errors, above=0.001)  # Envoy: gt 1ms
    dns_lookup_family = _Cluster.DnsLookupFamily.Name(pb.dns_lookup_family)
    if cluster_type == "STATIC" and warnings is not None:
        # Harmless (Envoy ignores them too), but a sign the operator meant STRICT_DNS.
        if pb.HasField("dns_refresh_rate"):
            warnings.append(f"{join(path, 'dns_refresh_rate')}: ignored for a STATIC cluster")
        if pb.dns_lookup_family:
            warnings.append(f"{join(path, 'dns_lookup_family')}: ignored for a STATIC cluster")

    if cluster_type == "ORIGINAL_DST":
        # Envoy's rules: the destination comes from the connection, so no endpoints and no
        # balancer of ours.
        if lb_policy != "CLUSTER_PROVIDED":     # Envoy refuses the default too
            errors.append(f"{join(path, 'lb_policy')}: LB policy {lb_policy} is not valid for cluster "
                          "type ORIGINAL_DST; only CLUSTER_PROVIDED is allowed")
        if pb.HasField("load_assignment"):
            errors.append(f"{join(path, 'load_assignment')}: an ORIGINAL_DST cluster has no endpoints")
        lb_policy = "CLUSTER_PROVIDED"
    elif lb_policy == "CLUSTER_PROVIDED":
        errors.append(f"{join(path, 'lb_policy')}: CLUSTER_PROVIDED is only for ORIGINAL_DST clusters")
    max_connections = _max_connections(pb, path, errors)
    # HTTP-side cluster features (circuit breaker request limits, outlier detection, health
    # checks, ring hash / maglev, upstream HTTP/2): xds/cluster_features.py.
    from .cluster_features import translate_cluster_features
    features = translate_cluster_features(pb, path, errors, warnings)
    eds = None
    if cluster_type == "EDS":
        from .config_source import translate_eds_cluster_config
        if pb.HasField("load_assignment"):
            errors.append(f"{join(path, 'load_assignment')}: an EDS cluster gets its endpoints "
                          "from EDS")
        eds = translate_eds_cluster_config(pb.eds_cluster_config, join(path, "eds_cluster_config"),
                                           errors)
        eds["service_name"] = eds["service_name"] or pb.name
    elif pb.HasField("eds_cluster_config"):
        errors.append(f"{join(path, 'eds_cluster_config')}: only for type EDS")
    endpoints, pipes = [], None
    if pb.HasField("load_assignment") and cluster_type not in ("ORIGINAL_DST", "EDS"):
        assignment = translate_load_assignment(
            pb.load_assignment, join(path, "load_assignment"), errors, warnings,
            require_ip=cluster_type != "STRICT_DNS")
        if assignment is not None:
            endpoints = assignment["endpoints"]
            pipes = assignment.get("pipe_endpoints")

    if len(errors) > start:
        return None
    return {"name": pb.name, "type": cluster_type, "connect_timeout": connect_timeout,
            "lb_policy": lb_policy, "endpoints": endpoints, "max_connections": max_connections,
            "dns_refresh_rate": dns_refresh_rate, "dns_lookup_family": dns_lookup_family,
            "buffer_limit": _uint32(pb, "per_connection_buffer_limit_bytes",
                                    DEFAULT_BUFFER_LIMIT),
            "eds": eds,                   # EDS: {"service_name", "initial_fetch_timeout"}
            **({"pipe_endpoints": pipes} if pipes else {}),
            **features}


def _max_connections(pb, path, errors):
    """circuit_breakers: only the DEFAULT priority exists here (no HIGH-priority routes)."""
    result = DEFAULT_MAX_CONNECTIONS
    seen = False
    for i, threshold in enumerate(pb.circuit_breakers.thresholds):
        where = join(path, f"circuit_breakers.thresholds[{i}]")
        if threshold.priority:
            priority = protos.RoutingPriority.Name(threshold.priority)
            errors.append(f"{where}.priority: {priority} not supported (DEFAULT only)")
            continue
        if seen:
            errors.append(f"{where}: a second threshold for priority DEFAULT")
        seen = True
        result = _uint32(threshold, "max_connections", result)
    return result


def translate_load_assignment(pb, path, errors, warnings=None, require_ip=True):
    """ClusterLoadAssignment -> {"cluster_name", "endpoints": [...]}, or None on error.

    require_ip: endpoint addresses must be IP literals (STATIC clusters and EDS, as in
    Envoy); STRICT_DNS passes False and keeps hostnames for the master to resolve.
    """
    if require_ip:
        endpoints = _plain_endpoints(pb)
        if endpoints is not None:
            return {"cluster_name": pb.cluster_name, "endpoints": endpoints}
    start = len(errors)
    check_fields(pb, path, errors, warnings)
    if not pb.cluster_name:
        errors.append(f"{join(path, 'cluster_name')}: required")  # Envoy: min_len 1
    endpoints, pipes = [], []
    # Priority and locality ride on each endpoint, only when not the default, so that a plain
    # endpoint stays {"address", "port", "weight"} (worker/proxy/priority.py reads them).
    overprovisioning = _uint32(pb.policy, "overprovisioning_factor", 140)
    if overprovisioning < 1:
        errors.append(f"{join(path, 'policy.overprovisioning_factor')}: must be greater than 0")
    for i, locality in enumerate(pb.endpoints):
        placement = {}
        if locality.priority:
            placement["priority"] = locality.priority
        if locality.HasField("locality"):
            where = locality.locality
            placement["locality"] = f"{where.region}/{where.zone}/{where.sub_zone}"
        if locality.HasField("load_balancing_weight"):
            if locality.load_balancing_weight.value < 1:
                errors.append(f"{join(path, f'endpoints[{i}].load_balancing_weight')}: must be "
                              "at least 1")
            placement["locality_weight"] = locality.load_balancing_weight.value
        if overprovisioning != 140:
            placement["overprovisioning"] = overprovisioning
        # A locality's envoy.transport_socket_match metadata, unless an endpoint has its own.
        from .cluster_upstream import check_metadata
        placement.update(check_metadata(locality, join(path, f"endpoints[{i}]"), errors))
        for j, lb_endpoint in enumerate(locality.lb_endpoints):
            where = join(path, f"endpoints[{i}].lb_endpoints[{j}]")
            if not lb_endpoint.HasField("endpoint"):
                if not lb_endpoint.HasField("endpoint_name"):  # already "not supported"
                    errors.append(f"{where}.endpoint: required")
                continue
            if not lb_endpoint.endpoint.HasField("address"):
                errors.append(f"{where}.endpoint.address: required")
                continue
            if lb_endpoint.endpoint.address.HasField("pipe"):
                # A Unix socket (Istio's sds-grpc): dialled by the xDS agent only; workers
                # see no host in it (xds/secrets.py).
                pipe = lb_endpoint.endpoint.address.pipe.path
                if not pipe:
                    errors.append(f"{where}.endpoint.address.pipe.path: required")
                pipes.append(pipe)
                continue
            from .internal import internal_endpoint
            internal = internal_endpoint(lb_endpoint, f"{where}.endpoint.address", errors)
            if internal is not None:
                endpoints.append({"address": internal[0], "port": internal[1],
                                  "weight": _uint32(lb_endpoint, "load_balancing_weight", 1),
                                  **placement, **_eds_health(lb_endpoint, where, errors),
                                  **internal[2]})
                continue
            # Envoy accepts port 0 for an endpoint (connecting to it then fails).
            hostport = _socket_address(lb_endpoint.endpoint.address, f"{where}.endpoint.address",
                                       errors, ip_only=require_ip, port_required=False)
            weight = _uint32(lb_endpoint, "load_balancing_weight", 1)
            if weight < 1:
                errors.append(f"{where}.load_balancing_weight: must be at least 1")
            state = _eds_health(lb_endpoint, where, errors)
            if hostport is not None:
                endpoints.append({"address": hostport[0], "port": hostport[1],
                                  "weight": weight, **placement, **state})
    if len(errors) > start:
        return None
    return {"cluster_name": pb.cluster_name, "endpoints": endpoints,
            **({"pipe_endpoints": pipes} if pipes else {})}


def _eds_health(lb_endpoint, where, errors):
    """health_status (Envoy: UNHEALTHY, DRAINING and TIMEOUT take the host out of balancing,
    whatever an active health check says; HEALTHY and UNKNOWN leave it in) -> {} or
    {"eds_unhealthy": True}. The endpoint's metadata is kept in the resource (no filter of
    Baton's reads it): only its typed entries are checked, by cluster_upstream.py. An empty
    health_check_config (what istiod sends) changes nothing; one that sets anything (another
    port or address to check) is refused."""
    from .cluster_upstream import check_metadata
    match = check_metadata(lb_endpoint, where, errors)     # {"tls_match": ...} or {}
    if lb_endpoint.endpoint.health_check_config.ListFields():
        errors.append(f"{where}.endpoint.health_check_config: not supported")
    status = protos.HealthStatus.Name(lb_endpoint.health_status) \
        if lb_endpoint.health_status in protos.HealthStatus.values() else None
    if status == "DEGRADED":
        errors.append(f"{where}.health_status: DEGRADED not supported (degraded hosts are not "
                      "implemented)")
    return {**match, "eds_unhealthy": True} if status in ("UNHEALTHY", "DRAINING", "TIMEOUT") else match


_ASSIGNMENT_FIELDS = frozenset({"cluster_name", "endpoints"})


def _plain_endpoints(pb):
    """The endpoints of an assignment that uses nothing but IP:port and weights, or None.

    EDS sends tens of thousands of endpoints, and the general walk (check_fields, paths for
    every field, ipaddress) costs ~75 us each; this costs ~2. That the assignment holds
    nothing but endpoint.address.socket_address.{address, port_value} is read from its
    serialized size, which protobuf computes in C: any other field set would add bytes. The
    whole assignment is checked at once; with weights (or anything else), each endpoint is.
    Anything unusual, and every error, goes the general way, which alone says what is wrong
    and where."""
    if not pb.cluster_name or {f.name for f, _ in pb.ListFields()} - _ASSIGNMENT_FIELDS:
        return None
    endpoints = []
    append = endpoints.append
    pton = socket.inet_pton
    v4, v6 = socket.AF_INET, socket.AF_INET6
    vsize = _varint_size
    name = len(pb.cluster_name.encode())
    total = 1 + vsize(name) + name                         # cluster_name (field 1)
    sizes = []                                             # each LbEndpoint's, unweighted
    for locality in pb.endpoints:
        if len(locality.ListFields()) != 1:                # lb_endpoints only
            return None
        locality_size = 0
        for lb_endpoint in locality.lb_endpoints:
            sa = lb_endpoint.endpoint.address.socket_address
            ip, port = sa.address, sa.port_value
            if not ip or not 0 < port <= 65535:
                return None
            # One-byte tags all the way: SocketAddress.address (2) and port_value (3),
            # Address.socket_address (1), Endpoint.address (1), LbEndpoint.endpoint (1),
            # LocalityLbEndpoints.lb_endpoints (2), ClusterLoadAssignment.endpoints (2).
            size = 2 + vsize(len(ip)) + len(ip) + vsize(port)
            size += 1 + vsize(size)
            size += 1 + vsize(size)
            size += 1 + vsize(size)
            sizes.append(size)
            locality_size += 1 + vsize(size) + size
            try:
                pton(v6 if ":" in ip else v4, ip)
            except (OSError, ValueError):       # ValueError: a NUL in the string
                return None
            append({"address": ip, "port": port, "weight": 1})
        total += 1 + vsize(locality_size) + locality_size
    if pb.ByteSize() == total:
        return endpoints
    # Not bare endpoints: weights (LbEndpoint.load_balancing_weight, a UInt32Value, field 4),
    # or more. Look at each.
    lb_endpoints = [lb for locality in pb.endpoints for lb in locality.lb_endpoints]
    for endpoint, lb_endpoint, size in zip(endpoints, lb_endpoints, sizes):
        actual = lb_endpoint.ByteSize()
        if actual != size:
            if not lb_endpoint.HasField("load_balancing_weight"):
                return None
            weight = lb_endpoint.load_balancing_weight.value
            if weight < 1 or actual != size + 3 + vsize(weight):
                return None
            endpoint["weight"] = weight
    return endpoints


def _varint_size(n):
    return 1 if n < 0x80 else 2 if n < 0x4000 else 3 if n < 0x200000 else 4 if n < 0x10000000 else 5


# --- values ----------------------------------------------------------------------------------

def _socket_address(pb, path, errors, ip_only, port_required=True):
    """Address -> (address, port), or None (errors appended).

    ip_only: the address must be an IP literal (listeners, admin, STATIC endpoints: Envoy
    does no DNS for those).
    """
    if pb.HasField("pipe"):
        errors.append(f"{path}.pipe: not supported here (only a cluster's endpoints, which the "
                      "xDS agent dials)")
        return None
    if not pb.HasField("socket_address"):
        if not pb.ListFields():  # envoy_internal_address is already "not supported"
            errors.append(f"{path}.socket_address: required")
        return None
    sa, where = pb.socket_address, f"{path}.socket_address"
    start = len(errors)
    if sa.protocol != protos.SocketAddress.TCP:
        protocol = protos.SocketAddress.Protocol.Name(sa.protocol)
        errors.append(f"{where}.protocol: {protocol} not supported (TCP only)")
    if not sa.address:
        errors.append(f"{where}.address: required")
    elif "\0" in sa.address:
        # No resolver or socket call takes it (Python raises ValueError, C stops at the NUL).
        errors.append(f"{where}.address: {sa.address!r} holds a NUL character")
    elif ip_only and not _is_ip(sa.address):
        hint = " (a STATIC cluster needs IP literals; use type STRICT_DNS for hostnames)"
        errors.append(f"{where}.address: '{sa.address}' is not an IP address"
                      f"{hint if 'lb_endpoints' in path else ''}")
    if not sa.port_value:
        if port_required and sa.WhichOneof("port_specifier") != "named_port":  # (else already
            #                                                                     "not supported")
            errors.append(f"{where}.port_value: required")
    elif sa.port_value > 65535:
        errors.append(f"{where}.port_value: {sa.port_value} is not a port (1-65535)")
    if len(errors) > start:
        return None
    return sa.address, sa.port_value


def _is_ip(text):
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _hostport(ip, port):
    """Envoy's form of an address: 1.2.3.4:80, [::1]:80."""
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _seconds(duration):
    return duration.seconds + duration.nanos / 1e9


def _duration(pb, field, default, path, errors, above=0.0):
    """A Duration field in seconds, or the default when unset; must be > `above` (Envoy's gt)."""
    if not pb.HasField(field):
        return default
    value = _seconds(getattr(pb, field))
    if value <= above:
        errors.append(f"{join(path, field)}: must be greater than {above:g}s")
    return value


def _uint32(pb, field, default):
    """A UInt32Value field's value, or the default when unset."""
    return getattr(pb, field).value if pb.HasField(field) else default
