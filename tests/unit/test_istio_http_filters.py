"""The HTTP filters on every HCM istiod sends (issue 14): cors (with the route's CorsPolicy from
typed_per_filter_config), grpc_stats, istio.alpn and istio.stats, in the order Istio writes
them; and the tcp_proxy access log Istio turns on with mesh access logging."""

from __future__ import annotations

from types import SimpleNamespace

from baton.worker.codecs.message import Headers, Request, Response
from baton.worker.proxy.http.cors import CorsFactory, effective_policy
from baton.worker.proxy.http.filter import LocalReply
from baton.worker.proxy.http.grpc_stats import GrpcStatsFactory
from baton.worker.proxy.http.stream_info import StreamInfo
from baton.worker.stats import Stats
from baton.xds import protos
from baton.xds.http import translate_route_config
from baton.xds.http_filters import translate_http_filters
from baton.xds.parse import parse_dict

T = "type.googleapis.com/"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}
# Istio's outbound order (S22), less the ECDS Wasm filter and the peer metadata one.
ISTIO_FILTERS = [
    {"name": "envoy.filters.http.grpc_stats", "typed_config": {
        "@type": T + "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
        "emit_filter_state": True, "stats_for_all_methods": False}},
    {"name": "istio.alpn", "typed_config": {
        "@type": T + "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
        "alpn_override": [{"alpn_override": ["istio-http/1.0", "istio", "http/1.0"]},
                          {"upstream_protocol": "HTTP11",
                           "alpn_override": ["istio-http/1.1", "istio", "http/1.1"]},
                          {"upstream_protocol": "HTTP2", "alpn_override": ["istio-h2", "istio", "h2"]}]}},
    {"name": "envoy.filters.http.fault", "typed_config": {
        "@type": T + "envoy.extensions.filters.http.fault.v3.HTTPFault"}},
    {"name": "envoy.filters.http.cors", "typed_config": {
        "@type": T + "envoy.extensions.filters.http.cors.v3.Cors"}},
    {"name": "istio.stats", "typed_config": {"@type": T + "stats.PluginConfig"}},
    ROUTER]
POLICY = T + "envoy.extensions.filters.http.cors.v3.CorsPolicy"


def translate_filters(items):
    data = {"stat_prefix": "in", "http_filters": items}
    protos.import_types_in(data)
    pb = protos.HttpConnectionManager()
    errors, warnings = [], []
    assert parse_dict(data, pb, "hcm", errors) == [], errors
    return translate_http_filters(pb.http_filters, "hcm.http_filters", errors, warnings), errors, warnings


def test_istios_filter_chain_translates_with_what_is_not_done_said():
    result, errors, warnings = translate_filters(ISTIO_FILTERS)
    assert errors == []
    # istio.alpn and istio.stats run in the worker.
    assert [f["name"] for f in result] == ["envoy.filters.http.grpc_stats", "istio.alpn",
                                           "envoy.filters.http.fault", "envoy.filters.http.cors",
                                           "istio.stats", "envoy.filters.http.router"]
    assert result[0]["config"] == {"per_method": False}
    assert result[1]["config"] == {"overrides": {
        "HTTP10": ["istio-http/1.0", "istio", "http/1.0"],
        "HTTP11": ["istio-http/1.1", "istio", "http/1.1"], "HTTP2": ["istio-h2", "istio", "h2"]}}
    assert result[4]["config"] == {"disable_host_header_fallback": False}
    assert [w.split(": ", 1)[0] for w in warnings] == [
        "hcm.http_filters[0].typed_config.emit_filter_state", "hcm.http_filters[0].typed_config"]


def test_grpc_stats_fields_baton_lacks_are_refused():
    item = {"name": "g", "typed_config": {
        "@type": T + "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
        "enable_upstream_stats": True}}
    result, errors, _ = translate_filters([item, ROUTER])
    assert result is None
    assert errors == ["hcm.http_filters[0].typed_config.enable_upstream_stats: not supported"]


