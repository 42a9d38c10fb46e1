"""Remote Wasm code in a listener from LDS, fetched through the CDS cluster "modules" (the
URI's host is one nobody can reach), in Envoy 1.40 and Baton alike: while the module server
holds its answer the listener does not serve and the proxy's admin still answers
/config_dump (Baton's comes from the xDS agent: its loop is not blocked by the fetch), and
once the module is served the listener is ACKed and its plugin runs (tests/fixtures/wasm/deny.wat, with a nonce)."""

from __future__ import annotations

import hashlib
import threading
import urllib.request

import pytest

from ..waiting import wait_until
from ..wasm_module_server import ModuleServer
from ..xds_support.control_plane import CLUSTER, LISTENER
from ..xds_support.resources import cluster, get, listener
from .conftest import free_port
from .differential.proxies import PROXIES
from .test_ecds_xds import start_proxy
from .test_wasm_ecds import fetch
from .test_wasm_remote_ecds import modules_cluster, module
from .test_xds import named, plane, serve_basics  # noqa: F401

T = "type.googleapis.com/"


def wasm_listener(port: int, sha256: str) -> dict:
    spec = listener(port)
    spec["name"] = "wasm"
    hcm = spec["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(0, {"name": "remote", "typed_config": {
        "@type": T + "envoy.extensions.filters.http.wasm.v3.Wasm", "config": {
            "name": "remote", "root_id": "x", "vm_config": {
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"remote": {"http_uri": {"uri": "http://modules.invalid:9/m.wasm",
                                                 "cluster": "modules", "timeout": "25s"},
                                    "sha256": sha256}}}}}})
    return spec


def config_dump(admin_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/config_dump", timeout=5) as r:
        return r.read().decode()


def serve_a_wasm_listener(tmp_path, plane, up, proxy: str, module_port: int, code: bytes):
    """The basics from the control plane and the proxy serving them, then (version 2) a
    listener whose module is fetched from `module_port` through the CDS cluster "modules".
    -> (the proxy, the main listener's port, the Wasm listener's)."""
    main_port, port = free_port(), free_port()
    serve_basics(plane, main_port, up)
    plane.set_resources(CLUSTER, [cluster(), modules_cluster(module_port)], "1")
    process = start_proxy(proxy, tmp_path, plane.port)
    try:
        wait_until(lambda: get(main_port) == "up", 10, "the main listener")
        plane.set_resources(LISTENER, [listener(main_port),
                                       wasm_listener(port, hashlib.sha256(code).hexdigest())],
                            "2")
    except BaseException:
        process.stop()
        raise
    return process, main_port, port


@pytest.mark.parametrize("proxy", PROXIES)
def test_a_listeners_module_is_fetched_through_its_cluster_without_blocking(  # noqa: F811
        tmp_path, plane, named, proxy, monkeypatch):
    monkeypatch.setenv("BATON_WASM_CACHE", "off")
    code = module()
    gate = threading.Event()
    server = ModuleServer({"/m.wasm": code}, hold=gate)
    process, _, port = serve_a_wasm_listener(tmp_path, plane, named("up"), proxy, server.port,
                                             code)
    try:
        assert server.asked.wait(10), "the module was not asked for"
        # The fetch is held: the admin (Baton: the agent's dump) answers all the same.
        assert '"modules"' in config_dump(process.admin_port)
        assert fetch(port, "/x") is None       # not served while its module is not there
        gate.set()
        wait_until(lambda: plane.acked(LISTENER, "2"), 10, "the listener ACKed")
        wait_until(lambda: fetch(port, "/x") == (200, "hello"), 10, "the plugin, running")
        assert fetch(port, "/deny/me") == (403, "hello")
        assert set(server.hosts) == {"modules.invalid:9"}, server.hosts
    finally:
        process.stop()
        gate.set()
        server.close()
