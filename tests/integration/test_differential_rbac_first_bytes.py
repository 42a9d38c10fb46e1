"""Differential: Envoy's network RBAC decides on the client's first bytes, not when the
connection starts (its onData; tcp_proxy has connected upstream at onNewConnection). Behind
Istio's deny-everything rules (an ALLOW without policies), in front of a server-first
upstream: a client that sends nothing gets the upstream's greeting, and its first bytes
close the connection; the upstream was connected once, the denial counted once. Plain TCP
(splice) and TLS terminated by the proxy (the first plaintext after the handshake). Baton
closed such a connection at once, without an upstream."""

from __future__ import annotations

import socket
import ssl

import pytest

from ..tls_certs import leaf, make_ca
from ..waiting import wait_until
from .conftest import Upstream
from .differential.bootstraps import address, bootstrap, cluster
from .differential.compare import each_proxy
from .differential.proxies import ProxyPair

T = "type.googleapis.com/"
GREETING = "220 server first\n"
CA = make_ca("ecdsa")
SERVER = leaf(CA)


def _listener(name: str, port: int, tls: bool) -> dict:
    chain = {"filters": [
        {"name": "envoy.filters.network.rbac", "typed_config": {
            "@type": T + "envoy.extensions.filters.network.rbac.v3.RBAC",
            "stat_prefix": f"{name}.", "rules": {}}},
        {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": name, "cluster": "greeter"}}]}
    if tls:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {"tls_certificates": [{
                "certificate_chain": {"inline_string": SERVER.cert_pem.decode()},
                "private_key": {"inline_string": SERVER.key_pem.decode()}}]}}}
    return {"name": name, "address": address(port), "filter_chains": [chain]}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    greeter = Upstream("banner", GREETING)

    def template(ports, admin):
        return bootstrap(admin, [_listener("plain", ports["plain"], False),
                                 _listener("tls", ports["tls"], True)],
                         [cluster("greeter", [greeter.port])])
    p = ProxyPair(tmp_path_factory.mktemp("diff-rbac-first-bytes"), template, ["plain", "tls"])
    yield p
    p.stop()
    greeter.stop()


def _client(port: int, tls: bool):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cadata=CA.cert_pem.decode())
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    return sock


def _read_to_end(sock) -> bytes:
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except (ConnectionResetError, ssl.SSLError, ssl.SSLEOFError):
        pass
    return got


@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_a_denied_client_gets_the_greeting_and_is_closed_on_its_first_bytes(pair, listener):
    tls = listener == "tls"

    def check(target):
        upstreams = f"cluster.greeter.upstream_cx_total"
        before = target.stats(upstreams).get(upstreams, 0)
        with _client(target.ports[listener], tls) as sock:
            greeting = b""
            while len(greeting) < len(GREETING):
                chunk = sock.recv(65536)
                assert chunk, (target.name, greeting)
                greeting += chunk
            assert greeting == GREETING.encode()
            sock.sendall(b"HELO me\n")
            assert _read_to_end(sock) == b""            # closed, nothing more said
        counted = {f"{listener}.rbac.denied": 1, upstreams: before + 1}

        def seen():
            stats = target.stats()
            return {name: stats.get(name) for name in counted}
        wait_until(lambda: seen() == counted, 10, f"{target.name}: the denial counted")
        assert target.stats(f"{listener}.rbac.allowed").get(f"{listener}.rbac.allowed", 0) == 0
    each_proxy(pair, check)
