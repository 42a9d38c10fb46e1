"""Istio 1.9 / 1.10's HTTP istio_authn in a real Baton: a STRICT peer method answers a
plaintext request 401 "Peer authentication failed." and lets an mTLS one with a SPIFFE
identity of our trust domain through; the trust domain check refuses another domain's
identity; PERMISSIVE takes a plaintext request. (Envoy has no istio_authn: no
differential; the semantics are istio/proxy's, see worker/proxy/istio/authn.py.)"""

from __future__ import annotations

import socket
import ssl

from ..tls_certs import make_ca, spiffe_leaf
from .answers import read_answer
from .conftest import free_port

T = "type.googleapis.com/"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"}}
OURS = "spiffe://cluster.local/ns/shop/sa/reviews"


def authn(mode: str, **fields) -> dict:
    return {"name": "istio_authn", "typed_config": {
        "@type": T + "istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig",
        "policy": {"peers": [{"mtls": {"mode": mode}}]}, **fields}}


def listener(name: str, port: int, mode: str, tls=None, http_filters=None) -> dict:
    """An inbound HTTPS (with `tls`) or HTTP listener answering 200 "ok", behind istio_authn
    in `mode`, or behind `http_filters` instead."""
    hcm = {"@type": T + "envoy.extensions.filters.network.http_connection_manager.v3"
                        ".HttpConnectionManager",
           "stat_prefix": name,
           "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "direct_response": {
                                "status": 200, "body": {"inline_string": "ok"}}}]}]},
           "http_filters": (http_filters if http_filters is not None else [authn(mode)]) +
           [ROUTER]}
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": hcm}]}
    if tls is not None:
        chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": tls}
    return {"name": name, "traffic_direction": "INBOUND", "address": {"socket_address": {
        "address": "127.0.0.1", "port_value": port}}, "filter_chains": [chain]}


def get(port: int, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        sock = context.wrap_socket(raw) if context is not None else raw
        sock.sendall(b"GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n")
        data = read_answer(sock)    # (not to the close: the direct response's delayed close)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def mtls_server(ca, tmp_path) -> dict:
    """A DownstreamTlsContext with OURS's certificate that requires a client certificate."""
    ca_path = tmp_path / "ca.crt"
    ca_path.write_bytes(ca.cert_pem)
    cert, key = spiffe_leaf(ca, spiffe_id=OURS, client=False).write(tmp_path, "server")
    return {"@type": T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True, "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": cert},
                                      "private_key": {"filename": key}}],
                "validation_context": {"trusted_ca": {"filename": str(ca_path)}}}}


def spiffe_client(ca, tmp_path, spiffe_id: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False          # a workload certificate names no host
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    ctx.load_cert_chain(*spiffe_leaf(ca, spiffe_id=spiffe_id).write(tmp_path, "client"))
    return ctx


def test_strict_permissive_and_the_trust_domain(baton, tmp_path):
    ca = make_ca()
    tls = mtls_server(ca, tmp_path)
    ports = {name: free_port() for name in ("strict", "permissive", "mtls")}
    baton({"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                    "port_value": free_port()}}},
           "static_resources": {"listeners": [
               listener("strict", ports["strict"], "STRICT"),
               listener("permissive", ports["permissive"], "PERMISSIVE"),
               listener("mtls", ports["mtls"], "STRICT", tls)], "clusters": []}},
          concurrency=1)

    assert get(ports["strict"]) == (401, b"Peer authentication failed.")
    assert get(ports["permissive"]) == (200, b"ok")

    def client(spiffe_id: str) -> ssl.SSLContext:
        return spiffe_client(ca, tmp_path, spiffe_id)
    assert get(ports["mtls"], client("spiffe://cluster.local/ns/web/sa/front")) == (200, b"ok")
    assert get(ports["mtls"], client("spiffe://other.domain/ns/web/sa/front")) == (
        401, b"Peer authentication failed.")
