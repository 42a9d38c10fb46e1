"""filter_chain_matcher (xds/matcher_tree.py, worker/proxy/filter_chain_matcher.py): the
waypoint's own main_internal tree, Envoy's matcher semantics (nested no-match falls back to
on_no_match, prefix maps longest first then shorter, IP ranges most specific first unless
exclusive, lists in order), the inputs' string forms, and the refusals by path. Also the
other waypoint pieces translated here: set_filter_state, connect_authority's per-route
config and the internal_listener bootstrap extension."""

from __future__ import annotations

import json
import os

import pytest

from baton.xds import protos
from baton.xds.translate import translate_bootstrap, translate_listener
from baton.worker.proxy.filter_chain_matcher import ChainMatcher, connection_values

from ..istio_dumps import DUMPS

T = "type.googleapis.com/"
NET = T + "envoy.extensions.matching.common_inputs.network.v3."
TCP = {"name": "envoy.filters.network.tcp_proxy",
       "typed_config": {"@type": T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "s", "cluster": "c"}}
DUMP = str(DUMPS / "waypoint-istio-1.21-istioctl-proxyconfig-testdata.resources.json")


def action(name):
    return {"action": {"name": name, "typed_config": {"@type": T + "google.protobuf.StringValue",
                                                      "value": name}}}


def tree(input_name, kind, entries, on_no_match=None):
    m = {"matcher_tree": {"input": {"name": "i", "typed_config": {"@type": NET + input_name}},
                          kind: {"map": entries}}}
    if on_no_match:
        m["on_no_match"] = on_no_match
    return m


def translate(matcher, names=("a", "b", "c")):
    data = {"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
            "filter_chains": [{"name": n, "filters": [TCP]} for n in names],
            "filter_chain_matcher": matcher}
    protos.import_types_in(data)
    errors = []
    spec = translate_listener(protos.json_format.ParseDict(data, protos.Listener()), "x",
                              errors, [])
    return spec, errors


def chosen(matcher, transport="raw_buffer", protocols=(), sni=None,
           local=("10.0.0.1", 80), source=("10.9.9.9", 5000)):
    spec, errors = translate(matcher)
    assert errors == []
    return ChainMatcher(spec["chain_matcher"]).select(
        connection_values(transport, protocols, sni, local, source))


def test_exact_map_on_port_with_on_no_match():
    m = tree("DestinationPortInput", "exact_match_map", {"80": action("a"), "81": action("b")},
             action("c"))
    assert chosen(m) == "a"
    assert chosen(m, local=("10.0.0.1", 81)) == "b"
    assert chosen(m, local=("10.0.0.1", 82)) == "c"


def test_a_nested_no_match_falls_back_to_the_outer_on_no_match():
    inner = tree("ServerNameInput", "exact_match_map", {"x.test": action("a")})
    m = tree("DestinationPortInput", "exact_match_map", {"80": {"matcher": inner}}, action("c"))
    assert chosen(m, sni="x.test") == "a"
    assert chosen(m, sni="y.test") == "c"
    assert chosen(m) == "c"                     # no SNI: the input has no value


def test_prefix_map_tries_longest_then_shorter():
    inner = tree("TransportProtocolInput", "exact_match_map", {"tls": action("a")})
    m = tree("ServerNameInput", "prefix_match_map",
             {"api.": {"matcher": inner}, "api": action("b")})
    assert chosen(m, sni="api.test", transport="tls") == "a"
    assert chosen(m, sni="api.test") == "b"     # the longer prefix's nested matcher failed
    assert chosen(m, sni="www.test") is None


def test_ip_matcher_most_specific_first_and_exclusive():
    def ip_tree(exclusive):
        return {"matcher_tree": {
            "input": {"name": "ip", "typed_config": {"@type": NET + "DestinationIPInput"}},
            "custom_match": {"name": "ip", "typed_config": {
                "@type": T + "xds.type.matcher.v3.IPMatcher", "range_matchers": [
                    {"ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}],
                     "on_match": action("b"), "exclusive": exclusive},
                    {"ranges": [{"address_prefix": "10.0.0.1", "prefix_len": 32}],
                     "on_match": {"matcher": tree("DestinationPortInput", "exact_match_map",
                                                  {"80": action("a")})}}]}}}}
    assert chosen(ip_tree(False)) == "a"
    assert chosen(ip_tree(False), local=("10.0.0.1", 8080)) == "b"   # /8 after /32 failed
    assert chosen(ip_tree(True), local=("10.0.0.1", 8080)) is None   # exclusive: not tried
    assert chosen(ip_tree(True), local=("10.0.0.2", 8080)) == "b"
    assert chosen(ip_tree(False), local=("192.168.0.1", 80)) is None


