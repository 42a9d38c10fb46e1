"""The test control plane (tests/xds_support) proven against the real Envoy, before Baton's xDS
agent exists: Envoy gets LDS -> RDS and CDS -> EDS over one ADS stream, state of the world and
delta, ACKs each type, routes to the endpoint EDS names, follows an EDS change, NACKs an invalid
Cluster while the old config keeps serving, and comes back after a control plane restart on the
same port. Every wait polls against a deadline; every process started here is stopped by pid.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ..waiting import wait_until
from ..xds_support.control_plane import CLUSTER, ENDPOINT, LISTENER, ROUTE, ControlPlane
from .conftest import free_port
from .differential.proxies import Envoy

NODE = "envoy-under-test"
ADS = {"ads": {}, "resource_api_version": "V3"}


# ---- a tiny HTTP upstream that answers with its name ---------------------------------------

class NamedUpstream:
    def __init__(self, name: str):
        body = name.encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def get(port: int) -> str | None:
    """The body Envoy's listener answers with, or None while it cannot route yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return r.read().decode() if r.status == 200 else None
    except (OSError, urllib.error.HTTPError):
        return None


# ---- resources and bootstrap ---------------------------------------------------------------

def listener(port: int) -> dict:
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                    ".HttpConnectionManager",
           "stat_prefix": "ingress",
           "rds": {"config_source": ADS, "route_config_name": "local"},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return {"name": "main",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


ROUTE_CONFIG = {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
    {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]}


def cluster(lb_policy="ROUND_ROBIN") -> dict:
    return {"name": "backend", "type": "EDS", "connect_timeout": "1s", "lb_policy": lb_policy,
            "eds_cluster_config": {"eds_config": ADS}}


def endpoints(port: int) -> dict:
    return {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
        "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}


def bootstrap(admin_port: int, cp_port: int, api_type: str) -> dict:
    http2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    return {
        "node": {"id": NODE, "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {"api_type": api_type, "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
            "lds_config": ADS, "cds_config": ADS},
        "static_resources": {"clusters": [{
            "name": "xds", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": http2,
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": cp_port}}}}]}]}}]},
    }


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
