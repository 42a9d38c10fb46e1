"""Whitelist (see fields.py) for the HTTP-side cluster features: circuit breaker request
limits, outlier detection, active health checks, ring hash / Maglev, panic threshold.

Merged into fields.ALLOWED per type with dict.update, so the Cluster and Thresholds entries
here add to the rules fields.py already has. The upstream HTTP protocol options are SKIP:
cluster_features.py checks them field by field itself, because their message types are
shared with the HTTP connection manager, whose whitelist says what the downstream side
implements, not the upstream one.
"""

from .fields import SKIP, WALK

_NO_EVENT_LOG = "accepted but ignored (health check event logging is not implemented)"

ALLOWED_CLUSTER: dict = {
    "envoy.config.cluster.v3.Cluster": {
        "health_checks": WALK, "outlier_detection": WALK, "common_lb_config": WALK,
        "ring_hash_lb_config": WALK, "maglev_lb_config": WALK,
        "typed_extension_protocol_options": SKIP,
        # Deprecated forms of typed_extension_protocol_options, still in use.
        "http2_protocol_options": SKIP, "http_protocol_options": SKIP,
        "common_http_protocol_options": SKIP, "max_requests_per_connection": WALK,
        # cluster_upstream.py checks these.
        "metadata": SKIP, "upstream_bind_config": SKIP, "filters": SKIP,
        # USE_DOWNSTREAM_PROTOCOL: cluster_features._protocol_options.
        "protocol_selection": WALK,
        # Upstream TLS: tls_upstream.py; auto_sni: cluster_features._auto_sni.
        "transport_socket": SKIP, "transport_socket_matches": SKIP,
        "upstream_http_protocol_options": SKIP},
    "envoy.config.cluster.v3.CircuitBreakers.Thresholds": {
        "max_pending_requests": WALK, "max_requests": WALK, "max_retries": WALK,
        "track_remaining": "accepted but ignored (no remaining_* gauges)"},
    "envoy.config.cluster.v3.Cluster.CommonLbConfig": {
        "healthy_panic_threshold": WALK, "locality_weighted_lb_config": WALK},
    "envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig": {},
    # EDS / load_assignment: priorities, localities and their weights, and the policy's
    # overprovisioning_factor drive worker/proxy/priority.py. A locality's identity (region,
    # zone, sub_zone) only tells localities apart.
    "envoy.config.endpoint.v3.LocalityLbEndpoints": {
        "locality": WALK, "load_balancing_weight": WALK, "priority": WALK,
        # envoy.transport_socket_match entries choose a transport socket (tls_upstream.py).
        "metadata": SKIP},
    "envoy.config.core.v3.Locality": {
        "region": WALK, "zone": WALK, "sub_zone": WALK},
    "envoy.config.endpoint.v3.ClusterLoadAssignment": {
        "policy": WALK},
    "envoy.config.endpoint.v3.ClusterLoadAssignment.Policy": {
        "overprovisioning_factor": WALK},
    # health_status, metadata and health_check_config: translate._eds_health.
    "envoy.config.endpoint.v3.LbEndpoint": {
        "health_status": WALK, "metadata": SKIP},
    "envoy.config.endpoint.v3.Endpoint": {
        "health_check_config": SKIP},
    "envoy.type.v3.Percent": {
        "value": WALK},
    "envoy.config.cluster.v3.Cluster.RingHashLbConfig": {
        "minimum_ring_size": WALK, "maximum_ring_size": WALK, "hash_function": WALK},
    "envoy.config.cluster.v3.Cluster.MaglevLbConfig": {
        "table_size": WALK},
    "envoy.config.cluster.v3.OutlierDetection": {
        # Everything but `monitors` (an extension point).
        name: WALK for name in (
            "consecutive_5xx", "interval", "base_ejection_time", "max_ejection_percent",
            "enforcing_consecutive_5xx", "enforcing_success_rate", "success_rate_minimum_hosts",
            "success_rate_request_volume", "success_rate_stdev_factor",
            "consecutive_gateway_failure", "enforcing_consecutive_gateway_failure",
            "split_external_local_origin_errors", "consecutive_local_origin_failure",
            "enforcing_consecutive_local_origin_failure", "enforcing_local_origin_success_rate",
            "failure_percentage_threshold", "enforcing_failure_percentage",
            "enforcing_failure_percentage_local_origin", "failure_percentage_minimum_hosts",
            "failure_percentage_request_volume", "max_ejection_time", "max_ejection_time_jitter",
            "successful_active_health_check_uneject_host", "always_eject_one_host")},
    "envoy.config.core.v3.HealthCheck": {
        "timeout": WALK, "interval": WALK, "initial_jitter": WALK, "interval_jitter": WALK,
        "interval_jitter_percent": WALK, "unhealthy_threshold": WALK, "healthy_threshold": WALK,
        "reuse_connection": WALK, "http_health_check": WALK, "tcp_health_check": WALK,
        "no_traffic_interval": WALK, "no_traffic_healthy_interval": WALK,
        "unhealthy_interval": WALK, "unhealthy_edge_interval": WALK,
        "healthy_edge_interval": WALK,
        "event_log_path": _NO_EVENT_LOG, "always_log_health_check_failures": _NO_EVENT_LOG,
        "always_log_health_check_success": _NO_EVENT_LOG},
    "envoy.config.core.v3.HealthCheck.HttpHealthCheck": {
        # codec_client_type and method values are checked by the translator;
        # request_headers_to_add too (HeaderValueOption is shared with the HTTP side).
        "host": WALK, "path": WALK, "request_headers_to_add": SKIP,
        "request_headers_to_remove": WALK, "expected_statuses": WALK,
        "retriable_statuses": WALK, "codec_client_type": WALK, "method": WALK},
    "envoy.config.core.v3.HealthCheck.TcpHealthCheck": {
        "send": WALK, "receive": WALK},
    "envoy.config.core.v3.HealthCheck.Payload": {
        "text": WALK, "binary": WALK},
    "envoy.type.v3.Int64Range": {
        "start": WALK, "end": WALK},
}
