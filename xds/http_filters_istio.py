"""The HTTP filters every Istio HCM carries besides fault and the router -> worker config.

    TRANSLATORS: typed_config type -> translate(pb, path, errors, warnings) -> (name, config)
    translate_per_filter_config(map, path, errors, warnings) -> {filter name: config}

A translator returns (None, None) for a filter accepted without anything for the worker to
run (its effect is out of Baton's reach today; a warning says what is not done), else the
worker filter's registered name and its config:

- envoy.filters.http.cors (Cors, no settings of its own): the policy comes from the route or
  virtual host (`typed_per_filter_config["envoy.filters.http.cors"]`, a CorsPolicy), as in
  Envoy; the worker's filter (worker/proxy/http/cors.py) answers preflights and adds the
  response headers.
- envoy.filters.http.grpc_stats: cluster.<cluster>.grpc.[<service>.<method>.]{success,
  failure,total} (worker/proxy/http/grpc_stats.py); message counts and upstream_rq_time are
  not counted (a warning says so); the filter state it can emit has no reader in Baton.
- istio.alpn: the ALPN Istio wants on upstream mTLS connections, by upstream HTTP version
  (worker/proxy/istio/alpn.py): the pool's handshake offers it instead of the context's.
- istio.stats (stats.PluginConfig, also in a TypedStruct): Istio's standard metrics
  (istio_requests_total and the duration and size histograms) with Istio's labels on
  /stats/prometheus (worker/proxy/istio/http_stats.py). -> ("istio.stats",
  {"disable_host_header_fallback"[, "reporter"]}); reporter SERVER_GATEWAY (a waypoint)
  reports as "waypoint".
- istio.metadata_exchange, HTTP (io.istio.http.peer_metadata.Config in a TypedStruct, Istio
  1.20 on): the x-envoy-peer-metadata headers that tell each side's telemetry who the peer
  is (worker/proxy/istio/peer_metadata.py). Its *_discovery / *_propagation lists become
  four flags: read_request (downstream_discovery), write_response (downstream_propagation),
  read_response (upstream_discovery), write_request (upstream_propagation), each set when
  the list names istio_headers. workload_discovery (Istio's workload lookup by address,
  ambient's WDS) is not there: a warning says so.
- istio_authn, HTTP (istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig, Istio 1.9 /
  1.10): the peer's mTLS identity as Istio's filter reads it (worker/proxy/istio/authn.py):
  STRICT refuses a request without a client certificate (401 "Peer authentication failed.",
  unless peer_is_optional), the trust domain check unless skip_validate_trust_domain, and
  the principal in the `istio_authn` dynamic metadata. Origin (JWT) authentication is
  refused by path.
- The Wasm filters older Istio sends for the same built-ins (runtime envoy.wasm.runtime.null,
  code envoy.wasm.stats or envoy.wasm.metadata_exchange): run as istio.stats and
  istio.metadata_exchange (the latter with {"auto": True}: the listener's direction picks
  the flags). A Wasm module with another runtime runs as a proxy-wasm plugin
  (xds/http_filters_wasm.py); another null-VM code is refused.
"""

from __future__ import annotations

from . import connect_filters, ext_authz, http_filters_wasm, protos
from .fields import check_fields
from .istio_filter_types import ALPN_FILTER, AUTHN_FILTER, STATS_PLUGIN
from .istio_types import unknown_field_errors, unknown_field_numbers
from .parse import join

CORS = "envoy.filters.http.cors"
GRPC_STATS = "envoy.filters.http.grpc_stats"
CORS_TYPE = "envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY_TYPE = "envoy.extensions.filters.http.cors.v3.CorsPolicy"
GRPC_STATS_TYPE = "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
RBAC_PER_ROUTE_TYPE = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"


def _warn(warnings, path, text):
    if warnings is not None:
        warnings.append(f"{path}: {text}")


def _cors(pb, path, errors, warnings):
    check_fields(pb, path, errors, warnings)
    return CORS, {}


