"""TLS termination in front of tcp_proxy (worker/proxy/tls_proxy.py): real `baton`
processes, real clients (Python ssl, openssl s_client, curl), certificates made at test time
(tests/tls_certs.py). Handshake outcomes and Envoy's listener ssl.* stats, bytes both ways,
half-close, bounded buffers, bad input, SNI. Moving through reloads: test_tls_reload.py."""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest

from ..tls_certs import SPIFFE_ID, leaf, make_ca, spiffe_leaf
from ..waiting import wait_until
from .clients import recv_all
from .conftest import free_port
from .tls_clients import (TlsEchoStream, client_context, echo, ssl_stats, tls_bootstrap, tls_roundtrip,
                          tls_transport_socket)


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_bytes_both_ways_and_stats(baton, upstreams, kind):
    ca = make_ca("ecdsa")
    echo = upstreams("echo")
    port = free_port()
    b = baton(tls_bootstrap(port, echo.port, tls_transport_socket(leaf(ca, kind))), concurrency=1)
    stats = ssl_stats(b, port)
    for name in ("handshake", "connection_error", "fail_verify_san", "fail_verify_no_cert",
                 "fail_verify_error", "no_certificate", "session_reused"):
        assert stats[name] == 0, name           # listed from the start, as Envoy does
    payload = bytes(range(256)) * 4096          # 1 MiB: many records each way
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        assert tls_roundtrip(port, client_context(ca, version=version), payload) == payload
    # Workers report their counters to the master now and then: wait for the totals.
    wait_until(lambda: b.stats()["tcp.ingress.downstream_cx_rx_bytes_total"] == 2 * len(payload),
               10, "the plaintext bytes counted")
    stats = ssl_stats(b, port)
    assert stats["handshake"] == 2 and stats["no_certificate"] == 2
    assert stats["versions.TLSv1.3"] == 1 and stats["versions.TLSv1.2"] == 1


def test_half_close_maps_to_close_notify(baton, upstreams):
    """The client's close_notify reaches the upstream as a FIN; the echo upstream's FIN comes
    back as close_notify, which completes the client's unwrap()."""
    ca = make_ca("ecdsa")
    echo = upstreams("echo")
    port = free_port()
    baton(tls_bootstrap(port, echo.port, tls_transport_socket(leaf(ca, "ecdsa"))), concurrency=1)
    payload = b"x" * 300000
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        tls = client_context(ca).wrap_socket(raw, server_hostname="localhost")
        tls.sendall(payload)
        got = b""
        while len(got) < len(payload):
            got += tls.recv(65536)
        assert got == payload
        plain = tls.unwrap()          # our close_notify out; returns on the server's close_notify
        assert plain.recv(10) == b""  # then the FIN


def test_mtls_outcomes_are_counted_per_connection(baton, upstreams):
    ca, wrong_ca = make_ca("ecdsa"), make_ca("rsa")
    echo = upstreams("echo")
    port = free_port()
    sans = [{"san_type": "URI", "matcher": {"exact": SPIFFE_ID}}]
    b = baton(tls_bootstrap(port, echo.port, tls_transport_socket(
        leaf(ca, "ecdsa"), ca, require_client=True, sans=sans)), concurrency=1)
    good = spiffe_leaf(ca)
    assert tls_roundtrip(port, client_context(ca, good)) == b"ping"

    def refused(certificate):
        # TLS 1.3: the client's handshake is over before the server judged its certificate,
        # so the refusal shows as an alert or as the connection closing.
        try:
            assert tls_roundtrip(port, client_context(ca, certificate)) == b""
        except (ssl.SSLError, OSError):
            pass
    refused(None)                                               # no certificate
    refused(spiffe_leaf(wrong_ca))                              # another CA
    refused(spiffe_leaf(ca, spiffe_id="spiffe://cluster.local/ns/other/sa/x"))   # wrong SAN
    assert tls_roundtrip(port, client_context(ca, good)) == b"ping"   # others unaffected
    wait_until(lambda: ssl_stats(b, port)["fail_verify_san"] == 1, 10, "the SAN failure counted")
    stats = ssl_stats(b, port)
    assert (stats["handshake"], stats["fail_verify_no_cert"], stats["fail_verify_error"],
            stats["fail_verify_san"], stats["no_certificate"]) == (2, 1, 1, 1, 0)


