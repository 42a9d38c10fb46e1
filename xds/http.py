"""http_connection_manager and its route configuration -> plain dicts (shape in snapshot.py).

    translate_http_connection_manager(pb, path, errors, warnings=None, clusters=None)
    translate_route_config(pb, path, errors, warnings=None, clusters=None)

Same rules as translate.py: "path: message" errors, every check runs, None when the resource
has any error, Envoy's defaults and limits. What Envoy refuses at load time is refused here
with the same meaning (checked against `envoy --mode validate`, Envoy 1.40); the fields
Baton does not implement are refused by the whitelist in fields_http.py.

The route_config dict is compiled by worker/proxy/http/routing.py (RouteTable); its regexes
are checked here with the same RE2 translation, so a pattern that loads also runs.
"""

import ipaddress
import os

from . import protos
from .fields import check_fields
from .parse import join
from ..worker.proxy.http.route_regex import RegexError, compile_re2, compile_substitution

DEFAULT_MAX_REQUEST_HEADERS_KB = 60
MAX_REQUEST_HEADERS_KB = 8192
DEFAULT_MAX_HEADERS_COUNT = 100
DEFAULT_STREAM_IDLE_TIMEOUT = 300.0
DEFAULT_IDLE_TIMEOUT = 3600.0              # common_http_protocol_options.idle_timeout
DEFAULT_DRAIN_TIMEOUT = 5.0
DEFAULT_DELAYED_CLOSE_TIMEOUT = 1.0
DEFAULT_SERVER_NAME = "envoy"
H2_MAX_CONCURRENT_STREAMS = 2147483647
# Envoy 1.40's downstream HTTP/2 defaults, as a real Envoy advertises them (SETTINGS and its
# first WINDOW_UPDATE): 1024 streams, a 16 MiB stream window, a 24 MiB connection window.
H2_DEFAULT_CONCURRENT_STREAMS = 1024
H2_DEFAULT_WINDOWS = {"initial_stream_window_size": 16 * 1024 * 1024,
                      "initial_connection_window_size": 24 * 1024 * 1024}
H2_MIN_WINDOW = 65535
H2_MAX_WINDOW = 2147483647
# Envoy's flood limits (Http2ProtocolOptions): default, and the least value it accepts.
H2_FLOOD_LIMITS = {
    "max_outbound_frames": (10000, 1),
    "max_outbound_control_frames": (1000, 1),
    "max_consecutive_inbound_frames_with_empty_payload": (1, 0),
    "max_inbound_priority_frames_per_stream": (100, 0),
    "max_inbound_window_update_frames_per_data_frame_sent": (10, 1),
}
DEFAULT_ROUTE_TIMEOUT = 15.0
DEFAULT_NUM_RETRIES = 1
DEFAULT_RETRY_BASE = 0.025
DEFAULT_MAX_DIRECT_BODY = 4096

CODEC_TYPES = ("AUTO", "HTTP1", "HTTP2")
SERVER_HEADER_TRANSFORMATIONS = ("OVERWRITE", "APPEND_IF_ABSENT", "PASS_THROUGH")
# retry_on conditions the router implements; Envoy knows more (they are refused), and
# ignores names it does not know (so does Baton, with a warning).
# retry_on conditions the router implements (Envoy's router filter documents each; the gRPC
# ones read grpc-status in the response headers, a trailers-only answer). Envoy ignores names
# it does not know; so does Baton, with a warning. http3-post-connect-failure only ever fires
# on HTTP/3, which Baton does not speak upstream: accepted, it never retries (as Envoy without
# HTTP/3).
RETRY_ON = ("5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx",
            "refused-stream", "retriable-status-codes", "retriable-headers",
            "reset-before-request", "envoy-ratelimited", "http3-post-connect-failure",
            "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
PREVIOUS_HOSTS_TYPE = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
APPEND_ACTIONS = ("APPEND_IF_EXISTS_OR_ADD", "ADD_IF_ABSENT", "OVERWRITE_IF_EXISTS_OR_ADD",
                  "OVERWRITE_IF_EXISTS")
REDIRECT_CODES = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}
CLUSTER_NOT_FOUND_CODES = {0: 503, 1: 404, 2: 500}


# --- http_connection_manager -----------------------------------------------------------------

