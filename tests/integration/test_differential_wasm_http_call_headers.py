"""Differential: proxy_http_call headers that are not valid HTTP (a CR LF or NUL in a value, a
space in a name) through Envoy 1.40 and Baton (tests/fixtures/wasm/http_call_headers.wat).
(A call with good headers, "/o-good", differs already: Envoy adds x-envoy-internal and
x-envoy-expected-rq-timeout-ms to the call's request; Baton does not.)"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import wasmtime

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.compare import differential, upstream_headers
from .differential.proxies import module_pair
from .test_differential_wasm import exchange

WAT = Path(__file__).resolve().parent.parent / "fixtures" / "wasm" / "http_call_headers.wat"
PLUGIN = {"name": "wasm", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": {
        "name": "call", "root_id": "", "vm_config": {
            "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"inline_bytes":
                base64.b64encode(wasmtime.wat2wasm(WAT.read_text())).decode()}}}}}}


def template_of(upstreams):
    routes = {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def template(ports, admin):
        return bootstrap(admin, [http_listener("call", ports["call"], routes,
                                               http_filters=[PLUGIN])],
                         [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-wasm-http-call-headers", template_of, ["call"])


def marks(obs) -> dict:
    return {name: upstream_headers(obs, name) for name in
            ("x-call-status", "x-resp-status", "x-resp-body") if upstream_headers(obs, name)}


REFUSED = {"x-call-status": ["10"]}        # INTERNAL_FAILURE, no callback


@pytest.mark.parametrize("path, text", [
    ("/m-crlf", "invalid header value for: x-call"),
    ("/k-name", "invalid header name: x call"),
])
def test_headers_the_router_refuses_do_not_go_upstream(pair, path, text):
    """Envoy 1.40 answers either INTERNAL_FAILURE (6 calls of 8 measured) or OK and then its
    router's local reply, 503 with the text as its body; Baton the first. Baton sent them
    upstream as they were (the CR LF one split into two header lines)."""
    envoy = marks(exchange("call", path, "call" + path)(pair.target("envoy")))
    assert envoy in (REFUSED, {"x-call-status": ["00"], "x-resp-status": ["503"],
                               "x-resp-body": [text]}), envoy
    baton = marks(exchange("call", path, "call" + path)(pair.target("baton")))
    assert baton == REFUSED, baton


def test_a_nul_in_a_header_value_fails_the_call_at_once(pair):
    """proxy_http_call answers INTERNAL_FAILURE and no callback comes."""
    differential(pair, exchange("call", "/z-nul", "call-nul"),
                 lambda obs: marks(obs) == REFUSED or pytest.fail(str(obs)))
