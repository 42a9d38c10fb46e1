"""generic_proxy config (xds/generic_proxy.py) and its routing (worker/proxy/rpc/generic.py),
which are Envoy's generic_proxy route_impl and matcher semantics."""

import random

from baton.tests.integration.generic_proxy_config import (
    action, generic_filter, input_, matcher_list, request_predicate, single, tree)
from baton.xds import protos
from baton.xds.generic_proxy import translate_generic_proxy
from baton.xds.parse import parse_dict
from baton.worker.proxy.rpc.generic import GenericRouteTable
from baton.worker.proxy.rpc.routing import Request


def translate(typed_config, clusters=("a", "b", "c")):
    from google.protobuf import any_pb2
    protos.import_types_in(typed_config)
    any_pb, errors, warnings = any_pb2.Any(), [], []
    parse_dict(typed_config, any_pb, "f", errors)
    assert not errors, errors
    config = translate_generic_proxy(any_pb, "f", errors, warnings, set(clusters))
    return config, errors, warnings


def table(route_config, codec="dubbo"):
    config, errors, _ = translate(generic_filter(route_config, codec)["typed_config"])
    assert not errors, errors
    return GenericRouteTable(config["route_table"], random.Random(1))


def req(service="s.Svc", method="m", version="", headers=None):
    return Request(service, version, None, method, headers or {})


def cluster_of(t, request):
    decision = t.route(request)
    return decision and decision.cluster


def test_virtual_hosts_by_service_exact_then_longest_wildcards_then_default():
    t = table({"name": "r", "virtual_hosts": [
        {"name": "exact", "hosts": ["org.A"], "routes": matcher_list([], on_no_match=action("a"))},
        {"name": "suffix", "hosts": ["*.A", "*x.A"], "routes": matcher_list(
            [], on_no_match=action("b"))},
        {"name": "prefix", "hosts": ["org.*"], "routes": matcher_list([], on_no_match=action("c"))},
        {"name": "any", "hosts": ["*"], "routes": matcher_list([], on_no_match=action("a"))}]})
    assert t.virtual_host("org.A") == 0
    assert t.virtual_host("com.A") == 1 and t.virtual_host("org.xA") == 2
    assert t.virtual_host("xx.A") == 1
    assert t.virtual_host(".A") == 3            # a wildcard needs at least one character
    assert t.virtual_host("org.B") == 2 and t.virtual_host("net.B") == 3
    assert t.virtual_host("") == 3
    assert cluster_of(t, req("org.xA")) == "c"


def test_no_default_virtual_host_is_no_route():
    t = table({"name": "r", "virtual_hosts": [
        {"name": "one", "hosts": ["org.A"], "routes": matcher_list([], on_no_match=action("a"))}]})
    assert cluster_of(t, req("org.B")) is None
    assert cluster_of(t, req("org.A")) == "a"


def test_matcher_list_predicates_on_method_and_properties():
    routes = matcher_list([
        (single(input_("method"), {"exact": "get"}), action("a")),
        (single(input_("property", "env"), {"exact": "test"}), action("b")),
        ({"and_matcher": {"predicate": [single(input_("method"), {"prefix": "list"}),
                                        {"not_matcher": single(input_("property", "version"),
                                                               {"exact": "1.0"})}]}},
         action("c")),
        ({"or_matcher": {"predicate": [single(input_("service"), {"suffix": ".B"}),
                                       single(input_("path"), {"exact": "org.C"})]}},
         action("b"))])
    t = table({"name": "r", "routes": routes})
    assert cluster_of(t, req(method="get")) == "a"
    assert cluster_of(t, req(method="put", headers={"env": "test"})) == "b"
    assert cluster_of(t, req(method="put", headers={"env": "prod"})) is None
    assert cluster_of(t, req(method="listAll", version="2.0")) == "c"
    assert cluster_of(t, req(method="listAll", version="1.0")) is None
    assert cluster_of(t, req("org.B", method="x")) == "b"
    assert cluster_of(t, req("org.C", method="x")) == "b"


def test_missing_property_matches_nothing_not_even_a_negation_of_it():
    t = table({"name": "r", "routes": matcher_list([
        (single(input_("property", "env"), {"prefix": "t"}), action("a"))],
        on_no_match=action("c"))})
    assert cluster_of(t, req()) == "c"


def test_request_matcher_input():
    t = table({"name": "r", "routes": matcher_list([
        (request_predicate(host={"exact": "s.Svc"}, method={"exact": "m"},
                           properties=[("zone", {"exact": "z1"})]), action("a"))],
        on_no_match=action("b"))})
    assert cluster_of(t, req(headers={"zone": "z1"})) == "a"
    assert cluster_of(t, req(headers={"zone": "z2"})) == "b"
    assert cluster_of(t, req(method="n", headers={"zone": "z1"})) == "b"


def test_matcher_tree_exact_then_longest_prefix_and_nested_fallthrough():
    nested = matcher_list([(single(input_("property", "env"), {"exact": "test"}), action("b"))])
    by_prefix = tree(input_("method"), prefix={"li": action("c"), "list": {"matcher": nested}},
                     on_no_match=action("a"))
    routes = tree(input_("method"), exact={"get": action("a")},
                  on_no_match={"matcher": by_prefix})
    t = table({"name": "r", "routes": routes})
    assert cluster_of(t, req(method="get")) == "a"
    assert cluster_of(t, req(method="listAll", headers={"env": "test"})) == "b"
    # The longer prefix's nested matcher does not match: the shorter prefix takes it.
    assert cluster_of(t, req(method="listAll")) == "c"
    assert cluster_of(t, req(method="other")) == "a"


