"""TLS origination, Baton against a real Envoy 1.40 on the same bootstrap and the same TLS
upstreams (only the ports of the proxies differ): what each upstream saw of the handshake
(SNI, ALPN offered for HTTP/1.1, HTTP/2 and auto_config clusters, protocol version, client
certificate),
the status code and local-reply body of a SAN mismatch and of an untrusted chain, tcp_proxy
over mTLS (a second connection resuming the TLS 1.2 session) and through Istio-style
transport_socket_matches, and the clusters' ssl.*,
upstream_cx_connect_fail and <match>.total_match_count counters, names and values.

Envoy also counts ssl.curves.*, ssl.sigalgs.* and ssl.certificate.*.expiration gauges, which
Python's ssl module does not expose to Baton; those are left out (README, TLS)."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

from ..tls_certs import SPIFFE_ID, leaf, make_ca, spiffe_leaf
from ..waiting import wait_until
from .conftest import Baton, free_port, http_bootstrap, static_cluster
from .differential.proxies import Envoy
from .test_upstream_tls import http_cluster
from .tls_upstream import TlsUpstream, upstream_tls_socket

CA = make_ca("ecdsa")
URI_SAN = [{"san_type": "URI", "matcher": {"exact": SPIFFE_ID}}]
COMPARED = ("ssl.handshake", "ssl.connection_error", "ssl.fail_verify_san", "ssl.fail_verify_error",
            "ssl.fail_verify_no_cert", "ssl.no_certificate", "ssl.session_reused",
            "ssl.fail_verify_cert_hash", "ssl.versions.", "ssl.ciphers.", "upstream_cx_connect_fail",
            "total_match_count", "upstream_cx_total", "upstream_cx_http1_total",
            "upstream_cx_http2_total")
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


@pytest.fixture
def upstreams_for_tls(tmp_path):
    started = {}
    try:
        server = leaf(CA, dns=["backend.example"])
        started["h1"] = TlsUpstream(tmp_path / "h1", "http", server, alpn=["h2", "http/1.1"])
        started["h2"] = TlsUpstream(tmp_path / "h2", "h2", server, alpn=["h2", "http/1.1"])
        started["h1only"] = TlsUpstream(tmp_path / "h1only", "http", server, alpn=["http/1.1"])
        started["mesh"] = TlsUpstream(tmp_path / "mesh", "echo", spiffe_leaf(CA, client=False),
                                      client_ca=CA)
        started["stranger"] = TlsUpstream(tmp_path / "stranger", "http", leaf(make_ca("rsa"), "rsa"))
        yield {name: up.port for name, up in started.items()}
    finally:
        for up in started.values():
            up.stop()


def tcp_listener(name: str, port: int, cluster: str) -> dict:
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": TCP_PROXY, "stat_prefix": name, "cluster": cluster}}]}]}


def bootstrap(admin: int, http: int, tcp: int, matched: int, ports: dict) -> dict:
    routes = [{"match": {"prefix": f"/{name}"}, "route": {"cluster": name}}
              for name in ("h1", "h2", "badsan", "stranger", "auto-h2", "auto-h1")]
    data = http_bootstrap(admin, http, routes=routes)
    mesh = upstream_tls_socket(CA, client=spiffe_leaf(CA), sans=URI_SAN)
    matches = static_cluster("matched", ports["plain"])
    matches["load_assignment"]["endpoints"][0]["lb_endpoints"].append(
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["mesh"]}}},
         "metadata": {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}})
    matches["lb_policy"] = "ROUND_ROBIN"
    # The first endpoint (no metadata, a plain echo) gets the default, raw_buffer; the
    # second (tlsMode: istio) gets mTLS.
    matches["transport_socket"] = {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}
    matches["transport_socket_matches"] = [{"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
                                            "transport_socket": mesh}]
    mesh_cluster = static_cluster("mesh", ports["mesh"])
    mesh_cluster["transport_socket"] = mesh
    data["static_resources"]["clusters"] = [
        http_cluster("h1", ports["h1"], upstream_tls_socket(CA, sni="backend.example")),
        http_cluster("h2", ports["h2"], upstream_tls_socket(CA, sni="backend.example"), http2=True),
        http_cluster("badsan", ports["h1"], upstream_tls_socket(CA, sans=URI_SAN)),
        http_cluster("stranger", ports["stranger"], upstream_tls_socket(CA)),
        http_cluster("auto-h2", ports["h2"], upstream_tls_socket(CA), http2="auto"),
        http_cluster("auto-h1", ports["h1only"], upstream_tls_socket(CA), http2="auto"),
        mesh_cluster, matches]
    data["static_resources"]["listeners"] += [tcp_listener("tcp", tcp, "mesh"),
                                              tcp_listener("matched", matched, "matched")]
    return data


def fetch(port: int, path: str) -> tuple:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            body = json.loads(response.read())
            body.pop("connection")
            return response.status, body
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def echo(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        got = b""
        try:
            while len(got) < len(payload) and (data := sock.recv(65536)):
                got += data
        except ConnectionResetError:
            pass
        return got


def counters(admin: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as r:
        body = r.read().decode()
    out = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        if name.startswith("cluster.") and value.strip().isdigit() and any(part in name for part in COMPARED):
            if name.split(".")[1] in ("h1", "h2", "badsan", "stranger", "mesh", "matched",
                                      "auto-h2", "auto-h1"):
                out[name] = int(value)
    return out


def test_tls_origination_matches_envoy(tmp_path, upstreams_for_tls, upstreams):
    upstreams_for_tls["plain"] = upstreams("echo").port
    observed, stats = {}, {}
    for proxy in ("envoy", "baton"):
        admin, http, tcp, matched = free_port(), free_port(), free_port(), free_port()
        data = bootstrap(admin, http, tcp, matched, upstreams_for_tls)
        process = (Envoy(tmp_path / proxy, data) if proxy == "envoy"
                   else Baton(tmp_path / proxy, data, concurrency=1))
        process.start()
        try:
            seen = {path: fetch(http, path) for path in ("/h1", "/h1/again", "/h2", "/badsan", "/stranger",
                                                         "/auto-h2", "/auto-h2/again", "/auto-h1")}
            seen["tcp"] = echo(tcp, b"over mTLS")
            seen["tcp again"] = echo(tcp, b"resumed")     # max_session_keys 1: TLS 1.2 resumes
            seen["matched"] = sorted(echo(matched, b"m%d" % i) for i in range(2))
            observed[proxy] = seen
            wait_until(lambda: counters(admin).get("cluster.matched.ssl.handshake") == 1
                       and counters(admin).get("cluster.stranger.ssl.fail_verify_error") == 1,
                       10, f"{proxy}'s counters")
            stats[proxy] = counters(admin)
        finally:
            process.stop()
    envoy = observed["envoy"]
    # What the cases mean, as Envoy 1.40 answers them.
    assert envoy["/h1"] == (200, {"sni": "backend.example", "alpn": "http/1.1", "version": "TLSv1.2",
                                  "client_cert": False, "path": "/h1"})
    assert envoy["/h2"][1]["alpn"] == "h2"
    # auto_config: ALPN offers h2 and http/1.1, the upstream's choice is the protocol.
    assert envoy["/auto-h2"][1]["alpn"] == "h2" and envoy["/auto-h1"][1]["alpn"] == "http/1.1"
    assert stats["envoy"]["cluster.auto-h2.upstream_cx_http2_total"] == 1
    assert envoy["/badsan"] == (503, "upstream connect error or disconnect/reset before headers. "
                                     "reset reason: remote connection failure")
    assert envoy["tcp"] == b"over mTLS"
    assert stats["envoy"]["cluster.badsan.ssl.fail_verify_san"] == 1
    assert stats["envoy"]["cluster.mesh.ssl.session_reused"] == 1
    # Envoy 1.40's mixed (auto_config) pool counts its one connection twice in
    # upstream_cx_total (the handshake's client, then the codec's: the upstream saw one
    # connection carry both requests); Baton counts connections. Left out, README says so.
    for name in ("auto-h2", "auto-h1"):
        assert stats["envoy"].pop(f"cluster.{name}.upstream_cx_total") == 2
        assert stats["baton"].pop(f"cluster.{name}.upstream_cx_total") == 1
    assert observed["baton"] == observed["envoy"]
    assert stats["baton"] == stats["envoy"]
