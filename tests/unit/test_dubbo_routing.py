"""DubboProxy config (xds/dubbo.py), Baton's Bolt config (xds/bolt.py) and the route semantics
of worker/proxy/rpc/routing.py, which are Envoy's dubbo_proxy route_matcher's."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from baton.xds import protos
from baton.xds.bolt import translate_bolt_config
from baton.xds.dubbo import DUBBO_PROXY_TYPE, translate_dubbo_message
from baton.xds.parse import parse_dict
from baton.worker.proxy.rpc.routing import Request, RouteTable


def dubbo_config(data, clusters=("a", "b", "c")):
    pb = protos.message_class(DUBBO_PROXY_TYPE)()
    errors = []
    parse_dict(data, pb, "f", errors)
    assert not errors
    config = translate_dubbo_message(pb, "f", errors, [], set(clusters))
    return config, errors


def table(route_configs):
    config, errors = dubbo_config({"stat_prefix": "p", "route_config": route_configs})
    assert not errors, errors
    return RouteTable(config["route_configs"], random.Random(1))


def req(service="s.Svc", method="m", version="", group=None, headers=None, args=()):
    return Request(service, version, group, method, headers or {}, tuple(args))


def route(method="m", cluster="a", **match):
    return {"match": {"method": {"name": {"exact": method}}, **match}, "route": {"cluster": cluster}}


def test_interface_patterns():
    t = table([{"interface": "s.*", "routes": [route(cluster="a")]},
               {"interface": "*.Other", "routes": [route(cluster="b")]},
               {"interface": "*", "routes": [route(cluster="c")]}])
    assert t.route(req("s.Svc")).cluster == "a"
    assert t.route(req("x.Other")).cluster == "b"
    assert t.route(req("zzz")).cluster == "c"
    assert t.route(req("")) is None                  # "*" needs a non-empty interface
    assert table([{"interface": "s.*", "routes": [route()]}]).route(req("s.")) is None


def test_group_and_version_and_fallthrough():
    t = table([{"interface": "s.Svc", "group": "g1", "version": "1.0", "routes": [route(cluster="a")]},
               {"interface": "s.Svc", "routes": [route(method="m", cluster="b")]}])
    assert t.route(req(group="g1", version="1.0")).cluster == "a"
    assert t.route(req(group="g2", version="1.0")).cluster == "b"
    assert t.route(req(group=None, version="1.0")).cluster == "b"
    assert t.route(req(method="other")) is None


def test_headers_params_and_method_matchers():
    t = table([{"interface": "s.Svc", "routes": [
        route(cluster="a", headers=[{"name": "Env", "string_match": {"exact": "canary"}}]),
        {"match": {"method": {"name": {"prefix": "get"}, "params_match": {
            "0": {"exact_match": "vip"}, "1": {"range_match": {"start": 10, "end": 20}}}}},
         "route": {"cluster": "b"}},
        {"match": {"method": {"name": {"safe_regex": {"regex": "get.*"}}}},
         "route": {"cluster": "c"}}]}])
    assert t.route(req(headers={"env": "canary"})).cluster == "a"
    assert t.route(req(headers={"env": "prod"})) is None
    assert t.route(req(method="getUser", args=("vip", 15))).cluster == "b"
    assert t.route(req(method="getUser", args=("vip", "19"))).cluster == "b"
    assert t.route(req(method="getUser", args=("vip", 20))).cluster == "c"
    assert t.route(req(method="getUser", args=("vip",))).cluster == "c"
    assert t.needs_arguments


def test_weighted_clusters_split_by_weight():
    t = table([{"interface": "*", "routes": [{"match": {"method": {"name": {"exact": "m"}}},
                                              "route": {"weighted_clusters": {"clusters": [
                                                  {"name": "a", "weight": 1},
                                                  {"name": "b", "weight": 3}]}}}]}])
    picks = [t.route(req()).cluster for _ in range(4000)]
    assert 0.2 < picks.count("a") / len(picks) < 0.3


def test_config_errors_name_their_paths():
    pb = protos.message_class(DUBBO_PROXY_TYPE)()
    errors = []
    parse_dict({"protocol_type": "Dubbo", "drds": {"route_config_name": "x"},
                "dubbo_filters": [{"name": "envoy.filters.dubbo.other"}],
                "route_config": [{"interface": "s", "routes": [
                    {"match": {"method": {}}, "route": {"cluster": "nope"}},
                    {"match": {"method": {"name": {"exact": "m"}}}, "route": {}}]}]},
               pb, "f", errors)
    assert translate_dubbo_message(pb, "f", errors, [], {"a"}) is None
    assert "f.stat_prefix: required (a non-empty string)" in errors
    assert any(e.startswith("f.drds: not supported") for e in errors)
    assert any(e.startswith("f.dubbo_filters[0].name:") for e in errors)
    assert "f.route_config[0].routes[0].match.method.name: required" in errors
    assert "f.route_config[0].routes[0].route.cluster: unknown cluster 'nope'" in errors
    assert any(e.startswith("f.route_config[0].routes[1].route: one of cluster") for e in errors)


def test_multiple_route_config_is_read_too():
    config, errors = dubbo_config({"stat_prefix": "p", "multiple_route_config": {
        "name": "m", "route_config": [{"interface": "s", "routes": [route()]}]}})
    assert not errors and config["route_configs"][0]["interface"] == "s"


def test_bolt_config_adds_route_timeouts():
    errors = []
    config = translate_bolt_config({"stat_prefix": "b", "route_config": [
        {"interface": "s", "routes": [
            {"match": {"method": {"name": {"exact": "m"}}}, "route": {"cluster": "a", "timeout": "1.5s"}},
            {"match": {"method": {"name": {"exact": "n"}}}, "route": {"cluster": "a"}}]}]},
        "v", errors, [], {"a"})
    assert not errors
    assert [r["timeout"] for r in config["route_configs"][0]["routes"]] == [1.5, None]
    errors = []
    assert translate_bolt_config({"stat_prefix": "b", "extra": 1, "route_config": [
        {"interface": "s", "routes": [{"match": {"method": {"name": {"exact": "m"}}},
                                       "route": {"cluster": "a", "timeout": "soon"}}]}]},
        "v", errors, [], {"a"}) is None
    assert "v.extra: not supported (stat_prefix, route_config, local_rate_limit)" in errors
    assert any(e.startswith("v.route_config[0].routes[0].route.timeout:") for e in errors)


def test_bolt_config_adds_retries_hashing_and_a_rate_limit():
    errors = []
    config = translate_bolt_config({"stat_prefix": "b", "local_rate_limit": {
        "max_tokens": 5.0, "fill_interval": "0.5s"}, "route_config": [
        {"interface": "s", "routes": [
            {"match": {"method": {"name": {"exact": "m"}}},
             "route": {"cluster": "a", "retry_policy": {"num_retries": 2.0},
                       "hash_policy": {"header": "User-Id"}}}]}]}, "v", errors, [], {"a"})
    assert not errors, errors
    route = config["route_configs"][0]["routes"][0]
    assert (route["retries"], route["hash_header"], route["timeout"]) == (2, "user-id", None)
    assert config["local_rate_limit"] == {"max_tokens": 5, "tokens_per_fill": 1,
                                          "fill_interval": 0.5}
    errors = []
    assert translate_bolt_config({"stat_prefix": "b", "local_rate_limit": {
        "max_tokens": 0, "fill_interval": "1s"}, "route_config": [
        {"interface": "s", "routes": [
            {"match": {"method": {"name": {"exact": "m"}}},
             "route": {"cluster": "a", "retry_policy": {"num_retries": 99},
                       "hash_policy": {"cookie": "x"}}}]}]}, "v", errors, [], {"a"}) is None
    assert errors == [
        "v.local_rate_limit.max_tokens: 0 is not a whole number >= 1",
        "v.route_config[0].routes[0].route.retry_policy: {'num_retries': 99} is not "
        "{num_retries: 0..10}",
        "v.route_config[0].routes[0].route.hash_policy: {'cookie': 'x'} is not {header: name}"]


@pytest.mark.parametrize("kind", ["dubbo", "bolt"])
def test_bootstrap_listeners_translate(tmp_path, kind):
    from baton.xds.bootstrap import load_bootstrap
    from baton.tests.integration.test_rpc_proxy import rpc_bootstrap
    import yaml
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(rpc_bootstrap(1, {kind: 2}, {"up": 3})))
    snapshot = load_bootstrap(str(path))
    chain = snapshot["listeners"][0]["filter_chains"][0]
    assert chain["terminal"] == kind and chain[kind]["stat_prefix"] == "rpc_in"


def test_tls_in_front_of_an_rpc_proxy_is_refused(tmp_path):
    import yaml
    from baton.tests.integration.test_rpc_proxy import rpc_bootstrap
    from baton.tests.tls_certs import leaf, make_ca
    from baton.tests.unit.test_tls_config import certificate
    from baton.xds.bootstrap import ConfigError, load_bootstrap
    data = rpc_bootstrap(1, {"dubbo": 2}, {"up": 3})
    data["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
                     ".DownstreamTlsContext",
            "common_tls_context": {"tls_certificates": [certificate(leaf(make_ca()))]}}}
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_bootstrap(str(path))
    assert any("filter_chains[0].transport_socket: TLS in front of dubbo is not supported yet"
               in e for e in info.value.errors), info.value.errors


def test_bolt_requests_route_on_the_unique_name_and_the_sofa_request():
    from baton.worker.codecs import bolt
    from baton.worker.codecs.hessian2 import write_string as s
    from baton.worker.proxy.rpc.protocols import Bolt
    sofa = "com.alipay.sofa.rpc.core.request.SofaRequest"
    frame = bolt.Decoder().feed(bolt.request(1, sofa, {"service": "a.B:1.0:blue",
                                                       "sofa_head_method_name": "m"}))[0]
    request, timeout = Bolt.request(frame, False)
    assert (request.service, request.version, request.group, request.method) == \
        ("a.B", "1.0", "blue", "m")
    assert timeout is None
    # sofa-rpc-node: no method header; the SofaRequest in the 2.0 draft form of Hessian 3.x
    # ('O', the type's length and bytes, the field names; 'o' and the definition's index).
    draft = (b"O" + bytes((0x90 + len(sofa),)) + sofa.encode() + b"\x92" + s("methodName")
             + s("methodArgSigs") + b"o\x90" + s("sayHello") + b"Vt\x00\x07[string\x90z")
    frame = bolt.Decoder().feed(bolt.request(2, sofa, {"service": "a.B:1.0"}, draft,
                                             timeout=1500))[0]
    request, timeout = Bolt.request(frame, False)
    assert (request.service, request.version, request.group, request.method) == \
        ("a.B", "1.0", None, "sayHello")
    assert timeout == 1.5


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.binary(max_size=40), st.binary(max_size=60), st.booleans())
def test_what_a_request_routes_on_fails_only_with_decode_error(body, header, content, sofa):
    """Any Dubbo body, Bolt header map or SofaRequest content: a DecodeError (the connection
    closes) or a Request, never another exception."""
    from baton.worker.codecs import bolt, dubbo
    from baton.worker.proxy.rpc.protocols import Bolt, DecodeError, Dubbo
    frames = [(Dubbo, dubbo.Decoder().feed(dubbo.frame(0xC2, 0, 1, body))[0])]
    raw = bolt.request(1, "com.alipay.sofa.rpc.core.request.SofaRequest" if sofa else "x",
                       {}, content)
    # Splice arbitrary bytes in as the header map.
    raw = raw[:16] + len(header).to_bytes(2, "big") + raw[18:22] + raw[22:22 + (
        44 if sofa else 1)] + header + raw[22 + (44 if sofa else 1):]
    frames.append((Bolt, bolt.Decoder().feed(raw)[0]))
    for protocol, frame in frames:
        try:
            protocol.request(frame, True)
        except DecodeError:
            pass
