"""Per-route fault injection and local rate limits (typed_per_filter_config), as Istio sends
them: a VirtualService's fault becomes the route's HTTPFault; a local rate limit comes by
EnvoyFilter (the filter with a stat_prefix alone, the buckets on the routes), both also as a
TypedStruct. The route's (else its virtual host's) config replaces the filter's own, as in
Envoy 1.40; a filter with nothing of its own is idle until a route of the table has some."""

from __future__ import annotations

import random
from types import SimpleNamespace

from baton.worker.codecs.message import Headers, Request
from baton.worker.proxy.http import stream as stream_module
from baton.worker.proxy.http.config import HttpConfig
from baton.worker.proxy.http.fault import FaultFilterFactory
from baton.worker.proxy.http.filter import Delay, LocalReply
from baton.worker.proxy.http.local_ratelimit import LocalRateLimitFactory
from baton.worker.proxy.http.routing import RouteTable
from baton.worker.proxy.http.stream_info import StreamInfo
from baton.worker.stats import Stats
from baton.xds import protos
from baton.xds.http import translate_route_config
from baton.xds.http_filters import translate_http_filters
from baton.xds.parse import parse_dict

T = "type.googleapis.com/"
FAULT = "envoy.filters.http.fault"
RL = "envoy.filters.http.local_ratelimit"
FAULT_TYPE = T + "envoy.extensions.filters.http.fault.v3.HTTPFault"
RL_TYPE = T + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}
# What istiod writes for `fault: {abort: {httpStatus: 503, percentage: {value: 100}}}` and
# `fault: {delay: {fixedDelay: 150ms, percentage: {value: 100}}}`, `abort: {grpcStatus:
# UNAVAILABLE}` (percentages in millionths).
ISTIO_ABORT = {"@type": FAULT_TYPE, "abort": {
    "http_status": 503, "percentage": {"numerator": 1000000, "denominator": "MILLION"}}}
ISTIO_DELAY = {"@type": FAULT_TYPE, "delay": {
    "fixed_delay": "0.150s", "percentage": {"numerator": 1000000, "denominator": "MILLION"}}}
ISTIO_GRPC = {"@type": FAULT_TYPE, "abort": {
    "grpc_status": 14, "percentage": {"numerator": 1000000, "denominator": "MILLION"}}}
BUCKET = {"stat_prefix": "route_rl", "token_bucket": {"max_tokens": 2, "fill_interval": "3600s"},
          "filter_enabled": {"runtime_key": "e", "default_value": {"numerator": 100}},
          "filter_enforced": {"runtime_key": "f", "default_value": {"numerator": 100}}}


def typed_struct(type_url, value, struct="udpa.type.v1.TypedStruct"):
    return {"@type": T + struct, "type_url": type_url, "value": value}


def route_config(vhost_per_filter=None, *routes):
    """A virtual host with `routes` (prefix, typed_per_filter_config or None), then "/"."""
    def route(prefix, per_filter):
        return {"match": {"prefix": prefix}, "route": {"cluster": "c"},
                **({"typed_per_filter_config": per_filter} if per_filter else {})}
    vhost = {"name": "v", "domains": ["*"],
             "routes": [route(p, pf) for p, pf in routes] + [route("/", None)]}
    if vhost_per_filter:
        vhost["typed_per_filter_config"] = vhost_per_filter
    data = {"name": "r", "virtual_hosts": [vhost]}
    protos.import_types_in(data)
    pb = protos.RouteConfiguration()
    errors, warnings = [], []
    assert parse_dict(data, pb, "rc", errors) == [], errors
    return translate_route_config(pb, "rc", errors, warnings), errors


def hcm_filters(*items):
    data = {"stat_prefix": "in", "http_filters": [*items, ROUTER]}
    protos.import_types_in(data)
    pb = protos.HttpConnectionManager()
    errors = []
    assert parse_dict(data, pb, "hcm", errors) == [], errors
    return translate_http_filters(pb.http_filters, "hcm.http_filters", errors, []), errors


def per_filter(config, index=0):
    return config["virtual_hosts"][0]["routes"][index]["per_filter"]


# --- translation -----------------------------------------------------------------------------

