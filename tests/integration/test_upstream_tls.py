"""TLS origination (a cluster's UpstreamTlsContext and transport_socket_matches) with real
`baton` processes and real TLS upstreams (Python ssl in their own processes,
tests/integration/tls_upstream.py): tcp_proxy and the HTTP router, SNI, server verification
with Envoy's counters, mTLS, ALPN h2, auto_sni, and a tcp_proxy session whose upstream speaks
TLS moving through reloads with every byte intact."""

from __future__ import annotations

import json
import re
import socket
import ssl
import urllib.error
import urllib.request

import pytest

from ..tls_certs import SPIFFE_ID, leaf, make_ca, spiffe_leaf
from ..waiting import wait_until
from .clients import Streams
from .conftest import free_port, http_bootstrap, static_cluster, tcp_bootstrap
from .test_tls_reload import _reload_ok
from .tls_clients import TlsEchoStream, client_context, tls_transport_socket
from .tls_upstream import TlsUpstream, upstream_tls_socket

CA = make_ca("ecdsa")
URI_SAN = [{"san_type": "URI", "matcher": {"exact": SPIFFE_ID}}]


@pytest.fixture
def tls_upstreams(tmp_path):
    started = []

    def start(mode: str, pair=None, **kwargs) -> TlsUpstream:
        up = TlsUpstream(tmp_path / f"up{len(started)}", mode,
                         pair or leaf(CA, dns=["backend.example"]), **kwargs)
        started.append(up)
        return up
    yield start
    for up in started:
        up.stop()


def tls_tcp_bootstrap(port: int, upstream_port: int, transport_socket: dict, **kwargs) -> dict:
    data = tcp_bootstrap(free_port(), port, [upstream_port], **kwargs)
    data["static_resources"]["clusters"][0]["transport_socket"] = transport_socket
    return data