def test_matcher_list_in_order_with_predicates():
    def single(input_name, **string):
        return {"single_predicate": {"input": {"name": "i", "typed_config": {
            "@type": NET + input_name}}, "value_match": string}}
    m = {"matcher_list": {"matchers": [
        {"predicate": {"and_matcher": {"predicate": [
            single("SourceIPInput", prefix="10.9."), single("SourcePortInput", exact="5000")]}},
         "on_match": action("a")},
        {"predicate": {"not_matcher": single("SourceTypeInput", exact="local")},
         "on_match": action("b")}]}, "on_no_match": action("c")}
    assert chosen(m) == "a"
    assert chosen(m, source=("10.9.9.9", 5001)) == "b"
    assert chosen(m, source=("127.0.0.1", 5001)) == "c"     # loopback: source type local


def test_input_values_are_envoys_strings():
    values = connection_values("raw_buffer", ("h2c",), "", ("127.0.0.1", 80), ("127.0.0.1", 9))
    assert values["application_protocol"] == "'h2c'"
    assert values["destination_port"] == "80" and values["source_type"] == "local"
    assert values["server_name"] is None
    assert connection_values("tls", ("h2", "http/1.1"), "s", None, None)[
        "application_protocol"] == "'h2','http/1.1'"


def test_refusals_name_their_path():
    bad_input = tree("DestinationPortInput", "exact_match_map", {"x": action("a")})
    bad_input["matcher_tree"]["input"]["typed_config"] = {
        "@type": T + "envoy.type.matcher.v3.HttpRequestHeaderMatchInput", "header_name": "h"}
    _, errors = translate(bad_input)
    assert errors[0].startswith("x.filter_chain_matcher.matcher_tree.input.typed_config: "
                                "input 'envoy.type.matcher.v3.HttpRequestHeaderMatchInput' not "
                                "supported")
    bad_action = tree("DestinationPortInput", "exact_match_map", {"80": {"action": {
        "name": "a", "typed_config": {"@type": T + "google.protobuf.UInt32Value", "value": 1}}}})
    _, errors = translate(bad_action)
    assert errors == ["x.filter_chain_matcher.matcher_tree.exact_match_map.map['80'].action."
                      "typed_config: the action must be a google.protobuf.StringValue naming a "
                      "filter chain"]
    _, errors = translate(tree("DestinationPortInput", "exact_match_map", {"80": action("a")}),
                          names=("a", "a"))
    assert errors == ["x.filter_chains[1].name: a filter_chain_matcher needs every filter "
                      "chain uniquely named"]


@pytest.mark.skipif(not os.path.exists(DUMP), reason="the Istio dumps are reference data "
                    "outside the repository")
def test_the_waypoints_main_internal():
    """W21's main_internal as istiod sent it: VIP and port -> the service's chain, the
    workload's IP -> direct-http by http_inspector's protocol, else direct-tcp."""
    listener = next(l for l in json.load(open(DUMP))["listeners"] if l.get("name") == "main_internal")
    protos.import_types_in(listener)
    errors = []
    spec = translate_listener(protos.json_format.ParseDict(
        {k: v for k, v in listener.items() if k != "@type"}, protos.Listener()), "x", errors, [])
    assert errors == []
    select = ChainMatcher(spec["chain_matcher"]).select
    assert select(connection_values("raw_buffer", ("http/1.1",), None, ("10.104.171.68", 8000),
                                    None)) == "inbound-vip|8000||httpbin.default.svc.cluster.local-http"
    assert select(connection_values("raw_buffer", ("h2c",), None, ("192.168.195.248", 80),
                                    None)) == "direct-http"
    assert select(connection_values("raw_buffer", (), None, ("192.168.195.248", 80),
                                    None)) == "direct-tcp"
    assert select(connection_values("raw_buffer", (), None, ("10.104.171.68", 9),
                                    None)) is None
    [direct_tcp] = [c for c in spec["filter_chains"] if c.get("name") == "direct-tcp"]
    assert direct_tcp["network_filters"][0] == {
        "name": "connect_authority", "type": "set_filter_state", "original_dst": None}


def _bootstrap(extra):
    data = {"static_resources": {}, **extra}
    protos.import_types_in(data)
    return translate_bootstrap(protos.json_format.ParseDict(
        data, protos.message_class("envoy.config.bootstrap.v3.Bootstrap")()))[1]


