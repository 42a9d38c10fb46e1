"""Differential: a proxy-wasm plugin's header maps once the headers have gone on, and
allow_on_headers_stop_iteration (tests/fixtures/wasm/headers_gone.wat), through Envoy 1.40
and Baton.

Envoy's Wasm Context forgets the request headers once proxy_on_request_headers answers
Continue, or the plugin calls proxy_continue_stream (context.cc: decodeHeaders,
continueStream), and the response headers once proxy_on_response_headers answers Continue:
from then on get, add, replace and remove answer BAD_ARGUMENT and the pairs are empty (OK),
and the attributes read from them (request.path) are NOT_FOUND.
A Pause from proxy_on_request_headers is StopAllIterationAndWatermark unless the plugin
config sets allow_on_headers_stop_iteration (proxy-wasm-cpp-host's
convertVmCallResultToFilterHeadersStatus): then StopIteration, and the body reaches the
plugin while the headers wait (and may still be changed); its Continue lets both go on."""

from __future__ import annotations

import base64

import wasmtime

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.client import one
from .differential.compare import differential, header, observe, upstream_header
from .differential.proxies import module_pair
from .test_differential_wasm import FIXTURES, wasm_filter

COUNTER = "wasmcustom.resp_late"
# A plugin without body callbacks that answers Pause to every request's headers.
PAUSE_ALWAYS = """(module (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 1)))"""


def gone_bootstrap(upstreams: dict[str, int]):
    route_config = {"name": "wasm", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}
    code = {"inline_bytes": base64.b64encode(
        wasmtime.wat2wasm((FIXTURES / "headers_gone.wat").read_text())).decode()}
    plugins = {"stop_default": wasm_filter(code, "", ""),
               "stop_allowed": wasm_filter(code, "", "", allow_on_headers_stop_iteration=True),
               "headers_only": wasm_filter({"inline_bytes": base64.b64encode(
                   wasmtime.wat2wasm(PAUSE_ALWAYS)).decode()}, "", "",
                   allow_on_headers_stop_iteration=True)}

    def template(ports: dict[str, int], admin: int) -> dict:
        return bootstrap(admin, [http_listener(name, ports[name], route_config,
                                               http_filters=[plugin])
                                 for name, plugin in plugins.items()],
                         [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-wasm-gone", gone_bootstrap,
                            ["stop_default", "stop_allowed", "headers_only"])


def post(listener: str, path: str):
    def run(target):
        before = target.stats(COUNTER).get(COUNTER, 0)
        obs = observe(one(target.ports[listener], "POST", path, [("host", "diff.test")],
                          b"hello"), target)
        obs["late_add_status"] = target.stats(COUNTER).get(COUNTER, 0) - before - 1
        return obs
    return run


def headers_gone(obs):
    # add, get, pairs, (pairs' size) empty, replace, remove from the request body callback
    assert header(obs, "x-statuses") == "220e22", obs
    assert header(obs, "x-response-phase") == "2", obs      # the request's :path, gone
    assert header(obs, "x-path-property") == "1", obs       # request.path: NOT_FOUND
    assert upstream_header(obs, "x-body-add") is None, obs
    assert obs["late_add_status"] == 2, obs                 # the response head, gone


def test_request_headers_that_went_on_are_gone_for_the_plugin(pair):
    differential(pair, post("stop_default", "/plain"), headers_gone)


def test_a_pause_on_headers_holds_the_body_too_by_default(pair):
    # StopAllIterationAndWatermark: the body waits until the tick continues the headers.
    differential(pair, post("stop_default", "/pause"), headers_gone)


def test_allow_on_headers_stop_iteration_lets_the_body_reach_the_paused_plugin(pair):
    def expect(obs):
        assert obs["status"] == 200, obs
        assert header(obs, "x-statuses") == "000n00", obs
        assert upstream_header(obs, "x-body-add") == "2", obs
        assert header(obs, "x-response-phase") == "0", obs  # never continued: still there
        assert header(obs, "x-path-property") == "0", obs
        assert obs["late_add_status"] == 2, obs
    differential(pair, post("stop_allowed", "/pause"), expect)


def test_allow_on_headers_stop_iteration_changes_nothing_for_a_continue(pair):
    differential(pair, post("stop_allowed", "/plain"), headers_gone)


def test_a_body_lets_headers_go_on_past_a_plugin_without_body_callbacks(pair):
    # StopIteration, and the plugin's decodeData answers Continue (it exports no
    # proxy_on_request_body): Envoy's filter manager lets the headers go on with the body.
    def expect(obs):
        assert obs["status"] == 200, obs
        assert obs["upstream"]["body_length"] == 5, obs
    differential(pair, post("headers_only", "/any"), expect)


def response_head(path: str, x_late: str | None):
    """The response's head went out with x-late as the plugin's late add left it, and that
    add answered OK."""
    def expect(obs):
        assert obs["status"] == 200 and obs["upstream"]["path"] == path, obs
        assert header(obs, "x-late") == x_late, obs
        assert obs["late_add_status"] == 0, obs
    return expect


def test_a_pause_on_the_response_head_holds_its_body_too_by_default(pair):
    # StopAllIterationAndWatermark until the tick's proxy_continue_stream(Response), which
    # forgets the request's maps but not the response headers: the late add is OK, and
    # goes nowhere.
    differential(pair, post("stop_default", "/resp-pause"), response_head("/resp-pause", None))


def test_allow_on_headers_stop_iteration_lets_the_response_body_reach_the_paused_plugin(pair):
    # StopIteration: the body reaches the plugin while the head waits, and an add to the
    # response headers then goes out with them.
    differential(pair, post("stop_allowed", "/resp-pause"), response_head("/resp-pause", "1"))


def test_a_pause_on_the_response_head_after_the_request_was_continued_holds_it(pair):
    # The request paused and continued by a tick, then the response head paused and
    # continued by another: the continue of the request does not let the head through.
    held = response_head("/pause-resp", None)

    def expect(obs):
        held(obs)
        assert header(obs, "x-statuses") == "220e22", obs
    differential(pair, post("stop_default", "/pause-resp"), expect)
