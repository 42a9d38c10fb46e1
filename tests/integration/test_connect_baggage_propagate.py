"""Istio's connect_baggage with `propagate: true` (istio/proxy's filter of that release): the
downstream peer it knows (`wasm.downstream_peer`) goes upstream as a `baggage` header, in
WorkloadMetadataObject::baggage()'s form (every key in its order, an unknown value empty).
Two ways the peer is known, as in Istio: a terminated CONNECT's own baggage, shared with
the internal connection behind it (a waypoint's connect_terminate -> main_internal), and
an HTTP metadata exchange earlier in the stream. Before, `propagate` was accepted with a
warning and nothing was written. (Istio's filters: Baton alone.)"""

from __future__ import annotations

import base64
import json
import socket

from baton.worker.proxy.istio import struct_codec

from .clients import Http1Reader
from .conftest import Baton, free_port, static_cluster
from .test_hbone_tunnel import HCM, T, open_connect, terminator

ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}
PROPAGATE = {"name": "connect_baggage", "typed_config": {
    "@type": T + "udpa.type.v1.TypedStruct", "type_url": T + "io.istio.http.connect_baggage.Config",
    "value": {"propagate": True}}}
EXCHANGE = {"name": "istio.metadata_exchange", "typed_config": {
    "@type": T + "udpa.type.v1.TypedStruct", "type_url": T + "io.istio.http.peer_metadata.Config",
    "value": {"downstream_discovery": [{"istio_headers": {}}]}}}


def _hcm(name: str, filters: list) -> dict:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": name, "http_filters": filters + [ROUTER],
        "route_config": {"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]}}}


def _bootstrap(admin: int, port: int, plain: int, app: int) -> dict:
    end = terminator(admin, port, app, "h1")
    hcm = end["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(0, {"name": "connect_baggage", "typed_config": {
        "@type": T + "udpa.type.v1.TypedStruct", "type_url": T + "io.istio.http.connect_baggage.Config"}})
    hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "main_internal"
    resources = end["static_resources"]
    resources["clusters"] = [static_cluster("app", app), {
        "name": "main_internal", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": "main_internal", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"envoy_internal_address": {"server_listener_name": "main_internal"}}}}]}]}}]
    resources["listeners"] += [
        {"name": "main_internal", "internal_listener": {},
         "filter_chains": [{"filters": [_hcm("inner", [PROPAGATE])]}]},
        {"name": "plain", "address": {"socket_address": {"address": "127.0.0.1", "port_value": plain}},
         "filter_chains": [{"filters": [_hcm("plain", [EXCHANGE, PROPAGATE])]}]}]
    return end


def _baggage_seen(sock, reader, extra: str = "") -> list[str]:
    sock.sendall(f"GET / HTTP/1.1\r\nhost: app\r\n{extra}\r\n".encode())
    status, _, body = reader.response()
    assert status == 200, body
    record = json.loads(body)
    return [value for name, value in record["headers"] if name == "baggage"]


def test_the_downstream_peer_goes_upstream_as_baggage(tmp_path, recorder):
    port, plain = free_port(), free_port()
    b = Baton(tmp_path / "b", _bootstrap(free_port(), port, plain, recorder), concurrency=1).start()
    try:
        # A CONNECT's baggage (in another order, with a property, no app.*): shared with the
        # internal connection, whose connection manager writes it in Istio's form.
        s, reader = open_connect(port, f"127.0.0.1:{port}", (
            "baggage: k8s.namespace.name=shop,k8s.deployment.name=productpage-v1;p=1,"
            "k8s.cluster.name=east,service.name=productpage,service.version=v1\r\n"))
        with s:
            assert _baggage_seen(s, reader) == [
                "k8s.cluster.name=east,k8s.namespace.name=shop,k8s.deployment.name=productpage-v1,"
                "service.name=productpage,service.version=v1,app.name=,app.version="]
        # The metadata exchange's peer (a Deployment by its OWNER), added beside the
        # client's own baggage; no peer, no header of ours.
        metadata = {"NAME": "reviews-v2-abc", "NAMESPACE": "shop", "CLUSTER_ID": "west",
                    "WORKLOAD_NAME": "reviews-v2",
                    "OWNER": "kubernetes://apis/apps/v1/namespaces/shop/deployments/reviews-v2",
                    "LABELS": {"app": "reviews", "version": "v2",
                               "service.istio.io/canonical-name": "reviews",
                               "service.istio.io/canonical-revision": "v2"}}
        header = base64.b64encode(struct_codec.encode_struct(metadata)).decode()
        with socket.create_connection(("127.0.0.1", plain), timeout=20) as s:
            reader = Http1Reader(s)
            assert _baggage_seen(s, reader, f"x-envoy-peer-metadata: {header}\r\n"
                                            "x-envoy-peer-metadata-id: sidecar~reviews\r\n"
                                            "baggage: user=1\r\n") == [
                "user=1",
                "k8s.cluster.name=west,k8s.namespace.name=shop,k8s.deployment.name=reviews-v2,"
                "service.name=reviews,service.version=v2,app.name=reviews,app.version=v2"]
            assert _baggage_seen(s, reader) == []
    finally:
        b.stop()
