"""Differential: header manipulation at route-config, virtual-host and route level (add with each
append action, remove), response headers, header formatters, x-forwarded-for with
use_remote_address, x-request-id, server_name and hop-by-hop headers."""

from __future__ import annotations

import pytest

from .differential.addresses import host_address
from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.cases import Case, run_case
from .differential.compare import header, upstream_header, upstream_headers
from .differential.proxies import module_pair


def add(key: str, value: str, action: str | None = None) -> dict:
    out = {"header": {"key": key, "value": value}}
    if action:
        out["append_action"] = action
    return out


def headers_bootstrap(upstreams: dict[str, int]):
    route_levels = {
        "match": {"prefix": "/levels"}, "route": {"cluster": "a"},
        "request_headers_to_add": [
            add("x-route-added", "route"),                                  # default: APPEND_IF_EXISTS_OR_ADD
            add("x-level", "route", "OVERWRITE_IF_EXISTS_OR_ADD"),
            add("x-if-absent", "route", "ADD_IF_ABSENT"),
            add("x-overwrite-only", "route", "OVERWRITE_IF_EXISTS"),
        ],
        "request_headers_to_remove": ["x-remove-route"],
        "response_headers_to_add": [add("x-resp-route", "route"),
                                    add("x-resp-append", "route", "APPEND_IF_EXISTS_OR_ADD"),
                                    add("x-resp-overwrite", "route", "OVERWRITE_IF_EXISTS_OR_ADD")],
        "response_headers_to_remove": ["x-upstream-secret"],
    }
    route_fmt = {
        "match": {"prefix": "/fmt"}, "route": {"cluster": "a"},
        "request_headers_to_add": [add("x-client-addr", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
                                   add("x-literal-percent", "100%%")],
        "response_headers_to_add": [add("x-proto", "%PROTOCOL%")],
    }
    vhost = {
        "name": "all", "domains": ["*"], "routes": [route_levels, route_fmt,
                                                    {"match": {"prefix": "/"}, "route": {"cluster": "a"}}],
        "request_headers_to_add": [add("x-vhost", "vhost"), add("x-level", "vhost", "OVERWRITE_IF_EXISTS_OR_ADD")],
        "request_headers_to_remove": ["x-remove-vhost"],
        "response_headers_to_add": [add("x-resp-vhost", "vhost")],
    }
    route_config = {
        "name": "headers", "virtual_hosts": [vhost],
        "request_headers_to_add": [add("x-global", "global"),
                                   add("x-level", "global", "OVERWRITE_IF_EXISTS_OR_ADD")],
        "request_headers_to_remove": ["x-remove-global"],
        "response_headers_to_add": [add("x-resp-global", "global")],
        "response_headers_to_remove": ["x-upstream-remove-global"],
    }

    def template(ports: dict[str, int], admin: int) -> dict:
        # Two listeners on one route config: "headers" with the connection manager's defaults,
        # "edge" as an edge proxy (use_remote_address, its own server_name), so that a
        # difference in x-forwarded-for handling does not hide the header-mutation results.
        return bootstrap(admin, [
            http_listener("headers", ports["headers"], route_config),
            http_listener("edge", ports["edge"], route_config, use_remote_address=True, server_name="diff-proxy"),
        ], [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-headers", headers_bootstrap, ["headers", "edge"])


def check(condition: bool, obs) -> None:
    if not condition:
        pytest.fail(f"unexpected observation: {obs}")


def levels_added(obs):
    check(obs["status"] == 200, obs)
    check(upstream_header(obs, "x-global") == "global", obs)
    check(upstream_header(obs, "x-vhost") == "vhost", obs)
    check(upstream_header(obs, "x-route-added") == "route", obs)
    check(upstream_header(obs, "x-if-absent") == "route", obs)
    # OVERWRITE_IF_EXISTS adds nothing when the header is absent.
    check(upstream_header(obs, "x-overwrite-only") is None, obs)
    # All three levels overwrite x-level; the least specific (route config) is applied last and
    # wins (most_specific_header_mutations_wins is false by default).
    check(upstream_headers(obs, "x-level") == ["global"], obs)


def levels_with_client_values(obs):
    check(obs["status"] == 200, obs)
    # APPEND_IF_EXISTS_OR_ADD keeps the client's value and adds ours as a second header line.
    check(upstream_headers(obs, "x-global") == ["client", "global"], obs)
    check(upstream_headers(obs, "x-route-added") == ["client", "route"], obs)
    check(upstream_headers(obs, "x-if-absent") == ["client"], obs)
    check(upstream_headers(obs, "x-overwrite-only") == ["route"], obs)
    check(upstream_headers(obs, "x-level") == ["global"], obs)


def removed(obs):
    check(obs["status"] == 200, obs)
    names = {n for n, _ in obs["upstream"]["headers"]}
    check(not names & {"x-remove-global", "x-remove-vhost", "x-remove-route"}, obs)
    check(upstream_header(obs, "x-keep") == "1", obs)


def response_levels(obs):
    check(obs["status"] == 200, obs)
    check(header(obs, "x-resp-global") == "global", obs)
    check(header(obs, "x-resp-vhost") == "vhost", obs)
    check(header(obs, "x-resp-route") == "route", obs)


def response_append_remove(obs):
    check(obs["status"] == 200, obs)
    values = lambda name: [v for n, v in obs["headers"] if n == name]   # noqa: E731
    check(values("x-resp-append") == ["upstream", "route"], obs)
    check(values("x-resp-overwrite") == ["route"], obs)
    check(not values("x-upstream-secret"), obs)
    check(not values("x-upstream-remove-global"), obs)
    check(values("x-upstream-kept") == ["yes"], obs)


def formatted(obs):
    check(upstream_header(obs, "x-client-addr") == "127.0.0.1", obs)
    # "%%" is a literal percent sign in a header value.
    check(upstream_header(obs, "x-literal-percent") == "100%", obs)
    check(header(obs, "x-proto") == "HTTP/1.1", obs)


def xff_added(obs):
    # Envoy surprise, recorded: with use_remote_address and a LOOPBACK peer, Envoy does not
    # append 127.0.0.1 but the node's own address (see addresses.host_address).
    # And Envoy 1.40 treats no peer as internal unless internal_address_config lists it (this
    # listener has none), so the request is external: x-envoy-external-address carries the
    # peer and no x-envoy-internal is set.
    check(upstream_header(obs, "x-forwarded-for") == host_address(), obs)
    check(upstream_header(obs, "x-envoy-external-address") == "127.0.0.1", obs)
    check(upstream_header(obs, "x-envoy-internal") is None, obs)
    check(upstream_header(obs, "x-forwarded-proto") == "http", obs)


def xff_appended(obs):
    check(upstream_header(obs, "x-forwarded-for") == f"203.0.113.9,{host_address()}", obs)
    # With use_remote_address the proxy's own view of the scheme replaces the client's.
    check(upstream_header(obs, "x-forwarded-proto") == "http", obs)


def request_id_generated(obs):
    check(upstream_header(obs, "x-request-id") == "<uuid4>", obs)
    check(header(obs, "x-request-id") is None, obs)     # not echoed by default


def request_id_replaced(obs):
    # The request counts as external (see xff_added), and Envoy does not trust an external
    # client's x-request-id (preserve_external_request_id is false): a fresh UUID4 replaces it.
    check(upstream_headers(obs, "x-request-id") == ["<uuid4>"], obs)


def server_name(obs):
    check(header(obs, "server") == "diff-proxy", obs)
    check(header(obs, "x-envoy-upstream-service-time") == "<ms>", obs)


def hop_by_hop(obs):
    check(obs["status"] == 200, obs)
    names = [n for n, _ in obs["upstream"]["headers"]]
    for hop in ("keep-alive", "proxy-connection", "upgrade"):
        check(hop not in names, obs)
    # Envoy removes the connection header and the headers it nominates (x-hop), and keeps
    # "te: trailers" (the one te value HTTP/1.1 may forward).
    check(upstream_header(obs, "connection") is None, obs)
    check(upstream_header(obs, "x-hop") is None, obs)
    check(upstream_header(obs, "te") == "trailers", obs)


def envoy_headers_from_external_client(obs):
    # From an external client Envoy drops the x-envoy-* control headers it would otherwise obey
    # (so no 1 ms timeout happens here) but passes other x-envoy-* names through.
    check(obs["status"] == 200, obs)
    check(upstream_header(obs, "x-envoy-upstream-rq-timeout-ms") is None, obs)
    check(upstream_header(obs, "x-envoy-retry-on") is None, obs)
    check(upstream_header(obs, "x-envoy-custom") == "kept", obs)


CASES = [
    Case("headers-three-levels-added", "/levels", expect=levels_added),
    Case("headers-append-actions-with-client-values", "/levels",
         [("x-global", "client"), ("x-route-added", "client"), ("x-if-absent", "client"),
          ("x-overwrite-only", "client"), ("x-level", "client")], expect=levels_with_client_values),
    Case("headers-removed-at-three-levels", "/levels",
         [("x-remove-global", "1"), ("x-remove-vhost", "1"), ("x-remove-route", "1"), ("x-keep", "1")],
         expect=removed),
    Case("response-headers-three-levels", "/levels", expect=response_levels),
    Case("response-headers-append-overwrite-remove", "/levels",
         [("x-test-response-header", "x-resp-append: upstream"), ("x-test-response-header", "x-resp-overwrite: upstream"),
          ("x-test-response-header", "x-upstream-secret: s"), ("x-test-response-header", "x-upstream-remove-global: s"),
          ("x-test-response-header", "x-upstream-kept: yes")], expect=response_append_remove),
    Case("header-value-formatters", "/fmt", expect=formatted),
    Case("xff-use-remote-address-added", "/", listener="edge", expect=xff_added),
    Case("xff-use-remote-address-appended", "/", [("x-forwarded-for", "203.0.113.9"), ("x-forwarded-proto", "https")],
         listener="edge", expect=xff_appended),
    Case("x-request-id-generated", "/", listener="edge", expect=request_id_generated),
    Case("x-request-id-external-replaced", "/", [("x-request-id", "client-chosen-id-1")],
         listener="edge", expect=request_id_replaced),
    Case("server-name-replaces-upstream-server", "/", [("x-test-response-header", "server: upstream-server")],
         listener="edge", expect=server_name),
    Case("hop-by-hop-headers", "/",
         [("connection", "keep-alive, x-hop"), ("x-hop", "1"), ("keep-alive", "timeout=5"),
          ("proxy-connection", "keep-alive"), ("te", "trailers")], expect=hop_by_hop),
    Case("x-envoy-headers-from-external-client", "/",
         [("x-envoy-custom", "kept"), ("x-envoy-upstream-rq-timeout-ms", "1"), ("x-envoy-retry-on", "5xx"),
          ("x-test-delay-ms", "50")], listener="edge", expect=envoy_headers_from_external_client),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_headers(pair, case):
    run_case(pair, case)
