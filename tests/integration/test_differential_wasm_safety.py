"""Differential, Envoy 1.40 (V8) against Baton (wasmtime): what a plugin is given and which
modules are refused.

- configuration: the bytes a plugin reads (tests/fixtures/wasm/config_echo.wat hex-encodes
  them into x-config): a StringValue's string, and for any other type the Any's value, the
  serialized message (Envoy's anyToBytes): Baton gave a Struct as JSON.
- A module that imports a function Envoy's host does not have, or one it has with another
  signature, is refused at config time by both ("Unable to create Wasm plugin", with
  proxy-wasm-cpp-host's reason): Baton linked the first to a stub and the second as asked.
- A VM that traps: with failure_policy FAIL_RELOAD the plugin starts again in a new VM at
  the first request a backoff (1 s) after the failure, the requests before it fail closed;
  with the default policy it stays failed (tests/fixtures/wasm/trap_on_header.wat).
"""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

import pytest
import wasmtime
import yaml

from .conftest import BATON
from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.client import one
from .differential.compare import differential, observe, upstream_header
from .differential.proxies import PROXIES, envoy_binary, module_pair
from ..waiting import wait_until

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "wasm"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
ROUTES = {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
    {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}
CONFIGURATIONS = {
    "string": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "plain"},
    "struct": {"@type": "type.googleapis.com/google.protobuf.Struct", "value": {"a": "b"}},
    "duration": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "1.5s"},
}


def wasm_filter(code: bytes, configuration=None, vm_id="", **plugin) -> dict:
    config = {"name": "w", "vm_config": {"runtime": "envoy.wasm.runtime.v8", "vm_id": vm_id,
                                         "code": {"local": {
                                             "inline_bytes": base64.b64encode(code).decode()}}},
              **plugin}
    if configuration is not None:
        config["configuration"] = configuration
    return {"name": "w", "typed_config": {"@type": WASM_TYPE, "config": config}}


def safety_bootstrap(upstreams: dict[str, int]):
    echo = wasmtime.wat2wasm((FIXTURES / "config_echo.wat").read_text())
    trap = wasmtime.wat2wasm((FIXTURES / "trap_on_header.wat").read_text())

    def template(ports: dict[str, int], admin: int) -> dict:
        # A VM each (the plugin keeps one configuration per VM).
        listeners = [http_listener(name, ports[name], ROUTES,
                                   http_filters=[wasm_filter(echo, configuration, name)])
                     for name, configuration in CONFIGURATIONS.items()]
        reloading = wasm_filter(trap, vm_id="reload", failure_policy="FAIL_RELOAD")
        reloading["typed_config"]["config"]["name"] = "reloading"
        listeners.append(http_listener("reload", ports["reload"], ROUTES,
                                       http_filters=[reloading]))
        listeners.append(http_listener("closed", ports["closed"], ROUTES,
                                       http_filters=[wasm_filter(trap, vm_id="closed")]))
        return bootstrap(admin, listeners, [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-wasm-safety", safety_bootstrap,
                             [*CONFIGURATIONS, "reload", "closed"])


@pytest.mark.parametrize("listener, expected", [
    ("string", b"plain"),
    ("struct", bytes.fromhex("0a080a016112031a0162")),     # Struct {"a": "b"}, serialized
    ("duration", bytes.fromhex("08011080cab5ee01")),       # Duration 1.5 s, serialized
])
def test_the_plugin_reads_its_configuration_as_envoy_gives_it(pair, recorder, listener, expected):
    def run(target):
        return observe(one(target.ports[listener], "GET", "/", [
            ("host", "diff.test"), ("x-test-key", target.key(f"wasm-config-{listener}"))]),
            target)

    def expect(obs):
        assert obs["status"] == 200, obs
        assert upstream_header(obs, "x-config") == expected.hex(), obs
    differential(pair, run, expect)


MODULE = """(module {imports} (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32)))"""


@pytest.mark.parametrize("imported, reason", [
    ('(import "env" "no_such_call" (func (param i32)))',
     "Failed to load Wasm module due to a missing import: env.no_such_call"),
    ('(import "env" "proxy_log" (func (param i32 i32) (result i32)))',
     "Failed to load Wasm module due to an import type mismatch: env.proxy_log, "
     "want: i32 i32 -> i32, but host exports: i32 i32 i32 -> i32"),
])
def test_a_module_importing_what_envoys_host_lacks_is_refused(tmp_path, imported, reason):
    code = wasmtime.wat2wasm(MODULE.format(imports=imported))
    config = tmp_path / "bootstrap.yaml"
    config.write_text(yaml.safe_dump(bootstrap(9, [http_listener(
        "l", 10, ROUTES, http_filters=[wasm_filter(code)])], [cluster("a", [11])])))
    if "envoy" in PROXIES:
        done = subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(config)],
                              capture_output=True, text=True, timeout=60)
        out = done.stdout + done.stderr
        assert done.returncode != 0 and "Unable to create Wasm plugin w" in out, out
        assert reason in out, out
    if "baton" in PROXIES:
        done = subprocess.run([BATON, "check", "-c", str(config)], capture_output=True,
                              text=True, timeout=60)
        out = done.stdout + done.stderr
        assert done.returncode != 0 and "Traceback" not in out, out
        assert "http_filters[0]" in out and "Unable to create Wasm plugin w" in out, out
        assert reason in out, out


def test_a_failed_vm_is_reloaded_after_the_backoff_with_fail_reload(pair, recorder):
    def request(target, listener, case, trap=False):
        response = one(target.ports[listener], "GET", "/", [
            ("host", "diff.test"), ("x-test-key", target.key(case)),
            *([("x-trap", "1")] if trap else [])])
        obs = observe(response, target)
        return response.status, upstream_header(obs, "x-vm-requests") if "upstream" in obs else None

    def reloaded(target, case):
        answers = []
        wait_until(lambda: answers.append(request(target, "reload", case)) or
                   answers[-1][0] == 200, 10, f"{target.name}: the plugin reloaded")
        return answers[-1]

    def run(target):
        seen = {"first": request(target, "reload", "wasm-reload-first"),
                "trap": request(target, "reload", "wasm-reload-trap", trap=True),
                "closed trap": request(target, "closed", "wasm-closed-trap", trap=True)}
        # However long ago the proxy started its VM, the new one is reloaded by a request
        # (at once, when that was a second ago); it fails at once too: the next reload waits
        # until a second after this one.
        seen["reloaded"] = reloaded(target, "wasm-reload-poll")        # a new VM's first
        started = time.monotonic()
        seen["trap again"] = request(target, "reload", "wasm-reload-trap-again", trap=True)
        seen["at once"] = request(target, "reload", "wasm-reload-at-once")
        seen["reloaded again"] = reloaded(target, "wasm-reload-poll-again")
        seen["a second later"] = time.monotonic() - started >= 0.9
        seen["closed later"] = request(target, "closed", "wasm-closed-later")
        stats = target.stats("wasm.reloading.")
        seen["stats"] = {"success": stats.get("wasm.reloading.vm_reload_success"),
                         "failure": stats.get("wasm.reloading.vm_reload_failure"),
                         "backoff": stats.get("wasm.reloading.vm_reload_backoff", 0) > 0}
        return seen

    def expect(obs):
        assert obs == {"first": (200, "1"), "trap": (503, None), "closed trap": (503, None),
                       "reloaded": (200, "1"), "trap again": (503, None),
                       "at once": (503, None), "reloaded again": (200, "1"),
                       "a second later": True, "closed later": (503, None),
                       "stats": {"success": 2, "failure": 0, "backoff": True}}, obs
    differential(pair, run, expect)
