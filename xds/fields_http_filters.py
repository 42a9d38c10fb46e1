"""Whitelist (see fields.py) for HTTP filters and access logs.

The rule names are spelled out ("walk", "skip") rather than imported: fields.py imports this
module at its end, and importing fields.py from here would be circular. Messages that
xds/http_filters.py checks field by field itself (HeaderMatcher, HeaderValueOption, the
TypedStruct of a user filter) are SKIP, so their errors come from one place.
"""

WALK = "walk"
SKIP = "skip"

_NO_RUNTIME = "accepted but ignored (Baton has no runtime; the configured value applies)"

ALLOWED_HTTP_FILTERS: dict = {
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter": {
        # disabled: made only for the routes that enable it (xds/http_filters.py);
        # is_optional: an unknown type is skipped.
        "name": WALK, "typed_config": SKIP, "is_optional": WALK, "disabled": WALK,
        "config_discovery": SKIP},                  # xds/ecds.py
    # A route's typed_per_filter_config entry turning a filter on or off
    # (xds/http_filters_istio.py _filter_config; config is translated there).
    "envoy.config.route.v3.FilterConfig": {
        "disabled": WALK, "is_optional": WALK, "config": SKIP},
    "envoy.extensions.filters.http.router.v3.Router": {
        "suppress_envoy_headers": WALK,
        "dynamic_stats": WALK,       # stats only
        "start_child_span": "accepted but ignored (Baton does no tracing)",
        "suppress_grpc_request_failure_code_stats": "accepted but ignored (stats only)"},
    "envoy.extensions.filters.http.fault.v3.HTTPFault": {
        "delay": WALK, "abort": WALK, "upstream_cluster": WALK, "headers": SKIP,
        "downstream_nodes": WALK, "max_active_faults": WALK,
        "disable_downstream_cluster_stats": WALK,
        "delay_percent_runtime": _NO_RUNTIME, "abort_percent_runtime": _NO_RUNTIME,
        "delay_duration_runtime": _NO_RUNTIME, "abort_http_status_runtime": _NO_RUNTIME,
        "max_active_faults_runtime": _NO_RUNTIME, "abort_grpc_status_runtime": _NO_RUNTIME,
        "response_rate_limit_percent_runtime": _NO_RUNTIME,
        "filter_metadata": "accepted but ignored (Baton has no dynamic metadata)"},
    "envoy.extensions.filters.common.fault.v3.FaultDelay": {
        "fixed_delay": WALK, "header_delay": WALK, "percentage": WALK},
    "envoy.extensions.filters.common.fault.v3.FaultDelay.HeaderDelay": {},
    "envoy.extensions.filters.http.fault.v3.FaultAbort": {
        "http_status": WALK, "grpc_status": WALK, "header_abort": WALK, "percentage": WALK},
    "envoy.extensions.filters.http.fault.v3.FaultAbort.HeaderAbort": {},
    "envoy.type.v3.FractionalPercent": {
        "numerator": WALK, "denominator": WALK},
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit": {
        "stat_prefix": WALK, "status": WALK, "token_bucket": WALK, "filter_enabled": WALK,
        "filter_enforced": WALK, "request_headers_to_add_when_not_enforced": SKIP,
        "response_headers_to_add": SKIP, "enable_x_ratelimit_headers": WALK,
        # Only matters with descriptors, which are refused: the default bucket is always used.
        "always_consume_default_token_bucket": WALK},
    "envoy.type.v3.HttpStatus": {"code": WALK},
    "envoy.type.v3.TokenBucket": {
        "max_tokens": WALK, "tokens_per_fill": WALK, "fill_interval": WALK},
    # Istio's HTTP filters (xds/http_filters_istio.py).
    "envoy.extensions.filters.http.cors.v3.Cors": {},
    "envoy.extensions.filters.http.cors.v3.CorsPolicy": {
        "allow_origin_string_match": SKIP, "allow_methods": WALK, "allow_headers": WALK,
        "expose_headers": WALK, "max_age": WALK, "allow_credentials": WALK,
        "filter_enabled": WALK, "forward_not_matching_preflights": WALK},
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig": {
        "stats_for_all_methods": WALK,
        "emit_filter_state": "accepted; no filter of Baton's reads the message counts"},
    "envoy.config.core.v3.RuntimeFractionalPercent": {
        "default_value": WALK, "runtime_key": _NO_RUNTIME},
    "envoy.config.accesslog.v3.AccessLog": {
        # filter: xds/http_filters.py (response_flag_filter only).
        "name": WALK, "typed_config": SKIP, "filter": SKIP},
    "envoy.extensions.access_loggers.file.v3.FileAccessLog": {
        "path": WALK, "format": WALK, "json_format": WALK, "typed_json_format": WALK,
        "log_format": WALK},
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog": {"log_format": WALK},
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog": {"log_format": WALK},
    "envoy.config.core.v3.SubstitutionFormatString": {
        "text_format": WALK, "json_format": WALK, "text_format_source": WALK,
        "omit_empty_values": WALK},
    "envoy.config.core.v3.DataSource": {
        # Shared with other tables (fields_http.py may allow filename); an access log format
        # from a file is refused by the translator itself (read once, never watched).
        "inline_string": WALK, "inline_bytes": WALK},
}