def routes(vhost_policy=None, route_policy=None, extra=None):
    def per_filter(policy):
        return {"typed_per_filter_config": {"envoy.filters.http.cors": {"@type": POLICY, **policy}}} \
            if policy else {}
    data = {"name": "r", "virtual_hosts": [{
        "name": "v", "domains": ["*"], **per_filter(vhost_policy), "routes": [
            {"match": {"prefix": "/own"}, "direct_response": {"status": 200}, **per_filter(route_policy)},
            {"match": {"prefix": "/"}, "direct_response": {"status": 200}, **(extra or {})}]}]}
    protos.import_types_in(data)
    pb = protos.RouteConfiguration()
    errors, warnings = [], []
    assert parse_dict(data, pb, "rc", errors) == [], errors
    return translate_route_config(pb, "rc", errors, warnings), errors


def route_object(config, index):
    from baton.worker.proxy.http.routing import Route
    vhost = config["virtual_hosts"][0]
    return Route(vhost["routes"][index], vhost, config)


VHOST = {"allow_origin_string_match": [{"exact": "https://a.test"},
                                       {"safe_regex": {"regex": r"https://.*\.b\.test"}}],
         "allow_methods": "GET,POST", "allow_headers": "x-a", "expose_headers": "x-e",
         "max_age": "600", "allow_credentials": True}


def test_cors_policy_per_route_over_the_virtual_hosts_field_by_field():
    config, errors = routes(VHOST, {"allow_origin_string_match": [{"prefix": "https://own"}],
                                    "allow_methods": "PUT"})
    assert errors == []
    own, other = route_object(config, 0), route_object(config, 1)
    policy = effective_policy(own)
    assert [m["value"] for m in policy["origins"]] == ["https://own"]
    assert (policy["allow_methods"], policy["allow_headers"], policy["max_age"]) == ("PUT", "x-a", "600")
    assert effective_policy(other)["allow_methods"] == "GET,POST"
    config, _ = routes()
    assert effective_policy(route_object(config, 1)) is None


def test_other_per_route_configs_are_refused_with_their_path():
    _, errors = routes(extra={"typed_per_filter_config": {"envoy.filters.http.lua": {
        "@type": T + "envoy.extensions.filters.http.lua.v3.LuaPerRoute"}}})
    assert errors == ["rc.virtual_hosts[0].routes[1].typed_per_filter_config[envoy.filters.http.lua]: "
                      "envoy.extensions.filters.http.lua.v3.LuaPerRoute not supported (per-route "
                      "config: envoy.extensions.filters.http.cors.v3.CorsPolicy, "
                      "envoy.extensions.filters.http.rbac.v3.RBACPerRoute, "
                      "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute, "
                      "envoy.extensions.filters.http.buffer.v3.BufferPerRoute, "
                      "envoy.extensions.filters.http.fault.v3.HTTPFault, "
                      "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit)"]


def stream_on(route, method, headers):
    request = Request(method, "/x", "a", Headers(headers))
    return SimpleNamespace(route=route, request=request,
                           info=StreamInfo(request, 0.0, "HTTP/1.1", ("1.1.1.1", 1), ("2.2.2.2", 2)))


def test_cors_preflight_is_answered_and_responses_get_the_headers():
    config, _ = routes(VHOST)
    route = route_object(config, 1)
    factory = CorsFactory({}, None)
    preflight = factory.create(stream_on(route, "OPTIONS", [
        ("origin", "https://x.b.test"), ("access-control-request-method", "POST")]))
    reply = preflight.on_request_headers(preflight.stream.request, True)
    assert isinstance(reply, LocalReply) and reply.status == 200
    assert reply.headers == [("access-control-allow-origin", "https://x.b.test"),
                             ("access-control-allow-credentials", "true"),
                             ("access-control-allow-methods", "GET,POST"),
                             ("access-control-allow-headers", "x-a"),
                             ("access-control-max-age", "600")]
    actual = factory.create(stream_on(route, "GET", [("origin", "https://a.test")]))
    assert actual.on_request_headers(actual.stream.request, True) is None
    response = Response(200, Headers([("x-up", "1")]))
    actual.on_response_headers(response, True)
    assert response.headers.items[1:] == [("access-control-allow-origin", "https://a.test"),
                                          ("access-control-allow-credentials", "true"),
                                          ("access-control-expose-headers", "x-e")]
    # An origin the policy does not allow, or an OPTIONS that is no preflight: untouched.
    for method, headers in (("OPTIONS", [("origin", "https://evil.test"),
                                         ("access-control-request-method", "GET")]),
                            ("OPTIONS", [("origin", "https://a.test")])):
        f = factory.create(stream_on(route, method, headers))
        assert f.on_request_headers(f.stream.request, True) is None
    # No policy on the route: no filter at all for the request.
    config, _ = routes()
    assert factory.create(stream_on(route_object(config, 1), "GET", [("origin", "https://a.test")])) is None


