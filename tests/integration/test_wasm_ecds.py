"""Istio's WasmPlugin over ECDS (S22, Istio 1.22: istiod sends the plugin as a
TypedExtensionConfig, the listener's filter names it by config_discovery): the resource from
the dump, its filename (istio-agent's download under /var/lib/istio/data) rewritten to a
module of ours, is ACKed and runs, in Envoy 1.40 and in Baton alike. The raw-ABI plugin
(tests/fixtures/wasm/deny.wat) stands in for S22's module, which the dump does not hold;
the AssemblyScript plugin as S22 configures it (no root_id) aborts when its root context is
created and is NACKed by both, the listener keeping the plugin it has."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import wasmtime

from baton.xds import protos  # noqa: F401 - declares Istio's types for the test control plane
from ..istio_dumps import DUMPS
from ..waiting import wait_until
from ..xds_support.control_plane import EXTENSION, LISTENER
from ..xds_support.resources import ADS, get, listener
from .conftest import free_port
from .differential.proxies import PROXIES
from .test_ecds_xds import start_proxy
from .test_xds import named, plane, serve_basics  # noqa: F401

T = "type.googleapis.com/"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "wasm"
S22 = DUMPS / "sidecar-istio-1.22.3-multiparty-lb-app1.json"


def s22_plugin() -> dict:
    """S22's one ECDS resource (a TypedExtensionConfig) as the dump holds it."""
    if not S22.exists():
        pytest.skip(f"no Istio dumps at {DUMPS} (shared/istio-dumps beside the repository)")
    dump = json.loads(S22.read_text())
    section = next(c for c in dump["configs"] if c["@type"].endswith("EcdsConfigDump"))
    resource = section["ecds_filters"][0]["ecds_filter"]
    return {k: v for k, v in resource.items() if k != "@type"}


def with_module(resource: dict, filename: Path) -> dict:
    out = copy.deepcopy(resource)
    out["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(filename)
    return out


def ecds_listener(port: int, name: str) -> dict:
    spec = listener(port)
    spec["name"] = "ecds"
    hcm = spec["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(0, {"name": name, "config_discovery": {
        "config_source": {**ADS, "initial_fetch_timeout": "0s"},
        "type_urls": [T + "envoy.extensions.filters.http.wasm.v3.Wasm"]}})
    return spec


def fetch(port: int, path: str):
    """(status, x-wasm header) or None while the listener does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.headers.get("x-wasm")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("x-wasm")
    except OSError:
        return None


@pytest.mark.parametrize("proxy", PROXIES)
def test_s22s_wasm_plugin_over_ecds_is_acked_and_runs(tmp_path, plane, named, proxy):  # noqa: F811
    resource = s22_plugin()
    # Where Baton's xDS agent, which drops to an unprivileged user, may read it (as istio-agent
    # leaves modules readable under /var/lib/istio/data); pytest's tmp_path is 0700.
    public = Path(tempfile.mkdtemp(prefix="wasm-ecds-"))
    public.chmod(0o755)
    deny = public / "deny.wasm"
    deny.write_bytes(wasmtime.wat2wasm((FIXTURES / "deny.wat").read_text()))
    deny.chmod(0o644)
    up = named("up")
    main_port, port = free_port(), free_port()
    serve_basics(plane, main_port, up)
    process = start_proxy(proxy, tmp_path, plane.port)
    try:
        wait_until(lambda: get(main_port) == "up", 10, "the main listener")
        plane.set_resources(LISTENER, [listener(main_port), ecds_listener(port, resource["name"])], "2")
        wait_until(lambda: plane.requests(EXTENSION), 10, "the ECDS subscription")
        plane.set_resources(EXTENSION, [with_module(resource, deny)], "1")
        wait_until(lambda: plane.acked(EXTENSION, "1"), 10, "the WasmPlugin ACKed")
        wait_until(lambda: fetch(port, "/x") is not None, 10, "the listener, warm")
        assert fetch(port, "/x") == (200, "hello")
        assert fetch(port, "/deny/me") == (403, "hello")
        # The AssemblyScript plugin as S22 configures it (no root_id): it aborts at its root
        # context's creation, having no root context for root id "".
        plane.set_resources(EXTENSION, [with_module(resource, FIXTURES / "demo.wasm")], "2")
        wait_until(lambda: plane.nacked(EXTENSION, "2"), 10, "the failing plugin NACKed")
        if proxy == "baton":
            message = plane.nacked(EXTENSION, "2")["error_detail"]["message"]
            assert "Unable to create Wasm plugin default.mplb-wasm-plugin" in message, message
            assert "proxy_on_context_create" in message and "proc_exit" in message, message
            assert "Traceback" not in process.log
        assert fetch(port, "/deny/me") == (403, "hello")        # the ACKed plugin runs on
    finally:
        process.stop()
        shutil.rmtree(public)
