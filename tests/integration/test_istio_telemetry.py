"""Istio's telemetry between two Baton sidecars on loopback (issue 14, Istio's extensions):
the client calls sidecar A's outbound listener, A calls sidecar B's inbound listener, B calls
the application. The HTTP metadata exchange (io.istio.http.peer_metadata, as istiod 1.20+
configures it on each side) tells each sidecar who the other is, and istio.stats reports
the request on both: reporter=source on A, reporter=destination on B, each with both
workloads' labels. The exchange's headers never reach either application.

The last test crosses mTLS with the TCP metadata exchange (istio-peer-exchange) between the
two sidecars' tcp_proxy chains."""

from __future__ import annotations

import json
import urllib.request

from ..tls_certs import make_ca, spiffe_leaf
from .clients import roundtrip
from .conftest import free_port, static_cluster, tcp_bootstrap, wait_until

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
                                     headers={"Host": "reviews:9080"})
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


CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/productpage"
SERVER_ID = "spiffe://cluster.local/ns/shop/sa/reviews"
EXCHANGE_ALPN = ["istio-peer-exchange", "istio"]
TCP_EXCHANGE = {"name": "istio.metadata_exchange", "typed_config": {
    "@type": T + "udpa.type.v1.TypedStruct",
    "type_url": T + "envoy.tcp.metadataexchange.config.MetadataExchange",
    "value": {"protocol": "istio-peer-exchange", "enable_discovery": True}}}


def tls_context(kind: str, cert: str, key: str, ca: str) -> dict:
    common = {"alpn_protocols": EXCHANGE_ALPN,
              "tls_certificates": [{"certificate_chain": {"filename": cert},
                                    "private_key": {"filename": key}}],
              "validation_context": {"trusted_ca": {"filename": ca}}}
    if kind == "downstream":
        return {"@type": T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": True, "common_tls_context": common}
    return {"@type": T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": common}


def tcp_proxy(cluster: str) -> dict:
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": cluster, "cluster": cluster}}


def test_tcp_metadata_exchange_over_mtls_labels_both_sides(baton, upstreams, tmp_path):
    """Istio's TCP path: sidecar A's tcp_proxy originates mTLS offering istio-peer-exchange,
    sidecar B's inbound chain ends it; each sends its frame and takes the other's, so both
    report the connection with both workloads and both SPIFFE identities, and the echo
    upstream gets the client's bytes only."""
    ca = make_ca()
    ca_path = tmp_path / "ca.crt"
    ca_path.write_bytes(ca.cert_pem)
    client_cert, client_key = spiffe_leaf(ca, spiffe_id=CLIENT_ID, client=True).write(tmp_path, "a")
    server_cert, server_key = spiffe_leaf(ca, spiffe_id=SERVER_ID, client=False).write(tmp_path, "b")
    echo = upstreams("echo")
    inbound_port, outbound_port = free_port(), free_port()

    def bootstrap(node, port, direction, chain, cluster):
        return {"node": node, "admin": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": free_port()}}},
                "static_resources": {"listeners": [{
                    "name": direction, "traffic_direction": direction.upper(),
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [chain]}], "clusters": [cluster]}}

    inbound_chain = {"filters": [TCP_EXCHANGE, STATS, tcp_proxy("inbound|7000||")],
                     "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config":
                                          tls_context("downstream", server_cert, server_key,
                                                      str(ca_path))}}
    b = baton(bootstrap(SERVER_NODE, inbound_port, "inbound", inbound_chain,
                        static_cluster("inbound|7000||", echo.port)), concurrency=1)
    outbound = static_cluster("outbound|7000||echo.shop.svc.cluster.local", inbound_port)
    outbound["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config":
                                    tls_context("upstream", client_cert, client_key, str(ca_path))}
    outbound["filters"] = [{"name": "istio.metadata_exchange",
                            "typed_config": TCP_EXCHANGE["typed_config"]}]
    outbound["metadata"] = {"filter_metadata": {"istio": {"services": [
        {"host": "echo.shop.svc.cluster.local", "name": "echo", "namespace": "shop"}]}}}
    a = baton(bootstrap(CLIENT_NODE, outbound_port, "outbound",
                        {"filters": [STATS, tcp_proxy(outbound["name"])]}, outbound),
              concurrency=1)

    payload = bytes(range(256)) * 40
    assert roundtrip(outbound_port, payload) == payload

    def tcp_lines(side, name):
        return [(labels_of(line), int(line.rsplit(" ", 1)[1]))
                for line in prometheus_lines(side, f"istio_tcp_{name}_total")]
    for side in (a, b):
        wait_until(lambda: tcp_lines(side, "connections_closed"), 10, "a closed connection")
    ((source, _),) = tcp_lines(a, "connections_opened")
    ((destination, _),) = tcp_lines(b, "connections_opened")
    assert (source["reporter"], source["source_workload"], source["destination_workload"],
            source["destination_principal"], source["destination_service"]) == (
        "source", "productpage-v1", "reviews-v2", SERVER_ID, "echo.shop.svc.cluster.local")
    assert (destination["reporter"], destination["source_workload"],
            destination["destination_workload"], destination["source_principal"],
            destination["destination_principal"], destination["connection_security_policy"]) == (
        "destination", "productpage-v1", "reviews-v2", CLIENT_ID, SERVER_ID, "mutual_tls")
    for side in (a, b):
        for name, value in (("connections_opened", 1), ("connections_closed", 1),
                            ("received_bytes", len(payload)), ("sent_bytes", len(payload))):
            assert [count for _, count in tcp_lines(side, name)] == [value], (name, side)
