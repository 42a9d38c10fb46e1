"""Whitelist (see fields.py) for http_connection_manager and route configuration.

The translator (xds/http.py) checks values and combinations; this table says which fields
may be set at all. Fields that only feed features Baton lacks (tracing, stats of virtual
clusters) are accepted with a warning when they cannot change what a client sees.
"""

from .fields import SKIP, WALK

_TRACING = "accepted but ignored (tracing is not implemented)"

ALLOWED_HTTP: dict = {
    "envoy.extensions.filters.network.http_connection_manager.v3.Rds": {
        "config_source": SKIP, "route_config_name": WALK},
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    ".InternalAddressConfig": {"cidr_ranges": WALK},
    "envoy.config.core.v3.CidrRange": {"address_prefix": WALK, "prefix_len": WALK},
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": {
        # rds: xds/config_source.py; http_filters and access_log are checked by
        # xds/http_filters.py, route_config by translate_route_config.
        "codec_type": WALK, "stat_prefix": WALK, "rds": SKIP, "route_config": SKIP,
        "http_filters": SKIP, "access_log": SKIP, "tracing": _TRACING,
        "common_http_protocol_options": WALK, "http_protocol_options": WALK,
        "http2_protocol_options": WALK, "server_name": WALK,
        "server_header_transformation": WALK, "max_request_headers_kb": WALK,
        "stream_idle_timeout": WALK, "request_timeout": WALK, "request_headers_timeout": WALK,
        "drain_timeout": WALK, "delayed_close_timeout": WALK, "use_remote_address": WALK,
        "internal_address_config": WALK,
        "xff_num_trusted_hops": WALK, "skip_xff_append": WALK, "via": WALK,
        "generate_request_id": WALK, "preserve_external_request_id": WALK,
        "always_set_request_id_in_response": WALK, "upgrade_configs": WALK,
        "normalize_path": WALK, "merge_slashes": WALK, "strip_matching_host_port": WALK,
        "path_with_escaped_slashes_action": WALK, "request_id_extension": SKIP,
        "strip_any_host_port": WALK},
    "envoy.config.core.v3.HttpProtocolOptions": {
        "idle_timeout": WALK, "max_connection_duration": WALK, "max_headers_count": WALK,
        "max_requests_per_connection": WALK, "max_stream_duration": WALK},
    "envoy.config.core.v3.Http1ProtocolOptions": {
        "accept_http_10": WALK, "default_host_for_http_10": WALK},
    "envoy.config.core.v3.Http2ProtocolOptions": {
        "max_concurrent_streams": WALK, "initial_stream_window_size": WALK,
        "initial_connection_window_size": WALK, "max_outbound_frames": WALK,
        "max_outbound_control_frames": WALK,
        "max_consecutive_inbound_frames_with_empty_payload": WALK,
        "max_inbound_priority_frames_per_stream": WALK,
        "max_inbound_window_update_frames_per_data_frame_sent": WALK,
        "override_stream_error_on_invalid_http_message": WALK},
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager."
    "UpgradeConfig": {
        "upgrade_type": WALK, "enabled": WALK},

    # --- route configuration ---
    "envoy.config.route.v3.RouteConfiguration": {
        "name": WALK, "virtual_hosts": WALK, "request_headers_to_add": WALK,
        "request_headers_to_remove": WALK, "response_headers_to_add": WALK,
        "response_headers_to_remove": WALK, "most_specific_header_mutations_wins": WALK,
        "validate_clusters": WALK, "max_direct_response_body_size_bytes": WALK,
        "ignore_port_in_host_matching": WALK, "metadata": SKIP,
        "typed_per_filter_config": SKIP},       # each virtual host's, where it has none
    "envoy.config.route.v3.VirtualHost": {
        "name": WALK, "domains": WALK, "routes": WALK, "request_headers_to_add": WALK,
        "request_headers_to_remove": WALK, "response_headers_to_add": WALK,
        "response_headers_to_remove": WALK, "retry_policy": WALK, "metadata": SKIP,
        "include_request_attempt_count": WALK, "include_attempt_count_in_response": WALK,
        "typed_per_filter_config": SKIP,         # xds/http_filters_istio.py (CORS)
        "virtual_clusters": "accepted but ignored (virtual cluster stats are not implemented)"},
    "envoy.config.route.v3.Route": {
        "name": WALK, "match": WALK, "route": WALK, "redirect": WALK, "direct_response": WALK,
        "request_headers_to_add": WALK, "request_headers_to_remove": WALK,
        "response_headers_to_add": WALK, "response_headers_to_remove": WALK,
        "metadata": SKIP, "decorator": _TRACING,
        "typed_per_filter_config": SKIP},        # xds/http_filters_istio.py (CORS)
    "envoy.config.route.v3.RouteMatch": {
        "prefix": WALK, "path": WALK, "safe_regex": WALK, "connect_matcher": WALK,
        "path_separated_prefix": WALK, "case_sensitive": WALK, "headers": WALK,
        "query_parameters": WALK, "grpc": WALK},
    "envoy.config.route.v3.RouteMatch.ConnectMatcher": {},
    "envoy.config.route.v3.RouteMatch.GrpcRouteMatchOptions": {},
    "envoy.config.route.v3.HeaderMatcher": {
        "name": WALK, "exact_match": WALK, "safe_regex_match": WALK, "range_match": WALK,
        "present_match": WALK, "prefix_match": WALK, "suffix_match": WALK,
        "contains_match": WALK, "string_match": WALK, "invert_match": WALK,
        "treat_missing_header_as_empty": WALK},
    "envoy.type.v3.Int64Range": {
        "start": WALK, "end": WALK},
    "envoy.config.route.v3.QueryParameterMatcher": {
        "name": WALK, "string_match": WALK, "present_match": WALK},
    "envoy.type.matcher.v3.StringMatcher": {
        "exact": WALK, "prefix": WALK, "suffix": WALK, "safe_regex": WALK, "contains": WALK,
        "ignore_case": WALK},
    "envoy.type.matcher.v3.RegexMatcher": {
        # google_re2.max_program_size is deprecated, and Baton has no program size.
        "regex": WALK},
    "envoy.type.matcher.v3.RegexMatchAndSubstitute": {
        "pattern": WALK, "substitution": WALK},
    "envoy.config.route.v3.RouteAction": {
        "cluster": WALK, "cluster_header": WALK, "weighted_clusters": WALK,
        "cluster_not_found_response_code": WALK, "prefix_rewrite": WALK,
        "regex_rewrite": WALK, "host_rewrite_literal": WALK, "auto_host_rewrite": WALK,
        "host_rewrite_header": WALK, "timeout": WALK, "idle_timeout": WALK,
        "retry_policy": WALK, "hash_policy": WALK, "max_grpc_timeout": WALK,
        "grpc_timeout_offset": WALK, "max_stream_duration": WALK, "upgrade_configs": WALK},
    # connect_config (Envoy terminates the CONNECT itself) is not implemented: refused.
    "envoy.config.route.v3.RouteAction.UpgradeConfig": {
        "upgrade_type": WALK, "enabled": WALK},
    "envoy.config.route.v3.RouteAction.MaxStreamDuration": {
        "max_stream_duration": WALK, "grpc_timeout_header_max": WALK,
        "grpc_timeout_header_offset": WALK},
    "envoy.config.route.v3.WeightedCluster": {
        "clusters": WALK, "total_weight": WALK},
    "envoy.config.route.v3.WeightedCluster.ClusterWeight": {
        "name": WALK, "cluster_header": WALK, "weight": WALK, "request_headers_to_add": WALK,
        "request_headers_to_remove": WALK, "response_headers_to_add": WALK,
        "response_headers_to_remove": WALK, "host_rewrite_literal": WALK},
    "envoy.config.route.v3.RetryPolicy": {
        "retry_on": WALK, "num_retries": WALK, "per_try_timeout": WALK,
        "retriable_status_codes": WALK, "retry_back_off": WALK, "retriable_headers": WALK,
        # retry_host_predicate's entries: checked by xds/http.py (_host_predicates).
        "retry_host_predicate": SKIP, "host_selection_retry_max_attempts": WALK},
    "envoy.config.route.v3.RetryPolicy.RetryBackOff": {
        "base_interval": WALK, "max_interval": WALK},
    "envoy.config.route.v3.RouteAction.HashPolicy": {
        "header": WALK, "cookie": WALK, "connection_properties": WALK,
        "query_parameter": WALK, "terminal": WALK},
    "envoy.config.route.v3.RouteAction.HashPolicy.Header": {
        "header_name": WALK},
    "envoy.config.route.v3.RouteAction.HashPolicy.Cookie": {
        # ttl / path / attributes make Envoy set the cookie when absent: not implemented.
        "name": WALK},
    "envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties": {
        "source_ip": WALK},
    "envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter": {
        "name": WALK},
    "envoy.config.route.v3.RedirectAction": {
        "https_redirect": WALK, "scheme_redirect": WALK, "host_redirect": WALK,
        "port_redirect": WALK, "path_redirect": WALK, "prefix_rewrite": WALK,
        "regex_rewrite": WALK, "response_code": WALK, "strip_query": WALK},
    "envoy.config.route.v3.DirectResponseAction": {
        "status": WALK, "body": WALK},
    "envoy.config.core.v3.DataSource": {
        "filename": WALK, "inline_bytes": WALK, "inline_string": WALK},
    "envoy.config.core.v3.HeaderValueOption": {
        "header": WALK, "append": WALK, "append_action": WALK, "keep_empty_value": WALK},
    "envoy.config.core.v3.HeaderValue": {
        "key": WALK, "value": WALK, "raw_value": WALK},
}
