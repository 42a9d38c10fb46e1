"""Remote Wasm code over ECDS with nack_on_code_cache_miss, in Envoy 1.40 and Baton alike: a
WasmPlugin whose module (vm_config.code.remote, from an HTTP server reached through the
cluster "modules") was never fetched is NACKed ("Unable to create Wasm plugin") and
fetched in the background; the resource sent again (changed) once the server has served it
is ACKed and its plugin runs (tests/fixtures/wasm/deny.wat, with a nonce: a module no earlier
run fetched)."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading

import pytest
import wasmtime

from baton.xds import protos  # noqa: F401 - declares the types for the test control plane
from ..waiting import wait_until
from ..xds_support.control_plane import CLUSTER, EXTENSION, LISTENER
from ..xds_support.resources import cluster, get, listener
from .conftest import free_port
from .differential.proxies import PROXIES
from .test_ecds_xds import start_proxy
from .test_wasm_ecds import FIXTURES, ecds_listener, fetch
from .test_xds import named, plane, serve_basics  # noqa: F401

T = "type.googleapis.com/"
PLUGIN = "remote-plugin"


def module() -> bytes:
    """deny.wat with a nonce: code no earlier run fetched (both proxies keep fetched code)."""
    text = (FIXTURES / "deny.wat").read_text().rstrip()
    assert text.endswith(")")
    nonce = os.urandom(8).hex()
    return wasmtime.wat2wasm(text[:-1] + f'\n  (data (i32.const 3000) "{nonce}"))')


def plugin(port: int, sha256: str, configuration: str) -> dict:
    return {"name": PLUGIN, "typed_config": {
        "@type": T + "envoy.extensions.filters.http.wasm.v3.Wasm", "config": {
            "name": PLUGIN, "root_id": "x",
            "configuration": {"@type": T + "google.protobuf.StringValue", "value": configuration},
            "vm_config": {
                "runtime": "envoy.wasm.runtime.v8", "nack_on_code_cache_miss": True,
                "code": {"remote": {"http_uri": {"uri": f"http://127.0.0.1:{port}/m.wasm",
                                                 "cluster": "modules", "timeout": "2s"},
                                    "sha256": sha256}}}}}}


def modules_cluster(port: int) -> dict:
    return {"name": "modules", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "modules", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": port}}}}]}]}}


class ModuleServer:
    """Serves one module at /m.wasm and counts the GETs of it."""

    def __init__(self, code: bytes):
        self.code, self.served = code, 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("content-length", str(len(owner.code)))
                self.end_headers()
                self.wfile.write(owner.code)
                owner.served += 1

            def log_message(self, *args):
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.mark.parametrize("proxy", PROXIES)
def test_a_module_not_fetched_yet_is_nacked_then_fetched_and_acked(  # noqa: F811
        tmp_path, plane, named, proxy, monkeypatch):
    monkeypatch.setenv("BATON_WASM_CACHE", "off")       # Baton keeps fetched code in memory only
    code = module()
    server = ModuleServer(code)
    up = named("up")
    main_port, port = free_port(), free_port()
    serve_basics(plane, main_port, up)
    plane.set_resources(CLUSTER, [cluster(), modules_cluster(server.port)], "2")
    process = start_proxy(proxy, tmp_path, plane.port)
    try:
        wait_until(lambda: get(main_port) == "up", 10, "the main listener")
        plane.set_resources(LISTENER, [listener(main_port), ecds_listener(port, PLUGIN)], "2")
        wait_until(lambda: plane.requests(EXTENSION), 10, "the ECDS subscription")
        sha256 = hashlib.sha256(code).hexdigest()
        plane.set_resources(EXTENSION, [plugin(server.port, sha256, "1")], "1")
        wait_until(lambda: plane.nacked(EXTENSION, "1"), 10, "the module not fetched NACKed")
        message = plane.nacked(EXTENSION, "1")["error_detail"]["message"]
        assert "Unable to create Wasm plugin remote-plugin" in message, message
        wait_until(lambda: server.served, 10, "the background fetch")
        # Changed (Envoy applies nothing for a resource the same as the one it refused).
        plane.set_resources(EXTENSION, [plugin(server.port, sha256, "2")], "2")
        wait_until(lambda: plane.acked(EXTENSION, "2"), 10, "the fetched module ACKed")
        # Until the workers have the plugin, a request finds the filter without a config
        # (Envoy answers it 500): wait for the plugin's answer.
        wait_until(lambda: fetch(port, "/x") == (200, "hello"), 10, "the plugin, running")
        assert fetch(port, "/deny/me") == (403, "hello")
        assert server.served == 1
    finally:
        process.stop()
        server.stop()
