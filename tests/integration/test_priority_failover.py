"""Priorities and upstream_bind_config with the real `baton` and real upstreams on 127.0.0.0/8.

- Envoy's priority spill-over, live: a cluster with a priority-0 and a priority-1 locality
  (each one recording upstream process) and an active health check. While P0 is healthy every
  request reaches it; once its process is gone the health check marks it down and every
  request reaches P1.
- upstream_bind_config: a tcp_proxy cluster bound to 127.0.0.6 (the source address Istio
  gives inbound clusters); the upstream sees connections from 127.0.0.6.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import urllib.error
import urllib.request

from .conftest import RECORDER, free_port, start_ready_process, tcp_bootstrap, wait_until

HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager")
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def endpoint(port):
    return {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                        "port_value": port}}}}


def failover_bootstrap(admin, port, p0, p1):
    hcm = {"@type": HCM_TYPE, "stat_prefix": "in",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": ROUTER_TYPE}}]}
    cluster = {"name": "app", "type": "STATIC", "connect_timeout": "1s",
               "common_lb_config": {"locality_weighted_lb_config": {}},
               # no_traffic_interval: else the first check after start, before any request,
               # schedules the next one 60 s later (Envoy's default).
               "health_checks": [{"timeout": "1s", "interval": "0.1s",
                                  "no_traffic_interval": "0.1s",
                                  "unhealthy_threshold": 1, "healthy_threshold": 1,
                                  "http_health_check": {"path": "/healthz"}}],
               "load_assignment": {"cluster_name": "app", "endpoints": [
                   {"locality": {"zone": "a"}, "load_balancing_weight": 1,
                    "lb_endpoints": [endpoint(p0)]},
                   {"locality": {"zone": "b"}, "load_balancing_weight": 1, "priority": 1,
                    "lb_endpoints": [endpoint(p1)]}]}}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": admin}}},
            "static_resources": {
                "listeners": [{"name": "http", "address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": port}}, "filter_chains": [{
                        "filters": [{"name": "envoy.filters.network.http_connection_manager",
                                     "typed_config": hcm}]}]}],
                "clusters": [cluster]}}


def answered_by(port):
    """The upstream that answered, or the status Baton answered itself (a 503 while a host
    is down and the health check has not noticed yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=5) as resp:
            return json.loads(resp.read())["upstream"]
    except urllib.error.HTTPError as exc:
        return exc.code


def test_traffic_fails_over_to_priority_1_when_priority_0_is_unhealthy(baton):
    p0, p0_port = start_ready_process([sys.executable, str(RECORDER), "p0"])
    p1, p1_port = start_ready_process([sys.executable, str(RECORDER), "p1"])
    try:
        port = free_port()
        b = baton(failover_bootstrap(free_port(), port, p0_port, p1_port), concurrency=1)
        wait_until(lambda: answered_by(port) == "p0", 10, "priority 0 to serve")
        assert [answered_by(port) for _ in range(20)] == ["p0"] * 20
        p0.kill()
        p0.wait(10)
        wait_until(lambda: answered_by(port) == "p1", 10, "the failover to priority 1")
        assert [answered_by(port) for _ in range(20)] == ["p1"] * 20
        assert b.stats()["cluster.app.membership_healthy"] == 1
    finally:
        for proc in (p0, p1):
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


class PeerRecorder:
    """A TCP server on 127.0.0.1 that notes each connection's peer address and closes it."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            conn.close()

    def close(self):
        # close() alone does not wake a thread blocked in accept(): the join waited its 5 s.
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


def test_upstream_connections_come_from_the_bind_config_source_address(baton):
    upstream = PeerRecorder()
    try:
        port = free_port()
        bootstrap = tcp_bootstrap(free_port(), port, [upstream.port])
        bootstrap["static_resources"]["clusters"][0]["upstream_bind_config"] = {
            "source_address": {"address": "127.0.0.6", "port_value": 0}}
        baton(bootstrap, concurrency=1)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                client.settimeout(5)
                assert client.recv(1) == b""            # the upstream closed: Baton relayed
        wait_until(lambda: len(upstream.peers) == 3, 10, "three upstream connections")
        assert upstream.peers == ["127.0.0.6"] * 3
    finally:
        upstream.close()