def translate_http_connection_manager(pb, path, errors, warnings=None, clusters=None):
    """HttpConnectionManager -> the "http" dict of a filter chain, or None on error."""
    start = len(errors)
    check_fields(pb, path, errors, warnings)
    if not pb.stat_prefix:
        errors.append(f"{join(path, 'stat_prefix')}: required")
    codec_type = protos.HttpConnectionManager.CodecType.Name(pb.codec_type)
    if codec_type not in CODEC_TYPES:
        errors.append(f"{join(path, 'codec_type')}: {codec_type} not supported "
                      f"({', '.join(CODEC_TYPES)})")

    route_config = rds = None
    which = pb.WhichOneof("route_specifier")
    if which == "route_config":
        route_config = translate_route_config(pb.route_config, join(path, "route_config"),
                                              errors, warnings, clusters)
    elif which == "rds":
        from .config_source import translate_rds
        rds = translate_rds(pb.rds, join(path, "rds"), errors)
    elif which is None:
        errors.append(f"{path}: route_config is required")

    from .http_filters import translate_access_logs, translate_http_filters
    http_filters = translate_http_filters(pb.http_filters, join(path, "http_filters"), errors,
                                          warnings)
    access_log = translate_access_logs(pb.access_log, join(path, "access_log"), errors, warnings)

    headers_kb = _uint32(pb, "max_request_headers_kb", DEFAULT_MAX_REQUEST_HEADERS_KB)
    if not 0 < headers_kb <= MAX_REQUEST_HEADERS_KB:
        errors.append(f"{join(path, 'max_request_headers_kb')}: must be in (0, "
                      f"{MAX_REQUEST_HEADERS_KB}]")
    common = pb.common_http_protocol_options
    common_path = join(path, "common_http_protocol_options")
    headers_count = _uint32(common, "max_headers_count", DEFAULT_MAX_HEADERS_COUNT)
    if headers_count < 1:
        errors.append(f"{join(common_path, 'max_headers_count')}: must be at least 1")
    max_requests = _uint32(common, "max_requests_per_connection", None)

    transformation = protos.HttpConnectionManager.ServerHeaderTransformation.Name(
        pb.server_header_transformation)
    upgrade_types = _upgrade_types(pb, path, errors)
    http2 = _http2_options(pb, path, errors)
    http1 = pb.http_protocol_options
    # Validated fields whose behaviour Baton does not have: refused, not silently ignored.
    if pb.xff_num_trusted_hops:
        errors.append(f"{join(path, 'xff_num_trusted_hops')}: not supported yet (0 only)")
    _request_id_extension(pb, path, errors, warnings)

    if len(errors) > start:
        return None
    return {
        "stat_prefix": pb.stat_prefix,
        "codec_type": codec_type,
        "route_config": route_config,     # None with rds until its RouteConfiguration arrives
        "rds": rds,                       # {"route_config_name", "initial_fetch_timeout"} | None
        "http_filters": http_filters,
        "access_log": access_log,
        "max_request_headers_kb": headers_kb,
        "max_request_headers_count": headers_count,
        "request_headers_timeout": _timeout(pb, "request_headers_timeout", None, path, errors),
        "stream_idle_timeout": _timeout(pb, "stream_idle_timeout", DEFAULT_STREAM_IDLE_TIMEOUT,
                                        path, errors),
        "request_timeout": _timeout(pb, "request_timeout", None, path, errors),
        "idle_timeout": _timeout(common, "idle_timeout", DEFAULT_IDLE_TIMEOUT, common_path,
                                 errors),
        "max_connection_duration": _timeout(common, "max_connection_duration", None,
                                            common_path, errors),
        # A route's max_stream_duration replaces it (worker/proxy/http/router.py).
        "max_stream_duration": _timeout(common, "max_stream_duration", None, common_path,
                                        errors),
        "max_requests_per_connection": max_requests or None,     # 0: unlimited, as Envoy
        "drain_timeout": _timeout(pb, "drain_timeout", DEFAULT_DRAIN_TIMEOUT, path, errors,
                                  zero=0.0),
        "delayed_close_timeout": _timeout(pb, "delayed_close_timeout",
                                          DEFAULT_DELAYED_CLOSE_TIMEOUT, path, errors),
        "use_remote_address": pb.use_remote_address.value,
        "internal_cidrs": _internal_cidrs(pb, path, errors),
        "xff_num_trusted_hops": pb.xff_num_trusted_hops,
        "skip_xff_append": pb.skip_xff_append,
        "generate_request_id": _bool(pb, "generate_request_id", True),
        "preserve_external_request_id": pb.preserve_external_request_id,
        "always_set_request_id_in_response": pb.always_set_request_id_in_response,
        "server_name": pb.server_name or DEFAULT_SERVER_NAME,
        "server_header_transformation": transformation,
        "via": pb.via,
        "upgrade_types": upgrade_types,
        "http2": http2,
        "http1": {"accept_http_10": http1.accept_http_10,
                  "default_host_for_http_10": http1.default_host_for_http_10},
        "normalize_path": pb.normalize_path.value,
        "merge_slashes": pb.merge_slashes,
        # IMPLEMENTATION_SPECIFIC_DEFAULT is KEEP_UNCHANGED in Envoy 1.40 (its runtime default).
        "escaped_slashes": _escaped_slashes_action(pb),
        "strip_matching_host_port": pb.strip_matching_host_port,
        "strip_any_host_port": pb.strip_any_host_port,
        "buffer_limit": None,            # the listener's per_connection_buffer_limit_bytes
    }


UUID_REQUEST_ID = "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig"


def _request_id_extension(pb, path, errors, warnings):
    """request_id_extension: Envoy's default, the UUID extension, is what Baton does (random
    version 4 UUIDs in x-request-id). Its two fields only act through tracing: pack_trace_reason
    writes the trace decision into the UUID, use_request_id_for_trace_sampling samples by it.
    Tracing is not implemented (the HCM's `tracing` is accepted but ignored, with a warning),
    so they change nothing here; with `tracing` set, a warning says so."""
    if not pb.HasField("request_id_extension"):
        return
    here = join(path, "request_id_extension")
    for field, _ in pb.request_id_extension.ListFields():
        if field.name != "typed_config":
            errors.append(f"{here}.{field.name}: not supported")
    config_pb = pb.request_id_extension.typed_config
    type_name = protos.type_name(config_pb.type_url)
    if type_name != UUID_REQUEST_ID:
        errors.append(f"{here}.typed_config: {type_name or 'a typed_config'} not supported "
                      f"(only {UUID_REQUEST_ID})")
        return
    config = protos.message_class(UUID_REQUEST_ID)()
    config_pb.Unpack(config)
    if pb.HasField("tracing") and warnings is not None:
        packs = not config.HasField("pack_trace_reason") or config.pack_trace_reason.value
        if packs:
            warnings.append(f"{here}.typed_config.pack_trace_reason: ignored (tracing is not "
                            "implemented, so no trace reason is packed into x-request-id)")


