"""Istio's standard metrics in the worker: the Struct codec of the peer metadata, workload
labels from node metadata, labelled counters and histograms, and their Prometheus text."""

from __future__ import annotations

import base64
from types import SimpleNamespace

from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf import json_format, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from baton.supervisor.admin import render_prometheus
from baton.worker.codecs.message import Headers, Request, Response
from baton.worker.proxy.http.stream_info import StreamInfo
from baton.worker.proxy.istio import struct_codec
from baton.worker.proxy.istio.http_stats import IstioStatsFactory
from baton.worker.proxy.istio.metrics import IstioMetrics, service_of
from baton.worker.proxy.istio.peer_metadata import (PeerMetadataFactory, decode_header,
                                                    encode_header, take_peer)
from baton.worker.proxy.istio.workload import UNKNOWN_WORKLOAD, Workload, from_metadata
from baton.worker.stats import Stats, merge

from ..tls_certs import make_ca, spiffe_leaf

NODE = {"NAME": "reviews-v2-0", "NAMESPACE": "shop", "WORKLOAD_NAME": "reviews-v2",
        "CLUSTER_ID": "vm-cluster", "MESH_ID": "mesh1",
        "LABELS": {"app": "reviews", "version": "v2",
                   "service.istio.io/canonical-name": "reviews-svc"}}

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8)


@given(st.dictionaries(st.text(), json_values, max_size=4))
def test_struct_codec_agrees_with_protobuf_both_ways(value):
    message = struct_pb2.Struct()
    json_format.ParseDict(value, message)
    assert struct_codec.decode_struct(message.SerializeToString()) == \
        json_format.MessageToDict(message)
    parsed = struct_pb2.Struct()
    parsed.ParseFromString(struct_codec.encode_struct(value))
    assert parsed == message


def test_any_wraps_a_struct():
    payload = struct_codec.encode_struct(NODE)
    type_url, value = struct_codec.decode_any(struct_codec.encode_any(
        struct_codec.STRUCT_TYPE_URL, payload))
    assert type_url == struct_codec.STRUCT_TYPE_URL and struct_codec.decode_struct(value) == NODE


def test_workload_labels_with_istios_fallbacks():
    assert from_metadata(NODE) == Workload(
        workload="reviews-v2", namespace="shop", app="reviews", version="v2",
        canonical_service="reviews-svc", canonical_revision="v2", cluster="vm-cluster")
    bare = from_metadata({"WORKLOAD_NAME": "db", "NAMESPACE": "data"})
    assert (bare.app, bare.version, bare.canonical_service, bare.canonical_revision,
            bare.cluster) == ("unknown", "unknown", "db", "latest", "unknown")
    assert from_metadata({}) is UNKNOWN_WORKLOAD and from_metadata(None) is UNKNOWN_WORKLOAD


def test_peer_headers_are_read_and_removed():
    headers = Headers([("x-envoy-peer-metadata-id", "sidecar~10.0.0.1~a.shop~shop.svc"),
                       ("x-envoy-peer-metadata", encode_header(NODE)), ("accept", "*/*")])
    assert take_peer(headers) == from_metadata(NODE)
    assert list(headers) == [("accept", "*/*")]
    # Garbage is no peer (and still removed); no header at all, none either.
    garbage = Headers([("x-envoy-peer-metadata", "%%%"), ("x-envoy-peer-metadata-id", "x")])
    assert take_peer(garbage) is None and list(garbage) == []
    assert take_peer(Headers([])) is None
    assert decode_header(base64.b64encode(b"\x0a\x05").decode()) is None     # truncated


def test_destination_service_from_cluster_metadata_else_host():
    metadata = {"filter_metadata": {"istio": {"services": [
        {"host": "reviews.shop.svc.cluster.local", "name": "reviews", "namespace": "shop"}]}}}
    assert service_of(metadata, "ignored:9080") == ("reviews.shop.svc.cluster.local", "reviews",
                                                    "shop")
    assert service_of(None, "reviews:9080") == ("reviews", "reviews", "unknown")
    assert service_of(None, "reviews:9080", host_fallback=False) == ("unknown",) * 3


