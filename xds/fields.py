"""Which fields of the Envoy API Baton implements: a whitelist per message type.

DESIGN.md: a field Baton does not implement and that would change behaviour is a config
error naming its path, never silently ignored. A whitelist, rather than a list of what is
unsupported, means that a field added to the Envoy API tomorrow is refused until someone
decides otherwise. check_fields() walks msg.ListFields(), i.e. only what the config SET
(for proto3 scalars and enums: set to a non-default value), so `protocol: TCP` or
`priority: DEFAULT` pass as unset, and their non-default values are refused here unless the
translator has a better message for them.

Each rule is one of:
  WALK     accepted; the walk continues into the field's message (google.protobuf.* values
           such as Duration, UInt32Value, Struct are leaves)
  SKIP     accepted here; a translator checks that subtree itself (it is reused on its own,
           for xDS resources, and Any fields need unpacking first)
  "text"   accepted and ignored, with a warning "path: text"; the subtree is not walked
"""

from .parse import is_repeated, join

WALK = "walk"
SKIP = "skip"

_ADMIN_LOG = "accepted but ignored (the admin access log is not implemented)"

ALLOWED = {
    "envoy.config.bootstrap.v3.Bootstrap": {
        "node": WALK, "static_resources": WALK, "admin": SKIP, "dynamic_resources": SKIP},
    # dynamic_resources and every ConfigSource: xds/config_source.py (ADS only).
    "envoy.config.bootstrap.v3.Bootstrap.DynamicResources": {
        "lds_config": SKIP, "cds_config": SKIP, "ads_config": WALK},
    "envoy.config.core.v3.ApiConfigSource": {
        "api_type": WALK, "transport_api_version": WALK, "grpc_services": WALK,
        "set_node_on_first_message_only": WALK},
    "envoy.config.core.v3.GrpcService": {
        "envoy_grpc": WALK, "timeout": "accepted but ignored (the ADS stream has no deadline)"},
    "envoy.config.core.v3.GrpcService.EnvoyGrpc": {
        "cluster_name": WALK},
    "envoy.config.core.v3.ConfigSource": {
        "ads": WALK, "initial_fetch_timeout": WALK, "resource_api_version": WALK},
    "envoy.config.core.v3.AggregatedConfigSource": {},
    "envoy.config.cluster.v3.Cluster.EdsClusterConfig": {
        "eds_config": SKIP, "service_name": WALK},
    "envoy.config.core.v3.Node": {
        # Identity only: reported to a control plane later, no behaviour of its own.
        "id": WALK, "cluster": WALK, "metadata": WALK},
    "envoy.config.bootstrap.v3.Bootstrap.StaticResources": {
        "listeners": SKIP, "clusters": SKIP},
    "envoy.config.bootstrap.v3.Admin": {
        "address": WALK, "access_log_path": _ADMIN_LOG, "access_log": _ADMIN_LOG},
    "envoy.config.core.v3.Address": {
        "socket_address": WALK},
    "envoy.config.core.v3.SocketAddress": {
        # protocol is checked by the translator, to say "UDP not supported".
        "address": WALK, "port_value": WALK, "protocol": WALK},
    "envoy.config.listener.v3.Listener": {
        "name": WALK, "address": WALK, "stat_prefix": WALK, "filter_chains": WALK,
        "enable_reuse_port": WALK, "per_connection_buffer_limit_bytes": WALK,
        # Interception (tproxy/): IP_TRANSPARENT, hand-off by original destination, and the
        # listener filters, which the translator checks one by one.
        "transparent": WALK, "use_original_dst": WALK, "listener_filters": SKIP,
        "listener_filters_timeout": WALK, "continue_on_listener_filters_timeout": WALK,
        # INBOUND / OUTBOUND: informational in Envoy too (for extensions that ask); kept in
        # the resource, so /config_dump shows it.
        "traffic_direction": WALK,
        # Istio's virtual listeners: no socket, reached by a use_original_dst hand-off;
        # deprecated_v1 is the same flag as Istio 1.9 / 1.10 send it (translator checks it).
        "bind_to_port": WALK, "deprecated_v1": SKIP,
        # The chain used when no filter_chain_match matches; the listener's access logs.
        "default_filter_chain": WALK, "access_log": SKIP},
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst": {},
    "envoy.config.listener.v3.FilterChain": {
        # filters: xds/network_filters.py, one by one.
        "name": WALK, "filters": SKIP, "filter_chain_match": WALK,
        # DownstreamTlsContext: xds/tls.py (and its whitelist, fields_tls.py).
        "transport_socket": SKIP, "transport_socket_connect_timeout": WALK},
    "envoy.config.listener.v3.FilterChainMatch": {
        # Selected after the listener's inspectors ran (worker/proxy/chains.py).
        "destination_port": WALK, "server_names": WALK, "transport_protocol": WALK,
        "application_protocols": WALK, "prefix_ranges": WALK, "source_prefix_ranges": WALK,
        "direct_source_prefix_ranges": WALK, "source_type": WALK, "source_ports": WALK},
    "envoy.config.core.v3.CidrRange": {
        "address_prefix": WALK, "prefix_len": WALK},
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector": {},
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector": {},
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy": {
        "stat_prefix": WALK, "cluster": WALK, "weighted_clusters": WALK, "idle_timeout": WALK,
        "max_connect_attempts": WALK,
        # A line per connection when it closes (worker/connection_log.py).
        "access_log": SKIP},
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster": {
        "clusters": WALK},
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight": {
        "name": WALK, "weight": WALK},
    "envoy.config.cluster.v3.Cluster": {
        # type and lb_policy values are checked by the translator.
        "name": WALK, "type": WALK, "connect_timeout": WALK, "lb_policy": WALK,
        "load_assignment": SKIP, "circuit_breakers": WALK, "dns_refresh_rate": WALK,
        "dns_lookup_family": WALK, "per_connection_buffer_limit_bytes": WALK,
        "eds_cluster_config": SKIP},
    "envoy.config.cluster.v3.CircuitBreakers": {
        "thresholds": WALK},
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds": {
        "priority": WALK, "max_connections": WALK},
    "envoy.config.endpoint.v3.ClusterLoadAssignment": {
        "cluster_name": WALK, "endpoints": WALK},
    "envoy.config.endpoint.v3.LocalityLbEndpoints": {
        # No load_balancing_weight (locality weighting) and no priority (failover): both
        # change which host is picked, so they are refused when set.
        "lb_endpoints": WALK},
    "envoy.config.endpoint.v3.LbEndpoint": {
        "endpoint": WALK, "load_balancing_weight": WALK},
    "envoy.config.endpoint.v3.Endpoint": {
        "address": WALK},
}