def _escaped_slashes_action(pb):
    """path_with_escaped_slashes_action -> KEEP_UNCHANGED, REJECT_REQUEST,
    UNESCAPE_AND_REDIRECT or UNESCAPE_AND_FORWARD (worker/proxy/http/path_normalize.py)."""
    name = protos.HttpConnectionManager.PathWithEscapedSlashesAction.Name(
        pb.path_with_escaped_slashes_action)
    return "KEEP_UNCHANGED" if name == "IMPLEMENTATION_SPECIFIC_DEFAULT" else name


def _upgrade_types(pb, path, errors):
    """Enabled upgrade types, lower-cased ("websocket", "connect"); Envoy compares them
    case-insensitively and refuses the same type twice."""
    seen, result = set(), []
    for i, upgrade in enumerate(pb.upgrade_configs):
        here = f"{join(path, 'upgrade_configs')}[{i}]"
        name = upgrade.upgrade_type.lower()
        if not name:
            errors.append(f"{here}.upgrade_type: required")
            continue
        if name in seen:
            errors.append(f"{here}.upgrade_type: multiple upgrade configs with the same name: "
                          f"'{upgrade.upgrade_type}'")
            continue
        seen.add(name)
        if _bool(upgrade, "enabled", True):
            result.append(name)
    return result


def _http2_options(pb, path, errors):
    options, here = pb.http2_protocol_options, join(path, "http2_protocol_options")
    streams = _uint32(options, "max_concurrent_streams", H2_DEFAULT_CONCURRENT_STREAMS)
    if not 1 <= streams <= H2_MAX_CONCURRENT_STREAMS:
        errors.append(f"{join(here, 'max_concurrent_streams')}: must be in [1, "
                      f"{H2_MAX_CONCURRENT_STREAMS}]")
    result = {"max_concurrent_streams": streams}
    for field, default in H2_DEFAULT_WINDOWS.items():
        value = _uint32(options, field, default)
        if not H2_MIN_WINDOW <= value <= H2_MAX_WINDOW:
            errors.append(f"{join(here, field)}: must be in [{H2_MIN_WINDOW}, {H2_MAX_WINDOW}]")
        result[field] = value
    for field, (default, least) in H2_FLOOD_LIMITS.items():
        value = _uint32(options, field, default)
        if value < least:
            errors.append(f"{join(here, field)}: must be at least {least}")
        result[field] = value
    # Unset: Envoy's default, a malformed request ends the whole connection (the HCM's own
    # stream_error_on_invalid_http_message is not supported, so nothing else decides).
    result["override_stream_error_on_invalid_http_message"] = _bool(
        options, "override_stream_error_on_invalid_http_message", False)
    return result


# --- route configuration ---------------------------------------------------------------------

def translate_route_config(pb, path, errors, warnings=None, clusters=None):
    """RouteConfiguration -> the route_config dict, or None on error.

    `clusters`: names a route may name; None skips the check (as does validate_clusters:
    false, as in Envoy).
    """
    start = len(errors)
    check_fields(pb, path, errors, warnings)
    if pb.HasField("validate_clusters") and not pb.validate_clusters.value:
        clusters = None
    max_body = _uint32(pb, "max_direct_response_body_size_bytes", DEFAULT_MAX_DIRECT_BODY)
    context = _Context(errors, warnings, clusters, max_body)
    vhosts, domains, wildcard = [], {}, None
    top = _per_filter(pb, path, context)
    for i, vhost_pb in enumerate(pb.virtual_hosts):
        here = f"{join(path, 'virtual_hosts')}[{i}]"
        vhost = _virtual_host(vhost_pb, here, context)
        if vhost is not None and top:
            _inherit_per_filter(vhost, top)
        for j, domain in enumerate(vhost_pb.domains):
            where = f"{here}.domains[{j}]"
            low = domain.lower()
            if low == "*":
                if wildcard is not None:
                    errors.append(f"{where}: only a single wildcard domain is permitted "
                                  f"(first at {wildcard})")
                wildcard = where
            elif low in domains:
                errors.append(f"{where}: duplicate entry of domain {domain} (first at "
                              f"{domains[low]}); only unique values for domains are permitted")
            else:
                domains[low] = where
            if any(ord(c) < 0x20 or ord(c) == 0x7f for c in domain):
                errors.append(f"{where}: control characters are not allowed")
        if vhost is not None:
            vhosts.append(vhost)
    request_headers = _header_mutations(pb, "request", path, context)
    response_headers = _header_mutations(pb, "response", path, context)
    if len(errors) > start:
        return None
    return {"name": pb.name, "virtual_hosts": vhosts,
            "request_headers": request_headers, "response_headers": response_headers,
            "most_specific_header_mutations_wins": pb.most_specific_header_mutations_wins,
            "ignore_port_in_host_matching": pb.ignore_port_in_host_matching}


