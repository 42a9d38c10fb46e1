"""Cluster.filters (upstream network filters): Istio's TCP metadata exchange is accepted as
the pass-through it is on a connection that does not negotiate its ALPN (xds/cluster_upstream.py),
directly or in a TypedStruct; anything else is refused with its path. The declared Istio type also shows in
/config_dump."""

import pytest

from baton.xds import protos
from baton.xds.ads import CLUSTER
from baton.xds.dump import _as_json
from baton.xds.translate import translate_cluster

MX = "envoy.tcp.metadataexchange.config.MetadataExchange"
TYPED_STRUCT = "type.googleapis.com/udpa.type.v1.TypedStruct"


def cluster(filters, **fields):
    data = {"name": "outbound|9080||details", "type": "STATIC", "connect_timeout": "1s",
            "filters": filters, **fields}
    protos.import_types_in(data)
    return protos.json_format.ParseDict(data, protos.Cluster())


def mx(**value):
    return {"name": "istio.metadata_exchange",
            "typed_config": {"@type": f"type.googleapis.com/{MX}", **value}}


def translated(pb):
    errors = []
    return translate_cluster(pb, "c", errors), errors


def test_metadata_exchange_is_accepted_directly_and_in_a_typed_struct():
    spec, errors = translated(cluster([mx(protocol="istio-peer-exchange")]))
    assert errors == []
    assert spec["upstream_filters"] == [{"name": "istio.metadata_exchange",
                                         "type": "istio.metadata_exchange",
                                         "protocol": "istio-peer-exchange"}]
    wrapped = {"name": "istio.metadata_exchange", "typed_config": {
        "@type": TYPED_STRUCT, "type_url": f"type.googleapis.com/{MX}",
        "value": {"protocol": "istio-peer-exchange", "enable_discovery": True}}}
    spec, errors = translated(cluster([wrapped]))
    assert errors == [] and spec["upstream_filters"][0]["protocol"] == "istio-peer-exchange"


def test_a_cluster_without_filters_keeps_its_shape():
    spec, errors = translated(cluster([]))
    assert errors == [] and "upstream_filters" not in spec


@pytest.mark.parametrize("filters, fields, error", [
    ([{"name": "x", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "s", "cluster": "c"}}], {},
     "c.filters[0].typed_config: envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy not "
     f"supported as an upstream network filter (only {MX})"),
    ([{"name": "x", "typed_config": {"@type": TYPED_STRUCT, "type_url": "type.googleapis.com/"
                                     "istio.stats", "value": {}}}], {},
     "c.filters[0].typed_config.type_url: istio.stats not supported as an upstream network "
     f"filter (only {MX})"),
    ([{"name": "x", "typed_config": {"@type": TYPED_STRUCT, "type_url": f"type.googleapis.com/"
                                     f"{MX}", "value": {"additional_labels": ["a"]}}}], {},
     "c.filters[0].typed_config.value.additional_labels: not supported"),
    ([{"name": "x"}], {}, "c.filters[0].typed_config: required"),
])
def test_other_upstream_filters_are_refused_with_their_path(filters, fields, error):
    spec, errors = translated(cluster(filters, **fields))
    assert spec is None and errors == [error]


def test_metadata_exchange_alpn_is_offered_by_tcp_proxy_connections_only():
    """Istio's tlsMode-istio match offers [istio-peer-exchange, istio]: a tcp_proxy
    connection offers it all (exchange_alpn) and runs the exchange; an HTTP pool's connection
    offers it without the exchange's protocol, as Istio's istio.alpn makes it."""
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {"alpn_protocols": ["istio-peer-exchange", "istio"]}}}
    errors, warnings = [], []
    spec = translate_cluster(cluster([mx(protocol="istio-peer-exchange")], transport_socket_matches=[
        {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": tls}]),
        "c", errors, warnings)
    assert errors == []
    assert spec["transport_socket_matches"][0]["tls"]["alpn"] == ["istio"]
    assert spec["transport_socket_matches"][0]["tls"]["exchange_alpn"] == [
        "istio-peer-exchange", "istio"]
    assert not any("metadata_exchange" in w for w in warnings), warnings


def test_unknown_field_numbers_of_the_declared_type_are_refused():
    pb = cluster([mx(protocol="p")])
    pb.filters[0].typed_config.value += b"\x18\x01"          # field 3, varint
    spec, errors = translated(pb)
    assert spec is None
    assert errors == [f"c.filters[0].typed_config: field number 3 of {MX} not supported"]


def test_config_dump_shows_the_istio_typed_config():
    pb = cluster([mx(protocol="istio-peer-exchange")])
    shown = _as_json(CLUSTER, pb.SerializeToString())
    assert shown["filters"] == [{"name": "istio.metadata_exchange", "typedConfig": {
        "@type": f"type.googleapis.com/{MX}", "protocol": "istio-peer-exchange"}}]
