"""Internal listeners in the API (xds/internal.py), as Istio ambient sends them: a listener
with `internal_listener` and no address (no socket, no address clash), Istio's
set_internal_dst_address listener filter, endpoints at an `envoy_internal_address` with the
original_dst metadata, a cluster's `internal_upstream` socket, and the precise refusals
around them. The data path: tests/integration/test_hbone_tunnel.py."""

from __future__ import annotations

from baton.xds import protos
from baton.xds.translate import translate_cluster, translate_listener, translate_load_assignment
from baton.worker.proxy.internal_listener import _passes_host_metadata, ip_and_port

T = "type.googleapis.com/"
TCP = {"name": "envoy.filters.network.tcp_proxy",
       "typed_config": {"@type": T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "connect_originate", "cluster": "connect_originate"}}
SET_DST = {"name": "set_dst_address", "typed_config": {
    "@type": T + "udpa.type.v1.TypedStruct",
    "type_url": T + "istio.set_internal_dst_address.v1.Config"}}
INTERNAL_UPSTREAM = {"name": "internal_upstream", "typed_config": {
    "@type": T + "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
    "passthrough_metadata": [{"kind": {"host": {}}, "name": "envoy.filters.listener.original_dst"}],
    "transport_socket": {"name": "raw_buffer", "typed_config": {
        "@type": T + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}}


def _parse(data, cls):
    protos.import_types_in(data)
    return protos.json_format.ParseDict(data, cls())


def _translate(fn, data, cls, **kwargs):
    errors, warnings = [], []
    return fn(_parse(data, cls), "x", errors, warnings, **kwargs), errors


def test_an_internal_listener_has_no_address_and_no_socket():
    spec, errors = _translate(translate_listener, {
        "name": "connect_originate", "internal_listener": {}, "use_original_dst": False,
        "listener_filters": [SET_DST], "filter_chains": [{"filters": [TCP]}]}, protos.Listener)
    assert errors == []
    assert (spec["internal"], spec["bind_to_port"], spec["set_internal_dst"]) == (True, False, True)
    assert spec["stat_name"] == "connect_originate" and spec["port"] == 0
    _, errors = _translate(translate_listener, {
        "name": "i", "internal_listener": {}, "filter_chains": [{"filters": [TCP]}],
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}, protos.Listener)
    assert errors == ["x.address: an internal listener has no address"]


def test_filter_chain_matcher_needs_named_chains():
    """Supported now (tests/unit/test_filter_chain_matcher.py); Envoy's rule stays: the
    chains it picks by name must all be uniquely named."""
    _, errors = _translate(translate_listener, {
        "name": "main_internal", "internal_listener": {}, "filter_chains": [{"filters": [TCP]}],
        "filter_chain_matcher": {"on_no_match": {"action": {"name": "a", "typed_config": {
            "@type": T + "google.protobuf.StringValue", "value": "a"}}}}}, protos.Listener)
    assert errors == ["x.filter_chains[0].name: a filter_chain_matcher needs every filter "
                      "chain uniquely named"]


def test_internal_endpoints_keep_their_listener_id_and_original_destination():
    spec, errors = _translate(translate_load_assignment, {
        "cluster_name": "inbound-vip|8100|http|httpbin.default.svc.cluster.local",
        "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"envoy_internal_address": {
                "server_listener_name": "connect_originate", "endpoint_id": "192.168.195.248:800"}}},
            "metadata": {"filter_metadata": {
                "envoy.filters.listener.original_dst": {"local": "192.168.195.248:800"},
                "istio": {"workload": "httpbin;default;httpbin;v1;snorlax"}}}}]}]},
        protos.ClusterLoadAssignment)
    assert errors == []
    [endpoint] = spec["endpoints"]
    assert endpoint["address"] == "internal:connect_originate/192.168.195.248:800"
    assert endpoint["internal"] == ["connect_originate", "192.168.195.248:800", "192.168.195.248:800"]
    assert ip_and_port("192.168.195.248:800") == ("192.168.195.248", 800)
    assert ip_and_port("[fd00::1]:80") == ("fd00::1", 80) and ip_and_port("nope") is None


def test_internal_upstream_passes_host_metadata_and_refuses_tls_inside():
    cluster = {"name": "c", "type": "EDS", "cleanup_interval": "60s",
               "eds_cluster_config": {"eds_config": {"ads": {}}}, "transport_socket": INTERNAL_UPSTREAM}
    spec, errors = _translate(translate_cluster, cluster, protos.Cluster)
    assert errors == []
    assert spec["internal_upstream"] == {"metadata": [["host", "envoy.filters.listener.original_dst"]]}
    assert _passes_host_metadata(type("C", (), {"internal_upstream": spec["internal_upstream"]}))
    tls_inside = dict(INTERNAL_UPSTREAM, typed_config=dict(
        INTERNAL_UPSTREAM["typed_config"], transport_socket={"name": "envoy.transport_sockets.tls"}))
    _, errors = _translate(translate_cluster, dict(cluster, transport_socket=tls_inside), protos.Cluster)
    assert errors == ["x.transport_socket.typed_config.transport_socket: "
                      "'envoy.transport_sockets.tls' not supported (raw_buffer only: the "
                      "connection stays in this process)"]