def test_grpc_stats_count_by_cluster_and_method():
    stats = Stats()
    for per_method in (False, True):
        factory = GrpcStatsFactory({"per_method": per_method}, SimpleNamespace(stats=stats))
        for grpc_status in ("0", "14"):
            stream = stream_on(None, "POST", [("content-type", "application/grpc")])
            stream.request.path = "/pkg.Svc/Do"
            f = factory.create(stream)
            stream.info.upstream_cluster = "c"
            stream.info.response_code = 200
            stream.info.response = Response(200, Headers([]))
            stream.info.response_trailers = Headers([("grpc-status", grpc_status)])
            f.on_log()
        assert factory.create(stream_on(None, "POST", [("content-type", "application/json")])) is None
    counters = stats.counters
    assert (counters["cluster.c.grpc.success"], counters["cluster.c.grpc.failure"],
            counters["cluster.c.grpc.total"]) == (1, 1, 2)
    assert (counters["cluster.c.grpc.pkg.Svc.Do.success"],
            counters["cluster.c.grpc.pkg.Svc.Do.total"]) == (1, 2)


def test_tcp_proxy_access_log_is_translated():
    from baton.xds.translate import translate_tcp_proxy
    pb = protos.TcpProxy()
    data = {"stat_prefix": "s", "cluster": "c", "access_log": [{
        "name": "envoy.access_loggers.file", "typed_config": {
            "@type": T + "envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/dev/stdout",
            "log_format": {"text_format_source": {"inline_string": "%UPSTREAM_HOST% %BYTES_SENT%\n"}}}}]}
    protos.import_types_in(data)
    errors = []
    assert parse_dict(data, pb, "tcp", errors) == []
    spec = translate_tcp_proxy(pb, "tcp", errors)
    assert errors == [] and spec["access_log"][0]["format"] == "%UPSTREAM_HOST% %BYTES_SENT%\n"


def wasm(code, runtime="envoy.wasm.runtime.null", wrapped=True, network=False):
    kind = "network" if network else "http"
    config = {"config": {"vm_config": {"runtime": runtime, "code": {"local": {"inline_string": code}}},
                         "configuration": {"@type": T + "google.protobuf.StringValue", "value": "{}"}}}
    wasm_type = T + f"envoy.extensions.filters.{kind}.wasm.v3.Wasm"
    if wrapped:
        return {"name": code, "typed_config": {"@type": T + "udpa.type.v1.TypedStruct",
                                               "type_url": wasm_type, "value": config}}
    return {"name": code, "typed_config": {"@type": wasm_type, **config}}


def test_older_istios_null_vm_builtins_are_the_native_filters():
    peer = {"name": "istio.metadata_exchange", "typed_config": {
        "@type": T + "udpa.type.v1.TypedStruct", "type_url": T + "io.istio.http.peer_metadata.Config",
        "value": {"upstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
                  "upstream_propagation": [{"istio_headers": {}}]}}}
    result, errors, warnings = translate_filters(
        [peer, wasm("envoy.wasm.metadata_exchange", wrapped=False), wasm("envoy.wasm.stats"), ROUTER])
    assert errors == [] and [(f["name"], f["config"]) for f in result] == [
        ("istio.metadata_exchange", {"read_response": True, "write_request": True}),
        ("istio.metadata_exchange", {"auto": True}), ("istio.stats", {}),
        ("envoy.filters.http.router", {"suppress_envoy_headers": False, "dynamic_stats": True})]
    assert warnings == [
        "hcm.http_filters[0].typed_config.value.upstream_discovery[1]: workload_discovery: no "
        "workload lookup by address in Baton; the peer is known from its headers only"]
    # Another null-VM code is refused; with a real runtime the code must be a module
    # (xds/http_filters_wasm.py: this text does not compile).
    result, errors, _ = translate_filters([wasm("my.module"), ROUTER])
    assert result is None and errors == [
        "hcm.http_filters[0].typed_config.value: Wasm not supported (only Istio's null-VM "
        "built-ins envoy.wasm.stats, envoy.wasm.metadata_exchange with runtime "
        "envoy.wasm.runtime.null)"]
    result, errors, _ = translate_filters(
        [wasm("envoy.wasm.stats", runtime="envoy.wasm.runtime.v8"), ROUTER])
    assert result is None and len(errors) == 1 and errors[0].startswith(
        "hcm.http_filters[0].typed_config.value: Unable to create Wasm plugin: cannot "
        "compile the module"), errors


