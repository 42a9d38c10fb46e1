"""Differential: a listener's filter_chain_matcher (Envoy's matcher API naming a chain, what an
Istio waypoint's main_internal uses) and an HTTP route to an internal listener, against
Envoy 1.40 on one bootstrap (with the `envoy.bootstrap.internal_listener` extension Envoy
needs for internal listeners).

The matcher listener binds 0.0.0.0, so the client picks the destination IP (127.0.0.x) and
its own source address: an IPMatcher on the destination (most specific range first), a
nested application-protocol map (http_inspector's 'http/1.1'), a matcher list on the source
IP, on_no_match at each level; a second listener picks by destination port; a third checks
the fall-backs (a prefix map tries a shorter prefix when the longest one's nested matcher
fails; an exclusive IP range is not tried after a more specific one failed). Each chain's
connection manager answers with its own name, except "loopback", whose route goes to a
cluster of `envoy_internal_address` endpoints: the internal listener "inner" answers then.
"""

from __future__ import annotations

import socket

import pytest

from .answers import read_answer
from .differential.bootstraps import HCM_TYPE, ROUTER, bootstrap
from .differential.compare import differential
from .differential.proxies import ProxyPair

T = "type.googleapis.com/"
NET = T + "envoy.extensions.matching.common_inputs.network.v3."
INTERNAL_EXTENSION = T + "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"


def hcm_chain(name, route=None):
    action = route or {"direct_response": {"status": 200, "body": {"inline_string": name}}}
    hcm = {"@type": HCM_TYPE, "stat_prefix": name.replace("-", "_"), "http_filters": [ROUTER],
           "route_config": {"name": name, "virtual_hosts": [{
               "name": name, "domains": ["*"], "routes": [{"match": {"prefix": "/"}, **action}]}]}}
    return {"name": name, "filters": [{"name": "envoy.filters.network.http_connection_manager",
                                       "typed_config": hcm}]}


def chain_action(name):
    return {"action": {"name": name, "typed_config": {
        "@type": T + "google.protobuf.StringValue", "value": name}}}


def net_input(kind):
    return {"name": kind, "typed_config": {"@type": NET + kind}}


def ip_matcher(ranges):
    return {"matcher_tree": {"input": net_input("DestinationIPInput"), "custom_match": {
        "name": "ip", "typed_config": {"@type": T + "xds.type.matcher.v3.IPMatcher",
                                       "range_matchers": ranges}}}}


