"""stats.PluginConfig's `reporter` (istio/proxy's config.proto field 10): a waypoint's
istio.stats (SERVER_GATEWAY, in a TypedStruct on HTTP and TCP chains, as the ambient
waypoint dump has it) is accepted and reports as Istio's filter does: reporter "waypoint",
the client as the source, the destination workload unknown without a workload lookup."""

from __future__ import annotations

from types import SimpleNamespace

from baton.worker.proxy.istio.http_stats import mesh_side
from baton.worker.proxy.istio.workload import UNKNOWN_WORKLOAD, Workload

from .test_istio_http_filters import ROUTER, T, translate_filters
from .test_istio_listeners import TCP, listener

GATEWAY_STATS = {"name": "istio.stats", "typed_config": {
    "@type": T + "udpa.type.v1.TypedStruct", "type_url": T + "stats.PluginConfig",
    "value": {"reporter": "SERVER_GATEWAY"}}}


def test_a_waypoints_stats_filter_is_accepted_on_http_and_tcp_chains():
    result, errors, _ = translate_filters([GATEWAY_STATS, ROUTER])
    assert errors == [] and result[0] == {"name": "istio.stats", "config": {
        "disable_host_header_fallback": False, "reporter": "waypoint"}}
    result, errors, _ = translate_filters([
        {"name": "istio.stats", "typed_config": {"@type": T + "stats.PluginConfig",
                                                 "reporter": "SERVER_GATEWAY"}}, ROUTER])
    assert errors == [] and result[0]["config"]["reporter"] == "waypoint"
    spec, errors, _ = listener(filter_chains=[{"filters": [GATEWAY_STATS, TCP]}])
    assert errors == []
    assert spec["filter_chains"][0]["network_filters"] == [
        {"name": "istio.stats", "type": "istio.stats", "reporter": "waypoint"}]
    bad = {**GATEWAY_STATS, "typed_config": {**GATEWAY_STATS["typed_config"],
                                             "value": {"reporter": "CLIENT"}}}
    _, errors, _ = translate_filters([bad, ROUTER])
    assert errors == ["hcm.http_filters[0].typed_config.value.reporter: 'CLIENT' not supported "
                      "(UNSPECIFIED, SERVER_GATEWAY)"]


def test_the_waypoint_reports_the_client_as_source_and_an_unknown_destination():
    local = Workload("waypoint", "default", cluster="Kubernetes")
    peer = Workload("sleep", "default")
    conn = SimpleNamespace(listener=SimpleNamespace(spec={"traffic_direction": "OUTBOUND"}),
                           tls=None)
    assert mesh_side(conn, local, peer, reporter="waypoint") == (
        "waypoint", peer, "unknown", Workload(cluster="Kubernetes"), "unknown", "none")
    assert mesh_side(conn, local, UNKNOWN_WORKLOAD)[0] == "source"