def _grpc_stats(pb, path, errors, warnings):
    """FilterConfig -> {"per_method": bool}."""
    check_fields(pb, path, errors, warnings)
    _warn(warnings, path, "grpc_stats: request_message_count and response_message_count are "
          "not counted")
    return GRPC_STATS, {"per_method": pb.stats_for_all_methods.value
                        if pb.HasField("stats_for_all_methods") else False}


def _declared(pb, path, errors):
    unknown = unknown_field_numbers(pb)
    if unknown:
        errors.append(f"{path}: field number {unknown[0]} of {pb.DESCRIPTOR.full_name} not "
                      "supported")
        return False
    return True


def _alpn(pb, path, errors, warnings):
    """FilterConfig -> ("istio.alpn", {"overrides": {"HTTP10" | "HTTP11" | "HTTP2": [names]}})
    (worker/proxy/istio/alpn.py)."""
    if not _declared(pb, path, errors):
        return None, None
    overrides = {}
    for entry in pb.alpn_override:
        version = entry.DESCRIPTOR.fields_by_name["upstream_protocol"].enum_type \
            .values_by_number[entry.upstream_protocol].name
        overrides[version] = list(entry.alpn_override)
    return "istio.alpn", {"overrides": overrides}


ISTIO_STATS = "istio.stats"
METADATA_EXCHANGE = "istio.metadata_exchange"
AUTHN = "istio_authn"


def _authn(pb, path, errors, warnings):
    """Istio 1.9 / 1.10's HTTP istio_authn (FilterConfig) -> ("istio_authn", {"mtls": None
    (no peer method) or "STRICT" / "PERMISSIVE", "peer_is_optional", "trust_domains": None
    (skip_validate_trust_domain), [] (the local one) or allowed_trust_domains}). Origin
    (JWT) authentication is refused: Baton has no JWT validation."""
    unknown = unknown_field_errors(pb, path)
    if unknown:
        errors.extend(unknown)
        return None, None
    policy, here = pb.policy, join(path, "policy")
    start = len(errors)
    if policy.origins or policy.origin_is_optional:
        errors.append(f"{join(here, 'origins')}: origin (JWT) authentication not supported")
    if policy.principal_binding:
        errors.append(f"{join(here, 'principal_binding')}: USE_ORIGIN not supported (no "
                      "origin authentication)")
    if len(policy.peers) > 1:
        errors.append(f"{join(here, 'peers')}: one peer method (mtls) is supported")
    if len(errors) != start:
        return None, None
    mtls = policy.peers[0].mtls if policy.peers else None
    trust_domains = None if pb.skip_validate_trust_domain and not pb.allowed_trust_domains \
        else list(pb.allowed_trust_domains)
    return AUTHN, {"mtls": mtls.DESCRIPTOR.EnumValueName("Mode", mtls.mode)
                   if mtls is not None else None,
                   "peer_is_optional": policy.peer_is_optional,
                   "trust_domains": trust_domains}


def _istio_stats(pb, path, errors, warnings):
    if not _declared(pb, path, errors):
        return None, None
    value = protos.json_format.MessageToDict(pb, preserving_proto_field_name=True)
    return _istio_stats_value(value, path, errors, warnings)


# stats.PluginConfig's reporter -> the `reporter` label Istio's filter writes (None: by the
# listener's direction, "destination" inbound, else "source").
REPORTERS = {"UNSPECIFIED": None, "SERVER_GATEWAY": "waypoint"}


def istio_stats_config(value: dict, path, errors) -> dict | None:
    """stats.PluginConfig as a dict (a TypedStruct's value, or the declared message's) ->
    {"disable_host_header_fallback"[, "reporter": "waypoint"]}; None (and an error) for
    another field."""
    for key in value:
        if key not in ("disable_host_header_fallback", "disableHostHeaderFallback",
                       "reporter"):
            errors.append(f"{join(path, key)}: not supported")
            return None
    reporter = value.get("reporter", "UNSPECIFIED")
    if reporter not in REPORTERS:
        errors.append(f"{join(path, 'reporter')}: {reporter!r} not supported "
                      f"({', '.join(REPORTERS)})")
        return None
    config = {"disable_host_header_fallback": bool(
        value.get("disable_host_header_fallback", value.get("disableHostHeaderFallback")))}
    if REPORTERS[reporter] is not None:
        config["reporter"] = REPORTERS[reporter]
    return config