class _Context:
    __slots__ = ("errors", "warnings", "clusters", "max_body")

    def __init__(self, errors, warnings, clusters, max_body):
        self.errors, self.warnings, self.clusters, self.max_body = (errors, warnings, clusters,
                                                                    max_body)


def _virtual_host(pb, path, ctx):
    errors = ctx.errors
    start = len(errors)
    if not pb.name:
        errors.append(f"{join(path, 'name')}: required")
    if not pb.domains:
        errors.append(f"{join(path, 'domains')}: at least one domain is required")
    routes = [_route(route_pb, f"{join(path, 'routes')}[{i}]", ctx)
              for i, route_pb in enumerate(pb.routes)]
    retry = _retry_policy(pb.retry_policy, join(path, "retry_policy"), ctx) \
        if pb.HasField("retry_policy") else None
    request_headers = _header_mutations(pb, "request", path, ctx)
    response_headers = _header_mutations(pb, "response", path, ctx)
    per_filter = _per_filter(pb, path, ctx)
    if len(errors) > start:
        return None
    return {"name": pb.name, "domains": [d.lower() for d in pb.domains], "routes": routes,
            "request_headers": request_headers, "response_headers": response_headers,
            "retry_policy": retry, **per_filter, **_attempt_counts(pb)}


def _attempt_counts(pb):
    """include_request_attempt_count / include_attempt_count_in_response: x-envoy-attempt-count
    to the upstream, and to the client; absent keys when unset, so a virtual host without
    them keeps its shape."""
    counts = {}
    if pb.include_request_attempt_count:
        counts["attempt_count_to_upstream"] = True
    if pb.include_attempt_count_in_response:
        counts["attempt_count_in_response"] = True
    return counts


def _per_filter(pb, path, ctx):
    """typed_per_filter_config -> {"per_filter": {filter name: config}}, with
    "filter_enabled": {filter name: bool} when a FilterConfig turns a filter on or off
    (xds/http_filters_istio.py), or {} when unset (so that a route without it keeps its
    shape)."""
    if not pb.typed_per_filter_config:
        return {}
    from .http_filters_istio import translate_per_filter_config
    enabled: dict = {}
    per_filter = {"per_filter": translate_per_filter_config(
        pb.typed_per_filter_config, join(path, "typed_per_filter_config"), ctx.errors,
        ctx.warnings, enabled)}
    if enabled:
        per_filter["filter_enabled"] = enabled
    return per_filter


def _inherit_per_filter(vhost, top) -> None:
    """The RouteConfiguration's typed_per_filter_config entries under the names a virtual
    host does not set, taken into the virtual host's: Envoy 1.40 looks up a filter's
    per-route config (and whether a FilterConfig turns it on or off) in the route, then its
    virtual host, then the route configuration, the most specific first."""
    own = set(vhost.get("per_filter") or ()) | set(vhost.get("filter_enabled") or ())
    for key in ("per_filter", "filter_enabled"):
        taken = {name: value for name, value in (top.get(key) or {}).items() if name not in own}
        if taken:
            vhost[key] = {**taken, **(vhost.get(key) or {})}


def _route(pb, path, ctx):
    errors = ctx.errors
    match = _route_match(pb.match, join(path, "match"), ctx) if pb.HasField("match") else None
    if match is None and not pb.HasField("match"):
        errors.append(f"{join(path, 'match')}: required")
    which = pb.WhichOneof("action")
    action = None
    if which == "route":
        action = _route_action(pb.route, join(path, "route"), ctx)
        kind = "cluster"
    elif which == "redirect":
        action = _redirect(pb.redirect, join(path, "redirect"), ctx)
        kind = "redirect"
    elif which == "direct_response":
        action = _direct_response(pb.direct_response, join(path, "direct_response"), ctx)
        kind = "direct_response"
    elif which is None:
        errors.append(f"{path}: one of route, redirect or direct_response is required")
        kind = None
    else:
        kind = None      # filter_action / non_forwarding_action: refused by the whitelist
    if kind == "redirect" and match is not None and match["path_kind"] == "connect":
        errors.append(f"{join(path, 'redirect')}: a CONNECT route cannot redirect")
    if kind is not None and match is not None and action is not None:
        if match["path_kind"] == "path_separated_prefix" and action.get("prefix_rewrite"):
            if action["prefix_rewrite"].endswith("/"):
                errors.append(f"{join(path, which)}.prefix_rewrite: must not end with '/' with "
                              "a path_separated_prefix match")
    return {"name": pb.name, "match": match, "kind": kind, "action": action,
            "request_headers": _header_mutations(pb, "request", path, ctx),
            "response_headers": _header_mutations(pb, "response", path, ctx),
            **_per_filter(pb, path, ctx)}


_PATH_SEPARATED_PREFIX_CHARS = ("?", "#")


def _route_match(pb, path, ctx):
    errors = ctx.errors
    kind = pb.WhichOneof("path_specifier")
    value = ""
    if kind is None:
        errors.append(f"{path}: one of prefix, path, safe_regex, path_separated_prefix or "
                      "connect_matcher is required")
    elif kind == "connect_matcher":
        kind = "connect"
    elif kind == "safe_regex":
        value = _regex(pb.safe_regex, join(path, "safe_regex"), ctx)
    elif kind in ("prefix", "path"):
        value = getattr(pb, kind)
    elif kind == "path_separated_prefix":
        value = pb.path_separated_prefix
        if (len(value) < 2 or any(c in value for c in _PATH_SEPARATED_PREFIX_CHARS)
                or value.endswith("/")):
            errors.append(f"{join(path, kind)}: must have no '?' or '#' and not end with '/'")
    headers = [_header_matcher(h, f"{join(path, 'headers')}[{i}]", ctx)
               for i, h in enumerate(pb.headers)]
    queries = [_query_matcher(q, f"{join(path, 'query_parameters')}[{i}]", ctx)
               for i, q in enumerate(pb.query_parameters)]
    return {"path_kind": kind, "path_value": value,
            "case_sensitive": _bool(pb, "case_sensitive", True),
            "headers": headers, "query_parameters": queries, "grpc": pb.HasField("grpc")}