def test_network_null_vm_stats_is_istio_stats():
    from .test_istio_listeners import TCP, listener
    spec, errors, warnings = listener(filter_chains=[{"filters": [
        wasm("envoy.wasm.stats", network=True), TCP]}])
    assert errors == [] and spec["filter_chains"][0]["terminal"] == "tcp_proxy"
    assert warnings == []
    assert spec["filter_chains"][0]["network_filters"] == [
        {"name": "envoy.wasm.stats", "type": "istio.stats"}]


def test_istio_alpn_sets_the_list_of_the_upstream_version():
    """The first version of Envoy's upstreamHttpProtocol picks the list: HTTP/2 for an HTTP/2
    cluster and for auto_config (USE_ALPN lists HTTP/2 first), the downstream's with
    use_downstream_protocol_config but HTTP/1.1 for HTTP/1.0 (Envoy has no HTTP/1.0
    upstream), else HTTP/1.1."""
    from baton.worker.proxy.http.alpn_override import APPLICATION_PROTOCOLS, alpn_override
    from baton.worker.proxy.istio.alpn import AlpnFactory

    result, errors, _ = translate_filters(ISTIO_FILTERS)
    factory = AlpnFactory(result[1]["config"], SimpleNamespace())

    def offered(http2, version="1.1"):
        request = Request("GET", "/", "svc", Headers(), version=version)
        info = StreamInfo(request, 0.0, "HTTP/1.1", None, None)
        stream = SimpleNamespace(route=object(), cluster_name="c", info=info, worker=SimpleNamespace(
            clusters={"c": SimpleNamespace(http2=http2)}))
        factory.create(stream).on_request_headers(request, True)
        return alpn_override(info)
    assert offered(True) == ("istio-h2", "istio", "h2")
    assert offered(False) == ("istio-http/1.1", "istio", "http/1.1")
    assert offered("downstream", "1.0") == ("istio-http/1.1", "istio", "http/1.1")
    assert offered("downstream", "1.1") == ("istio-http/1.1", "istio", "http/1.1")
    assert offered("downstream", "2") == ("istio-h2", "istio", "h2")
    assert offered("auto") == ("istio-h2", "istio", "h2")
    assert APPLICATION_PROTOCOLS == "envoy.network.application_protocols"


def test_a_per_route_config_inside_a_typed_struct():
    """A TypedStruct per route carries the message as JSON: a CorsPolicy so is the route's
    policy; a type Baton has no per-route settings for is refused by its own name."""
    def struct(type_url, value):
        return {"typed_per_filter_config": {"envoy.filters.http.cors": {
            "@type": T + "udpa.type.v1.TypedStruct", "type_url": T + type_url, "value": value}}}
    config, errors = routes(extra=struct("envoy.extensions.filters.http.cors.v3.CorsPolicy",
                                         {"allow_origin_string_match": [{"exact": "https://a"}],
                                          "allow_methods": "GET"}))
    assert errors == []
    policy = config["virtual_hosts"][0]["routes"][1]["per_filter"]["envoy.filters.http.cors"]
    assert policy["origins"] == [{"kind": "exact", "value": "https://a", "ignore_case": False}]
    assert policy["allow_methods"] == "GET"
    # (connect_authority's own is supported now: tests/unit/test_filter_chain_matcher.py)
    _, errors = routes(extra=struct("io.istio.http.unknown.Config", {"enabled": True}))
    assert errors == ["rc.virtual_hosts[0].routes[1].typed_per_filter_config[envoy.filters.http.cors]: "
                      "io.istio.http.unknown.Config not supported (per-route config: "
                      "envoy.extensions.filters.http.cors.v3.CorsPolicy, "
                      "envoy.extensions.filters.http.rbac.v3.RBACPerRoute, "
                      "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute, "
                      "envoy.extensions.filters.http.buffer.v3.BufferPerRoute, "
                      "envoy.extensions.filters.http.fault.v3.HTTPFault, "
                      "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit)"]