def _key(reporter="source", code="200"):
    return (reporter, from_metadata(NODE), "unknown", UNKNOWN_WORKLOAD, "unknown",
            ("reviews", "reviews", "unknown"),
            (("request_protocol", "http"), ("response_code", code),
             ("grpc_response_status", ""), ("response_flags", "-"),
             ("connection_security_policy", "unknown")))


def test_requests_are_counted_per_label_set_and_rendered_as_prometheus_histograms():
    workers = [Stats(), Stats()]
    for stats, duration in zip(workers, (3.0, 700.0)):
        metrics = IstioMetrics(stats)
        metrics.request(_key(), duration, 10, 2000)
        metrics.request(_key(code="503"), 0.2, 0, 0)
    text = render_prometheus({**merge(s.snapshot() for s in workers)})
    lines = text.splitlines()
    labels = ('reporter="source",source_workload="reviews-v2",source_canonical_service='
              '"reviews-svc",source_canonical_revision="v2",source_workload_namespace="shop",'
              'source_principal="unknown",source_app="reviews",source_version="v2",'
              'source_cluster="vm-cluster",destination_workload="unknown",'
              'destination_workload_namespace="unknown",destination_principal="unknown",'
              'destination_app="unknown",destination_version="unknown",'
              'destination_service="reviews",destination_canonical_service="unknown",'
              'destination_canonical_revision="unknown",destination_service_name="reviews",'
              'destination_service_namespace="unknown",destination_cluster="unknown",'
              'request_protocol="http",response_code="200",grpc_response_status="",'
              'response_flags="-",connection_security_policy="unknown"')
    assert f"istio_requests_total{{{labels}}} 2" in lines
    assert "# TYPE istio_requests_total counter" in lines
    assert "# TYPE istio_request_duration_milliseconds histogram" in lines
    # Cumulative buckets: 3 ms falls in le=5, 700 ms in le=1000.
    assert f'istio_request_duration_milliseconds_bucket{{{labels},le="1"}} 0' in lines
    assert f'istio_request_duration_milliseconds_bucket{{{labels},le="5"}} 1' in lines
    assert f'istio_request_duration_milliseconds_bucket{{{labels},le="500"}} 1' in lines
    assert f'istio_request_duration_milliseconds_bucket{{{labels},le="1000"}} 2' in lines
    assert f'istio_request_duration_milliseconds_bucket{{{labels},le="3600000"}} 2' in lines
    assert f'istio_request_duration_milliseconds_bucket{{{labels},le="+Inf"}} 2' in lines
    assert f"istio_request_duration_milliseconds_sum{{{labels}}} 703" in lines
    assert f"istio_request_duration_milliseconds_count{{{labels}}} 2" in lines
    assert f'istio_response_bytes_bucket{{{labels},le="1000"}} 0' in lines
    assert f'istio_response_bytes_bucket{{{labels},le="10000"}} 2' in lines
    assert f"istio_request_bytes_sum{{{labels}}} 20" in lines
    assert f'istio_requests_total{{{labels.replace("200", "503")}}} 2' in lines
    # One TYPE line per metric, Envoy's own stats untouched.
    assert text.count("# TYPE istio_request_bytes histogram") == 1


def test_tcp_counters():
    stats = Stats()
    metrics = IstioMetrics(stats)
    key = _key()[:6] + ((("request_protocol", "tcp"), ("response_flags", "-"),
                         ("connection_security_policy", "none")),)
    metrics.tcp(key, opened=1)
    metrics.tcp(key, closed=1, sent=5, received=7)
    text = render_prometheus(merge([stats.snapshot()]))
    for metric, value in (("connections_opened", 1), ("connections_closed", 1),
                          ("sent_bytes", 5), ("received_bytes", 7)):
        assert f"# TYPE istio_tcp_{metric}_total counter" in text
        assert any(line.startswith(f'istio_tcp_{metric}_total{{reporter="source"')
                   and line.endswith(f'connection_security_policy="none"}} {value}')
                   for line in text.splitlines())