def _regex(pb, path, ctx):
    """A RegexMatcher's pattern, checked (RegexError -> error at its path)."""
    try:
        compile_re2(pb.regex)
    except RegexError as exc:
        ctx.errors.append(f"{join(path, 'regex')}: {exc}")
    return pb.regex


def _string_matcher(pb, path, ctx):
    kind = pb.WhichOneof("match_pattern")
    if kind is None:
        ctx.errors.append(f"{path}: one of exact, prefix, suffix, contains or safe_regex is "
                          "required")
        return None
    if kind == "safe_regex":
        if pb.ignore_case:
            ctx.errors.append(f"{join(path, 'ignore_case')}: has no effect for safe_regex")
        return {"kind": kind, "value": _regex(pb.safe_regex, join(path, "safe_regex"), ctx),
                "ignore_case": False}
    value = getattr(pb, kind)
    if kind in ("prefix", "suffix", "contains") and not value:
        ctx.errors.append(f"{join(path, kind)}: must not be empty")
    return {"kind": kind, "value": value, "ignore_case": pb.ignore_case}


_LEGACY_HEADER_MATCH = {"exact_match": "exact", "prefix_match": "prefix",
                        "suffix_match": "suffix", "contains_match": "contains"}


def _header_matcher(pb, path, ctx):
    errors = ctx.errors
    name = pb.name.lower()
    if not name:
        errors.append(f"{join(path, 'name')}: required")
    which = pb.WhichOneof("header_match_specifier")
    result = {"name": name, "kind": "string", "string": None, "range": None, "present": True,
              "invert": pb.invert_match, "treat_missing_as_empty": pb.treat_missing_header_as_empty}
    if which is None:                      # only a name: the header must be present
        result["kind"] = "present"
    elif which == "present_match":
        result["kind"], result["present"] = "present", pb.present_match
    elif which == "range_match":
        result["kind"] = "range"
        result["range"] = [pb.range_match.start, pb.range_match.end]
    elif which == "string_match":
        result["string"] = _string_matcher(pb.string_match, join(path, "string_match"), ctx)
    elif which == "safe_regex_match":
        result["string"] = {"kind": "safe_regex", "ignore_case": False,
                            "value": _regex(pb.safe_regex_match, join(path, which), ctx)}
    else:
        value = getattr(pb, which)
        if which != "exact_match" and not value:
            errors.append(f"{join(path, which)}: must not be empty")
        result["string"] = {"kind": _LEGACY_HEADER_MATCH[which], "value": value,
                            "ignore_case": False}
    return result


def _query_matcher(pb, path, ctx):
    if not pb.name:
        ctx.errors.append(f"{join(path, 'name')}: required")
    elif len(pb.name) > 1024:
        ctx.errors.append(f"{join(path, 'name')}: longer than 1024 characters")
    which = pb.WhichOneof("query_parameter_match_specifier")
    string = None
    if which == "string_match":
        string = _string_matcher(pb.string_match, join(path, "string_match"), ctx)
    return {"name": pb.name, "string": string,
            "present": pb.present_match if which == "present_match" else None}


def _route_action(pb, path, ctx):
    errors = ctx.errors
    start = len(errors)
    which = pb.WhichOneof("cluster_specifier")
    cluster = cluster_header = weighted = None
    if which == "cluster":
        cluster = pb.cluster
        if not cluster:
            errors.append(f"{join(path, 'cluster')}: required")
        else:
            _known_cluster(cluster, join(path, "cluster"), ctx)
    elif which == "cluster_header":
        cluster_header = pb.cluster_header.lower()
        if not cluster_header:
            errors.append(f"{join(path, 'cluster_header')}: required")
    elif which == "weighted_clusters":
        weighted = _weighted_clusters(pb.weighted_clusters, join(path, "weighted_clusters"), ctx)
    elif which is None:
        errors.append(f"{path}: one of cluster, cluster_header or weighted_clusters is required")

    rewrites = _path_rewrites(pb, path, ctx)
    host_header = pb.host_rewrite_header.lower() if pb.host_rewrite_header else None
    retry = _retry_policy(pb.retry_policy, join(path, "retry_policy"), ctx) \
        if pb.HasField("retry_policy") else None
    hash_policies = [_hash_policy(h, f"{join(path, 'hash_policy')}[{i}]", ctx)
                     for i, h in enumerate(pb.hash_policy)]
    idle = _timeout(pb, "idle_timeout", None, path, errors)
    if len(errors) > start:
        return None
    return {"cluster": cluster, "cluster_header": cluster_header, "weighted_clusters": weighted,
            "cluster_not_found_status": CLUSTER_NOT_FOUND_CODES[pb.cluster_not_found_response_code],
            "prefix_rewrite": rewrites[0], "regex_rewrite": rewrites[1],
            "host_rewrite_literal": pb.host_rewrite_literal or None,
            "auto_host_rewrite": pb.auto_host_rewrite.value,
            "host_rewrite_header": host_header,
            "timeout": _timeout(pb, "timeout", DEFAULT_ROUTE_TIMEOUT, path, errors),
            "idle_timeout": idle, "idle_timeout_set": pb.HasField("idle_timeout"),
            "retry_policy": retry, "hash_policies": hash_policies,
            **_grpc_timeouts(pb, path, ctx), **_route_upgrades(pb, path, ctx)}


