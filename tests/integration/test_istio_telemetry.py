"""Istio's telemetry between two Baton sidecars on loopback (issue 14, Istio's extensions):
the client calls sidecar A's outbound listener, A calls sidecar B's inbound listener, B calls
the application. The HTTP metadata exchange (io.istio.http.peer_metadata, as istiod 1.20+
configures it on each side) tells each sidecar who the other is, and istio.stats reports
the request on both: reporter=source on A, reporter=destination on B, each with both
workloads' labels. The exchange's headers never reach either application.

The mTLS, interception and network namespaces of a real mesh are in test_istio_mesh.py."""

from __future__ import annotations

import json
import urllib.request

from .conftest import free_port, static_cluster

T = "type.googleapis.com/"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}
STATS = {"name": "istio.stats", "typed_config": {"@type": T + "stats.PluginConfig"}}
SERVICE = "reviews.shop.svc.cluster.local"
CLIENT_NODE = {"id": "sidecar~127.0.0.2~productpage-v1-0.shop~shop.svc.cluster.local",
               "cluster": "productpage.shop",
               "metadata": {"NAME": "productpage-v1-0", "NAMESPACE": "shop",
                            "WORKLOAD_NAME": "productpage-v1", "CLUSTER_ID": "vms",
                            "MESH_ID": "mesh1",
                            "LABELS": {"app": "productpage", "version": "v1"}}}
SERVER_NODE = {"id": "sidecar~127.0.0.3~reviews-v2-0.shop~shop.svc.cluster.local",
               "cluster": "reviews.shop",
               "metadata": {"NAME": "reviews-v2-0", "NAMESPACE": "shop",
                            "WORKLOAD_NAME": "reviews-v2", "CLUSTER_ID": "vms",
                            "MESH_ID": "mesh1",
                            "LABELS": {"app": "reviews", "version": "v2",
                                       "service.istio.io/canonical-name": "reviews"}}}


def exchange(side: str) -> dict:
    lists = ({"downstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
              "downstream_propagation": [{"istio_headers": {}}]} if side == "inbound" else
             {"upstream_discovery": [{"istio_headers": {}}, {"workload_discovery": {}}],
              "upstream_propagation": [{"istio_headers": {}}]})
    return {"name": "istio.metadata_exchange", "typed_config": {
        "@type": T + "udpa.type.v1.TypedStruct",
        "type_url": T + "io.istio.http.peer_metadata.Config", "value": lists}}


def sidecar(admin: int, port: int, direction: str, cluster: dict, node: dict) -> dict:
    hcm = {"@type": T + "envoy.extensions.filters.network.http_connection_manager.v3"
                        ".HttpConnectionManager",
           "stat_prefix": f"{direction}_{port}",
           "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"},
                                        "route": {"cluster": cluster["name"]}}]}]},
           "http_filters": [exchange(direction), STATS, ROUTER]}
    return {"node": node,
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [{"name": f"{direction}_{port}",
                               "traffic_direction": direction.upper(),
                               "address": {"socket_address": {"address": "127.0.0.1",
                                                              "port_value": port}},
                               "filter_chains": [{"filters": [{
                                   "name": "envoy.filters.network.http_connection_manager",
                                   "typed_config": hcm}]}]}],
                "clusters": [cluster]}}


def prometheus_lines(b, metric: str) -> list[str]:
    status, text = b.admin("/stats/prometheus")
    assert status == 200
    return [line for line in text.splitlines() if line.startswith(metric + "{")]


def labels_of(line: str) -> dict:
    inner = line[line.index("{") + 1:line.rindex("}")]
    return dict(part.split("=", 1) for part in inner.replace('"', "").split(","))


