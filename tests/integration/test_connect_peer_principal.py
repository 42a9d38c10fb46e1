"""Istio's waypoint-shaped HBONE inbound: the mTLS peer of connect_terminate is who the
internal listener behind it authorizes. istio/proxy's istio_authn on connect_terminate
shares io.istio.peer_principal (the client certificate's SPIFFE id) with the upstream
connection once, and main_internal's RBAC matches its filter_state; Baton's internal
connection has no TLS of its own, so every policy naming a principal denied (it now gets the
terminated CONNECT's). Two originators (Baton) with different SPIFFE ids tunnel to the same
terminator (Baton): the named one is echoed, the other is closed on its first bytes; the
internal listener's istio.stats name each as its source principal. (Istio's filter state
through an internal listener: Baton alone.)"""

from __future__ import annotations

import socket

from ..tls_certs import SPIFFE_ID, spiffe_leaf
from ..waiting import wait_until
from .conftest import free_port, static_cluster
from .test_hbone_tunnel import (CA, MESSAGES, T, TCP_PROXY, _start, _stats, originator, terminator,
                                tunnel_round_trip)
from .test_istio_telemetry import STATS, labels_of, prometheus_lines
from .tls_upstream import upstream_tls_socket

OTHER = "spiffe://cluster.local/ns/web/sa/other"


def _end(admin: int, port: int, echo: int) -> dict:
    end = terminator(admin, port, echo, "h2-tls")
    hcm = end["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "main_internal"
    end["static_resources"]["clusters"].append({
        "name": "main_internal", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": "main_internal", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"envoy_internal_address": {"server_listener_name": "main_internal"}}}}]}]}})
    rbac = {"name": "envoy.filters.network.rbac", "typed_config": {
        "@type": T + "envoy.extensions.filters.network.rbac.v3.RBAC", "stat_prefix": "main_internal.",
        "rules": {"policies": {"ns[shop]-policy[reviews]-rule[0]": {
            "permissions": [{"any": True}],
            "principals": [{"and_ids": {"ids": [{"or_ids": {"ids": [{"filter_state": {
                "key": "io.istio.peer_principal", "string_match": {"exact": SPIFFE_ID}}}]}}]}}]}}}}}
    end["static_resources"]["listeners"].append({
        "name": "main_internal", "internal_listener": {}, "traffic_direction": "INBOUND",
        "filter_chains": [{"filters": [STATS, rbac, {
            "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": TCP_PROXY, "stat_prefix": "inbound", "cluster": "echo"}}]}]})
    return end


def test_the_internal_listener_authorizes_the_connect_clients_principal(tmp_path):
    from .conftest import Upstream
    echo = Upstream("echo")
    end_port, named_port, other_port, admin = free_port(), free_port(), free_port(), free_port()
    other = originator(free_port(), other_port, end_port, "h2-tls")
    other["static_resources"]["clusters"][0]["transport_socket"] = upstream_tls_socket(
        CA, client=spiffe_leaf(CA, spiffe_id=OTHER), alpn=["h2"])
    started = []
    try:
        started.append(_start("baton", tmp_path / "end", _end(admin, end_port, echo.port)))
        started.append(_start("baton", tmp_path / "named",
                              originator(free_port(), named_port, end_port, "h2-tls")))
        started.append(_start("baton", tmp_path / "other", other))
        assert tunnel_round_trip(named_port) == list(MESSAGES)
        with socket.create_connection(("127.0.0.1", other_port), timeout=20) as s:
            s.sendall(MESSAGES[0])
            assert s.recv(65536) == b""         # denied on its first bytes: closed, no echo
        counted = {"main_internal.rbac.allowed": 1, "main_internal.rbac.denied": 1}
        wait_until(lambda: {k: _stats(admin, "main_internal.").get(k) for k in counted} == counted,
                   10, "one tunnel allowed, one denied")
        # Istio's stats read the same shared principal (the terminator's own certificate has
        # no SPIFFE id: no local principal, so not mutual_tls, as istio/proxy decides it).
        opened = {labels_of(line)["source_principal"]: labels_of(line)["connection_security_policy"]
                  for line in prometheus_lines(started[0], "istio_tcp_connections_opened_total")}
        assert opened == {SPIFFE_ID: "none", OTHER: "none"}
    finally:
        for proc in reversed(started):
            proc.stop()
        echo.stop()
