"""HTTPS: TLS termination in front of the HTTP connection manager (worker/proxy/https.py,
worker/tls/transport.py). Real `baton` processes, real clients (curl over HTTP/1.1 and
HTTP/2, Python ssl, h2load when installed), certificates made at test time, the recording
upstream (differential/recorder.py) to see what reached it: x-forwarded-proto, XFCC.
Against Envoy 1.40 on the same bootstrap: test_https_differential.py."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess

import pytest

from ..tls_certs import SPIFFE_ID, leaf, make_ca, spiffe_leaf
from ..waiting import wait_until
from .conftest import free_port, http_bootstrap
from .tls_clients import client_context, ssl_stats, tls_transport_socket


def https_bootstrap(port: int, upstream: int, transport_socket: dict, hcm_extra=None) -> dict:
    data = http_bootstrap(free_port(), port, upstream)
    chain = data["static_resources"]["listeners"][0]["filter_chains"][0]
    chain["transport_socket"] = transport_socket
    chain["filters"][0]["typed_config"].update(hcm_extra or {})
    return data


def seen_headers(body: bytes) -> dict:
    """The recorder's answer: the request headers the upstream saw (name -> last value)."""
    return dict(json.loads(body)["headers"])


def curl(port: int, ca_path, *args, path="/hello", url=None) -> tuple[str, str]:
    """(status and protocol, body) of one request with curl."""
    done = subprocess.run(["curl", "-sS", "--cacert", str(ca_path), *args,
                           "-w", "\n%{http_code} %{http_version}",
                           url or f"https://localhost:{port}{path}"],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    body, _, outcome = done.stdout.rpartition("\n")
    return outcome, body


def keep_alive_requests(port: int, ctx: ssl.SSLContext, count: int) -> list[tuple[int, bytes]]:
    """`count` GETs on one HTTPS connection (Python ssl): [(status, body)]."""
    import http.client
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    try:
        out = []
        for i in range(count):
            conn.request("GET", f"/n/{i}")
            response = conn.getresponse()
            out.append((response.status, response.read()))
        return out
    finally:
        conn.close()


@pytest.fixture
def pki(tmp_path):
    ca = make_ca("ecdsa")
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.cert_pem)
    return ca, ca_path


def test_curl_http1_and_http2_by_alpn(baton, recorder, pki):
    ca, ca_path = pki
    port = free_port()
    b = baton(https_bootstrap(port, recorder, tls_transport_socket(
        leaf(ca, "ecdsa"), alpn=["h2", "http/1.1"])), concurrency=1)
    before = b.stats()
    assert before["http.ingress_http.downstream_cx_ssl_total"] == 0     # listed from the start
    assert before["http.ingress_http.downstream_cx_ssl_active"] == 0
    outcome, body = curl(port, ca_path, "--http1.1")
    assert outcome == "200 1.1"
    assert seen_headers(body.encode())["x-forwarded-proto"] == "https"
    outcome, body = curl(port, ca_path, "--http2")
    assert outcome == "200 2"
    assert seen_headers(body.encode())["x-forwarded-proto"] == "https"
    wait_until(lambda: ssl_stats(b, port)["handshake"] == 2, 10, "two handshakes counted")
    stats = b.stats()
    assert stats["http.ingress_http.downstream_cx_http1_total"] == 1
    assert stats["http.ingress_http.downstream_cx_http2_total"] == 1


def test_python_ssl_keep_alive_and_large_bodies(baton, recorder, pki):
    ca, _ = pki
    port = free_port()
    baton(https_bootstrap(port, recorder, tls_transport_socket(leaf(ca, "rsa"))), concurrency=1)
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        answers = keep_alive_requests(port, client_context(ca, version=version), 20)
        assert [status for status, _ in answers] == [200] * 20
        assert json.loads(answers[-1][1])["path"] == "/n/19"
    # A response of many records (x-test-body-size): the transport's write buffer and
    # backpressure, through the record layer.
    import http.client
    conn = http.client.HTTPSConnection("localhost", port, context=client_context(ca), timeout=10)
    conn.request("GET", "/big", headers={"x-test-body-size": str(4 << 20)})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 200 and len(body) == 4 << 20