def test_both_sidecars_report_the_request_with_both_workloads(baton, recorder):
    inbound_port, outbound_port = free_port(), free_port()
    app = static_cluster("inbound|9080||", recorder)
    b = baton(sidecar(free_port(), inbound_port, "inbound", app, SERVER_NODE), concurrency=1)
    outbound = static_cluster(f"outbound|9080||{SERVICE}", inbound_port)
    outbound["metadata"] = {"filter_metadata": {"istio": {
        "services": [{"host": SERVICE, "name": "reviews", "namespace": "shop"}]}}}
    a = baton(sidecar(free_port(), outbound_port, "outbound", outbound, CLIENT_NODE),
              concurrency=1)

    request = urllib.request.Request(f"http://127.0.0.1:{outbound_port}/reviews/1",
                                     headers={"Host": f"reviews:9080"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 200
        response_headers = {name.lower() for name in resp.headers}
        record = json.loads(resp.read())
    # Neither application sees the exchange.
    assert not {"x-envoy-peer-metadata", "x-envoy-peer-metadata-id"} & response_headers
    assert not {"x-envoy-peer-metadata", "x-envoy-peer-metadata-id"} & {
        name for name, _ in record["headers"]}

    common = {"source_workload": "productpage-v1", "source_workload_namespace": "shop",
              "source_app": "productpage", "source_version": "v1",
              "source_canonical_service": "productpage", "source_canonical_revision": "v1",
              "source_cluster": "vms",
              "destination_workload": "reviews-v2", "destination_workload_namespace": "shop",
              "destination_app": "reviews", "destination_version": "v2",
              "destination_canonical_service": "reviews", "destination_canonical_revision": "v2",
              "destination_cluster": "vms",
              "request_protocol": "http", "response_code": "200", "response_flags": "-",
              "grpc_response_status": ""}
    (source_line,) = prometheus_lines(a, "istio_requests_total")
    source = labels_of(source_line)
    assert source_line.endswith(" 1")
    assert source == {**common, "reporter": "source", "source_principal": "unknown",
                      "destination_principal": "unknown", "destination_service": SERVICE,
                      "destination_service_name": "reviews",
                      "destination_service_namespace": "shop",
                      "connection_security_policy": "unknown"}
    (destination_line,) = prometheus_lines(b, "istio_requests_total")
    destination = labels_of(destination_line)
    assert destination_line.endswith(" 1")
    # B's cluster has no Istio metadata: the Host header names the service.
    assert destination == {**common, "reporter": "destination", "source_principal": "unknown",
                           "destination_principal": "unknown", "destination_service": "reviews",
                           "destination_service_name": "reviews",
                           "destination_service_namespace": "unknown",
                           "connection_security_policy": "none"}
    # The histograms: one observation each, on both sides.
    for b_or_a in (a, b):
        (count,) = prometheus_lines(b_or_a, "istio_request_duration_milliseconds_count")
        assert count.endswith(" 1")
        (size,) = prometheus_lines(b_or_a, "istio_response_bytes_count")
        assert size.endswith(" 1")


def test_tcp_connections_are_counted_with_their_bytes(baton, upstreams):
    from .clients import roundtrip
    from .conftest import tcp_bootstrap, wait_until
    echo = upstreams("echo")
    port = free_port()
    bootstrap = tcp_bootstrap(free_port(), port, [echo.port], cluster="inbound|7000||")
    listener = bootstrap["static_resources"]["listeners"][0]
    listener["traffic_direction"] = "INBOUND"
    listener["filter_chains"][0]["filters"].insert(0, STATS)
    bootstrap["node"] = SERVER_NODE
    b = baton(bootstrap, concurrency=1)
    assert roundtrip(port, b"x" * 1000) == b"x" * 1000

    def metric(name):
        lines = prometheus_lines(b, f"istio_tcp_{name}_total")
        return [(labels_of(line), int(line.rsplit(" ", 1)[1])) for line in lines]
    wait_until(lambda: metric("connections_closed"), 10, "istio_tcp_connections_closed_total")
    ((labels, _),) = metric("connections_opened")
    assert labels["reporter"] == "destination" and labels["request_protocol"] == "tcp"
    assert labels["destination_workload"] == "reviews-v2" and labels["source_workload"] == "unknown"
    assert labels["connection_security_policy"] == "none"
    for name, value in (("connections_opened", 1), ("connections_closed", 1),
                        ("received_bytes", 1000), ("sent_bytes", 1000)):
        assert [count for _, count in metric(name)] == [value], name
