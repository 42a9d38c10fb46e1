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
from .test_istio_authn_filter_state import ISTIO_AUTHN
from .test_istio_telemetry import STATS, labels_of, prometheus_lines
from .tls_upstream import upstream_tls_socket

OTHER = "spiffe://cluster.local/ns/web/sa/other"


def _end(admin: int, port: int, echo: int, authn: bool = True) -> dict:
    """The terminator, its connect_terminate chain behind istio_authn (what writes the
    principals it shares) unless not `authn`, into main_internal's RBAC and stats."""
    end = terminator(admin, port, echo, "h2-tls")
    filters = end["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    hcm = filters[0]["typed_config"]
    if authn:
        filters.insert(0, ISTIO_AUTHN)
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


def _denied(port: int, admin: int, allowed: int) -> None:
    """The tunnel through the originator on `port` is denied on its first bytes (closed, no
    echo), the terminator's main_internal counting it after `allowed` others."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(MESSAGES[0])
        assert s.recv(65536) == b""
    counted = {"main_internal.rbac.allowed": allowed, "main_internal.rbac.denied": 1}
    wait_until(lambda: {k: _stats(admin, "main_internal.").get(k) for k in counted} == counted,
               10, f"{allowed} tunnel(s) allowed, one denied")


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
        _denied(other_port, admin, allowed=1)
        # Istio's stats read the same shared principal (the terminator's own certificate has
        # no SPIFFE id: no local principal, so not mutual_tls, as istio/proxy decides it).
        opened = {labels_of(line)["source_principal"]: labels_of(line)["connection_security_policy"]
                  for line in prometheus_lines(started[0], "istio_tcp_connections_opened_total")}
        assert opened == {SPIFFE_ID: "none", OTHER: "none"}
    finally:
        for proc in reversed(started):
            proc.stop()
        echo.stop()


def test_without_istio_authn_on_connect_terminate_no_principal_is_shared(tmp_path):
    """Only istio_authn writes io.istio.peer_principal: a connect_terminate chain without it
    shares none, and the policy naming the principal denies the tunnel (as it denies every
    peer in Envoy, test_istio_authn_filter_state.py)."""
    from .conftest import Upstream
    echo = Upstream("echo")
    end_port, named_port, admin = free_port(), free_port(), free_port()
    started = []
    try:
        started.append(_start("baton", tmp_path / "end",
                              _end(admin, end_port, echo.port, authn=False)))
        started.append(_start("baton", tmp_path / "named",
                              originator(free_port(), named_port, end_port, "h2-tls")))
        _denied(named_port, admin, allowed=0)
    finally:
        for proc in reversed(started):
            proc.stop()
        echo.stop()
