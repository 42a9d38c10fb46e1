"""Differential: a route chosen again after a proxy-wasm plugin changed the request's :path
and called the foreign function clear_route_cache (tests/fixtures/wasm/reroute.wat), through
Envoy 1.40 and Baton; Envoy's Wasm filter clears the route cache on any change of the request
headers, so the same change without the call routes again too; an unchanged request keeps
the route picked before the filters."""

from __future__ import annotations

import base64

import wasmtime

from .differential.bootstraps import bootstrap, cluster, http_listener, tag
from .differential.client import one
from .differential.compare import differential, observe, upstream_header
from .differential.proxies import module_pair
from .test_differential_wasm import FIXTURES, wasm_filter


def reroute_bootstrap(upstreams: dict[str, int]):
    routes = [{"match": {"prefix": "/b"}, "route": {"cluster": "a"},
               "request_headers_to_add": tag("b")},
              {"match": {"prefix": "/"}, "route": {"cluster": "a"},
               "request_headers_to_add": tag("default")}]
    route_config = {"name": "reroute", "virtual_hosts": [{"name": "all", "domains": ["*"],
                                                           "routes": routes}]}
    code = wasmtime.wat2wasm((FIXTURES / "reroute.wat").read_text())
    plugin = wasm_filter({"inline_bytes": base64.b64encode(code).decode()}, "", "")

    def template(ports: dict[str, int], admin: int) -> dict:
        return bootstrap(admin, [http_listener("reroute", ports["reroute"], route_config,
                                               http_filters=[plugin])],
                         [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-wasm-reroute", reroute_bootstrap, ["reroute"])


def get(path: str):
    def run(target):
        return observe(one(target.ports["reroute"], "GET", path, [("host", "diff.test")]),
                       target)
    return run


def test_clear_route_cache_routes_the_changed_request_again(pair):
    def expect(obs):
        assert obs["upstream"]["path"] == "/b", obs
        assert upstream_header(obs, "x-route") == "b", obs
        assert upstream_header(obs, "x-clear-status") == "0", obs
    differential(pair, get("/clear"), expect)


def test_a_change_of_the_request_headers_alone_routes_it_again(pair):
    # Envoy's Wasm filter clears the route cache on every change of the request headers.
    def expect(obs):
        assert obs["upstream"]["path"] == "/b", obs
        assert upstream_header(obs, "x-route") == "b", obs
        assert upstream_header(obs, "x-clear-status") is None, obs
    differential(pair, get("/keep"), expect)


def test_a_request_the_plugin_leaves_keeps_its_route(pair):
    def expect(obs):
        assert obs["upstream"]["path"] == "/other", obs
        assert upstream_header(obs, "x-route") == "default", obs
    differential(pair, get("/other"), expect)