def test_handshake_timeout_and_garbage(baton, upstreams):
    ca = make_ca("ecdsa")
    echo = upstreams("echo")
    port = free_port()
    data = tls_bootstrap(port, echo.port, tls_transport_socket(leaf(ca, "ecdsa")))
    data["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket_connect_timeout"] = "0.5s"
    b = baton(data, concurrency=1)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
        silent.sendall(b"\x16\x03\x01")         # a ClientHello that never finishes
        assert recv_all(silent) == b""          # closed at the timeout
    with socket.create_connection(("127.0.0.1", port), timeout=10) as garbage:
        garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = recv_all(garbage)
        assert answer[:1] in (b"", b"\x15")     # an alert, or just closed
    assert ssl_stats(b, port)["connection_error"] == 2
    # After the handshake: a record that does not authenticate gets OpenSSL's alert
    # (bad_record_mac) and ends that connection only.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client_context(ca).wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"before")
            assert tls.recv(10) == b"before"
            socket.socket.send(tls, b"\x17\x03\x03\x00\x20" + bytes(32))    # under the TLS layer
            with pytest.raises(ssl.SSLError, match="BAD_RECORD_MAC"):
                tls.recv(10)
    assert tls_roundtrip(port, client_context(ca)) == b"ping"


def test_openssl_s_client(baton, upstreams, tmp_path):
    ca = make_ca("ecdsa")
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.cert_pem)
    echo = upstreams("echo")
    port = free_port()
    baton(tls_bootstrap(port, echo.port, tls_transport_socket(leaf(ca, "rsa"), alpn=["http/1.1"])),
          concurrency=1)
    # s_client -quiet does not end at the end of its input: read the echo, then stop it.
    client = subprocess.Popen(["openssl", "s_client", "-quiet", "-verify_return_error", "-CAfile", str(ca_path),
                               "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                               "-alpn", "http/1.1"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        client.stdin.write(b"hello over s_client\n")
        client.stdin.flush()
        assert client.stdout.readline() == b"hello over s_client\n"
    finally:
        client.kill()
        client.wait(10)


def test_curl_through_tls_termination_to_an_http_upstream(baton, recorder, tmp_path):
    ca = make_ca("rsa")
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.cert_pem)
    port = free_port()
    b = baton(tls_bootstrap(port, recorder, tls_transport_socket(leaf(ca, "ecdsa"), alpn=["http/1.1"])),
              concurrency=1)
    done = subprocess.run(["curl", "-sS", "--cacert", str(ca_path), "-o", "/dev/null",
                           "-w", "%{http_code} %{http_version}", f"https://localhost:{port}/hello"],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "200 1.1"
    assert ssl_stats(b, port)["handshake"] == 1


def test_buffers_are_bounded_both_ways_when_the_client_stops_reading(baton, upstreams):
    """A client that sends and does not read: the records for it stop at the listener's
    buffer limit, so Baton stops reading the echo upstream, whose own backlog then stops
    Baton reading the client; once the client reads again every byte arrives."""
    ca = make_ca("ecdsa")
    echo = upstreams("echo")
    port = free_port()
    limit = 64 * 1024
    b = baton(tls_bootstrap(port, echo.port, tls_transport_socket(leaf(ca, "ecdsa")), buffer_limit=limit),
              concurrency=1)
    stream = TlsEchoStream(port, client_context(ca), rate=64 << 20, limit=64 << 20)
    stream.reading.clear()
    stream.start()
    gauges = {}

    def backed_up():
        gauges.update(b.stats())
        return gauges["tcp.ingress.downstream_cx_tx_bytes_buffered"] > 0 and \
            gauges["tcp.ingress.downstream_cx_rx_bytes_buffered"] > 0
    wait_until(backed_up, 30, "both directions to back up")
    # One read (64 KiB of plaintext, a few hundred bytes of record overhead) may overshoot.
    for name in ("rx", "tx"):
        assert gauges[f"tcp.ingress.downstream_cx_{name}_bytes_buffered"] <= limit + 65536 + 1024, name
    assert stream.sent < stream.limit           # the client is held back, not buffered for
    stream.reading.set()
    stream.finish(timeout=60)


def test_idle_timeout_closes_with_close_notify(baton, upstreams):
    ca = make_ca("ecdsa")
    echo = upstreams("echo")
    port = free_port()
    b = baton(tls_bootstrap(port, echo.port, tls_transport_socket(leaf(ca, "ecdsa")), idle_timeout="0.5s"),
              concurrency=1)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client_context(ca).wrap_socket(raw, server_hostname="localhost",
                                            suppress_ragged_eofs=False) as tls:
            tls.sendall(b"ping")
            assert tls.recv(10) == b"ping"
            assert tls.recv(10) == b""      # close_notify (a bare FIN would raise SSLEOFError)
    wait_until(lambda: b.stats()["tcp.ingress.idle_timeout"] == 1, 10, "the idle timeout counted")


def test_config_dump_redacts_private_keys(baton, upstreams):
    """As Envoy 1.40: every string under private_key is "[redacted]" in /config_dump."""
    import json
    ca = make_ca("ecdsa")
    server = leaf(ca, "ecdsa")
    echo = upstreams("echo")
    port = free_port()
    b = baton(tls_bootstrap(port, echo.port, tls_transport_socket(server)), concurrency=1)
    status, body = b.admin("/config_dump")
    assert status == 200
    assert server.key_pem.decode().splitlines()[1] not in body
    dump = json.loads(body)
    listener = next(c for c in dump["configs"] if "static_listeners" in c)["static_listeners"][0]["listener"]
    [certificate] = (listener["filter_chains"][0]["transport_socket"]["typed_config"]
                     ["common_tls_context"]["tls_certificates"])
    assert certificate["private_key"] == {"inline_string": "[redacted]"}
    assert certificate["certificate_chain"] == {"inline_string": server.cert_pem.decode()}


class TlsEchoServer:
    """A TLS echo server of its own (the upstream for passthrough): one thread per client."""

    def __init__(self, context: ssl.SSLContext):
        import threading
        self.context = context
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.names: list = []           # the SNI each client sent
        context.sni_callback = lambda _obj, name, _ctx: self.names.append(name)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                while data := tls.recv(65536):
                    tls.sendall(data)
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        self.sock.close()


def test_sni_chooses_termination_or_passthrough(baton, upstreams):
    """With the tls_inspector, server_names picks the chain: one terminates TLS in Baton,
    the other passes the client's TLS untouched to an upstream that terminates it."""
    ca = make_ca("ecdsa")
    echo = upstreams("echo")
    upstream_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        upstream_ctx.load_cert_chain(*leaf(ca, "rsa", dns=["pass.example"]).write(tmp, "up"))
    tls_upstream = TlsEchoServer(upstream_ctx)
    port = free_port()
    data = tls_bootstrap(port, echo.port, tls_transport_socket(leaf(ca, "ecdsa", dns=["secure.example"])))
    listener = data["static_resources"]["listeners"][0]
    listener["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]
    terminate = listener["filter_chains"][0]
    terminate["filter_chain_match"] = {"server_names": ["secure.example"]}
    passthrough = {"filter_chain_match": {"server_names": ["pass.example"]},
                   "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                       "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                       "stat_prefix": "passthrough", "cluster": "tls_upstream"}}]}
    listener["filter_chains"].append(passthrough)
    clusters = data["static_resources"]["clusters"]
    clusters.append({**clusters[0], "name": "tls_upstream", "load_assignment": {
        "cluster_name": "tls_upstream", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": tls_upstream.port}}}}]}]}})
    try:
        b = baton(data, concurrency=1)
        ctx = client_context(ca)
        for name in ("secure.example", "pass.example", "secure.example"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname=name) as tls:
                    peer_names = tls.getpeercert()["subjectAltName"]
                    assert ("DNS", name) in peer_names      # who terminated: Baton or the upstream
                    tls.sendall(name.encode())
                    assert tls.recv(100) == name.encode()
        assert tls_upstream.names == ["pass.example"]
        assert ssl_stats(b, port)["handshake"] == 2
    finally:
        tls_upstream.close()


def _client_hello(ca) -> bytes:
    """A real TLS 1.3 ClientHello from Python's ssl, as bytes."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context(ca).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_bad_client_hellos_are_counted_failures_of_their_connection_only(baton, upstreams):
    """Issue 12 point 6 through a real Baton: a ClientHello cut short then a FIN, one whose
    handshake length lies, and garbled records each end their own connection (OpenSSL's alert
    where it has one) and count as ssl.connection_error; a good client is served meanwhile.
    (tests/fuzz/fuzz_tls_handshake.py generates a million more.)"""
    ca = make_ca("ecdsa")
    port = free_port()
    b = baton(tls_bootstrap(port, upstreams("echo").port, tls_transport_socket(leaf(ca, "ecdsa"))),
              concurrency=1)
    hello = _client_hello(ca)
    lying = bytearray(hello)
    lying[8] ^= 0x40                            # the handshake message's length
    garbled = hello[:5] + bytes(len(hello) - 5)
    keeper = socket.create_connection(("127.0.0.1", port), timeout=10)
    good = client_context(ca).wrap_socket(keeper, server_hostname="localhost")
    for data, alert in ((hello[:40], False), (bytes(lying), True), (garbled, True)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(data)
            if not alert:
                raw.shutdown(socket.SHUT_WR)
            answer = recv_all(raw)
            assert answer[:1] == (b"\x15" if alert else b""), answer[:16]
    wait_until(lambda: ssl_stats(b, port)["connection_error"] == 3, 10, "three connection errors")
    assert echo(good, b"ping") == b"ping"
    good.close()
    assert ssl_stats(b, port)["handshake"] == 1