def test_mtls_spiffe_client_gets_xfcc_at_the_upstream(baton, recorder, pki, tmp_path):
    ca, ca_path = pki
    port = free_port()
    client = spiffe_leaf(ca, "ecdsa")
    server = leaf(ca, "ecdsa", uris=("spiffe://cluster.local/ns/edge/sa/baton",))
    socket_spec = tls_transport_socket(
        server, ca, require_client=True,
        sans=[{"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}])
    b = baton(https_bootstrap(port, recorder, socket_spec, {
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"subject": True, "uri": True, "dns": True}}),
        concurrency=1)
    cert_path, key_path = client.write(tmp_path, "client")
    outcome, body = curl(port, ca_path, "--cert", cert_path, "--key", key_path,
                         "-H", "x-forwarded-client-cert: By=forged")
    assert outcome == "200 1.1"
    import hashlib
    from cryptography.hazmat.primitives.serialization import Encoding
    digest = hashlib.sha256(client.cert.public_bytes(Encoding.DER)).hexdigest()
    xfcc = seen_headers(body.encode())["x-forwarded-client-cert"]
    assert xfcc == (f"By=spiffe://cluster.local/ns/edge/sa/baton;Hash={digest};"
                    f'Subject="{client.cert.subject.rfc4514_string()}";URI={SPIFFE_ID}')
    # No client certificate: refused by OpenSSL and counted, the upstream never sees it.
    done = subprocess.run(["curl", "-sS", "--cacert", str(ca_path), f"https://localhost:{port}/"],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode != 0
    wait_until(lambda: ssl_stats(b, port)["fail_verify_no_cert"] == 1, 10, "the refusal counted")
    assert ssl_stats(b, port)["handshake"] == 1


def test_xfcc_is_sanitized_by_default_and_refused_handshakes_are_counted(baton, recorder, pki):
    ca, ca_path = pki
    port = free_port()
    b = baton(https_bootstrap(port, recorder, tls_transport_socket(leaf(ca, "ecdsa"))),
              concurrency=1)
    outcome, body = curl(port, ca_path, "-H", "x-forwarded-client-cert: By=forged")
    assert outcome == "200 1.1"
    assert "x-forwarded-client-cert" not in seen_headers(body.encode())
    # Garbage instead of a ClientHello, and a client that leaves mid-handshake.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        raw.settimeout(10)
        while raw.recv(4096):
            pass
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01\x00\x10")
    wait_until(lambda: ssl_stats(b, port)["connection_error"] == 2, 10, "two failures counted")
    assert b.stats()["listener.127.0.0.1_%d.downstream_cx_active" % port] == 0
    # ...and the listener still serves.
    assert curl(port, ca_path)[0] == "200 1.1"


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed")
def test_h2load_over_tls(baton, recorder, pki):
    ca, _ = pki
    port = free_port()
    baton(https_bootstrap(port, recorder, tls_transport_socket(
        leaf(ca, "ecdsa"), alpn=["h2", "http/1.1"])), concurrency=1)
    done = subprocess.run(["h2load", "-n", "400", "-c", "4", "-m", "8",
                           f"https://127.0.0.1:{port}/load"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "400 succeeded, 0 failed, 0 errored" in done.stdout, done.stdout
    assert "TLS Protocol: TLSv1.3" in done.stdout
    assert "Application protocol: h2" in done.stdout


def test_sni_picks_the_https_chain_and_a_garbled_record_closes_only_its_connection(
        baton, recorder, pki, tmp_path):
    """With the tls_inspector, server_names picks between two HTTPS chains (different
    certificates and stat prefixes; the sniffed ClientHello feeds the handshake). A record
    that fails its AEAD check after the handshake gets the alert and closes that connection
    only (the HTTP connection manager sees it lost)."""
    ca, ca_path = pki
    port = free_port()
    data = https_bootstrap(port, recorder, tls_transport_socket(leaf(ca, "ecdsa", dns=["a.example"])))
    listener = data["static_resources"]["listeners"][0]
    listener["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]
    first = listener["filter_chains"][0]
    first["filter_chain_match"] = {"server_names": ["a.example"]}
    import copy
    second = copy.deepcopy(first)
    second["filter_chain_match"] = {"server_names": ["b.example"]}
    second["transport_socket"] = tls_transport_socket(leaf(ca, "rsa", dns=["b.example"]))
    second["filters"][0]["typed_config"]["stat_prefix"] = "b_http"
    listener["filter_chains"].append(second)
    b = baton(data, concurrency=1)
    for name in ("a.example", "b.example"):
        outcome, body = curl(port, ca_path, "--resolve", f"{name}:{port}:127.0.0.1",
                             url=f"https://{name}:{port}/sni")
        assert outcome == "200 1.1"
        assert seen_headers(body.encode())["x-forwarded-proto"] == "https"
    wait_until(lambda: b.stats().get("http.b_http.downstream_rq_total") == 1, 10, "b's request")
    assert b.stats()["http.ingress_http.downstream_rq_total"] == 1
    # A garbled record on an established session.
    ctx = client_context(ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        tls = ctx.wrap_socket(raw, server_hostname="a.example")
        tls.sendall(b"GET /ok HTTP/1.1\r\nhost: a\r\n\r\n")
        assert tls.recv(65536).startswith(b"HTTP/1.1 200")
        raw_again = socket.socket(fileno=tls.detach())
        raw_again.sendall(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)      # application_data, bad tag
        raw_again.settimeout(10)
        answer = b""
        while chunk := raw_again.recv(65536):
            answer += chunk
        raw_again.close()
    assert answer, "the alert record"
    # Counted as Envoy counts a session that breaks after its handshake (test_tls_differential).
    wait_until(lambda: ssl_stats(b, port).get("connection_error") == 2, 10, "the broken session counted")
    assert curl(port, ca_path, "--resolve", f"a.example:{port}:127.0.0.1",
                url=f"https://a.example:{port}/after")[0] == "200 1.1"