def _route_upgrades(pb, path, ctx):
    """RouteAction.upgrade_configs -> {"upgrades": {type (lower-case): enabled}}, absent when
    unset. A route's entry overrides the connection manager's for that type, and may allow a
    type the connection manager does not list (Envoy's createUpgradeFilterChain)."""
    if not pb.upgrade_configs:
        return {}
    upgrades = {}
    for i, upgrade in enumerate(pb.upgrade_configs):
        here = f"{join(path, 'upgrade_configs')}[{i}]"
        name = upgrade.upgrade_type.lower()
        if not name:
            ctx.errors.append(f"{here}.upgrade_type: required")
        elif name in upgrades:
            ctx.errors.append(f"{here}.upgrade_type: duplicate upgrade {upgrade.upgrade_type}")
        else:
            upgrades[name] = _bool(upgrade, "enabled", True)
    from .hbone import connect_terminate
    return {"upgrades": upgrades, **connect_terminate(pb, path, ctx.errors)}


def _grpc_timeouts(pb, path, ctx):
    """max_grpc_timeout / grpc_timeout_offset (deprecated, still what istiod sends) and
    max_stream_duration -> {"grpc_timeout": {"max", "offset"}, "max_stream_duration":
    {"duration", "grpc_max", "grpc_offset"}}, each key only when its field is set (seconds;
    a max of 0 is no cap, as in Envoy). Envoy: a route with max_stream_duration uses the new
    fields and ignores max_grpc_timeout (RouteEntry::usingNewTimeouts)."""
    result = {}
    if pb.HasField("max_grpc_timeout"):
        result["grpc_timeout"] = {
            "max": _timeout(pb, "max_grpc_timeout", 0.0, path, ctx.errors, zero=0.0),
            "offset": _timeout(pb, "grpc_timeout_offset", 0.0, path, ctx.errors, zero=0.0)}
    if pb.HasField("max_stream_duration"):
        msd, here = pb.max_stream_duration, join(path, "max_stream_duration")
        result["max_stream_duration"] = {
            # None: unset (the HCM's applies); 0.0: explicitly none for this route.
            "duration": _timeout(msd, "max_stream_duration", None, here, ctx.errors, zero=0.0),
            "grpc_max": _timeout(msd, "grpc_timeout_header_max", None, here, ctx.errors,
                                 zero=0.0),
            "grpc_offset": _timeout(msd, "grpc_timeout_header_offset", 0.0, here, ctx.errors,
                                    zero=0.0)}
    return result


def _path_rewrites(pb, path, ctx):
    """(prefix_rewrite or None, {"regex", "substitution"} or None) of a RouteAction or a
    RedirectAction."""
    prefix = pb.prefix_rewrite or None       # "" is no rewrite, in both messages
    regex = None
    if pb.HasField("regex_rewrite"):
        here = join(path, "regex_rewrite")
        rewrite = pb.regex_rewrite
        if prefix is not None:
            ctx.errors.append(f"{path}: specify only one of prefix_rewrite, regex_rewrite or "
                              "path_rewrite_policy")
        if not rewrite.HasField("pattern"):
            ctx.errors.append(f"{join(here, 'pattern')}: required")
        else:
            pattern = _regex(rewrite.pattern, join(here, "pattern"), ctx)
            regex = {"regex": pattern, "substitution": rewrite.substitution}
            try:
                groups = compile_re2(pattern).groups
            except RegexError:
                groups = None
            if groups is not None and compile_substitution(rewrite.substitution, groups) is None \
                    and ctx.warnings is not None:
                ctx.warnings.append(f"{join(here, 'substitution')}: not a valid RE2 rewrite for "
                                    "its pattern; the path is left unchanged (as Envoy does)")
    return prefix, regex


def _weighted_clusters(pb, path, ctx):
    errors = ctx.errors
    result, total = [], 0
    if not pb.clusters:
        errors.append(f"{join(path, 'clusters')}: at least one cluster is required")
    for i, entry in enumerate(pb.clusters):
        here = f"{join(path, 'clusters')}[{i}]"
        if entry.cluster_header:
            errors.append(f"{join(here, 'cluster_header')}: not supported in weighted_clusters")
        elif not entry.name:
            errors.append(f"{here}: at least one of name or cluster_header need to be specified")
        else:
            _known_cluster(entry.name, join(here, "name"), ctx)
        weight = _uint32(entry, "weight", 0)
        total += weight
        result.append({"name": entry.name, "weight": weight,
                       "request_headers": _header_mutations(entry, "request", here, ctx),
                       "response_headers": _header_mutations(entry, "response", here, ctx),
                       "host_rewrite_literal": entry.host_rewrite_literal or None})
    if pb.clusters and total <= 0:
        errors.append(f"{join(path, 'clusters')}: sum of weights in the weighted_cluster must be "
                      "greater than 0")
    if total > 0xFFFFFFFF:
        errors.append(f"{join(path, 'clusters')}: sum of weights cannot overflow 4294967295")
    if pb.HasField("total_weight") and ctx.warnings is not None:
        ctx.warnings.append(f"{join(path, 'total_weight')}: deprecated and ignored; the split "
                            "is by the sum of the weights (as Envoy does)")
    return result


