"""The test control plane (tests/xds_support) proven against the real Envoy, before Baton's xDS
agent exists: Envoy gets LDS -> RDS and CDS -> EDS over one ADS stream, state of the world and
delta, ACKs each type, routes to the endpoint EDS names, follows an EDS change, NACKs an invalid
Cluster while the old config keeps serving, and comes back after a control plane restart on the
same port. Every wait polls against a deadline; every process started here is stopped by pid.
"""

from __future__ import annotations

import pytest

from ..waiting import wait_until
from ..xds_support.control_plane import CLUSTER, ENDPOINT, LISTENER, ROUTE, ControlPlane
from ..xds_support.resources import (NODE, ROUTE_CONFIG, NamedUpstream, bootstrap, cluster,
                                     endpoints, get, listener)
from .conftest import free_port
from .differential.proxies import Envoy


# ---- the test ------------------------------------------------------------------------------

@pytest.mark.parametrize("api_type,protocol", [("GRPC", "sotw"), ("DELTA_GRPC", "delta")])
def test_envoy_follows_the_control_plane(tmp_path, api_type, protocol):
    up1, up2 = NamedUpstream("up1"), NamedUpstream("up2")
    plane = ControlPlane()
    envoy = None
    try:
        cp_port = plane.start()
        listen = free_port()
        plane.set_resources(LISTENER, [listener(listen)], "1")
        plane.set_resources(ROUTE, [ROUTE_CONFIG], "1")
        plane.set_resources(CLUSTER, [cluster()], "1")
        plane.set_resources(ENDPOINT, [endpoints(up1.port)], "1")

        envoy = Envoy(tmp_path / "envoy", bootstrap(free_port(), cp_port, api_type)).start(timeout=15)

        # Every type is ACKed: version and nonce echoed, on the protocol the bootstrap chose.
        for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINT):
            ack = wait_until(lambda: plane.acked(type_url, "1"), 10, f"{type_url} v1 ACK")
            assert ack["protocol"] == protocol and ack["node_id"] == NODE
            assert ack["error_detail"] is None
        assert plane.connected(protocol) == 1
        assert wait_until(lambda: get(listen) == "up1", 10, "traffic through Envoy to up1")

        # EDS change: the new endpoint answers.
        plane.set_resources(ENDPOINT, [endpoints(up2.port)], "2")
        wait_until(lambda: plane.acked(ENDPOINT, "2"), 10, "EDS v2 ACK")
        assert wait_until(lambda: get(listen) == "up2", 10, "traffic moved to up2")

        # An invalid Cluster (lb_policy outside the enum) is NACKed; the old config serves on.
        plane.set_resources(CLUSTER, [cluster(lb_policy=99)], "2")
        nack = wait_until(lambda: plane.nacked(CLUSTER, "2"), 10, "CDS v2 NACK")
        assert "LbPolicy" in nack["error_detail"]["message"], nack
        if protocol == "sotw":
            assert nack["version_info"] == "1"       # the last version Envoy accepted
        assert plane.acked(CLUSTER, "2") is None
        assert [get(listen) for _ in range(5)] == ["up2"] * 5

        # Control plane restart on the same port: Envoy keeps serving while it is gone, then
        # reconnects and says what it holds.
        last_stream = max(r["stream"] for r in plane.requests())
        plane.stop()
        assert get(listen) == "up2"
        plane.set_resources(CLUSTER, [cluster()], "3")
        plane.start(cp_port)
        first = wait_until(lambda: [r for r in plane.requests(CLUSTER) if r["stream"] > last_stream],
                           15, "Envoy reconnected to the restarted control plane")[0]
        if protocol == "sotw":
            assert first["version_info"] == "1"
        else:
            assert "backend" in first["initial_resource_versions"]
        wait_until(lambda: plane.acked(CLUSTER, "3"), 10, "CDS v3 ACK after restart")
        assert wait_until(lambda: get(listen) == "up2", 10, "traffic after restart")
    finally:
        if envoy is not None:
            envoy.stop()
        plane.close()
        up1.stop()
        up2.stop()
