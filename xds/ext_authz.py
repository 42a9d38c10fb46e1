"""envoy.filters.http.ext_authz (ExtAuthz, ExtAuthzPerRoute) -> worker config.

Istio's AuthorizationPolicy with action CUSTOM puts this filter behind an RBAC filter whose
shadow rules name the requests to check (`filter_enabled_metadata` on the RBAC filter's
`<prefix>shadow_effective_policy_id`); an operator uses it directly too. Baton asks the
authorization service over gRPC (`grpc_service.envoy_grpc`, envoy.service.auth.v3
Authorization/Check), as Envoy does; the worker's filter is worker/proxy/http/ext_authz.py.

    translate_ext_authz(pb, path, errors, warnings) -> (NAME, config)
    translate_ext_authz_per_route(pb, path, errors, warnings) -> per-route config

A field that would change what Envoy does and that Baton does not do is refused by path
(google_grpc, the HTTP service's retry_policy, metadata context namespaces, header mutation
rules...). The HTTP service variant (`http_service`) sends the check as an HTTP request.
"""

from __future__ import annotations

from types import SimpleNamespace

from .parse import join

NAME = "envoy.filters.http.ext_authz"
TYPE = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE_TYPE = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
DEFAULT_TIMEOUT = 0.2               # Envoy's ext_authz: 200 ms when grpc_service has none
DEFAULT_STATUS_ON_ERROR = 403

# ExtAuthz fields Baton does (or refuses with its own message); the others are refused when
# set.
_FIELDS = {"grpc_service", "http_service", "transport_api_version", "failure_mode_allow",
           "failure_mode_allow_header_add", "with_request_body",
           "status_on_error", "filter_enabled", "filter_enabled_metadata", "deny_at_disable",
           "include_peer_certificate", "stat_prefix", "allowed_headers", "disallowed_headers",
           "encode_raw_headers"}
_GRPC_FIELDS = {"envoy_grpc", "google_grpc", "timeout", "initial_metadata"}


