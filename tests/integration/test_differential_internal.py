"""Differential: requests from an internal peer (use_remote_address with internal_address_config
naming 127.0.0.0/8): the x-envoy-* request controls Envoy obeys only for internal requests
(x-envoy-retry-on, x-envoy-max-retries, x-envoy-upstream-rq-timeout-ms), x-envoy-internal,
x-forwarded-for and x-request-id preservation.

Its own bootstrap, so that a proxy refusing internal_address_config fails these cases only.
Envoy 1.40 treats no address as internal unless internal_address_config says so.
"""

from __future__ import annotations

import pytest

from .differential.addresses import host_address
from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.cases import Case, run_case
from .differential.client import one
from .differential.compare import differential, observe, upstream_header, upstream_headers
from .differential.proxies import module_pair


def internal_bootstrap(upstreams: dict[str, int]):
    route_config = {"name": "internal", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def template(ports: dict[str, int], admin: int) -> dict:
        listener = http_listener("internal", ports["internal"], route_config, use_remote_address=True,
                                 internal_address_config={"cidr_ranges": [
                                     {"address_prefix": "127.0.0.0", "prefix_len": 8}]})
        return bootstrap(admin, [listener], [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-internal", internal_bootstrap, ["internal"])


def check(condition: bool, obs) -> None:
    if not condition:
        pytest.fail(f"unexpected observation: {obs}")


def internal_marked(obs):
    check(obs["status"] == 200 and upstream_header(obs, "x-envoy-internal") == "true", obs)
    check(upstream_header(obs, "x-envoy-external-address") is None, obs)


def xff(obs):
    internal_marked(obs)
    # As on an external request, a loopback peer is appended as the node's own address.
    check(upstream_header(obs, "x-forwarded-for") == host_address(), obs)


def request_id_kept(obs):
    internal_marked(obs)
    check(upstream_headers(obs, "x-request-id") == ["client-chosen-id-3"], obs)


def retried(obs):
    internal_marked(obs)
    check(obs["upstream"]["attempt"] == 2, obs)
    # The router consumes its control headers: the upstream does not see them.
    check(upstream_header(obs, "x-envoy-retry-on") is None, obs)
    check(upstream_header(obs, "x-envoy-max-retries") is None, obs)


CASES = [
    Case("internal-x-envoy-internal-and-xff", "/", expect=xff),
    Case("internal-x-request-id-preserved", "/", [("x-request-id", "client-chosen-id-3")], expect=request_id_kept),
    Case("internal-x-envoy-retry-on", "/", [("x-test-status", "503"), ("x-test-fail-first", "1"),
                                            ("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "1")],
         expect=retried),
    # gRPC conditions come in x-envoy-retry-grpc-on (a trailers-only grpc-status 14 each time:
    # one retry, the second answer stands); x-envoy-retry-on does not take them.
    Case("internal-x-envoy-retry-grpc-on", "/", [("x-test-response-header", "grpc-status: 14"),
                                                 ("x-envoy-retry-grpc-on", "unavailable"),
                                                 ("x-envoy-max-retries", "1")],
         expect=retried),
    Case("internal-grpc-condition-in-x-envoy-retry-on", "/",
         [("x-test-response-header", "grpc-status: 14"), ("x-envoy-retry-on", "unavailable"),
          ("x-envoy-max-retries", "1")],
         expect=lambda obs: check(obs["upstream"]["attempt"] == 1, obs)),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_internal(pair, case):
    run_case(pair, case)


def test_internal_upstream_rq_timeout_header(pair):
    def run(target):
        resp = one(target.port, "GET", "/", [("host", "diff.test"), ("x-test-delay-ms", "2000"),
                                             ("x-envoy-upstream-rq-timeout-ms", "150"),
                                             ("x-test-key", target.key("internal-timeout-header"))])
        obs = observe(resp, target)
        # 10 ms of slack: Envoy's timers run on a clock cached per event-loop iteration.
        obs["elapsed in [0.15, 1.5)"] = 0.14 <= resp.elapsed < 1.5 or resp.elapsed
        return obs

    def expect(obs):
        check(obs["status"] == 504 and obs["body"] == "upstream request timeout", obs)
        check(obs["elapsed in [0.15, 1.5)"] is True, obs)
    differential(pair, run, expect)