def _istio_stats_value(value, path, errors, warnings):
    config = istio_stats_config(value, path, errors)
    return (ISTIO_STATS, config) if config is not None else (None, None)


WASM_HTTP_TYPE = "envoy.extensions.filters.http.wasm.v3.Wasm"
WASM_NETWORK_TYPE = "envoy.extensions.filters.network.wasm.v3.Wasm"
PEER_METADATA = "io.istio.http.peer_metadata.Config"
NULL_VM = "envoy.wasm.runtime.null"
BUILTINS = {"envoy.wasm.stats": "istio.stats",
            "envoy.wasm.metadata_exchange": "istio.metadata_exchange"}
_PEER_METADATA_FIELDS = ("downstream_discovery", "downstream_propagation", "upstream_discovery",
                         "upstream_propagation", "shared_with_upstream", "additional_labels")


def null_vm_builtin(value, path, errors):
    """A Wasm filter's config (dict, as in a TypedStruct or MessageToDict) -> the name of the
    Istio built-in it runs ("istio.stats", "istio.metadata_exchange"), or None with an error
    when it is anything else."""
    vm = (value.get("config") or {}).get("vm_config") or {}
    code = ((vm.get("code") or {}).get("local") or {}).get("inline_string")
    builtin = BUILTINS.get(code) if vm.get("runtime") == NULL_VM else None
    if builtin is None:
        errors.append(f"{path}: Wasm not supported (only Istio's null-VM built-ins "
                      f"{', '.join(BUILTINS)} with runtime {NULL_VM})")
    return builtin


def _wasm(pb, path, errors, warnings):
    if pb.config.vm_config.runtime != NULL_VM:      # a module to run (xds/http_filters_wasm.py)
        return http_filters_wasm.translate_wasm(pb, path, errors, warnings)
    value = protos.json_format.MessageToDict(pb, preserving_proto_field_name=True)
    return _wasm_value(value, path, errors, warnings)


def _wasm_value(value, path, errors, warnings):
    if ((value.get("config") or {}).get("vm_config") or {}).get("runtime") != NULL_VM:
        return http_filters_wasm.translate_wasm_value(value, path, errors, warnings)
    builtin = null_vm_builtin(value, path, errors)
    if builtin == ISTIO_STATS:
        return ISTIO_STATS, {}
    if builtin is not None:
        return METADATA_EXCHANGE, {"auto": True}
    return None, None


# list in the config -> the worker filter's flag it sets when it names istio_headers
_PEER_METADATA_FLAGS = {"downstream_discovery": "read_request",
                        "downstream_propagation": "write_response",
                        "upstream_discovery": "read_response",
                        "upstream_propagation": "write_request"}
_PEER_METADATA_METHODS = ("istio_headers", "workload_discovery")


def _peer_metadata(value, path, errors, warnings):
    flags = {}
    for key, entries in value.items():
        here = join(path, key)
        if key not in _PEER_METADATA_FIELDS:
            errors.append(f"{here}: not supported")
            return None, None
        if key not in _PEER_METADATA_FLAGS:
            _warn(warnings, here, "not used (Baton shares no filter state with the upstream)")
            continue
        for i, entry in enumerate(entries if isinstance(entries, list) else [entries]):
            methods = list(entry) if isinstance(entry, dict) else []
            if len(methods) != 1 or methods[0] not in _PEER_METADATA_METHODS:
                errors.append(f"{here}[{i}]: one of {', '.join(_PEER_METADATA_METHODS)} "
                              "expected")
                return None, None
            if methods[0] == "istio_headers":
                flags[_PEER_METADATA_FLAGS[key]] = True
            else:
                _warn(warnings, f"{here}[{i}]", "workload_discovery: no workload lookup by "
                      "address in Baton; the peer is known from its headers only")
    return METADATA_EXCHANGE, flags