def test_istios_route_fault_is_the_filters_config_under_the_filters_name():
    config, errors = route_config(None, ("/a", {FAULT: ISTIO_ABORT}), ("/d", {FAULT: ISTIO_DELAY}),
                                  ("/g", {FAULT: ISTIO_GRPC}))
    assert errors == []
    abort = per_filter(config, 0)[FAULT]
    assert abort["abort"] == {"http_status": 503, "percentage": {
        "numerator": 1000000, "denominator": 1000000, "fraction": 1.0}}
    assert abort["delay"] is None and abort["headers"] == []
    assert per_filter(config, 1)[FAULT]["delay"]["fixed_delay"] == 0.15
    assert per_filter(config, 2)[FAULT]["abort"]["http_status"] is None
    assert per_filter(config, 2)[FAULT]["abort"]["grpc_status"] == 14


def test_a_route_fault_in_a_typed_struct_and_on_the_virtual_host():
    value = {k: v for k, v in ISTIO_ABORT.items() if k != "@type"}
    for struct in ("udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"):
        config, errors = route_config({FAULT: typed_struct(FAULT_TYPE, value, struct)})
        assert errors == []
        vhost = config["virtual_hosts"][0]["per_filter"][FAULT]
        assert vhost == route_config(None, ("/a", {FAULT: ISTIO_ABORT}))[0][
            "virtual_hosts"][0]["routes"][0]["per_filter"][FAULT]


def test_a_route_fault_is_checked_as_the_filters_own():
    _, errors = route_config(None, ("/a", {FAULT: {"@type": FAULT_TYPE, "abort": {
        "http_status": 600, "percentage": {"numerator": 1}}, "response_rate_limit": {
        "fixed_limit": {"limit_kbps": 1}}}}))
    here = "rc.virtual_hosts[0].routes[0].typed_per_filter_config[envoy.filters.http.fault]"
    assert sorted(errors) == [f"{here}.abort.http_status: must be in [200, 600), got 600",
                              f"{here}.response_rate_limit: not supported"]
    _, errors = route_config(None, ("/a", {FAULT: typed_struct(FAULT_TYPE, {"delay": {}})}))
    assert errors == [f"{here}.delay: one of fixed_delay or header_delay is required"]
    _, errors = route_config(None, ("/a", {FAULT: typed_struct(FAULT_TYPE, {"nope": 1})}))
    assert len(errors) == 1 and errors[0].startswith(f"{here}.value: ")


def test_istios_local_rate_limit_by_envoy_filter():
    # The filter: a TypedStruct with its stat_prefix alone (never enabled, no bucket needed).
    result, errors = hcm_filters({"name": RL, "typed_config": typed_struct(
        RL_TYPE, {"stat_prefix": "http_local_rate_limiter"})})
    assert errors == []
    assert result[0]["name"] == RL and result[0]["config"]["filter_name"] == RL
    assert result[0]["config"]["filter_enabled"]["numerator"] == 0
    # Enabled, it still needs one.
    _, errors = hcm_filters({"name": RL, "typed_config": {
        "@type": RL_TYPE, "stat_prefix": "x", "filter_enabled": BUCKET["filter_enabled"]}})
    assert errors == ["hcm.http_filters[0].typed_config.token_bucket: required (Baton's local "
                      "rate limit is its token bucket)"]
    # The route's: a bucket of its own, required.
    value = {k: v for k, v in BUCKET.items()}
    config, errors = route_config(None, ("/r", {RL: typed_struct(RL_TYPE, value)}))
    assert errors == []
    assert per_filter(config)[RL]["max_tokens"] == 2
    assert per_filter(config)[RL]["stat_prefix"] == "route_rl"
    _, errors = route_config(None, ("/r", {RL: {"@type": RL_TYPE, "stat_prefix": "x"}}))
    assert errors == ["rc.virtual_hosts[0].routes[0].typed_per_filter_config["
                      "envoy.filters.http.local_ratelimit].token_bucket: required (a per-route "
                      "local rate limit is its token bucket)"]


def test_the_filters_own_fault_in_a_typed_struct_and_a_grpc_abort():
    value = {k: v for k, v in ISTIO_GRPC.items() if k != "@type"}
    result, errors = hcm_filters({"name": "my-fault", "typed_config": typed_struct(
        FAULT_TYPE, value)})
    assert errors == []
    assert result[0]["name"] == FAULT and result[0]["config"]["filter_name"] == "my-fault"
    assert result[0]["config"]["abort"]["grpc_status"] == 14


# --- the worker ------------------------------------------------------------------------------

def context():
    return SimpleNamespace(stats=Stats(), stat_prefix="in")