def check_fields(msg, path, errors, warnings):
    """Append "<path>: not supported" for every set field outside the whitelist."""
    rules = ALLOWED.get(msg.DESCRIPTOR.full_name)
    if rules is None:  # only reachable through a WALK rule on a type missing from ALLOWED
        errors.append(f"{path}: {msg.DESCRIPTOR.full_name} not supported")
        return
    for field, value in msg.ListFields():
        sub = join(path, field.name)
        rule = rules.get(field.name)
        if rule is None:
            errors.append(f"{sub}: not supported")
        elif rule == SKIP:
            continue
        elif rule != WALK:
            if warnings is not None:
                warnings.append(f"{sub}: {rule}")
        elif field.message_type is not None and not field.message_type.full_name.startswith(
                "google.protobuf."):
            if is_repeated(field):
                for i, item in enumerate(value):
                    check_fields(item, f"{sub}[{i}]", errors, warnings)
            else:
                check_fields(value, sub, errors, warnings)


# The HTTP side keeps its own whitelists next to its translators; they are merged here so
# check_fields() sees one table.
from .fields_http import ALLOWED_HTTP  # noqa: E402
from .fields_cluster import ALLOWED_CLUSTER  # noqa: E402
from .fields_http_filters import ALLOWED_HTTP_FILTERS  # noqa: E402
from .fields_overload import ALLOWED_OVERLOAD  # noqa: E402
from .fields_tls import ALLOWED_TLS  # noqa: E402
from .hbone import ALLOWED_HBONE  # noqa: E402
from .internal import ALLOWED_INTERNAL  # noqa: E402
from .stats_config import ALLOWED_STATS  # noqa: E402

for _table in (ALLOWED_HTTP, ALLOWED_CLUSTER, ALLOWED_HTTP_FILTERS, ALLOWED_OVERLOAD, ALLOWED_TLS,
               ALLOWED_HBONE, ALLOWED_INTERNAL, ALLOWED_STATS):
    for _type, _rules in _table.items():
        ALLOWED.setdefault(_type, {}).update(_rules)