def matcher_bootstrap(ports, admin):
    by_ip = ip_matcher([
        {"ranges": [{"address_prefix": "127.0.0.2", "prefix_len": 32}], "on_match": {"matcher": {
            "matcher_tree": {"input": net_input("ApplicationProtocolInput"), "exact_match_map": {
                "map": {"'http/1.1'": chain_action("ip2-http")}}},
            "on_no_match": chain_action("ip2-other")}}},
        {"ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}], "on_match": {"matcher": {
            "matcher_list": {"matchers": [{"predicate": {"single_predicate": {
                "input": net_input("SourceIPInput"), "value_match": {"exact": "127.0.0.3"}}},
                "on_match": chain_action("src3")}]},
            "on_no_match": chain_action("loopback")}}}])
    by_ip["on_no_match"] = chain_action("fallback")
    to_inner = {"route": {"cluster": "inner"}}
    matcher = {"name": "matcher",
               "address": {"socket_address": {"address": "0.0.0.0", "port_value": ports["matcher"]}},
               "listener_filters": [{"name": "envoy.filters.listener.http_inspector", "typed_config": {
                   "@type": T + "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}],
               "filter_chains": [hcm_chain("ip2-http"), hcm_chain("ip2-other"), hcm_chain("src3"),
                                 hcm_chain("loopback", to_inner), hcm_chain("fallback")],
               "filter_chain_matcher": by_ip}
    by_port = {"name": "ports",
               "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["ports"]}},
               "filter_chains": [hcm_chain("own-port"), hcm_chain("other-port")],
               "filter_chain_matcher": {"matcher_tree": {
                   "input": net_input("DestinationPortInput"), "exact_match_map": {"map": {
                       str(ports["ports"]): chain_action("own-port"),
                       "1": chain_action("other-port")}}}}}
    # A nested matcher that fails under the longest prefix, or under the most specific range:
    # a shorter prefix is tried next; a less specific range only when it is not exclusive.
    h2c_only = {"matcher_tree": {"input": net_input("ApplicationProtocolInput"),
                                 "exact_match_map": {"map": {"'h2c'": chain_action("h2c")}}}}
    fallbacks = {"name": "fallbacks",
                 "address": {"socket_address": {"address": "0.0.0.0", "port_value": ports["fallbacks"]}},
                 "listener_filters": matcher["listener_filters"],
                 "filter_chains": [hcm_chain(n) for n in ("h2c", "short-prefix", "wide", "none")],
                 "filter_chain_matcher": {"matcher_list": {"matchers": [
                     {"predicate": {"single_predicate": {"input": net_input("DestinationIPInput"),
                                                         "value_match": {"prefix": "127.0.0."}}},
                      "on_match": {"matcher": {"matcher_tree": {
                          "input": net_input("DestinationIPInput"), "prefix_match_map": {"map": {
                              "127.0.0.5": {"matcher": h2c_only},
                              "127.0.0.": chain_action("short-prefix")}}}}}}]},
                     "on_no_match": {"matcher": ip_matcher([
                         {"ranges": [{"address_prefix": "127.0.1.6", "prefix_len": 32}],
                          "on_match": {"matcher": h2c_only}},
                         {"ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}],
                          "on_match": chain_action("wide"), "exclusive": True}])
                         | {"on_no_match": chain_action("none")}}}}
    inner = {"name": "inner", "internal_listener": {}, "filter_chains": [hcm_chain("inner")]}
    internal_cluster = {"name": "inner", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": "inner", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "envoy_internal_address": {"server_listener_name": "inner"}}}}]}]}}
    config = bootstrap(admin, [matcher, by_port, fallbacks, inner], [internal_cluster])
    config["bootstrap_extensions"] = [{"name": "envoy.bootstrap.internal_listener",
                                       "typed_config": {"@type": INTERNAL_EXTENSION}}]
    return config


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    p = ProxyPair(tmp_path_factory.mktemp("diff-chain-matcher"), matcher_bootstrap,
                  ["matcher", "ports", "fallbacks"])
    yield p
    p.stop()


def get(destination: str, port: int, source: str = "127.0.0.1") -> dict:
    """One HTTP/1.1 request from `source` to destination:port -> status and body (the chain's
    name), or no answer (the connection closed unanswered)."""
    with socket.create_connection((destination, port), timeout=5,
                                  source_address=(source, 0)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: chains.test\r\nconnection: close\r\n\r\n")
        data = read_answer(s)       # (not to the close: the direct response's delayed close)
    if not data:
        return {"status": None}
    head, _, body = data.partition(b"\r\n\r\n")
    return {"status": int(head.split()[1]), "body": body.decode()}


@pytest.mark.parametrize("destination, source, expected", [
    ("127.0.0.2", "127.0.0.1", "ip2-http"),     # /32, then the nested protocol map
    ("127.0.0.4", "127.0.0.3", "src3"),         # /8, the source list's entry
    ("127.0.0.1", "127.0.0.1", "inner"),        # /8, on_no_match: the route to "inner"
])
def test_the_chain_the_matcher_names(pair, destination, source, expected):
    def run(target):
        return get(destination, target.ports["matcher"], source)

    def expect(obs):
        assert obs == {"status": 200, "body": expected}, obs
    differential(pair, run, expect)


def test_the_chain_of_the_destination_port(pair):
    def run(target):
        return get("127.0.0.1", target.ports["ports"])

    def expect(obs):
        assert obs == {"status": 200, "body": "own-port"}, obs
    differential(pair, run, expect)


@pytest.mark.parametrize("destination, expected", [
    ("127.0.0.5", "short-prefix"),  # the longest prefix's nested matcher fails: a shorter one
    ("127.0.1.6", "none"),          # the /32's nested matcher fails; the /8 is exclusive
    ("127.0.1.7", "wide"),          # only the /8 matches
])
def test_the_matchers_fall_backs(pair, destination, expected):
    def run(target):
        return get(destination, target.ports["fallbacks"])

    def expect(obs):
        assert obs == {"status": 200, "body": expected}, obs
    differential(pair, run, expect)
