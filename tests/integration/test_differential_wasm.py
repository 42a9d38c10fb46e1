"""Differential: the same proxy-wasm modules through Envoy 1.40 (V8) and Baton (wasmtime).
The AssemblyScript plugin (tests/fixtures/wasm/demo.wasm, @solo-io/proxy-runtime 0.1.8)
and the raw-ABI WAT plugin (deny.wat): what reaches the upstream (x-wasm-seen: the plugin
configuration), the response (x-wasm from the response hook), the local 403 (its body,
headers, content-type, and the response hook's header on it too), the plugin's counter on
/stats and /stats/prometheus (Envoy: wasmcustom.wasm_filter.requests, shown in Prometheus as
wasm_filter_requests, without envoy_); the plugin's callout (proxy_http_call) that a request
waits for; a plugin that traps, failing closed (an empty 503) or open; a plugin's ticks."""

from __future__ import annotations

import base64
import urllib.request
from pathlib import Path

import wasmtime

from .conftest import free_port
from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.client import one
from .differential.compare import differential, each_proxy, header, observe, upstream_header
from .differential.proxies import module_pair
from ..waiting import wait_until

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "wasm"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"


# A plugin that traps in every proxy_on_request_headers: the VM fails at the first request.
TRAP = """(module (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable))"""


# A plugin that counts its ticks (every 20 ms) in the counter "ticks".
TICKS = """(module
  (import "env" "proxy_set_tick_period_milliseconds" (func $period (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment (param i32 i64) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "ticks")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $define (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 64)))
    (drop (call $period (i32.const 20)))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $increment (i32.load (i32.const 64)) (i64.const 1)))))"""


def wasm_filter(code: dict, root_id: str, configuration: str, **plugin) -> dict:
    return {"name": "demo", "typed_config": {"@type": WASM_TYPE, "config": {
        "name": "demo", "root_id": root_id,
        "configuration": {"@type": STRING_VALUE, "value": configuration},
        "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": code}}, **plugin}}}


def wasm_bootstrap(upstreams: dict[str, int]):
    route_config = {"name": "wasm", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}
    deny_wasm = wasmtime.wat2wasm((FIXTURES / "deny.wat").read_text())
    filters = {
        "sdk": wasm_filter({"filename": str(FIXTURES / "demo.wasm")}, "demo", "from-diff"),
        "raw": wasm_filter({"inline_bytes": base64.b64encode(deny_wasm).decode()}, "x", ""),
    }
    trap = {"inline_bytes": base64.b64encode(wasmtime.wat2wasm(TRAP)).decode()}
    filters["trap"] = wasm_filter(trap, "", "")
    filters["trap_open"] = wasm_filter(trap, "", "", fail_open=True)
    filters["ticks"] = wasm_filter({"inline_bytes": base64.b64encode(wasmtime.wat2wasm(TICKS)).decode()},
                                   "", "")

    def template(ports: dict[str, int], admin: int) -> dict:
        listeners = [http_listener(name, ports[name], route_config, http_filters=[f])
                     for name, f in filters.items()]
        # "down": a port nobody listens on (callouts to it fail).
        return bootstrap(admin, listeners, [cluster("a", [upstreams["a"]]),
                                            cluster("down", [free_port()])])
    return template


recorder, pair = module_pair("diff-wasm", wasm_bootstrap, ["sdk", "raw", "trap", "trap_open", "ticks"])


def exchange(listener: str, path: str, case: str, headers=()):
    def run(target):
        return observe(one(target.ports[listener], "GET", path,
                           [("host", "diff.test"), ("x-test-key", target.key(case)), *headers]),
                       target)
    return run


def test_the_sdk_plugin_lets_a_request_through_and_marks_both_ways(pair, recorder):
    def expect(obs):
        assert obs["status"] == 200, obs
        assert header(obs, "x-wasm") == "hello", obs
        assert upstream_header(obs, "x-wasm-seen") == "from-diff", obs
    differential(pair, exchange("sdk", "/hello", "wasm-allow"), expect)


