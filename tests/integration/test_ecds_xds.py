"""ECDS over ADS (issue 14): a listener whose HCM has a filter given by config_discovery (as
istiod sends a WasmPlugin, no default, initial_fetch_timeout 0s) warms until the agent has
the TypedExtensionConfig, then serves with it; a new version of the resource changes what
the listener does; a Wasm module Baton cannot run (here a V8 module file that is not there,
which Envoy 1.40 cannot load either) is NACKed and the filter keeps its config. The same
steps run against Envoy 1.40 on the same control plane resources, and both must agree."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from baton.xds import protos  # noqa: F401 - declares Istio's types for the test control plane
from ..waiting import wait_until
from ..xds_support.control_plane import EXTENSION, LISTENER
from ..xds_support.resources import ADS, get, listener
from ..xds_support.resources import bootstrap
from .conftest import free_port
from .differential.proxies import PROXIES, Envoy
from .test_xds import named, plane, serve_basics, start_baton  # noqa: F401

T = "type.googleapis.com/"
RBAC = T + "envoy.extensions.filters.http.rbac.v3.RBAC"
PLUGIN = "extenstions.istio.io/wasmplugin/default.authz"


def ecds_listener(port: int) -> dict:
    spec = listener(port)
    spec["name"] = "ecds"
    hcm = spec["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(0, {"name": PLUGIN, "config_discovery": {
        "config_source": {**ADS, "initial_fetch_timeout": "0s"},
        "type_urls": [T + "envoy.extensions.filters.http.wasm.v3.Wasm", RBAC]}})
    return spec


def deny(prefix: str) -> dict:
    return {"name": PLUGIN, "typed_config": {"@type": RBAC, "rules": {"action": "DENY", "policies": {
        "p": {"permissions": [{"url_path": {"path": {"prefix": prefix}}}], "principals": [{"any": True}]}}}}}


def status(port: int, path: str) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def start_proxy(proxy: str, tmp_path, plane_port: int):
    """Baton or Envoy, configured by the test control plane over ADS (gRPC)."""
    if proxy == "baton":
        return start_baton(tmp_path, plane_port)
    return Envoy(tmp_path / "envoy", bootstrap(free_port(), plane_port, "GRPC")).start(timeout=15)


@pytest.mark.parametrize("proxy", PROXIES)
def test_a_filter_over_ecds_is_waited_for_applied_and_updated(tmp_path, plane, named, proxy):  # noqa: F811
    up = named("up")
    main_port, port = free_port(), free_port()
    serve_basics(plane, main_port, up)
    process = start_proxy(proxy, tmp_path, plane.port)
    try:
        wait_until(lambda: get(main_port) == "up", 10, "the main listener")
        plane.set_resources(LISTENER, [listener(main_port), ecds_listener(port)], "2")
        wait_until(lambda: plane.requests(EXTENSION), 10, "the ECDS subscription")
        assert [r["resource_names"] for r in plane.requests(EXTENSION)][0] == [PLUGIN]
        assert status(port, "/") is None                       # warming: no resource yet
        plane.set_resources(EXTENSION, [deny("/admin")], "1")
        wait_until(lambda: get(port) == "up", 10, "the listener, warm")
        assert status(port, "/admin/x") == 403
        plane.set_resources(EXTENSION, [deny("/")], "2")
        wait_until(lambda: status(port, "/x") == 403, 10, "the new version of the filter")
        wasm = {"name": PLUGIN, "typed_config": {"@type": T + "envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {"vm_config": {"runtime": "envoy.wasm.runtime.v8",
                                         "code": {"local": {"filename": "/plugin.wasm"}}}}}}
        plane.set_resources(EXTENSION, [wasm], "3")
        wait_until(lambda: plane.nacked(EXTENSION, "3"), 10, "the Wasm module NACKed")
        if proxy == "baton":
            assert "cannot read '/plugin.wasm'" in plane.nacked(EXTENSION, "3")["error_detail"]["message"]
            assert "Traceback" not in process.log
        assert status(port, "/x") == 403                       # the filter keeps version 2
    finally:
        process.stop()
