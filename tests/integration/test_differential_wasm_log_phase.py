"""Differential, Envoy 1.40 vs Baton: a plugin's header maps in proxy_on_log, and the request
trailers map before trailers came (tests/fixtures/wasm/log_phase.wat).

Envoy's Context (source/extensions/common/wasm/context.cc) reads the maps of the access log
phase through getConstMap, the access logger's own: the request and response headers can be
read, not changed (getMap has none then: BAD_ARGUMENT); a map the stream never had answers
NOT_FOUND in that phase, where at other times it answers BAD_ARGUMENT. The attribute
response.headers does not go with the response head's map: read OK at the response body's
end, as response.code, where request.path is NOT_FOUND (response_gone.wat; Baton already
answered the same)."""

from __future__ import annotations

from ..waiting import wait_until

from .differential.compare import differential, upstream_header
from .differential.proxies import module_pair
from .test_differential_wasm import exchange
from .test_differential_wasm_host import wat_filter
from .test_differential_wasm_plugin_identity import listeners_to_a

GAUGE = "wasmcustom.log_probe"


LISTENERS = {"log": [wat_filter("log_phase.wat")], "gone": [wat_filter("response_gone.wat")]}
recorder, pair = module_pair("diff-wasm-log-phase", listeners_to_a(LISTENERS), list(LISTENERS))


def with_log_probe(run, gauge=GAUGE):
    def probed(target):
        obs = run(target)
        wait_until(lambda: target.stats(gauge).get(gauge), 5, "proxy_on_log's gauge")
        obs["log_probe"] = str(target.stats(gauge)[gauge])[1:]
        return obs
    return probed


def test_the_maps_in_the_log_phase_and_the_request_trailers_before_they_came(pair, recorder):
    def expect(obs):
        assert obs["status"] == 200, obs
        # request trailers in proxy_on_request_headers: get, add, pairs
        assert upstream_header(obs, "x-early") == "220", obs
        # request headers, request trailers, response headers, response trailers
        assert obs["log_probe"] == "020120020120", obs
    differential(pair, with_log_probe(exchange("log", "/logged", "log-phase")), expect)


def test_the_response_attributes_once_the_response_head_went_on(pair, recorder):
    """response_gone.wat: at the response body's end (its head went on) response.headers,
    response.code and request.path; in proxy_on_log response.headers and request.headers."""
    def expect(obs):
        assert obs["status"] == 200, obs
        assert obs["log_probe"] == "00100", obs
    differential(pair, with_log_probe(exchange("gone", "/gone", "response-gone"),
                                      "wasmcustom.gone_probe"), expect)
