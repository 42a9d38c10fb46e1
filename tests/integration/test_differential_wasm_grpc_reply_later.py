"""Differential: a Wasm local reply's grpc_status when the reply comes from
proxy_on_request_body or proxy_on_response_headers (tests/fixtures/wasm/grpc_reply_later.wat),
Envoy 1.40 vs Baton: grpc-status 7 as the plugin asked (Baton lost it there and answered 14,
the one of HTTP 503)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import wasmtime

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.client import one
from .differential.compare import differential, observe
from .differential.proxies import module_pair

WAT = Path(__file__).resolve().parent.parent / "fixtures" / "wasm" / "grpc_reply_later.wat"
PLUGIN = {"name": "wasm", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": {
        "name": "later", "root_id": "", "vm_config": {
            "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"inline_bytes":
                base64.b64encode(wasmtime.wat2wasm(WAT.read_text())).decode()}}}}}}


def template_of(upstreams):
    routes = {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def template(ports, admin):
        return bootstrap(admin, [http_listener("later", ports["later"], routes,
                                               http_filters=[PLUGIN])],
                         [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-wasm-grpc-later", template_of, ["later"])


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
