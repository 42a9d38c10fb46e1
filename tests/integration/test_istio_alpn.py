"""istio.alpn against a real Envoy 1.40 server sidecar: Istio's server picks its HTTP filter
chain by the ALPN the client offers (istio-http/1.1, istio-h2...), so a Baton client
sidecar whose connection manager carries istio.alpn must offer the filter's list on the
upstream TLS handshake instead of its cluster's own (istio-peer-exchange, istio), and gets
the HTTP chain; the same cluster without istio.alpn lands on the other chain."""

from __future__ import annotations

from ..tls_certs import leaf, make_ca
from .conftest import free_port, static_cluster
from .differential.client import one
from .differential.proxies import Envoy

T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}
ALPN = {"name": "istio.alpn", "typed_config": {
    "@type": T + "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
    "alpn_override": [{"alpn_override": ["istio-http/1.0", "istio", "http/1.0"]},
                      {"upstream_protocol": "HTTP11",
                       "alpn_override": ["istio-http/1.1", "istio", "http/1.1"]},
                      {"upstream_protocol": "HTTP2", "alpn_override": ["istio-h2", "istio", "h2"]}]}}


def hcm(name: str, routes: dict, filters=()) -> dict:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": HCM, "stat_prefix": name, "route_config": {"name": name, "virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, **routes}]}]},
        "http_filters": [*filters, ROUTER]}}


def answer(text: str) -> dict:
    return {"direct_response": {"status": 200, "body": {"inline_string": text}}}


def address(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def test_the_filters_alpn_picks_the_servers_http_chain(baton, tmp_path):
    ca = make_ca()
    ca_path = tmp_path / "ca.crt"
    ca_path.write_bytes(ca.cert_pem)
    cert, key = leaf(ca).write(tmp_path, "server")
    server_tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {"alpn_protocols": ["h2", "http/1.1"], "tls_certificates": [
            {"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}]}}}
    server_port = free_port()
    # Istio's inbound shape: the HTTP chain for the istio-http names, another chain else.
    envoy = Envoy(tmp_path / "envoy", {
        "admin": {"address": address(free_port())},
        "static_resources": {"listeners": [{
            "name": "virtualInbound", "address": address(server_port),
            "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
                "@type": T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
            "filter_chains": [
                {"filter_chain_match": {"transport_protocol": "tls", "application_protocols": [
                    "istio-http/1.0", "istio-http/1.1", "istio-h2"]},
                 "filters": [hcm("http", answer("the HTTP chain"))], "transport_socket": server_tls},
                {"filter_chain_match": {"transport_protocol": "tls"},
                 "filters": [hcm("other", answer("the other chain"))],
                 "transport_socket": server_tls}]}]}}).start()
    try:
        upstream = static_cluster("outbound|80||reviews", server_port)
        upstream["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": T + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "localhost", "common_tls_context": {
                "alpn_protocols": ["istio-peer-exchange", "istio"],
                "validation_context": {"trusted_ca": {"filename": str(ca_path)}}}}}
        ports = {"with": free_port(), "without": free_port()}
        route = {"route": {"cluster": upstream["name"]}}
        baton({"admin": {"address": address(free_port())}, "static_resources": {
            "listeners": [{"name": name, "address": address(port), "filter_chains": [
                {"filters": [hcm(name, route, [ALPN] if name == "with" else [])]}]}
                for name, port in ports.items()],
            "clusters": [upstream]}}, concurrency=1)
        assert one(ports["with"], "GET", "/", [("host", "reviews")]).body == b"the HTTP chain"
        assert one(ports["without"], "GET", "/", [("host", "reviews")]).body == b"the other chain"
    finally:
        envoy.stop()