def _known_cluster(name, path, ctx):
    if ctx.clusters is not None and name not in ctx.clusters:
        ctx.errors.append(f"{path}: unknown cluster '{name}'")


def _retry_policy(pb, path, ctx):
    errors = ctx.errors
    retry_on = []
    for token in pb.retry_on.split(","):
        token = token.strip()
        if not token or token in retry_on:
            continue
        if token in RETRY_ON:
            retry_on.append(token)
        elif ctx.warnings is not None:
            ctx.warnings.append(f"{join(path, 'retry_on')}: unknown condition '{token}' ignored "
                                "(as Envoy does)")
    per_try = None
    if pb.HasField("per_try_timeout"):
        per_try = _seconds(pb.per_try_timeout)
        if per_try < 0:
            errors.append(f"{join(path, 'per_try_timeout')}: must not be negative")
        per_try = per_try or None          # 0: the route's timeout applies
    base, maximum = DEFAULT_RETRY_BASE, None
    if pb.HasField("retry_back_off"):
        back_off, here = pb.retry_back_off, join(path, "retry_back_off")
        if not back_off.HasField("base_interval"):
            errors.append(f"{join(here, 'base_interval')}: required")
        else:
            base = _seconds(back_off.base_interval)
            if base < 0.001:
                errors.append(f"{join(here, 'base_interval')}: must be at least 1ms")
        if back_off.HasField("max_interval"):
            maximum = _seconds(back_off.max_interval)
            if maximum <= 0:
                errors.append(f"{join(here, 'max_interval')}: must be greater than 0s")
            elif maximum < base:
                errors.append(f"{join(here, 'max_interval')}: must be greater than or equal to "
                              "the base_interval")
    codes = []
    for i, code in enumerate(pb.retriable_status_codes):
        if not 100 <= code <= 599:
            errors.append(f"{join(path, 'retriable_status_codes')}[{i}]: {code} is not an "
                          "HTTP status")
        codes.append(code)
    retriable_headers = [_header_matcher(h, f"{join(path, 'retriable_headers')}[{i}]", ctx)
                         for i, h in enumerate(pb.retriable_headers)]
    return {"retry_on": retry_on, "num_retries": _uint32(pb, "num_retries", DEFAULT_NUM_RETRIES),
            "per_try_timeout": per_try, "retriable_status_codes": codes,
            "base_interval": base, "max_interval": maximum if maximum is not None else base * 10,
            "retriable_headers": retriable_headers,
            "previous_hosts": _host_predicates(pb, path, ctx),
            # Envoy's default: one host selection, no re-pick.
            "host_selection_attempts": pb.host_selection_retry_max_attempts or 1}


def _host_predicates(pb, path, ctx) -> bool:
    """retry_host_predicate -> whether a retry avoids the hosts already tried (previous_hosts,
    the one istiod sends). Others are refused: omit_canary_hosts needs the endpoints' canary
    metadata, which Baton's hosts do not carry."""
    previous = False
    for i, predicate in enumerate(pb.retry_host_predicate):
        here = f"{join(path, 'retry_host_predicate')}[{i}]"
        type_name = protos.type_name(predicate.typed_config.type_url) \
            if predicate.HasField("typed_config") else None
        if predicate.name != PREVIOUS_HOSTS and type_name != PREVIOUS_HOSTS_TYPE:
            ctx.errors.append(f"{here}: {predicate.name or type_name!r} not supported (only "
                              f"{PREVIOUS_HOSTS})")
        elif type_name not in (None, PREVIOUS_HOSTS_TYPE):
            ctx.errors.append(f"{here}.typed_config: {type_name} is not {PREVIOUS_HOSTS_TYPE}")
        else:
            previous = True
    return previous


def _hash_policy(pb, path, ctx):
    which = pb.WhichOneof("policy_specifier")
    name = ""
    if which == "header":
        name = pb.header.header_name.lower()
        if not name:
            ctx.errors.append(f"{join(path, 'header.header_name')}: required")
    elif which == "cookie":
        name = pb.cookie.name
        if not name:
            ctx.errors.append(f"{join(path, 'cookie.name')}: required")
    elif which == "connection_properties":
        which = "source_ip"
        if not pb.connection_properties.source_ip:
            ctx.errors.append(f"{join(path, 'connection_properties.source_ip')}: only source_ip "
                              "is supported, and it is not set")
    elif which == "query_parameter":
        name = pb.query_parameter.name
        if not name:
            ctx.errors.append(f"{join(path, 'query_parameter.name')}: required")
    elif which is None:
        ctx.errors.append(f"{path}: one of header, cookie, connection_properties or "
                          "query_parameter is required")
    return {"kind": which, "name": name, "terminal": pb.terminal}


