"""Istio's connect_baggage on a terminated CONNECT into an internal listener (HBONE's inbound
path): the CONNECT's `baggage` header names the calling workload, and the internal
listener's istio.stats report it as the source of the TCP connection (before, the filter was
accepted and did nothing: source_workload "unknown")."""

from __future__ import annotations

from ..waiting import wait_until
from .conftest import Baton, free_port, static_cluster
from .test_hbone_tunnel import T, TCP_PROXY, open_connect, terminator
from .test_istio_telemetry import STATS, labels_of, prometheus_lines

BAGGAGE = ("k8s.cluster.name=east,k8s.namespace.name=shop,k8s.deployment.name=productpage-v1,"
           "service.name=productpage,service.version=v1,app.name=productpage,app.version=v1")


def _bootstrap(admin: int, port: int, echo: int) -> dict:
    end = terminator(admin, port, echo, "h1")
    hcm = end["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(0, {"name": "connect_baggage", "typed_config": {
        "@type": T + "udpa.type.v1.TypedStruct", "type_url": T + "io.istio.http.connect_baggage.Config"}})
    hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "main_internal"
    end["static_resources"]["clusters"].append({
        "name": "main_internal", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": "main_internal", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"envoy_internal_address": {"server_listener_name": "main_internal"}}}}]}]}})
    end["static_resources"]["listeners"].append({
        "name": "main_internal", "internal_listener": {}, "traffic_direction": "INBOUND",
        "filter_chains": [{"filters": [STATS, {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": TCP_PROXY, "stat_prefix": "inbound", "cluster": "echo"}}]}]})
    return end


def _tunnel(port: int, baggage: str | None) -> None:
    s, reader = open_connect(port, f"127.0.0.1:{port}",
                             f"baggage: {baggage}\r\n" if baggage else "")
    with s:
        s.sendall(b"ping")
        assert reader.exact(4) == b"ping"


def test_the_connect_baggage_names_the_internal_connections_source(tmp_path):
    from .conftest import Upstream
    echo = Upstream("echo")
    port = free_port()
    b = Baton(tmp_path / "b", _bootstrap(free_port(), port, echo.port), concurrency=1).start()
    try:
        _tunnel(port, BAGGAGE)
        _tunnel(port, None)

        def opened():
            return {labels_of(line)["source_workload"]: labels_of(line)
                    for line in prometheus_lines(b, "istio_tcp_connections_opened_total")}
        wait_until(lambda: len(opened()) == 2, 10, "both connections counted")
        known = opened()["productpage-v1"]
        assert (known["source_workload_namespace"], known["source_canonical_service"],
                known["source_canonical_revision"], known["source_app"], known["source_version"],
                known["source_cluster"]) == ("shop", "productpage", "v1", "productpage", "v1", "east")
        assert opened()["unknown"]["source_workload_namespace"] == "unknown"   # no baggage
    finally:
        b.stop()
        echo.stop()


def test_the_connect_baggage_names_the_source_of_requests_on_an_internal_http_chain(tmp_path):
    """The same behind an HTTP chain (the PL dump's main_internal: a connection manager with
    istio.stats, inbound): each request's source is the peer the CONNECT's baggage shared
    with the internal connection, as Istio's stats read wasm.downstream_peer (it was
    "unknown": only an in-stream metadata exchange named it)."""
    from .conftest import Upstream
    from .test_connect_baggage_propagate import _hcm
    echo = Upstream("echo")
    port = free_port()
    end = _bootstrap(free_port(), port, echo.port)
    internal = end["static_resources"]["listeners"][1]
    internal["filter_chains"] = [{"filters": [_hcm("inbound", [STATS])]}]
    hcm = internal["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["routes"] = [      # answered here: no upstream
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]
    b = Baton(tmp_path / "b", end, concurrency=1).start()
    try:
        s, reader = open_connect(port, f"127.0.0.1:{port}", f"baggage: {BAGGAGE}\r\n")
        with s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: reviews\r\n\r\n")
            assert reader.response()[0] == 200

        def requests():
            return [labels_of(line) for line in prometheus_lines(b, "istio_requests_total")]
        wait_until(lambda: len(requests()) == 1, 10, "the request counted")
        seen = requests()[0]
        assert (seen["reporter"], seen["source_workload"], seen["source_workload_namespace"],
                seen["source_canonical_service"], seen["source_cluster"]) == (
            "destination", "productpage-v1", "shop", "productpage", "east")
    finally:
        b.stop()
        echo.stop()
