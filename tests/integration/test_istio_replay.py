"""Replay (issue 14, point 3a): what real istiod sent to real sidecars, served to a real Baton
over ADS by the test control plane, dump by dump: every RouteConfiguration is ACKed.

The resources come from ../shared/istio-dumps (reference data beside the repository, never
committed: README there), pulled out by scripts/istio_acceptance.py, the same encoding the
acceptance figures use. Baton asks for a route configuration by name only when a listener's
connection manager names it, so each route configuration gets a listener of its own that
binds no socket (`bind_to_port: false`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from baton.xds import protos
from ..istio_dumps import DUMPS
from ..waiting import wait_until
from ..xds_support.control_plane import CLUSTER, ENDPOINT, LISTENER, ROUTE
from ..xds_support.resources import bootstrap
from .conftest import Baton, free_port
from .test_xds import HCM, ROUTER, plane  # noqa: F401 - plane: a fixture

REPO = Path(__file__).resolve().parents[2]
FIRST_PORT = 21000          # virtual listeners bind nothing: these ports stay free


def _acceptance():
    spec = importlib.util.spec_from_file_location("istio_acceptance",
                                                  REPO / "scripts" / "istio_acceptance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def routes_by_dump() -> dict[str, list]:
    """{dump label: [RouteConfiguration, ...]}: the dynamic route configurations istiod sent."""
    if not DUMPS.is_dir():
        pytest.skip(f"no Istio dumps at {DUMPS} (shared/istio-dumps beside the repository)")
    acceptance = _acceptance()
    encoded, _ = acceptance.encode_dumps(acceptance.dumps_in(str(DUMPS)))
    out: dict[str, list] = {}
    for label, kind, _name, data, failure in encoded:
        if kind == "routes":
            assert failure is None, (label, failure)
            out.setdefault(label, []).append(protos.RouteConfiguration.FromString(data))
    return out


def rds_listener(i: int, route_name: str) -> dict:
    """A socketless listener whose connection manager asks for `route_name` over ADS."""
    return {"name": f"rds-{i}", "bind_to_port": False,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": FIRST_PORT + i}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {"@type": HCM, "stat_prefix": f"rds_{i}", "http_filters": [ROUTER],
                                 "rds": {"route_config_name": route_name,
                                         "config_source": {"ads": {}, "resource_api_version": "V3"}}}}]}]}


def launch_baton(tmp_path, cp_port: int) -> Baton:
    """Baton on ADS, not waited on for /ready: what these tests wait for is the ACKs. Until its
    first listeners (or every cluster's endpoints) arrive a Baton is not live, and the replays
    give it none at the start (the route test) or a cluster warming for endpoints the dump
    never sends (the waypoint), so /ready comes only at initial_fetch_timeout, 15 s later."""
    return Baton(tmp_path / "baton", bootstrap(free_port(), cp_port, "GRPC")).launch()


def answered(baton: Baton, answer):
    """`answer()` (an ACK or a NACK seen), or AssertionError with the log if Baton exited."""
    if baton.proc.poll() is not None:
        raise AssertionError(f"baton exited with {baton.proc.returncode}:\n{baton.log}")
    return answer()


def all_acked(plane, version: str, names) -> bool:
    """A response of RDS `version` that carried every one of `names` was ACKed."""
    full = {(r["stream"], r["nonce"]) for r in plane.responses(ROUTE)
            if r["version_info"] == version and set(names) <= set(r["resource_names"])}
    return any((q["stream"], q["response_nonce"]) in full and q["error_detail"] is None
               and q["version_info"] == version for q in plane.requests(ROUTE))


def test_every_route_configuration_istiod_sent_is_acked(tmp_path, plane):  # noqa: F811
    dumps = routes_by_dump()
    assert sum(map(len, dumps.values())) == 146, {k: len(v) for k, v in dumps.items()}
    plane.set_resources(CLUSTER, [], "0")
    plane.set_resources(ENDPOINT, [], "0")
    baton = launch_baton(tmp_path, plane.port)
    try:
        for version, (label, configs) in enumerate(sorted(dumps.items()), start=1):
            names = sorted({c.name for c in configs})
            v = str(version)
            plane.set_resources(ROUTE, configs, v)
            plane.set_resources(LISTENER, [rds_listener(i, n) for i, n in enumerate(names)], v)
            wait_until(lambda: answered(baton, lambda: plane.acked(LISTENER, v) or plane.nacked(LISTENER, v)),
                       30, f"{label}: LDS v{v} answered")
            assert plane.nacked(LISTENER, v) is None, plane.nacked(LISTENER, v)

            wait_until(lambda: answered(baton, lambda: all_acked(plane, v, names) or plane.nacked(ROUTE, v)),
                       30, f"{label}: RDS v{v} answered for its {len(names)} names")
            assert plane.nacked(ROUTE, v) is None, (label, plane.nacked(ROUTE, v)["error_detail"])
            assert all_acked(plane, v, names), label
        assert "Traceback" not in baton.log
    finally:
        baton.stop()


WAYPOINT = "waypoint-istio-1.21-istioctl-proxyconfig-testdata"


def test_the_waypoints_resources_are_acked(tmp_path, plane):  # noqa: F811
    """W21, an ambient waypoint, whole over ADS: its cluster of envoy_internal_address
    endpoints, their endpoint set and its listeners (main_internal: internal_listener,
    filter_chain_matcher, set_filter_state, set_internal_dst_address) are ACKed. Its one
    bound listener (:15021) gets a free port."""
    if not DUMPS.is_dir():
        pytest.skip(f"no Istio dumps at {DUMPS}")
    acceptance = _acceptance()
    encoded, _ = acceptance.encode_dumps([str(DUMPS / f"{WAYPOINT}.json")])
    classes = {"clusters": (CLUSTER, protos.Cluster), "endpoints": (ENDPOINT, protos.ClusterLoadAssignment),
               "listeners": (LISTENER, protos.Listener)}
    by_type: dict = {}
    for _label, kind, _name, data, failure in encoded:
        if kind in classes:
            assert failure is None, (kind, failure)
            type_url, cls = classes[kind]
            message = cls.FromString(data)
            if kind == "listeners" and message.HasField("address"):
                message.address.socket_address.address = "127.0.0.1"
                message.address.socket_address.port_value = free_port()
            by_type.setdefault(type_url, []).append(message)
    assert [m.name for m in by_type[LISTENER]].count("main_internal") == 1
    for type_url in (CLUSTER, ENDPOINT, LISTENER):
        plane.set_resources(type_url, by_type[type_url], "1")
    plane.set_resources(ROUTE, [], "1")
    baton = launch_baton(tmp_path, plane.port)
    try:
        for type_url in (CLUSTER, ENDPOINT, LISTENER):
            wait_until(lambda: answered(baton, lambda: plane.acked(type_url, "1")
                                        or plane.nacked(type_url, "1")), 30, f"{type_url} v1 answered")
            nack = plane.nacked(type_url, "1")
            assert nack is None, nack["error_detail"]
        assert "Traceback" not in baton.log
    finally:
        baton.stop()
