"""Resources, bootstraps and small helpers shared by the xDS tests (Envoy's and Baton's).

The same functions build what the control plane serves to a real Envoy and to Baton, so a
difference in behaviour is never a difference in input.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
