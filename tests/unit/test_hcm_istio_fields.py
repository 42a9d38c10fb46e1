"""HTTP connection manager fields Istio sets on every HCM: request_id_extension (the default
UUID extension, what Baton does), accepted; any other request id extension refused with its
path. (normalize_path and the escaped-slash actions: test_path_normalize.py.)"""

from baton.xds import protos
from baton.xds.http import translate_http_connection_manager
from baton.xds.parse import parse_dict

ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3."
                                    "Router"}}
UUID = "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig"


def translated(**fields):
    data = {"stat_prefix": "in", "http_filters": [ROUTER], "route_config": {
        "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]}, **fields}
    pb = protos.HttpConnectionManager()
    errors, warnings = [], []
    assert parse_dict(data, pb, "hcm", errors) == [], errors
    return translate_http_connection_manager(pb, "hcm", errors, warnings), errors, warnings


def test_the_uuid_request_id_extension_is_accepted_as_what_baton_does():
    plain, _, _ = translated()
    hcm, errors, warnings = translated(request_id_extension={"typed_config": {
        "@type": UUID, "pack_trace_reason": True, "use_request_id_for_trace_sampling": True}})
    assert errors == [] and warnings == []
    assert hcm == plain                       # the same x-request-id behaviour as unset


def test_pack_trace_reason_with_tracing_warns_that_nothing_is_packed():
    _, errors, warnings = translated(tracing={}, request_id_extension={"typed_config": {
        "@type": UUID}})
    assert errors == []
    assert "hcm.request_id_extension.typed_config.pack_trace_reason: ignored (tracing is not " \
        "implemented, so no trace reason is packed into x-request-id)" in warnings


def test_another_request_id_extension_is_refused_with_its_path():
    hcm, errors, _ = translated(request_id_extension={"typed_config": {
        "@type": "type.googleapis.com/google.protobuf.Empty"}})
    assert hcm is None
    assert errors == ["hcm.request_id_extension.typed_config: google.protobuf.Empty not "
                      "supported (only envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig)"]


def test_listener_traffic_direction_is_accepted_and_shown_in_config_dump():
    from baton.xds.ads import LISTENER
    from baton.xds.dump import _as_json
    from baton.xds.translate import translate_listener
    data = {"name": "virtualOutbound", "traffic_direction": "OUTBOUND",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15001}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3."
                         "TcpProxy", "stat_prefix": "out", "cluster": "c"}}]}]}
    protos.import_types_in(data)
    pb = protos.json_format.ParseDict(data, protos.Listener())
    errors = []
    assert translate_listener(pb, "l", errors) is not None and errors == []
    assert _as_json(LISTENER, pb.SerializeToString())["trafficDirection"] == "OUTBOUND"