def echo_once(port: int, payload: bytes = b"ping") -> bytes:
    """Send, half-close, read to EOF: the echo of a plain client through Baton (b"" when
    Baton closed it: with the payload unread, the kernel makes that a reset)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        try:
            while data := sock.recv(65536):
                got += data
        except ConnectionResetError:
            pass
        return got


def cluster_stats(b, name: str = "backend") -> dict:
    scope = f"cluster.{name}."
    return {k[len(scope):]: v for k, v in b.stats().items() if k.startswith(scope)}


def test_tcp_proxy_originates_tls_with_sni_and_spiffe_verification(baton, tls_upstreams):
    """A plain client, a TLS upstream whose certificate is a SPIFFE identity: Baton sends
    the configured SNI, verifies chain and URI SAN, and the bytes and the half-close go
    through both ways."""
    upstream = tls_upstreams("echo", spiffe_leaf(CA, client=False))
    port = free_port()
    b = baton(tls_tcp_bootstrap(port, upstream.port, upstream_tls_socket(
        CA, sni="backend.example", sans=URI_SAN)), concurrency=1)
    payload = bytes(range(256)) * 1000
    assert echo_once(port, payload) == payload
    stats = cluster_stats(b)
    assert stats["ssl.handshake"] == 1 and stats["default.total_match_count"] == 1
    assert stats["ssl.versions.TLSv1.2"] == 1         # Envoy's client default
    assert stats["upstream_cx_connect_fail"] == 0


def test_a_san_mismatch_is_a_counted_connect_failure(baton, tls_upstreams):
    upstream = tls_upstreams("echo")          # a DNS SAN, no SPIFFE identity
    port = free_port()
    b = baton(tls_tcp_bootstrap(port, upstream.port, upstream_tls_socket(CA, sans=URI_SAN)),
              concurrency=1)
    assert echo_once(port) == b""
    wait_until(lambda: cluster_stats(b)["upstream_cx_connect_fail"] == 1, 10, "the failure counted")
    stats = cluster_stats(b)
    assert stats["ssl.fail_verify_san"] == 1 and stats["ssl.handshake"] == 0
    # An untrusted chain is OpenSSL's refusal: fail_verify_error.
    other = tls_upstreams("echo", leaf(make_ca("rsa"), "rsa"))
    port2 = free_port()
    b2 = baton(tls_tcp_bootstrap(port2, other.port, upstream_tls_socket(CA)), concurrency=1)
    assert echo_once(port2) == b""
    wait_until(lambda: cluster_stats(b2)["ssl.fail_verify_error"] == 1, 10, "fail_verify_error")


def test_mutual_tls_to_the_upstream(baton, tls_upstreams):
    upstream = tls_upstreams("echo", client_ca=CA)
    port, bare = free_port(), free_port()
    b = baton(tls_tcp_bootstrap(port, upstream.port, upstream_tls_socket(
        CA, client=spiffe_leaf(CA), max_version="TLSv1_3")), concurrency=1)
    assert echo_once(port, b"mtls") == b"mtls"
    assert cluster_stats(b)["ssl.versions.TLSv1.3"] == 1
    # Without a client certificate the upstream refuses (after the handshake, in TLS 1.3).
    b2 = baton(tls_tcp_bootstrap(bare, upstream.port, upstream_tls_socket(
        CA, max_version="TLSv1_3")), concurrency=1)
    assert echo_once(bare, b"anyone") == b""


def test_transport_socket_matches_pick_tls_by_endpoint_metadata(baton, tls_upstreams, upstreams):
    """Istio's shape: endpoints with tlsMode: istio get mTLS, the others plain TCP (the
    cluster's transport_socket, raw_buffer here), counted per match as Envoy names them."""
    secure = tls_upstreams("echo", spiffe_leaf(CA, client=False), client_ca=CA)
    plain = upstreams("echo")
    port = free_port()
    data = tcp_bootstrap(free_port(), port, [secure.port, plain.port])
    cluster = data["static_resources"]["clusters"][0]
    istio = {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"] = istio
    cluster["transport_socket_matches"] = [
        {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
         "transport_socket": upstream_tls_socket(CA, client=spiffe_leaf(CA), sans=URI_SAN)}]
    cluster["transport_socket"] = {"name": "envoy.transport_sockets.raw_buffer"}
    b = baton(data, concurrency=1)
    for i in range(4):
        assert echo_once(port, b"x%d" % i) == b"x%d" % i
    stats = cluster_stats(b)
    # Counted per host, as Envoy resolves the match once per host (not per connection).
    assert stats["tlsMode-istio.total_match_count"] == 1
    assert stats["default.total_match_count"] == 1
    assert stats["ssl.handshake"] == 2


def test_tls_origination_streams_move_through_reloads(baton, tls_upstreams):
    """Two long streams through a TLS upstream, one from a plain client and one from a TLS
    client (TLS on both sides), move through five reloads and a recycle with their record
    layers' state (record tls-origin-tcp): every byte back, in order, no new handshake."""
    upstream = tls_upstreams("echo", spiffe_leaf(CA, client=False), client_ca=CA, tls13=True)
    plain_port, tls_port = free_port(), free_port()
    origin = upstream_tls_socket(CA, sans=URI_SAN, client=spiffe_leaf(CA), max_version="TLSv1_3")
    data = tls_tcp_bootstrap(plain_port, upstream.port, origin)
    terminating = tls_tcp_bootstrap(tls_port, upstream.port, origin)["static_resources"]["listeners"][0]
    terminating["name"] = "tls"
    terminating["filter_chains"][0]["transport_socket"] = tls_transport_socket(leaf(CA))
    data["static_resources"]["listeners"].append(terminating)
    b = baton(data, concurrency=2)
    # The plain client's stream ends after the recycle (a chunk more, a half-close, then the
    # echo's end); the TLS client's runs until finish().
    plain = Streams(plain_port, count=1, total=24 << 20, rate=2 << 20).start()
    both = TlsEchoStream(tls_port, client_context(CA), rate=2 << 20).start()
    wait_until(lambda: cluster_stats(b)["ssl.handshake"] == 2, 10, "both upstream handshakes")
    for _ in range(5):
        before = both.got
        _reload_ok(b)
        wait_until(lambda: both.got > before + 65536 or both.error, 20, "the stream to flow")
        assert both.error is None, both.error
        assert not plain.disconnects, plain.disconnects
    old = b.status()["workers"][0]["pid"]
    assert b.cli("recycle", "--worker", "0").returncode == 0
    wait_until(lambda: b.status()["workers"][0]["pid"] not in (old, None), 20, "the recycle")
    before = both.got
    wait_until(lambda: both.got > before + 65536 or both.error, 20, "the stream after the recycle")
    both.finish()
    plain.end()
    plain.join(60)
    plain.verify()
    assert not re.search(r"[1-9][0-9]* stay to drain", b.log)
    assert cluster_stats(b)["ssl.handshake"] == 2       # the same two upstream sessions


def fetch(port: int, path: str = "/", host: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_cluster(name: str, port: int, transport_socket: dict, http2=False, auto_sni=False) -> dict:
    """http2: True (explicit HTTP/2), False (HTTP/1.1) or "auto" (auto_config: ALPN decides)."""
    cluster = static_cluster(name, port)
    cluster["transport_socket"] = transport_socket
    options = {"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"}
    if http2 == "auto":
        options["auto_config"] = {"http2_protocol_options": {}}
    else:
        options["explicit_http_config"] = {"http2_protocol_options" if http2 else "http_protocol_options": {}}
    if auto_sni:
        options["upstream_http_protocol_options"] = {"auto_sni": True, "auto_san_validation": True}
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options}
    return cluster


def test_http_router_to_tls_upstreams(baton, tls_upstreams):
    """HTTPS to the upstream from the router: keep-alive reuse of one TLS connection, ALPN h2
    for an HTTP/2 cluster, auto_sni / auto_san_validation from the Host header with one
    pool per SNI, and a SAN mismatch answered as Envoy answers it."""
    h1 = tls_upstreams("http", alpn=["http/1.1"])
    h2 = tls_upstreams("h2", alpn=["h2", "http/1.1"])
    port = free_port()
    routes = [{"match": {"prefix": "/h2"}, "route": {"cluster": "h2"}},
              {"match": {"prefix": "/auto"}, "route": {"cluster": "auto"}},
              {"match": {"prefix": "/bad"}, "route": {"cluster": "bad"}},
              {"match": {"prefix": "/"}, "route": {"cluster": "h1"}}]
    data = http_bootstrap(free_port(), port, routes=routes)
    data["static_resources"]["clusters"] = [
        http_cluster("h1", h1.port, upstream_tls_socket(CA, sni="backend.example")),
        http_cluster("h2", h2.port, upstream_tls_socket(CA, sni="backend.example"), http2=True),
        http_cluster("auto", h1.port, upstream_tls_socket(CA), auto_sni=True),
        http_cluster("bad", h1.port, upstream_tls_socket(CA, sans=URI_SAN))]
    b = baton(data, concurrency=1)
    first = [json.loads(fetch(port, f"/one/{i}")[1]) for i in range(3)]
    assert {f["sni"] for f in first} == {"backend.example"}
    assert {f["alpn"] for f in first} == {"http/1.1"}
    assert len({f["connection"] for f in first}) == 1          # one pooled TLS connection
    status, body = fetch(port, "/h2")
    assert status == 200 and json.loads(body)["alpn"] == "h2"
    status, body = fetch(port, "/auto", host="backend.example")
    assert status == 200 and json.loads(body)["sni"] == "backend.example"
    status, body = fetch(port, "/auto", host="other.example")     # SAN check against Host
    assert status == 503
    status, body = fetch(port, "/bad")
    assert (status, body) == (503, b"upstream connect error or disconnect/reset before headers. "
                                   b"reset reason: remote connection failure")
    stats = b.stats()
    assert stats["cluster.bad.ssl.fail_verify_san"] == 1
    assert stats["cluster.bad.upstream_cx_connect_fail"] == 1
    assert stats["cluster.auto.ssl.fail_verify_san"] == 1
    assert stats["cluster.h1.ssl.handshake"] == 1


def test_an_upstream_that_stalls_or_speaks_garbage_fails_only_its_connect(baton, tls_upstreams):
    """An upstream that accepts and never answers the ClientHello: the connect timeout ends it
    (upstream_cx_connect_timeout); one that answers with plain text: ssl.connection_error; in
    both cases a connect failure, tcp_proxy tries the next host, and the client is served."""
    good = tls_upstreams("echo")
    stall = socket.create_server(("127.0.0.1", 0))         # accepted by the kernel, never read
    garbage = socket.create_server(("127.0.0.1", 0))
    import threading

    def answer_garbage():
        while True:
            try:
                conn, _ = garbage.accept()
            except OSError:
                return
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()
    threading.Thread(target=answer_garbage, daemon=True).start()
    try:
        port = free_port()
        data = tls_tcp_bootstrap(port, good.port, upstream_tls_socket(CA), connect_timeout="0.5s",
                                 max_connect_attempts=3, lb_policy="ROUND_ROBIN")
        endpoints = data["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
        endpoints[:0] = [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                         for p in (stall.getsockname()[1], garbage.getsockname()[1])]
        b = baton(data, concurrency=1)
        for i in range(3):
            assert echo_once(port, b"served %d" % i) == b"served %d" % i
        stats = cluster_stats(b)
        assert stats["upstream_cx_connect_timeout"] >= 1
        assert stats["ssl.connection_error"] >= 1
        assert stats["upstream_cx_connect_fail"] >= 2
        assert stats["ssl.handshake"] == 3
    finally:
        stall.close()
        garbage.close()
