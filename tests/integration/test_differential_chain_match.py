"""Differential: which filter chain a connection gets, by the filter_chain_match fields Istio
uses (prefix_ranges, source_type, source_prefix_ranges, destination_port, transport protocol)
and the default_filter_chain, against Envoy 1.40. Each chain is an HTTP connection manager
whose direct response names the chain; a connection no chain takes is closed."""

from __future__ import annotations

import pytest

from .differential.bootstraps import HCM_TYPE, ROUTER, address, bootstrap
from .differential.client import Closed, one
from .differential.compare import differential
from .differential.proxies import ProxyPair


def chain(name, **match):
    hcm = {"@type": HCM_TYPE, "stat_prefix": name, "http_filters": [ROUTER],
           "route_config": {"name": name, "virtual_hosts": [{
               "name": name, "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {
                   "status": 200, "body": {"inline_string": name}}}]}]}}
    return {"name": name, "filter_chain_match": match,
            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}


def cidr(prefix, length):
    return [{"address_prefix": prefix, "prefix_len": length}]


def listeners(ports):
    return {
        # The longest destination prefix wins; a chain without ranges is the fallback.
        "prefix": [chain("wide", prefix_ranges=cidr("127.0.0.0", 8)),
                   chain("narrow", prefix_ranges=cidr("127.0.0.1", 32)), chain("any")],
        "prefix_miss": [chain("ten", prefix_ranges=cidr("10.0.0.0", 8)), chain("any")],
        # Source type, then source ranges: a loopback client is SAME_IP_OR_LOOPBACK.
        "source": [chain("external", source_type="EXTERNAL"),
                   chain("local_other", source_type="SAME_IP_OR_LOOPBACK",
                         source_prefix_ranges=cidr("10.0.0.0", 8)),
                   chain("local", source_type="SAME_IP_OR_LOOPBACK",
                         source_prefix_ranges=cidr("127.0.0.0", 8))],
        # The destination port narrows first, and there is no going back to chains without
        # a port when none of the port's chains matches the destination IP: no chain.
        "port_first": [chain("port", destination_port=ports["port_first"],
                             prefix_ranges=cidr("10.0.0.0", 8)),
                       chain("ip", prefix_ranges=cidr("127.0.0.1", 32))],
        # No chain matches a plaintext connection: the default_filter_chain serves it.
        "default": [chain("tls", transport_protocol="tls")],
    }


def chain_match_bootstrap(ports, admin):
    out = []
    for name, chains in listeners(ports).items():
        listener = {"name": name, "address": address(ports[name]), "filter_chains": chains}
        if name == "default":
            default = chain("fallback")
            del default["filter_chain_match"]
            listener["default_filter_chain"] = default
        out.append(listener)
    return bootstrap(admin, out, [])


NAMES = ["prefix", "prefix_miss", "source", "port_first", "default"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    p = ProxyPair(tmp_path_factory.mktemp("diff-chains"), chain_match_bootstrap, NAMES)
    yield p
    p.stop()


def chosen(listener):
    def run(target):
        try:
            resp = one(target.ports[listener], "GET", "/", [("host", "chains.test")])
        except (Closed, ConnectionError):
            return {"chain": None}
        return {"status": resp.status, "chain": resp.body.decode()}
    return run


@pytest.mark.parametrize("listener, expected", [
    ("prefix", "narrow"), ("prefix_miss", "any"), ("source", "local"), ("port_first", None),
    ("default", "fallback")])
def test_the_chain_envoy_chooses(pair, listener, expected):
    def expect(obs):
        assert obs["chain"] == expected, obs
    differential(pair, chosen(listener), expect)
