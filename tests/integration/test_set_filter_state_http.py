"""set_filter_state ahead of an HTTP connection manager (Istio 1.21's waypoint: main_internal's
`direct-http` chain shares the original_dst local_ip with the upstream, and its `encap`
cluster reaches the connect_originate internal listener, whose tcp_proxy dials the
ORIGINAL_DST): the shared destination rides into the HTTP pool's internal connection, and
connections that share different destinations never share an upstream connection (Envoy keys
its pools by the hash of the shared filter state). Before, the value reached tcp_proxy's
internal connections only: the pool's connection had no destination and the ORIGINAL_DST
cluster nowhere to go. Two listeners share a literal destination each (the recorder's two
ports); keep-alive requests on each, interleaved, reach their own. (Internal listeners and
Istio's use of them: Baton alone.)"""

from __future__ import annotations

import json
import socket

import pytest

from ..waiting import wait_until
from .clients import Http1Reader
from .conftest import Baton, free_port
from .differential.proxies import Recorder
from .test_hbone_tunnel import HCM, T, TCP_PROXY


@pytest.fixture
def upstreams():
    rec = Recorder("a", "b")
    yield rec.ports
    rec.stop()


def _listener(name: str, port: int, destination: int) -> dict:
    share = {"name": "connect_authority", "typed_config": {
        "@type": T + "envoy.extensions.filters.network.set_filter_state.v3.Config",
        "on_new_connection": [{
            "object_key": "envoy.filters.listener.original_dst.local_ip",
            "format_string": {"text_format_source": {"inline_string": f"127.0.0.1:{destination}"}},
            "shared_with_upstream": "ONCE"}]}}
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": name,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": T + "envoy.extensions.filters.http.router.v3.Router"}}],
        "route_config": {"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "encap"}}]}]}}}
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [share, hcm]}]}


def _bootstrap(admin: int, ports: dict, upstreams: dict) -> dict:
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [
                    _listener("to_a", ports["a"], upstreams["a"]),
                    _listener("to_b", ports["b"], upstreams["b"]),
                    {"name": "connect_originate", "internal_listener": {}, "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                            "@type": TCP_PROXY, "stat_prefix": "originate", "cluster": "passthrough"}}]}]}],
                "clusters": [
                    {"name": "encap", "connect_timeout": "1s", "load_assignment": {
                        "cluster_name": "encap", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                            "envoy_internal_address": {"server_listener_name": "connect_originate"}}}}]}]}},
                    {"name": "passthrough", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                     "connect_timeout": "1s"}]}}


def _get(sock, reader) -> str:
    sock.sendall(b"GET /x HTTP/1.1\r\nhost: app\r\n\r\n")
    status, _, body = reader.response()
    assert status == 200, body
    return json.loads(body)["upstream"]


def test_each_connections_shared_destination_has_its_own_pool(tmp_path, upstreams):
    ports = {"a": free_port(), "b": free_port()}
    admin = free_port()
    b = Baton(tmp_path / "b", _bootstrap(admin, ports, upstreams), concurrency=1).start()
    try:
        with socket.create_connection(("127.0.0.1", ports["a"]), timeout=10) as to_a, \
                socket.create_connection(("127.0.0.1", ports["b"]), timeout=10) as to_b:
            ra, rb = Http1Reader(to_a), Http1Reader(to_b)
            seen = [_get(to_a, ra), _get(to_b, rb), _get(to_a, ra), _get(to_b, rb)]
        assert seen == ["a", "b", "a", "b"]
        # One pooled connection per destination, each used twice (the admin's counters may
        # trail the answers on a busy machine).
        names = ("cluster.encap.upstream_cx_total", "cluster.encap.upstream_rq_total",
                 "cluster.passthrough.upstream_cx_total")

        def counted():
            stats = b.stats()
            return tuple(stats.get(name) for name in names)
        wait_until(lambda: counted()[1] == 4, 10, "the four requests counted")
        assert counted() == (2, 4, 2)
    finally:
        b.stop()