def test_the_sdk_plugins_local_reply_passes_its_response_hook(pair, recorder):
    def expect(obs):
        assert obs["status"] == 403 and obs["body"] == "denied by wasm\n", obs
        assert header(obs, "x-wasm-denied") == "1" and header(obs, "x-wasm") == "hello", obs
        assert header(obs, "content-type") == "text/plain", obs
    differential(pair, exchange("sdk", "/deny/x", "wasm-deny"), expect)


def test_the_raw_abi_plugin_given_inline(pair, recorder):
    def expect(obs):
        assert obs["status"] == 403 and obs["body"] == "denied\n", obs
        assert header(obs, "x-wasm") == "hello", obs
    differential(pair, exchange("raw", "/deny", "wasm-raw-deny"), expect)

    def allowed(obs):
        assert obs["status"] == 200 and header(obs, "x-wasm") == "hello", obs
    differential(pair, exchange("raw", "/ok", "wasm-raw-allow"), allowed)


def test_the_plugins_counter_is_named_as_envoy_names_it(pair, recorder):
    def run(target):
        before = target.stats("wasmcustom.").get("wasmcustom.wasm_filter.requests", 0)
        one(target.ports["sdk"], "GET", "/count", [("host", "diff.test"),
                                                   ("x-test-key", target.key("wasm-count"))])
        after = target.stats("wasmcustom.")
        url = f"http://127.0.0.1:{target.admin_port}/stats/prometheus"
        with urllib.request.urlopen(url, timeout=5) as r:
            lines = [line for line in r.read().decode().splitlines() if "wasm_filter" in line]
        return {"counted": after.get("wasmcustom.wasm_filter.requests", 0) - before,
                "prometheus": [line if line.startswith("#") else line.rsplit(" ", 1)[0]
                               for line in lines]}

    def expect(obs):
        assert obs == {"counted": 1, "prometheus": ["# TYPE wasm_filter_requests counter",
                                                    "wasm_filter_requests{}"]}, obs
    differential(pair, run, expect)


def test_a_failed_vm_fails_closed_or_open(pair, recorder):
    """The trap fails the VM: that request and the next get an empty 503 (Envoy's
    failStream), or, with fail_open, go through as if the filter were not there."""
    def closed(obs):
        assert obs["status"] == 503 and obs["body"] == "", obs
    differential(pair, exchange("trap", "/t", "wasm-trap-1"), closed)
    differential(pair, exchange("trap", "/t", "wasm-trap-2"), closed)

    def passed(obs):
        assert obs["status"] == 200 and upstream_header(obs, "x-wasm-seen") is None, obs
    differential(pair, exchange("trap_open", "/t", "wasm-trap-open-1"), passed)
    differential(pair, exchange("trap_open", "/t", "wasm-trap-open-2"), passed)


def test_a_plugins_ticks_run(pair):
    """proxy_set_tick_period_milliseconds(20) in proxy_on_configure: proxy_on_tick runs
    again and again (it counts in wasmcustom.ticks), with no request."""
    def check(target):
        wait_until(lambda: target.stats("wasmcustom.").get("wasmcustom.ticks", 0) >= 5, 10,
                   f"{target.name}: five ticks")
    each_proxy(pair, check)


def test_the_sdk_plugin_waits_for_its_callout(pair, recorder):
    """proxy_http_call to the cluster the request names: the request waits (StopIteration)
    until proxy_on_http_call_response, which adds the callout's status and continues it; a
    callout to a cluster that does not exist is refused (the plugin answers 500), and one
    that nobody answers (nobody listening) gets the proxy's own 503, as Envoy's AsyncClient
    answers it."""
    def called(obs):
        assert obs["status"] == 200 and upstream_header(obs, "x-wasm-callout") == "200", obs
        assert header(obs, "x-wasm") == "hello", obs
    differential(pair, exchange("sdk", "/c", "wasm-callout", [("x-wasm-call-cluster", "a")]),
                 called)

    def refused(obs):
        assert (obs["status"], obs["body"]) == (500, "callout refused\n"), obs
    differential(pair, exchange("sdk", "/c", "wasm-callout-unknown",
                                [("x-wasm-call-cluster", "nowhere")]), refused)

    def unanswered(obs):
        assert obs["status"] == 200 and upstream_header(obs, "x-wasm-callout") == "503", obs
    differential(pair, exchange("sdk", "/c", "wasm-callout-down",
                                [("x-wasm-call-cluster", "down")]), unanswered)