def fault_filter(config=None, filter_name=FAULT):
    base = {"delay": None, "abort": None, "headers": [], "upstream_cluster": None,
            "downstream_nodes": [], "max_active_faults": None,
            "disable_downstream_cluster_stats": False, "filter_name": filter_name}
    factory = FaultFilterFactory({**base, **(config or {})}, context())
    factory.rng = random.Random(7)
    return factory


def stream_on(table, path, **headers):
    request = Request("GET", path, "svc", Headers([(k.replace("_", "-"), v)
                                                    for k, v in headers.items()]))
    route = table.route(request)
    info = StreamInfo(request, 0.0, "HTTP/1.1", ("127.0.0.1", 1), ("127.0.0.1", 2))
    info.upstream_cluster = "c"
    return SimpleNamespace(request=request, route=route, info=info, filters=[])


def answer(factory, stream):
    made = factory.create(stream)
    return made, (made.on_request_headers(stream.request, True) if made is not None else None)


def test_routes_with_a_fault_wake_an_idle_filter_and_each_route_gets_its_own():
    config, _ = route_config({FAULT: ISTIO_DELAY}, ("/a", {FAULT: ISTIO_ABORT}),
                             ("/g", {FAULT: ISTIO_GRPC}))
    table = RouteTable(config)
    factory = fault_filter()
    assert factory.idle
    assert factory.routes_changed(table) is True and not factory.idle
    _, reply = answer(factory, stream_on(table, "/a", x_envoy_downstream_service_cluster="web"))
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.body, reply.flags, reply.details, reply.grpc_status) == \
        (503, b"fault filter abort", "FI", "fault_filter_abort", None)
    _, reply = answer(factory, stream_on(table, "/g"))
    assert (reply.status, reply.grpc_status, reply.flags) == (200, 14, "FI")
    # The virtual host's, on a route with none of its own.
    _, delay = answer(factory, stream_on(table, "/other"))
    assert isinstance(delay, Delay) and (delay.seconds, delay.flags, delay.then) == (0.15, "DI", None)
    counters = factory.stats.counters
    assert counters["http.in.fault.aborts_injected"] == 2
    assert counters["http.in.fault.web.aborts_injected"] == 1
    assert counters["http.in.fault.delays_injected"] == 1
    # Looked up once per route.
    route = stream_on(table, "/a").route
    assert factory.by_route[route] is factory.create(stream_on(table, "/a")).settings
    # A table without: idle again, and no route looked at.
    plain, _ = route_config()
    assert factory.routes_changed(RouteTable(plain)) is True and factory.idle
    assert factory.by_route is None


def test_a_route_without_a_fault_keeps_the_filters_own_and_another_name_is_not_ours():
    config, _ = route_config(None, ("/a", {FAULT: ISTIO_ABORT}))
    table = RouteTable(config)
    own = {"delay": {"fixed_delay": 0.2, "percentage": {"numerator": 100, "denominator": 100}}}
    factory = fault_filter(own)
    assert factory.routes_changed(table) is False and not factory.idle
    _, result = answer(factory, stream_on(table, "/x"))
    assert isinstance(result, Delay) and result.seconds == 0.2
    _, result = answer(factory, stream_on(table, "/a"))
    assert isinstance(result, LocalReply) and result.status == 503
    # An HCM entry named otherwise finds nothing under envoy.filters.http.fault.
    other = fault_filter(filter_name="my-fault")
    assert other.routes_changed(table) is False and other.idle


def test_a_header_controlled_grpc_abort():
    config, _ = route_config(None, ("/h", {FAULT: {"@type": FAULT_TYPE, "abort": {
        "header_abort": {}, "percentage": {"numerator": 100}}}}))
    table = RouteTable(config)
    factory = fault_filter()
    factory.routes_changed(table)
    _, reply = answer(factory, stream_on(table, "/h", x_envoy_fault_abort_grpc_request="8"))
    assert (reply.status, reply.grpc_status) == (200, 8)
    _, reply = answer(factory, stream_on(table, "/h", x_envoy_fault_abort_request="429",
                                         x_envoy_fault_abort_grpc_request="8"))
    assert (reply.status, reply.grpc_status) == (429, None)
    # An HTTP status that is no status leaves the word to the gRPC header (Envoy's abortStatus).
    _, reply = answer(factory, stream_on(table, "/h", x_envoy_fault_abort_request="700",
                                         x_envoy_fault_abort_grpc_request=" +8 "))
    assert (reply.status, reply.grpc_status) == (200, 8)
    assert answer(factory, stream_on(table, "/h", x_envoy_fault_abort_grpc_request="x"))[1] is None
    assert answer(factory, stream_on(table, "/h", x_envoy_fault_abort_request="4_29"))[1] is None