TRANSLATORS = {CORS_TYPE: _cors, GRPC_STATS_TYPE: _grpc_stats, ALPN_FILTER: _alpn,
               STATS_PLUGIN: _istio_stats, WASM_HTTP_TYPE: _wasm, AUTHN_FILTER: _authn,
               ext_authz.TYPE: ext_authz.translate_ext_authz}
# Istio's filters that come as a TypedStruct: type_url -> translate(value dict, path, ...).
TYPED_STRUCT_TRANSLATORS = {PEER_METADATA: _peer_metadata, WASM_HTTP_TYPE: _wasm_value,
                            STATS_PLUGIN: _istio_stats_value}
TYPED_STRUCT_TRANSLATORS.update(connect_filters.TYPED_STRUCT_FILTERS)     # connect_authority / _baggage


# --- per-route config ------------------------------------------------------------------------

FILTER_CONFIG_TYPE = "envoy.config.route.v3.FilterConfig"


def translate_per_filter_config(config_map, path, errors, warnings=None, enabled=None):
    """typed_per_filter_config (filter name -> Any) -> {filter name: config}; CORS (under
    its canonical name), RBAC (under the name given, xds/rbac.py), ext_authz (likewise,
    xds/ext_authz.py), buffer, fault and local rate limit (likewise, xds/http_filters.py) have
    per-route settings in Baton, given directly or inside a TypedStruct (whose value is that
    message in JSON), or as a FilterConfig's `config`.

    A FilterConfig turns the filter on or off for the route (Envoy's route based filter
    chain; its PerFilterConfigs): `enabled` (a dict, when given) gets {name: False} for
    `disabled: true`, {name: True} for a FilterConfig with a config (an empty Any: the
    filter's own config), and {name: True} for a CORS policy named otherwise than its
    canonical name; any other entry under a name turns that filter on by being there."""
    from .http_filters_buffer import PER_ROUTE_TYPE as BUFFER_PER_ROUTE_TYPE
    from .http_filters_buffer import translate_buffer_per_route
    from .http_filters import (_FAULT_TYPE, _LOCAL_RATELIMIT_TYPE,
                               translate_fault_per_route, translate_local_ratelimit_per_route)
    from .rbac import translate_rbac_per_route
    by_name = {CORS_POLICY_TYPE: translate_cors_policy,
               RBAC_PER_ROUTE_TYPE: translate_rbac_per_route,
               ext_authz.PER_ROUTE_TYPE: ext_authz.translate_ext_authz_per_route,
               BUFFER_PER_ROUTE_TYPE: translate_buffer_per_route,
               # Istio's VirtualService fault; a local rate limit by EnvoyFilter (HTTP_ROUTE)
               _FAULT_TYPE: translate_fault_per_route,
               _LOCAL_RATELIMIT_TYPE: translate_local_ratelimit_per_route}
    result = {}
    for name in sorted(config_map):
        here = f"{path}[{name}]"
        authority = connect_filters.connect_authority_per_route(config_map[name], here, errors)
        if authority is not None:                   # Istio's, in a TypedStruct
            result[name] = authority
            continue
        any_pb = config_map[name]
        if protos.type_name(any_pb.type_url) == FILTER_CONFIG_TYPE:
            any_pb = _filter_config(any_pb, name, here, errors, warnings, enabled, by_name)
            if any_pb is None:
                continue
            here = join(here, "config")
        per_route = _per_route_message(any_pb, here, errors, by_name)
        if per_route is None:
            continue
        config = by_name[per_route.DESCRIPTOR.full_name](per_route, here, errors, warnings)
        if per_route.DESCRIPTOR.full_name == CORS_POLICY_TYPE:
            result[CORS] = config
            if name != CORS and enabled is not None:
                enabled[name] = True
        elif config is not None:
            result[name] = config
    return result


