"""Differential: Envoy's RBAC filters as Istio's AuthorizationPolicy configures them. HTTP: a
DENY policy (403 "RBAC: access denied", response code details naming the policy, flag UAEX),
an ALLOW policy on a header and the method, a route whose RBACPerRoute turns the rules off,
dry-run shadow rules counted only, and the counters. Network: a tcp_proxy chain behind
Istio's deny-everything rules (an ALLOW without policies) is closed, one that allows goes
through. ECDS: a filter given by config_discovery runs with its default_config."""

from __future__ import annotations

import socket

import pytest

from ..waiting import wait_until

from .differential.bootstraps import address, bootstrap, cluster, http_listener
from .differential.client import one
from .differential.compare import differential, each_proxy, observe
from .differential.proxies import PROXIES, module_pair

T = "type.googleapis.com/"
RBAC = T + "envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE = T + "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
NETWORK_RBAC = T + "envoy.extensions.filters.network.rbac.v3.RBAC"
TCP_PROXY = T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
DENY_ADMIN = {"action": "DENY", "policies": {"ns[default]-policy[deny-admin]-rule[0]": {
    "permissions": [{"and_rules": {"rules": [{"or_rules": {"rules": [
        {"url_path": {"path": {"prefix": "/admin"}}}]}}]}}],
    "principals": [{"and_ids": {"ids": [{"any": True}]}}]}}}
ALLOW_TEAM = {"policies": {"ns[default]-policy[team]-rule[0]": {
    "permissions": [{"and_rules": {"rules": [
        {"or_rules": {"rules": [{"header": {"name": ":method", "string_match": {"exact": "GET"}}}]}},
        {"not_rule": {"destination_port": 1}}]}}],
    "principals": [{"or_ids": {"ids": [
        {"header": {"name": "x-team", "string_match": {"exact": "blue"}}},
        {"direct_remote_ip": {"address_prefix": "192.0.2.0", "prefix_len": 24}}]}}]}}}
FILTERS = [
    {"name": "deny", "typed_config": {"@type": RBAC, "rules": DENY_ADMIN,
                                      "shadow_rules": ALLOW_TEAM,
                                      "shadow_rules_stat_prefix": "istio_dry_run_allow_"}},
    {"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC, "rules": ALLOW_TEAM,
                                                         "rules_stat_prefix": "r_"}}]


def closed_port() -> int:
    with socket.socket() as sock:      # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The filter as ECDS would deliver it, run with its default (xds/ecds.py): deny /admin.
ECDS_FILTER = {"name": "extenstions.istio.io/wasmplugin/default.authz", "config_discovery": {
    "config_source": {"ads": {}}, "apply_default_config_without_warming": True,
    "default_config": {"@type": RBAC, "rules": DENY_ADMIN},
    "type_urls": [T + "envoy.extensions.filters.http.wasm.v3.Wasm", RBAC]}}


XDS_CLUSTER = cluster("xds", [closed_port()], typed_extension_protocol_options={
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}})


