"""Differential, Envoy 1.40 (V8) against Baton (wasmtime): what a plugin is given and which
modules are refused.

- configuration: the bytes a plugin reads (tests/fixtures/wasm/config_echo.wat hex-encodes
  them into x-config): a StringValue's string, and for any other type the Any's value, the
  serialized message (Envoy's anyToBytes): Baton gave a Struct as JSON.
- A module that imports a function Envoy's host does not have, or one it has with another
  signature, is refused at config time by both ("Unable to create Wasm plugin", with
  proxy-wasm-cpp-host's reason): Baton linked the first to a stub and the second as asked.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
import wasmtime
import yaml

from .conftest import BATON
from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.client import one
from .differential.compare import differential, observe, upstream_header
from .differential.proxies import PROXIES, envoy_binary, module_pair

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

    def template(ports: dict[str, int], admin: int) -> dict:
        # A VM each (the plugin keeps one configuration per VM).
        listeners = [http_listener(name, ports[name], ROUTES,
                                   http_filters=[wasm_filter(echo, configuration, name)])
                     for name, configuration in CONFIGURATIONS.items()]
        return bootstrap(admin, listeners, [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-wasm-safety", safety_bootstrap, list(CONFIGURATIONS))


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
