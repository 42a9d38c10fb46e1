"""A proxy-wasm plugin as an HTTP filter through a real `baton run` (issue 14, Istio's user
WasmPlugins): the AssemblyScript plugin tests/fixtures/wasm/demo.wasm (source beside it)
adds the request header x-wasm-seen: <its configuration> and the response header
x-wasm: hello, answers /deny* with a local 403 (x-wasm-denied: 1), which the plugin's own
response hook sees too (as in Envoy), and counts requests in wasmcustom.wasm_filter.requests.
Two workers: one VM each, and the master sums their counters; a reload keeps it running."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from .conftest import free_port, http_bootstrap

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "wasm"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"


def wasm_filter(filename: Path, configuration: str = "from-baton", **plugin) -> dict:
    return {"name": "demo", "typed_config": {"@type": WASM_TYPE, "config": {
        "name": "demo", "root_id": "demo",
        "configuration": {"@type": STRING_VALUE, "value": configuration},
        "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {
            "filename": str(filename)}}},
        **plugin}}}


def with_filter(bootstrap: dict, http_filter: dict) -> dict:
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]
    hcm["http_filters"].insert(0, http_filter)
    return bootstrap


def get(port: int, path: str):
    """(status, headers dict, body) of a GET through the proxy."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def test_a_wasm_plugin_filters_requests_and_counts(baton, recorder):
    port = free_port()
    b = baton(with_filter(http_bootstrap(free_port(), port, recorder),
                          wasm_filter(FIXTURES / "demo.wasm")), concurrency=2)
    for _ in range(3):
        status, headers, body = get(port, "/hello")
        assert status == 200, (status, body)
        assert headers.get("x-wasm") == "hello"
        seen = dict(json.loads(body)["headers"])
        assert seen.get("x-wasm-seen") == "from-baton"

    status, headers, body = get(port, "/deny/x")
    assert (status, body) == (403, b"denied by wasm\n")
    assert headers.get("x-wasm-denied") == "1"
    assert headers.get("x-wasm") == "hello"          # the local reply went through the plugin
    assert headers.get("content-type") == "text/plain"

    assert b.stats().get("wasmcustom.wasm_filter.requests") == 4
    _, text = b.admin("/stats/prometheus")
    assert "\nwasm_filter_requests{} 4\n" in text, text

    # A reload: the new generation checks the module again and its workers start their VMs.
    done = b.reload()
    assert done.returncode == 0, done.stdout + done.stderr
    status, headers, body = get(port, "/deny/again")
    assert (status, headers.get("x-wasm")) == (403, "hello")
    status, headers, _ = get(port, "/hello")
    assert (status, headers.get("x-wasm")) == (200, "hello")


def test_a_module_that_cannot_start_is_refused_with_its_path(tmp_path):
    """`baton check` (the same translation as run and xDS): a module that does not compile,
    and a plugin whose proxy_on_configure fails (the AssemblyScript SDK traps reading an
    absent configuration, as under Envoy 1.40's V8: "Unable to create Wasm plugin")."""
    broken = tmp_path / "broken.wasm"
    broken.write_bytes(b"\0asm\1\0\0\0garbage")
    no_config = wasm_filter(FIXTURES / "demo.wasm")
    del no_config["typed_config"]["config"]["configuration"]
    for http_filter, reason in ((wasm_filter(broken), "cannot compile the module"),
                                (no_config, "proxy_on_configure")):
        config = tmp_path / "bootstrap.yaml"
        config.write_text(yaml.safe_dump(with_filter(http_bootstrap(free_port(), free_port(), 9),
                                                     http_filter)))
        done = subprocess.run([sys.executable, "-m", "baton.supervisor.cli", "check", "-c",
                               str(config)], capture_output=True, text=True, timeout=60)
        assert done.returncode != 0, done.stdout
        out = done.stdout + done.stderr
        assert "http_filters[0]" in out and "Unable to create Wasm plugin demo" in out, out
        assert reason in out, out
        assert "Traceback" not in out, out
