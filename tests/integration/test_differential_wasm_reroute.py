"""Differential: a route chosen again after a proxy-wasm plugin changed the request's :path
and called the foreign function clear_route_cache (tests/fixtures/wasm/reroute.wat), through
Envoy 1.40 and Baton; Envoy's Wasm filter clears the route cache on any change of the request
headers, so the same change without the call routes again too; an unchanged request keeps
the route picked before the filters. A filter after the plugin (the buffer filter) reads its
per-route config from the route chosen again (Envoy's BufferFilter::initConfig in
decodeHeaders: resolveMostSpecificPerFilterConfig on the route current then)."""

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
    # Behind the plugin, a buffer filter of BUFFER_LIMIT bytes that the route /b raises
    # (unless the plugin called clear_route_cache: its status header picks /b-cleared,
    # which keeps it) and the route /clear turns off.
    buffered_routes = [
        {"match": {"prefix": "/b", "headers": [{"name": "x-clear-status",
                                                "present_match": True}]},
         "route": {"cluster": "a"}, "request_headers_to_add": tag("b-cleared")},
        {**routes[0], "typed_per_filter_config": {BUFFER_NAME: {
            "@type": BUFFER_PER_ROUTE, "buffer": {"max_request_bytes": 8192}}}},
        {"match": {"prefix": "/clear"}, "route": {"cluster": "a"},
         "typed_per_filter_config": {BUFFER_NAME: {"@type": BUFFER_PER_ROUTE,
                                                   "disabled": True}}},
        routes[1]]
    buffered_config = {"name": "rebuffer", "virtual_hosts": [{
        "name": "all", "domains": ["*"], "routes": buffered_routes}]}
    buffer = {"name": BUFFER_NAME, "typed_config": {"@type": BUFFER_TYPE,
                                                    "max_request_bytes": BUFFER_LIMIT}}

    def template(ports: dict[str, int], admin: int) -> dict:
        return bootstrap(admin, [http_listener("reroute", ports["reroute"], route_config,
                                               http_filters=[plugin]),
                                 http_listener("rebuffer", ports["rebuffer"], buffered_config,
                                               http_filters=[plugin, buffer])],
                         [cluster("a", [upstreams["a"]])])
    return template


BUFFER_NAME = "envoy.filters.http.buffer"
BUFFER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
BUFFER_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
BUFFER_LIMIT = 16
recorder, pair = module_pair("diff-wasm-reroute", reroute_bootstrap, ["reroute", "rebuffer"])


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


def post(path: str, size: int):
    def run(target):
        return observe(one(target.ports["rebuffer"], "POST", path, [("host", "diff.test")],
                           b"x" * size), target)
    return run


def test_a_later_filter_reads_the_per_route_config_of_the_route_chosen_again(pair):
    # /keep becomes /b in the plugin: the buffer filter after it takes /b's 8192-byte limit.
    def expect(obs):
        assert obs["status"] == 200, obs
        assert obs["upstream"]["path"] == "/b", obs
        assert obs["upstream"]["body_length"] == 1000, obs
        assert upstream_header(obs, "x-route") == "b", obs
    differential(pair, post("/keep", 1000), expect)


def test_a_filter_the_first_route_turned_off_runs_for_the_route_chosen_again(pair):
    # /clear turns the buffer filter off; the plugin makes it /b-cleared, which does not.
    def expect(obs):
        assert obs["status"] == 413, obs
        assert obs["body"] == "Payload Too Large", obs
    differential(pair, post("/clear", 1000), expect)


def test_a_request_the_plugin_leaves_keeps_the_first_routes_per_route_config(pair):
    def expect(obs):
        assert obs["status"] == 413, obs
        assert obs["body"] == "Payload Too Large", obs
    differential(pair, post("/other", 1000), expect)