def test_the_internal_listener_bootstrap_extension_is_accepted():
    ext = T + "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
    assert _bootstrap({"bootstrap_extensions": [
        {"name": "envoy.bootstrap.internal_listener", "typed_config": {
            "@type": T + "udpa.type.v1.TypedStruct", "type_url": ext}},
        {"name": "e", "typed_config": {"@type": ext, "buffer_size_kb": 64}}]}) == []
    errors = _bootstrap({"bootstrap_extensions": [{"name": "x", "typed_config": {
        "@type": T + "udpa.type.v1.TypedStruct", "type_url": T + "some.Other"}}]})
    assert errors == ["bootstrap_extensions[0].typed_config: some.Other not supported (the "
                      "bootstrap extension envoy.extensions.bootstrap.internal_listener.v3."
                      "InternalListener only)"]


def _set_state(entry):
    chain = {"name": "a", "filters": [{"name": "s", "typed_config": {
        "@type": T + "envoy.extensions.filters.network.set_filter_state.v3.Config",
        "on_new_connection": [entry]}}, TCP]}
    data = {"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
            "filter_chains": [chain]}
    protos.import_types_in(data)
    errors = []
    spec = translate_listener(protos.json_format.ParseDict(data, protos.Listener()), "x", errors, [])
    return spec, errors


def test_set_filter_state_passes_the_destination_on():
    key = "envoy.filters.listener.original_dst.local_ip"
    spec, errors = _set_state({"object_key": key, "shared_with_upstream": "ONCE",
                               "format_string": {"text_format_source": {
                                   "inline_string": "10.1.2.3:8080"}}})
    assert errors == []
    assert spec["filter_chains"][0]["network_filters"][0]["original_dst"] == ["10.1.2.3", 8080]
    _, errors = _set_state({"object_key": "my.key", "format_string": {"text_format": "x"}})
    assert errors == ["x.filter_chains[0].filters[0].typed_config.on_new_connection[0]."
                      "object_key: 'my.key' not supported (Baton reads " + key + " only)"]
    _, errors = _set_state({"object_key": key, "shared_with_upstream": "ONCE",
                            "format_string": {"text_format": "%START_TIME%"}})
    assert "not supported" in errors[0] and "format_string" in errors[0]


def test_connect_authority_per_route():
    from baton.xds.connect_filters import connect_authority_per_route
    from google.protobuf import any_pb2, struct_pb2
    protos.import_type("udpa.type.v1.TypedStruct")
    struct = protos.message_class("udpa.type.v1.TypedStruct")(
        type_url=T + "io.istio.http.connect_authority.Config")
    struct.value.CopyFrom(struct_pb2.Struct())
    struct.value.update({"enabled": True, "port": 15008})
    packed = any_pb2.Any()
    packed.Pack(struct)
    errors = []
    assert connect_authority_per_route(packed, "p", errors) == {
        "connect_authority": {"port": 15008}}
    struct.value.update({"enabled": False})
    packed.Pack(struct)
    assert connect_authority_per_route(packed, "p", errors) == {"connect_authority": None}
    assert errors == []


def test_a_connect_authority_route_alone_passes_the_authority_on():
    """Istio's connect_authority enabled on the route (or its virtual host): the CONNECT's
    authority is the internal destination, its own port kept; the config's port only names
    where an ORIGINAL_DST cluster behind it dials (istio/proxy set_internal_dst_address);
    without it there is none, as in Envoy without the filter."""
    from types import SimpleNamespace
    from baton.worker.proxy.http.connect_tunnel import connect_destination
    enabled = SimpleNamespace(per_filter=({"connect_authority": {"connect_authority": {"port": None}}}, {}))
    on_vhost = SimpleNamespace(per_filter=({}, {"c": {"connect_authority": {"port": 15008}}}))
    assert connect_destination(enabled, "10.1.2.3:8080") == ("10.1.2.3", 8080, None)
    assert connect_destination(enabled, "[fd00::1]:80") == ("fd00::1", 80, None)
    assert connect_destination(on_vhost, "10.1.2.3:8080") == ("10.1.2.3", 8080, 15008)
    assert connect_destination(on_vhost, "10.1.2.3") is None      # no port: nothing parsed
    assert connect_destination(enabled, "fd00::1:80") is None      # IPv6 needs its brackets
    assert connect_destination(SimpleNamespace(per_filter=None), "10.1.2.3:8080") is None
    assert connect_destination(enabled, "10.1.2.3") is None
    # The most specific level decides (istio/proxy's resolveMostSpecificPerFilterConfig): a
    # route that turns it off is off, whatever its virtual host says.
    off_on_route = SimpleNamespace(per_filter=({"c": {"connect_authority": None}},
                                               {"c": {"connect_authority": {"port": None}}}))
    assert connect_destination(off_on_route, "10.1.2.3:8080") is None
    # A name is no address to restore (istio/proxy parses an IP and port, or restores nothing).
    assert connect_destination(enabled, "reviews.default.svc:8080") is None