def _filter_config(any_pb, name, path, errors, warnings, enabled, known):
    """A FilterConfig under `name`: its state into `enabled`, and the filter's per-route
    config it carries (an Any to translate), or None when it carries none (Envoy 1.40's
    PerFilterConfigs: `disabled` ignores the config; no config is an error; an empty one
    turns the filter on with its own config; an unknown type with is_optional is ignored)."""
    protos.import_type(FILTER_CONFIG_TYPE)
    pb = protos.message_class(FILTER_CONFIG_TYPE)()
    any_pb.Unpack(pb)
    check_fields(pb, path, errors, warnings)
    state = {} if enabled is None else enabled
    if pb.disabled:
        state[name] = False
        return None
    if not pb.HasField("config"):
        errors.append(f"{path}: Empty route/virtual host per filter configuration for {name} "
                      "filter")
        return None
    state[name] = True
    if not pb.config.type_url:
        return None
    if pb.is_optional:
        from .http_filters import _TYPED_STRUCTS, typed_struct_type
        type_name = protos.type_name(pb.config.type_url)
        if type_name in _TYPED_STRUCTS:
            type_name = typed_struct_type(pb.config)
        if type_name not in known:
            _warn(warnings, join(path, "config"), f"{type_name} not supported; ignored "
                  "(is_optional)")
            return None
    return pb.config


def _per_route_message(any_pb, path, errors, known):
    """The per-route message an Any carries, directly or in a TypedStruct; None (and an
    error naming the type) when it is not one of `known`."""
    from .http_filters import _TYPED_STRUCTS, typed_struct_message, typed_struct_type
    type_name = protos.type_name(any_pb.type_url)
    in_struct = type_name in _TYPED_STRUCTS
    if in_struct:
        type_name = typed_struct_type(any_pb)
    if type_name not in known:
        errors.append(f"{path}: {type_name or 'an empty config'} not supported (per-route "
                      f"config: {', '.join(known)})")
        return None
    if in_struct:
        return typed_struct_message(any_pb, path, errors)
    protos.import_type(type_name)
    message = protos.message_class(type_name)()
    any_pb.Unpack(message)
    return message


def translate_cors_policy(pb, path, errors, warnings=None):
    """CorsPolicy -> {"origins": [string matcher], "allow_methods", "allow_headers",
    "expose_headers", "max_age" (strings, "" unset), "allow_credentials": bool,
    "enabled": fraction, "forward_not_matching_preflights": bool}. A string matcher is
    {"kind": exact|prefix|suffix|contains|regex, "value", "ignore_case"}."""
    import re

    check_fields(pb, path, errors, warnings)
    origins = []
    for i, matcher in enumerate(pb.allow_origin_string_match):
        here = f"{join(path, 'allow_origin_string_match')}[{i}]"
        kind = matcher.WhichOneof("match_pattern")
        if kind in ("exact", "prefix", "suffix", "contains"):
            value = getattr(matcher, kind)
        elif kind == "safe_regex":
            kind, value = "regex", matcher.safe_regex.regex
            try:
                re.compile(value)
            except re.error as exc:
                errors.append(f"{here}.safe_regex.regex: invalid regex {value!r}: {exc}")
        else:
            errors.append(f"{here}: {kind or 'a pattern'} not supported (exact, prefix, suffix, "
                          "contains or safe_regex)")
            continue
        origins.append({"kind": kind, "value": value, "ignore_case": matcher.ignore_case})
    enabled = 1.0
    if pb.HasField("filter_enabled"):
        fp = pb.filter_enabled.default_value
        denominator = {0: 100, 1: 10_000, 2: 1_000_000}.get(fp.denominator, 100)
        enabled = min(fp.numerator / denominator, 1.0)
    return {"origins": origins, "allow_methods": pb.allow_methods,
            "allow_headers": pb.allow_headers, "expose_headers": pb.expose_headers,
            "max_age": pb.max_age,
            "allow_credentials": pb.allow_credentials.value
            if pb.HasField("allow_credentials") else False,
            "enabled": enabled,
            "forward_not_matching_preflights": pb.forward_not_matching_preflights.value
            if pb.HasField("forward_not_matching_preflights") else True}