def test_the_stats_filter_labels_a_grpc_call_seen_inbound_over_mtls():
    """The HTTP stats filter end to end on one stream: inbound listener (reporter
    destination), a client certificate (its URI SAN is source_principal), the peer from the
    exchange filter before it, a gRPC status in the trailers."""
    stats = Stats()
    worker = SimpleNamespace(node={"id": "sidecar~b", "metadata": NODE}, stats=stats,
                             loop=SimpleNamespace(time=lambda: 10.0),
                             clusters={"inbound|9080||": SimpleNamespace(metadata=None)})
    context = SimpleNamespace(worker=worker, stats=stats)
    client = spiffe_leaf(make_ca(), spiffe_id="spiffe://cluster.local/ns/web/sa/front")
    tls = SimpleNamespace(peer_der=client.cert.public_bytes(Encoding.DER), cache={},
                          local_uris=["spiffe://cluster.local/ns/shop/sa/reviews"])
    conn = SimpleNamespace(listener=SimpleNamespace(spec={"traffic_direction": "INBOUND"}), tls=tls)
    caller = {"WORKLOAD_NAME": "front", "NAMESPACE": "web", "LABELS": {"app": "front"}}
    request = Request("POST", "/pkg.Svc/Do", "reviews:9080", Headers([
        ("content-type", "application/grpc"), ("x-envoy-peer-metadata-id", "sidecar~a"),
        ("x-envoy-peer-metadata", encode_header(caller))]))
    info = StreamInfo(request, 9.5, "HTTP/2", ("1.1.1.1", 1), ("2.2.2.2", 2))
    stream = SimpleNamespace(conn=conn, worker=worker, loop=worker.loop, request=request,
                             info=info, filters=[])
    exchange = PeerMetadataFactory({"read_request": True, "write_response": True}, context)
    stream.filters = [exchange.create(stream), IstioStatsFactory({}, context).create(stream)]
    stream.filters[0].on_request_headers(request, False)
    assert "x-envoy-peer-metadata" not in request.headers
    response = Response(200, Headers([("content-type", "application/grpc")]))
    stream.filters[0].on_response_headers(response, False)
    assert decode_header(response.headers.get("x-envoy-peer-metadata")) == NODE
    info.upstream_cluster, info.response, info.response_code = "inbound|9080||", response, 200
    info.response_trailers = Headers([("grpc-status", "14")])
    info.last_downstream_byte = 9.75
    stream.filters[1].on_log()
    ((name, value),) = [(k, v) for k, v in stats.counters.items()
                        if k.startswith("istio_requests_total")]
    labels = dict(part.split("=", 1) for part in name[name.index("{") + 1:-1].replace('"', "").split(","))
    assert value == 1 and {k: labels[k] for k in (
        "reporter", "source_workload", "source_app", "source_principal", "destination_workload",
        "destination_principal", "destination_service", "request_protocol", "response_code",
        "grpc_response_status", "connection_security_policy")} == {
        "reporter": "destination", "source_workload": "front", "source_app": "front",
        "source_principal": "spiffe://cluster.local/ns/web/sa/front",
        "destination_workload": "reviews-v2",
        "destination_principal": "spiffe://cluster.local/ns/shop/sa/reviews",
        "destination_service": "reviews", "request_protocol": "grpc", "response_code": "200",
        "grpc_response_status": "14", "connection_security_policy": "mutual_tls"}
    assert any(k.startswith("istio_request_duration_milliseconds_bucket") and 'le="250"' in k
               and v == 1 for k, v in stats.counters.items())