def _redirect(pb, path, ctx):
    errors = ctx.errors
    start = len(errors)
    scheme = pb.scheme_redirect.lower() if pb.scheme_redirect else None
    path_redirect = pb.path_redirect if pb.WhichOneof("path_rewrite_specifier") == \
        "path_redirect" else None
    prefix, regex = _path_rewrites(pb, path, ctx)
    if len(errors) > start:
        return None
    return {"scheme": scheme, "https": pb.https_redirect, "host": pb.host_redirect or None,
            "port": pb.port_redirect or None, "path": path_redirect,
            "prefix_rewrite": prefix, "regex_rewrite": regex,
            "status": REDIRECT_CODES[pb.response_code], "strip_query": pb.strip_query}


def _direct_response(pb, path, ctx):
    errors = ctx.errors
    if not 200 <= pb.status < 600:
        errors.append(f"{join(path, 'status')}: must be in [200, 600)")
    body = None
    if pb.HasField("body"):
        data = _data_source(pb.body, join(path, "body"), ctx)
        if data is not None:
            if len(data) > ctx.max_body:
                errors.append(f"{join(path, 'body')}: response body size is {len(data)} bytes; "
                              f"maximum is {ctx.max_body}")
            body = data.decode("latin-1")
    return {"status": pb.status, "body": body}


def _data_source(pb, path, ctx):
    which = pb.WhichOneof("specifier")
    if which == "inline_string":
        return pb.inline_string.encode()
    if which == "inline_bytes":
        return pb.inline_bytes
    if which == "filename":
        try:
            with open(pb.filename, "rb") as f:
                return f.read(ctx.max_body + 1)
        except OSError as exc:
            ctx.errors.append(f"{join(path, 'filename')}: cannot read {pb.filename!r}: "
                              f"{os.strerror(exc.errno) if exc.errno else exc}")
            return None
    if which is None:
        return b""
    return None     # the whitelist refused the others


def _header_mutations(pb, direction, path, ctx):
    """request_/response_headers_to_add and _to_remove of one level -> {"remove": [names],
    "add": [[name, value template, append action, keep_empty_value]]}."""
    errors = ctx.errors
    add_field, remove_field = f"{direction}_headers_to_add", f"{direction}_headers_to_remove"
    add = []
    for i, option in enumerate(getattr(pb, add_field)):
        here = f"{join(path, add_field)}[{i}]"
        key = option.header.key.lower()
        if not key:
            errors.append(f"{here}.header.key: required")
            continue
        if key.startswith(":") or key == "host":
            errors.append(f"{here}.header.key: :-prefixed or host headers may not be modified")
            continue
        if option.HasField("append") and option.append_action:
            errors.append(f"{here}: both append and append_action are set and it's not allowed")
        if option.HasField("append"):
            action = "APPEND_IF_EXISTS_OR_ADD" if option.append.value \
                else "OVERWRITE_IF_EXISTS_OR_ADD"
        else:
            action = APPEND_ACTIONS[option.append_action]
        value = option.header.value
        if option.header.raw_value:
            if value:
                errors.append(f"{here}.header: only one of value or raw_value may be set")
            value = option.header.raw_value.decode("latin-1")
        if any(c in value for c in "\r\n\x00"):
            errors.append(f"{here}.header.value: must not contain CR, LF or NUL")
        elif "%" in value:
            _check_template(value, f"{here}.header.value", errors)
        add.append([key, value, action, option.keep_empty_value])
    remove = []
    for i, name in enumerate(getattr(pb, remove_field)):
        here = f"{join(path, remove_field)}[{i}]"
        name = name.lower()
        if not name:
            errors.append(f"{here}: must not be empty")
        elif name.startswith(":") or name == "host":
            errors.append(f"{here}: :-prefixed or host headers may not be removed")
        else:
            remove.append(name)
    return {"remove": remove, "add": add}


def _check_template(value, path, errors):
    """A header value is an Envoy format string (%REQ(x)%, %DOWNSTREAM_REMOTE_ADDRESS%...):
    an operator the formatter does not know is refused at load, as Envoy refuses it."""
    from ..worker.proxy.http import formatter
    try:
        formatter.compile_header_value(value)
    except formatter.FormatError as exc:
        errors.append(f"{path}: {exc}")


# --- values ----------------------------------------------------------------------------------

def _seconds(duration):
    return duration.seconds + duration.nanos / 1e9


def _timeout(pb, field, default, path, errors, zero=None):
    """A Duration timeout in seconds: `default` when unset, `zero` (None: disabled, as in
    Envoy for most timeouts) when 0s."""
    if not pb.HasField(field):
        return default
    value = _seconds(getattr(pb, field))
    if value < 0:
        errors.append(f"{join(path, field)}: must not be negative")
    return value if value > 0 else zero


def _uint32(pb, field, default):
    return getattr(pb, field).value if pb.HasField(field) else default


def _bool(pb, field, default):
    return getattr(pb, field).value if pb.HasField(field) else default


def _internal_cidrs(pb, path, errors) -> list:
    """internal_address_config.cidr_ranges -> ["10.0.0.0/8", ...]; Envoy 1.40 counts no
    address as internal without it."""
    if not pb.HasField("internal_address_config"):
        return []
    config = pb.internal_address_config
    where = join(path, "internal_address_config")
    cidrs = []
    for i, cidr in enumerate(config.cidr_ranges):
        prefix_len = cidr.prefix_len.value if cidr.HasField("prefix_len") else None
        text = f"{cidr.address_prefix}/{prefix_len}" if prefix_len is not None else cidr.address_prefix
        try:
            cidrs.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError as exc:
            errors.append(f"{where}.cidr_ranges[{i}]: {exc}")
    return cidrs