def rl_factory(config=None):
    base = {"stat_prefix": "own", "status": 429, "max_tokens": 1, "tokens_per_fill": 1,
            "fill_interval": 1.0, "filter_enabled": {"numerator": 0, "denominator": 100},
            "filter_enforced": {"numerator": 0, "denominator": 100},
            "response_headers_to_add": [], "request_headers_to_add_when_not_enforced": [],
            "x_ratelimit_headers": False, "filter_name": RL}
    return LocalRateLimitFactory({**base, **(config or {})}, context(), clock=lambda: 0.0)


def test_a_routes_local_rate_limit_is_its_own_bucket_shared_by_the_routes_given_it():
    limit = {"@type": RL_TYPE, **BUCKET}
    config, _ = route_config({RL: limit}, ("/r", {RL: limit}))
    table = RouteTable(config)
    factory = rl_factory()
    assert factory.idle
    assert factory.routes_changed(table) is True and not factory.idle

    def status(path):
        made, result = answer(factory, stream_on(table, path))
        return result.status if isinstance(result, LocalReply) else 200
    # Two tokens on the route's bucket; the virtual host's is another, of two too, shared by
    # the routes without one of their own.
    assert [status("/r") for _ in range(3)] == [200, 200, 429]
    assert [status("/x"), status("/y"), status("/z")] == [200, 200, 429]
    counters = factory.counters
    assert counters["route_rl.http_local_rate_limit.enabled"] == 6
    assert counters["route_rl.http_local_rate_limit.rate_limited"] == 2
    assert counters["own.http_local_rate_limit.enabled"] == 0


def test_a_new_table_tells_the_chain_again():
    worker = SimpleNamespace(loop=None, stats=Stats())
    fault = {"name": FAULT, "config": {"delay": None, "abort": None, "headers": [],
                                       "upstream_cluster": None, "downstream_nodes": [],
                                       "max_active_faults": None, "filter_name": FAULT}}
    plain, _ = route_config()
    with_fault, _ = route_config(None, ("/a", {FAULT: ISTIO_ABORT}))
    hcm = HttpConfig({"stat_prefix": "in", "http_filters": [fault], "route_config": plain},
                     worker, 1 << 20)
    factory = hcm.filter_factories[0]
    assert stream_module.FilterPlan(hcm.filter_factories).calls == ()
    before = hcm.filter_factories
    hcm.set_routes(with_fault)
    assert hcm.filter_factories is not before and hcm.filter_factories == [factory]
    assert stream_module.FilterPlan(hcm.filter_factories).calls == (factory,)
    hcm = HttpConfig({"stat_prefix": "in", "http_filters": [fault], "route_config": with_fault},
                     worker, 1 << 20)
    assert not hcm.filter_factories[0].idle


def test_max_active_faults_is_asked_only_of_a_fault_to_inject():
    # Envoy 1.40's tryIncActiveFaults: a request that rolls no fault counts no overflow; a
    # delay and an abort that both overflow count two.
    every = {"numerator": 100}
    miss = {"@type": FAULT_TYPE, "max_active_faults": 1, "abort": {"http_status": 503}}
    both = {"@type": FAULT_TYPE, "max_active_faults": 1,
            "abort": {"http_status": 503, "percentage": every},
            "delay": {"fixed_delay": "1s", "percentage": every}}
    config, _ = route_config(None, ("/miss", {FAULT: miss}), ("/both", {FAULT: both}))
    table = RouteTable(config)
    factory = fault_filter()
    factory.routes_changed(table)
    first, result = answer(factory, stream_on(table, "/both"))
    assert isinstance(result, Delay) and isinstance(result.then, LocalReply)
    assert answer(factory, stream_on(table, "/miss"))[1] is None
    assert factory.stats.counters["http.in.fault.faults_overflow"] == 0
    assert answer(factory, stream_on(table, "/both"))[1] is None
    assert factory.stats.counters["http.in.fault.faults_overflow"] == 2
    first.on_log()
    assert factory.stats.gauges["http.in.fault.active_faults"] == 0
