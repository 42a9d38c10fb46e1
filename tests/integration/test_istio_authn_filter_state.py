"""RBAC's filter_state principal io.istio.peer_principal is written by Istio's network
istio_authn alone (istio/proxy source/extensions/filters/network/istio_authn: the peer
certificate's first spiffe:// URI SAN, once the TLS handshake is done). Baton read it off any
TLS connection, so a policy naming a principal let the peer in on a chain without that
filter, where Envoy has no such state and denies.

Differential against Envoy 1.40 (which has no istio_authn) on mTLS chains without the
filter, HTTP RBAC and network RBAC: both deny the SPIFFE peer the policy names. Baton alone
with istio_authn in front: the named peer is let in, another one denied."""

from __future__ import annotations

import socket

import pytest

from ..tls_certs import make_ca
from ..waiting import wait_until
from .conftest import Upstream, free_port, static_cluster
from .test_hbone_tunnel import HCM, T, TCP_PROXY, _bootstrap, _start, _stats
from .test_istio_authn import ROUTER, get, mtls_server, spiffe_client

NAMED = "spiffe://cluster.local/ns/web/sa/front"
OTHER = "spiffe://cluster.local/ns/web/sa/other"
ISTIO_AUTHN = {"name": "istio_authn", "typed_config": {
    "@type": T + "udpa.type.v1.TypedStruct", "type_url": T + "io.istio.network.authn.Config"}}
RULES = {"policies": {"ns[shop]-policy[reviews]-rule[0]": {
    "permissions": [{"any": True}],
    "principals": [{"filter_state": {"key": "io.istio.peer_principal",
                                     "string_match": {"exact": NAMED}}}]}}}


def _listeners(ports: dict, tls: dict, authn: bool) -> list:
    front = [ISTIO_AUTHN] if authn else []
    hcm = {"@type": HCM, "stat_prefix": "http", "route_config": {"name": "r", "virtual_hosts": [{
        "name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {
            "status": 200, "body": {"inline_string": "ok"}}}]}]},
        "http_filters": [{"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": T + "envoy.extensions.filters.http.rbac.v3.RBAC", "rules": RULES}}, ROUTER]}
    network_rbac = {"name": "envoy.filters.network.rbac", "typed_config": {
        "@type": T + "envoy.extensions.filters.network.rbac.v3.RBAC", "stat_prefix": "tcp.",
        "rules": RULES}}
    tcp = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TCP_PROXY, "stat_prefix": "tcp", "cluster": "echo"}}
    socket_tls = {"name": "envoy.transport_sockets.tls", "typed_config": tls}

    def listener(name, filters):
        return {"name": name, "address": {"socket_address": {
            "address": "127.0.0.1", "port_value": ports[name]}},
            "filter_chains": [{"filters": front + filters, "transport_socket": socket_tls}]}
    return [listener("http", [{"name": "envoy.filters.network.http_connection_manager",
                               "typed_config": hcm}]),
            listener("tcp", [network_rbac, tcp])]


def _echoes(port: int, context) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw) as sock:
            sock.sendall(b"ping")
            try:
                return sock.recv(4) == b"ping"
            except (ConnectionResetError, OSError):
                return False


@pytest.mark.parametrize("proxy, authn", [("envoy", False), ("baton", False), ("baton", True)])
def test_only_istio_authn_gives_rbac_the_peer_principal(tmp_path, proxy, authn):
    ca = make_ca()
    tls = mtls_server(ca, tmp_path)
    for name in ("named", "other"):
        (tmp_path / name).mkdir()
    named, other = (spiffe_client(ca, tmp_path / name, uri) for name, uri in
                    (("named", NAMED), ("other", OTHER)))
    echo = Upstream("echo")
    ports, admin = {"http": free_port(), "tcp": free_port()}, free_port()
    p = _start(proxy, tmp_path / proxy, _bootstrap(admin, _listeners(ports, tls, authn),
                                                   [static_cluster("echo", echo.port)]))
    try:
        assert get(ports["http"], named) == ((200, b"ok") if authn else (403, b"RBAC: access denied"))
        assert get(ports["http"], other) == (403, b"RBAC: access denied")
        assert _echoes(ports["tcp"], named) is authn
        assert _echoes(ports["tcp"], other) is False
        counted = {"tcp.rbac.allowed": int(authn), "tcp.rbac.denied": 2 - int(authn)}
        wait_until(lambda: {k: _stats(admin, "tcp.rbac.").get(k) for k in counted} == counted,
                   10, f"{proxy}: the network decisions counted")
    finally:
        p.stop()
        echo.stop()
