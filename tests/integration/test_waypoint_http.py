"""A waypoint's HTTP path through an internal listener, in a real Baton: a connection
manager's route to an `inbound-vip|...`-style cluster whose endpoint is an
`envoy_internal_address` (the HTTP pool dials the internal listener through the worker's
socket pair), with the endpoint's `envoy.filters.listener.original_dst` `local` passed by
`internal_upstream` and restored by Istio's set_internal_dst_address; the internal
listener's filter_chain_matcher picks the chain by that destination's port and by
http_inspector's protocol, and its connection manager forwards to the workload (the
recording upstream). Status, body bytes and the upstream's view must come through intact,
and the connection is reused for the next request."""

from __future__ import annotations

import hashlib
import json
import urllib.request

import pytest

from .conftest import Baton, free_port, static_cluster

T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
NET = T + "envoy.extensions.matching.common_inputs.network.v3."
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": T + "envoy.extensions.filters.http.router.v3.Router"}}


def hcm(name: str, cluster: str) -> dict:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": name, "http_filters": [ROUTER],
        "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}}}


def action(name: str) -> dict:
    return {"action": {"name": name, "typed_config": {
        "@type": T + "google.protobuf.StringValue", "value": name}}}


def waypoint(admin: int, port: int, workload: int, bind: bool = False) -> dict:
    vip = "inbound-vip|8000|http|app.default.svc.cluster.local"
    front = {"name": "front", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
             "filter_chains": [{"filters": [hcm("front", vip)]}]}
    main_internal = {
        "name": "main_internal", "internal_listener": {},
        "listener_filters": [
            {"name": "set_dst_address", "typed_config": {
                "@type": T + "udpa.type.v1.TypedStruct",
                "type_url": T + "istio.set_internal_dst_address.v1.Config"}},
            {"name": "envoy.filters.listener.http_inspector", "typed_config": {
                "@type": T + "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}],
        "filter_chains": [{"name": "workload-http", "filters": [hcm("workload", "workload")]},
                          {"name": "workload-tcp", "filters": [hcm("wrong", "nowhere")]},
                          {"name": "elsewhere", "filters": [hcm("elsewhere", "nowhere")]}],
        "filter_chain_matcher": {"matcher_tree": {
            "input": {"name": "port", "typed_config": {"@type": NET + "DestinationPortInput"}},
            "exact_match_map": {"map": {str(workload): {"matcher": {
                "matcher_tree": {
                    "input": {"name": "p", "typed_config": {"@type": NET + "ApplicationProtocolInput"}},
                    "exact_match_map": {"map": {"'http/1.1'": action("workload-http")}}},
                "on_no_match": action("workload-tcp")}}}}},
            "on_no_match": action("elsewhere")}}
    internal_cluster = {
        "name": vip, "connect_timeout": "1s",
        "transport_socket": {"name": "internal_upstream", "typed_config": {
            "@type": T + "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
            "passthrough_metadata": [{"kind": {"host": {}}, "name": "envoy.filters.listener.original_dst"}],
            "transport_socket": {"name": "raw_buffer", "typed_config": {
                "@type": T + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}},
        "load_assignment": {"cluster_name": vip, "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"envoy_internal_address": {
                "server_listener_name": "main_internal", "endpoint_id": f"127.0.0.1:{workload}"}}},
            "metadata": {"filter_metadata": {"envoy.filters.listener.original_dst": {
                "local": f"127.0.0.1:{workload}"}}}}]}]}}
    if bind:        # as Istio binds inbound clusters to 127.0.0.6: nothing to bind internally
        internal_cluster["upstream_bind_config"] = {"source_address": {
            "address": "127.0.0.6", "port_value": 0}}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
                "@type": T + "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}],
            "static_resources": {"listeners": [front, main_internal],
                                 "clusters": [internal_cluster, static_cluster("workload", workload),
                                              static_cluster("nowhere", 9)]}}


def _stats(admin: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return {name: value for name, _, value in (line.partition(": ") for line in lines)}


@pytest.mark.parametrize("bind", [False, True], ids=["plain", "upstream_bind_config"])
def test_http_route_through_an_internal_listener_to_the_workload(tmp_path, recorder, bind):
    admin, port = free_port(), free_port()
    proxy = Baton(tmp_path / "waypoint", waypoint(admin, port, recorder, bind), concurrency=1)
    proxy.start(ready_timeout=60)
    try:
        body = bytes(range(256)) * 400                      # 100 KB, every byte value
        for i in range(2):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/upload?n={i}", data=body,
                                         headers={"x-test-key": f"wp{i}", "content-type": "x/y"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200
                seen = json.loads(resp.read())
            assert (seen["upstream"], seen["method"], seen["path"]) == ("app", "POST", f"/upload?n={i}")
            assert seen["body_length"] == len(body)
            assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
        stats = _stats(admin)
        vip = "cluster.inbound-vip|8000|http|app.default.svc.cluster.local."
        # One pooled connection into the internal listener carried both requests.
        assert stats[vip + "upstream_cx_total"] == "1" and stats[vip + "upstream_rq_total"] == "2"
        assert stats["listener.main_internal.downstream_cx_total"] == "1"
        assert stats["http.workload.downstream_rq_total"] == "2"
        assert stats.get("http.wrong.downstream_rq_total", "0") == "0"
    finally:
        proxy.stop()