def test_route_action_timeout_retries_and_weights():
    retrying = action("a", timeout="2s", retry_policy={"num_retries": 3, "retry_on": "5xx"})
    config, errors, warnings = translate(generic_filter(
        {"name": "r", "routes": matcher_list([], on_no_match=retrying)})["typed_config"])
    assert not errors
    route = config["route_table"]["vhosts"][0]["on_no_match"]["action"]
    assert route["timeout"] == 2.0 and route["retries"] == 2     # 3 tries in all
    assert warnings and "retry_on ignored" in warnings[0]
    config, _, _ = translate(generic_filter({"name": "r", "routes": matcher_list(
        [], on_no_match=action("a"))})["typed_config"])
    route = config["route_table"]["vhosts"][0]["on_no_match"]["action"]
    assert route["timeout"] == 15.0 and route["retries"] == 0    # Envoy's defaults
    weighted = {"on_no_match": {"action": {"name": "w", "typed_config": {
        "@type": "type.googleapis.com/" + "envoy.extensions.filters.network.generic_proxy"
                 ".action.v3.RouteAction",
        "weighted_clusters": {"clusters": [{"name": "a", "weight": 1},
                                           {"name": "b", "weight": 3}]}}}}}
    t = table({"name": "r", "routes": weighted})
    picks = [cluster_of(t, req()) for _ in range(400)]
    assert 50 < picks.count("a") < 150


def test_codecs_and_refusals():
    config, errors, _ = translate(generic_filter({"name": "r", "routes": matcher_list(
        [], on_no_match=action("a"))}, codec="bolt")["typed_config"])
    assert not errors and config["codec"] == "bolt"
    bad = generic_filter({"name": "r", "routes": matcher_list([], on_no_match=action("zz"))})
    bad["typed_config"]["filters"].insert(0, bad["typed_config"]["filters"][0])
    bad["typed_config"]["filters"][1] = {"name": "x", "typed_config": {
        "@type": "type.googleapis.com/google.protobuf.Empty"}}
    bad["typed_config"]["codec_config"]["typed_config"] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.codecs"
                 ".http1.v3.Http1CodecConfig"}
    config, errors, _ = translate(bad["typed_config"])
    assert config is None
    text = "\n".join(errors)
    assert "f.codec_config.typed_config: codec" in text
    assert "f.filters[1]" in text and "unknown cluster 'zz'" in text
    no_rds = generic_filter(None)
    config, errors, _ = translate(no_rds["typed_config"])
    assert config is None and "route_config: required" in errors[0]


def test_a_listener_with_generic_proxy_translates_to_an_rpc_chain():
    from baton.worker.proxy.rpc.chain import rpc_chain
    from baton.worker.proxy.rpc.generic import GenericDubbo
    config, errors, _ = translate(generic_filter({"name": "r", "routes": matcher_list(
        [], on_no_match=action("a"))})["typed_config"])
    chain = rpc_chain({"terminal": "generic_proxy", "generic_proxy": config})
    assert chain.protocol is GenericDubbo
    # Envoy's generic_proxy names where it has one, shown from the start.
    assert chain.stat["request"] == "generic_proxy.gp.downstream_rq_total"
    assert {"generic_proxy.gp.downstream_rq_error", "generic_proxy.gp.downstream_rq_local",
            "generic_proxy.gp.downstream_rq_decoding_error"} <= set(chain.counters())
    assert chain.gauges() == ["generic_proxy.gp.downstream_rq_active"]


LOCAL_RATELIMIT = "type.googleapis.com/baton.generic_proxy.filters.local_ratelimit.v1.LocalRateLimit"


def rate_limited(bucket: dict) -> dict:
    config = generic_filter({"name": "r", "routes": matcher_list([], on_no_match=action("a"))})
    config["typed_config"]["filters"].insert(0, {"name": "baton.filters.generic.local_ratelimit",
                                                 "typed_config": {"@type": LOCAL_RATELIMIT,
                                                                  "token_bucket": bucket}})
    return config["typed_config"]


def test_a_local_rate_limit_before_the_router_is_the_chains_token_bucket():
    config, errors, _ = translate(rate_limited({"max_tokens": 5, "fill_interval": "2s"}))
    assert not errors
    assert config["local_rate_limit"] == {"max_tokens": 5, "tokens_per_fill": 1, "fill_interval": 2.0}
    config, errors, _ = translate(rate_limited({"max_tokens": 0, "tokens_per_fill": 2,
                                                "fill_interval": "0s"}))
    assert config is None and sorted(errors) == [
        "f.filters[0].typed_config.token_bucket.fill_interval: must be > 0",
        "f.filters[0].typed_config.token_bucket.max_tokens: must be > 0"]
    after = rate_limited({"max_tokens": 5, "fill_interval": "2s"})
    after["filters"].reverse()              # the router must be last
    config, errors, _ = translate(after)
    assert config is None and any(e.startswith("f.filters[0]: 'envoy.filters.generic.router' "
                                                "not supported here") for e in errors), errors
