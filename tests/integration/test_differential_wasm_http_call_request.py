"""Differential, Envoy 1.40 vs Baton: the request a proxy_http_call sends upstream
(tests/fixtures/wasm/http_call_headers.wat, good headers: :method GET, :path /call,
:authority diff.test, x-call: ok, a 5 s timeout). The recording upstream's answer, the
call's request as it arrived, comes back to the plugin, which passes it on as x-resp-body."""

from __future__ import annotations

import json

from .differential.compare import differential, upstream_header
from .differential.proxies import module_pair
from .test_differential_wasm import exchange
from .test_differential_wasm_host import wat_filter
from .test_differential_wasm_plugin_identity import listeners_to_a


recorder, pair = module_pair("diff-wasm-call-request",
                            listeners_to_a({"call": [wat_filter("http_call_headers.wat")]}),
                            ["call"])


def the_call(run):
    def seen(target):
        obs = run(target)
        call = json.loads(upstream_header(obs, "x-resp-body") or "{}")
        obs["call"] = {key: call.get(key) for key in ("method", "path", "headers", "framing")}
        return obs
    return seen


def test_what_a_call_with_good_headers_sends_upstream(pair, recorder):
    def expect(obs):
        assert obs["status"] == 200, obs
        assert obs["call"] == {"method": "GET", "path": "/call", "framing": "none", "headers": [
            ["host", "diff.test"], ["x-call", "ok"], ["x-envoy-internal", "true"],
            ["x-envoy-expected-rq-timeout-ms", "5000"]]}, obs["call"]
    differential(pair, the_call(exchange("call", "/o-good", "call-request")), expect)