def _seconds(duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _refuse_others(pb, allowed, path, errors) -> None:
    for field, _ in pb.ListFields():
        if field.name not in allowed:
            errors.append(f"{join(path, field.name)}: not supported")


def _grpc_service(pb, path, errors):
    """GrpcService -> {"cluster", "authority", "timeout", "metadata"}, or None."""
    _refuse_others(pb, _GRPC_FIELDS, path, errors)
    if not pb.HasField("envoy_grpc"):
        errors.append(f"{join(path, 'envoy_grpc')}: required (google_grpc not supported)")
        return None
    envoy_grpc = pb.envoy_grpc
    _refuse_others(envoy_grpc, {"cluster_name", "authority"}, join(path, "envoy_grpc"), errors)
    if not envoy_grpc.cluster_name:
        errors.append(f"{join(path, 'envoy_grpc.cluster_name')}: required")
        return None
    metadata = []
    for i, header in enumerate(pb.initial_metadata):
        if not header.key or header.key != header.key.lower() or header.key.startswith(":"):
            errors.append(f"{join(path, 'initial_metadata')}[{i}].key: a lower-case header "
                          "name is required")
        metadata.append((header.key, header.value))
    return {"cluster": envoy_grpc.cluster_name,
            "authority": envoy_grpc.authority or envoy_grpc.cluster_name,
            "timeout": _seconds(pb.timeout) if pb.HasField("timeout") else DEFAULT_TIMEOUT,
            "metadata": metadata}


def _http_service(pb, path, errors):
    """HttpService -> {"cluster", "timeout", "path_prefix", "headers_to_add": [(k, v)],
    "request": [string matcher] (authorization_request.allowed_headers), "upstream",
    "upstream_append", "client", "client_on_success": None or [string matcher]}."""
    _refuse_others(pb, {"server_uri", "path_prefix", "authorization_request",
                        "authorization_response"}, path, errors)
    uri = pb.server_uri
    for field in ("uri", "cluster"):
        if not getattr(uri, field):
            errors.append(f"{join(path, 'server_uri.' + field)}: required")
    if not uri.HasField("timeout"):
        errors.append(f"{join(path, 'server_uri.timeout')}: required")
    request, response = pb.authorization_request, pb.authorization_response
    _refuse_others(response, {"allowed_upstream_headers", "allowed_upstream_headers_to_append",
                              "allowed_client_headers", "allowed_client_headers_on_success"},
                   join(path, "authorization_response"), errors)

    def matchers(message, field, where):
        return _list_matcher(getattr(message, field), join(where, field), errors) \
            if message.HasField(field) else None
    here = join(path, "authorization_response")
    return {"cluster": uri.cluster, "timeout": _seconds(uri.timeout),
            "path_prefix": pb.path_prefix,
            "headers_to_add": [(h.key.lower(), h.value) for h in request.headers_to_add],
            "request": matchers(request, "allowed_headers", join(path, "authorization_request")),
            "upstream": matchers(response, "allowed_upstream_headers", here),
            "upstream_append": matchers(response, "allowed_upstream_headers_to_append", here),
            "client": matchers(response, "allowed_client_headers", here),
            "client_on_success": matchers(response, "allowed_client_headers_on_success", here)}


def _body(pb, path, errors):
    """BufferSettings -> {"max_bytes", "allow_partial", "pack_as_bytes"}."""
    _refuse_others(pb, {"max_request_bytes", "allow_partial_message", "pack_as_bytes"}, path,
                   errors)
    if pb.max_request_bytes < 1:
        errors.append(f"{join(path, 'max_request_bytes')}: must be greater than 0")
    return {"max_bytes": pb.max_request_bytes, "allow_partial": pb.allow_partial_message,
            "pack_as_bytes": pb.pack_as_bytes}


def _list_matcher(pb, path, errors):
    from .http import _string_matcher
    ctx = SimpleNamespace(errors=errors)
    return [_string_matcher(m, f"{join(path, 'patterns')}[{i}]", ctx)
            for i, m in enumerate(pb.patterns)]


def _fraction(pb) -> float:
    denominator = {0: 100, 1: 10_000, 2: 1_000_000}.get(pb.denominator, 100)
    return min(pb.numerator / denominator, 1.0)


def translate_ext_authz(pb, path, errors, warnings=None):
    """ExtAuthz -> ("envoy.filters.http.ext_authz", {"grpc": {cluster, authority, timeout,
    metadata} or None, "http": _http_service's or None, "failure_mode_allow", "failure_mode_allow_header_add", "status_on_error",
    "body" (None or BufferSettings), "enabled" (fraction),
    "enabled_metadata" (None or xds/rbac.py's metadata matcher), "deny_at_disable",
    "include_peer_certificate", "stat_prefix", "allowed_headers" / "disallowed_headers"
    (None or [string matcher]), "encode_raw_headers"})."""
    from .rbac import _metadata
    start = len(errors)
    _refuse_others(pb, _FIELDS, path, errors)
    if not pb.HasField("grpc_service") and not pb.HasField("http_service"):
        errors.append(f"{join(path, 'grpc_service')}: required (or http_service)")
    if pb.transport_api_version not in (0, 2):          # AUTO, V3
        errors.append(f"{join(path, 'transport_api_version')}: only V3 is supported")
    grpc = _grpc_service(pb.grpc_service, join(path, "grpc_service"), errors) \
        if pb.HasField("grpc_service") else None
    status = pb.status_on_error.code or DEFAULT_STATUS_ON_ERROR
    deny_at_disable = pb.HasField("deny_at_disable") and pb.deny_at_disable.default_value.value
    http = _http_service(pb.http_service, join(path, "http_service"), errors) \
        if pb.HasField("http_service") else None
    config = {
        "grpc": grpc, "http": http, "failure_mode_allow": pb.failure_mode_allow,
        "failure_mode_allow_header_add": pb.failure_mode_allow_header_add,
        "status_on_error": status,
        "body": _body(pb.with_request_body, join(path, "with_request_body"), errors)
        if pb.HasField("with_request_body") else None,
        "enabled": _fraction(pb.filter_enabled.default_value)
        if pb.HasField("filter_enabled") else 1.0,
        "enabled_metadata": _metadata(pb.filter_enabled_metadata,
                                      join(path, "filter_enabled_metadata"), errors)
        if pb.HasField("filter_enabled_metadata") else None,
        "deny_at_disable": bool(deny_at_disable),
        "include_peer_certificate": pb.include_peer_certificate,
        "stat_prefix": pb.stat_prefix,
        "allowed_headers": _list_matcher(pb.allowed_headers, join(path, "allowed_headers"),
                                         errors) if pb.HasField("allowed_headers") else None,
        "disallowed_headers": _list_matcher(pb.disallowed_headers,
                                            join(path, "disallowed_headers"), errors)
        if pb.HasField("disallowed_headers") else None,
        "encode_raw_headers": pb.encode_raw_headers}
    if len(errors) != start:
        return None, None
    return NAME, config


def translate_ext_authz_per_route(pb, path, errors, warnings=None):
    """ExtAuthzPerRoute -> {"disabled": True} or {"context_extensions": {k: v},
    "body": False (disable_request_body_buffering) / BufferSettings / None (the filter's),
    "grpc": None or an overriding grpc_service}."""
    override = pb.WhichOneof("override")
    if override == "disabled":
        if not pb.disabled:
            errors.append(f"{join(path, 'disabled')}: must be true")
        return {"disabled": True}
    if override != "check_settings":
        errors.append(f"{path}: one of disabled or check_settings is required")
        return None
    settings, here = pb.check_settings, join(path, "check_settings")
    _refuse_others(settings, {"context_extensions", "disable_request_body_buffering",
                              "with_request_body", "grpc_service"}, here, errors)
    body = None
    if settings.disable_request_body_buffering:
        if settings.HasField("with_request_body"):
            errors.append(f"{join(here, 'with_request_body')}: not with "
                          "disable_request_body_buffering")
        body = False
    elif settings.HasField("with_request_body"):
        body = _body(settings.with_request_body, join(here, "with_request_body"), errors)
    return {"disabled": False, "context_extensions": dict(settings.context_extensions),
            "body": body,
            "grpc": _grpc_service(settings.grpc_service, join(here, "grpc_service"), errors)
            if settings.HasField("grpc_service") else None}