def tcp_listener(name, port, rules, cluster_name="a"):
    return {"name": name, "address": address(port), "filter_chains": [{"filters": [
        {"name": "envoy.filters.network.rbac", "typed_config": {
            "@type": NETWORK_RBAC, "stat_prefix": f"{name}.", **({"rules": rules} if rules is not None else {})}},
        {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": TCP_PROXY, "stat_prefix": name, "cluster": cluster_name}}]}]}


def rbac_bootstrap(upstreams):
    route_config = {"name": "rbac", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/open"}, "route": {"cluster": "a"},
         "typed_per_filter_config": {"envoy.filters.http.rbac": {"@type": PER_ROUTE}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def template(ports, admin):
        config = bootstrap(admin, [
            http_listener("rbac", ports["rbac"], route_config, http_filters=FILTERS),
            http_listener("ecds", ports["ecds"], route_config, http_filters=[ECDS_FILTER]),
            tcp_listener("tcpdeny", ports["tcpdeny"], {}),
            tcp_listener("tcpallow", ports["tcpallow"], {"policies": {"loopback": {
                "permissions": [{"any": True}],
                "principals": [{"direct_remote_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}}]}}})],
            [cluster("a", [upstreams["a"]]), XDS_CLUSTER])
        # `ads: {}` needs an ADS stream: one to a port where nothing answers (the ECDS
        # resource never comes; the default_config serves).
        return {"node": {"id": "rbac", "cluster": "rbac"}, **config, "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}}}
    return template


recorder, pair = module_pair("diff-rbac", rbac_bootstrap, ["rbac", "tcpdeny", "tcpallow", "ecds"])


def exchange(recorder, case, method, path, headers=(), listener="rbac"):
    def run(target):
        key = target.key(case)
        resp = one(target.ports[listener], method, path, [("host", "svc"), *headers, ("x-test-key", key)])
        obs = observe(resp, target)
        obs["upstream requests"] = recorder.count(key)
        return obs
    return run


def test_a_deny_policy_answers_403_and_an_allow_policy_lets_its_requests_through(pair, recorder):
    def denied(obs):
        assert obs["status"] == 403 and obs["body"] == "RBAC: access denied", obs
        assert obs["upstream requests"] == 0, obs
    differential(pair, exchange(recorder, "rbac-admin", "GET", "/admin/x", [("x-team", "blue")]), denied)
    differential(pair, exchange(recorder, "rbac-no-team", "GET", "/x"), denied)
    differential(pair, exchange(recorder, "rbac-post", "POST", "/x", [("x-team", "blue"), ("content-length", "0")]),
                 denied)
    differential(pair, exchange(recorder, "rbac-team", "GET", "/x?y=1", [("x-team", "blue")]),
                 lambda obs: obs["upstream requests"] == 1 or pytest.fail(str(obs)))


def test_a_routes_empty_rbac_per_route_lifts_the_rules(pair, recorder):
    differential(pair, exchange(recorder, "rbac-open", "POST", "/open", [("content-length", "0")]),
                 lambda obs: obs["upstream requests"] == 1 or pytest.fail(str(obs)))


def test_the_counters_enforced_and_shadow(pair, recorder):
    """Envoy joins a stat prefix that lacks a trailing dot with one: rbac.r_.allowed."""
    deltas = {}
    for name in PROXIES:
        target = pair.target(name)
        before = target.stats("http.rbac.rbac.")
        one(target.ports["rbac"], "GET", "/admin", [("host", "svc"), ("x-team", "blue")])
        one(target.ports["rbac"], "GET", "/y", [("host", "svc")])

        def delta():
            after = target.stats("http.rbac.rbac.")
            return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        try:
            wait_until(lambda: sum(delta().values()) >= 5, 10, "the RBAC counters")
        finally:
            deltas[name] = delta()
    assert deltas[PROXIES[0]] == {"http.rbac.rbac.allowed": 1, "http.rbac.rbac.r_.denied": 1,
                                  "http.rbac.rbac.denied": 1,
                                  "http.rbac.rbac.istio_dry_run_allow_.shadow_allowed": 1,
                                  "http.rbac.rbac.istio_dry_run_allow_.shadow_denied": 1}, deltas
    assert len(set(map(repr, deltas.values()))) == 1, deltas


def _tcp_exchange(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n")
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
        return got


def test_network_rbac_closes_a_denied_connection_and_counts(pair):
    def check(target):
        assert _tcp_exchange(target.ports["tcpdeny"]) == b""
        assert _tcp_exchange(target.ports["tcpallow"]).startswith(b"HTTP/1.1 200")
        counts = {"tcpdeny.rbac.denied": 1, "tcpallow.rbac.allowed": 1}

        def seen():
            return {name: target.stats(name).get(name) for name in counts}
        try:
            wait_until(lambda: seen() == counts, 10, "the network RBAC counters")
        except Exception:
            assert seen() == counts
    each_proxy(pair, check)


def test_an_ecds_filter_runs_with_its_default_config(pair, recorder):
    differential(pair, exchange(recorder, "ecds-admin", "GET", "/admin", listener="ecds"),
                 lambda obs: obs["status"] == 403 or pytest.fail(str(obs)))
    differential(pair, exchange(recorder, "ecds-other", "GET", "/other", listener="ecds"),
                 lambda obs: obs["upstream requests"] == 1 or pytest.fail(str(obs)))
