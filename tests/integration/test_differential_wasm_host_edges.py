"""Differential, Envoy 1.40 vs Baton, of Wasm host edges one WAT plugin each shows:

- "later" (tests/fixtures/wasm/grpc_reply_later.wat): a local reply's grpc_status when the
  reply comes from proxy_on_request_body or proxy_on_response_headers: grpc-status 7 as the
  plugin asked (Baton lost it there and answered 14, the one of HTTP 503);
- "call" (tests/fixtures/wasm/http_call_headers.wat): proxy_http_call headers that are not
  valid HTTP (a CR LF or NUL in a value, a space in a name). A call with good headers,
  "/o-good": test_differential_wasm_http_call_request.py."""

from __future__ import annotations

import pytest

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.client import one
from .differential.compare import differential, observe, upstream_headers
from .differential.proxies import module_pair
from .test_differential_wasm import exchange
from .test_differential_wasm_host import wat_filter

LISTENERS = {"later": [wat_filter("grpc_reply_later.wat")],
             "call": [wat_filter("http_call_headers.wat")]}


def template_of(upstreams):
    routes = {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def template(ports, admin):
        return bootstrap(admin, [http_listener(name, ports[name], routes, http_filters=filters)
                                 for name, filters in LISTENERS.items()],
                         [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-wasm-host-edges", template_of, list(LISTENERS))


@pytest.mark.parametrize("path", ["/b-body", "/h-head"])
def test_the_grpc_status_of_a_later_local_reply(pair, recorder, path):
    def run(target):
        return observe(one(target.ports["later"], "POST", path,
                           [("host", "diff.test"), ("x-test-key", target.key("later" + path)),
                            ("content-type", "application/grpc")], b"\0\0\0\0\0"), target)

    def expect(obs):
        assert obs["status"] == 200, obs                          # trailers-only
        assert ["grpc-status", "7"] in obs["headers"], obs
    differential(pair, run, expect)


def marks(obs) -> dict:
    return {name: upstream_headers(obs, name) for name in
            ("x-call-status", "x-resp-status", "x-resp-body") if upstream_headers(obs, name)}


REFUSED = {"x-call-status": ["10"]}        # INTERNAL_FAILURE, no callback


@pytest.mark.parametrize("path, text", [
    ("/m-crlf", "invalid header value for: x-call"),
    ("/k-name", "invalid header name: x call"),
])
def test_http_call_headers_the_router_refuses_do_not_go_upstream(pair, path, text):
    """Envoy 1.40 answers either INTERNAL_FAILURE (6 calls of 8 measured) or OK and then its
    router's local reply, 503 with the text as its body; Baton the first. Baton sent them
    upstream as they were (the CR LF one split into two header lines)."""
    envoy = marks(exchange("call", path, "call" + path)(pair.target("envoy")))
    assert envoy in (REFUSED, {"x-call-status": ["00"], "x-resp-status": ["503"],
                               "x-resp-body": [text]}), envoy
    baton = marks(exchange("call", path, "call" + path)(pair.target("baton")))
    assert baton == REFUSED, baton


def test_a_nul_in_an_http_call_header_value_fails_the_call_at_once(pair):
    """proxy_http_call answers INTERNAL_FAILURE and no callback comes."""
    differential(pair, exchange("call", "/z-nul", "call-nul"),
                 lambda obs: marks(obs) == REFUSED or pytest.fail(str(obs)))
