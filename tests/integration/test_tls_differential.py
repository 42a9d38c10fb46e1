"""TLS termination in front of tcp_proxy, Baton against a real Envoy 1.40 on the same
bootstrap and certificates (only the ports differ): the handshake outcome, the negotiated
protocol version and ALPN, and the listener's ssl.* counters, names and values, for the
same clients (Python ssl, certificates from tests/tls_certs.py), also as /stats/prometheus
renders them, ssl.curves.* and ssl.sigalgs.* included (worker/tls/openssl.py reads them)."""

from __future__ import annotations

import socket
import ssl
import urllib.request


from ..tls_certs import SPIFFE_ID, leaf, make_ca, spiffe_leaf
from ..waiting import wait_until
from .conftest import Baton, free_port
from .differential.proxies import Envoy
from .tls_clients import client_context, tls_transport_socket

COMPARED = ("handshake", "connection_error", "no_certificate", "session_reused", "fail_verify_no_cert",
            "fail_verify_error", "fail_verify_san", "fail_verify_cert_hash", "versions.", "ciphers.",
            "curves.", "sigalgs.")


def bootstrap(admin: int, plain: int, mtls: int, upstream: int, ca) -> dict:
    tcp = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
           "stat_prefix": "tls", "cluster": "echo"}

    def listener(name, port, transport_socket):
        return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}],
                                   "transport_socket": transport_socket}]}
    server = leaf(ca, "ecdsa")
    sans = [{"san_type": "URI", "matcher": {"exact": SPIFFE_ID}}]
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [listener("plain", plain, tls_transport_socket(server, alpn=["h2", "http/1.1"])),
                              listener("mtls", mtls, tls_transport_socket(server, ca, require_client=True,
                                                                          sans=sans))],
                "clusters": [{"name": "echo", "type": "STATIC", "connect_timeout": "1s",
                              "load_assignment": {"cluster_name": "echo", "endpoints": [{"lb_endpoints": [
                                  {"endpoint": {"address": {"socket_address": {
                                      "address": "127.0.0.1", "port_value": upstream}}}}]}]}}]}}


def attempt(port: int, ctx: ssl.SSLContext) -> tuple:
    """(outcome, TLS version, ALPN) as the client sees them."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                version, alpn = tls.version(), tls.selected_alpn_protocol()
                tls.sendall(b"ping")
                if tls.recv(10) != b"ping":
                    return ("closed", version, alpn)
                return ("ok", version, alpn)
    except (ssl.SSLError, OSError):
        return ("refused", None, None)


def stats(admin: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as r:
        body = r.read().decode()
    return {name: int(value) for name, _, value in (line.partition(": ") for line in body.splitlines())
            if value.strip().lstrip("-").isdigit()}


def ssl_counters(admin: int, listener_port: int) -> dict:
    scope = f"listener.127.0.0.1_{listener_port}."
    out = {}
    for name, value in stats(admin).items():
        if name.startswith(scope + "ssl.") and name[len(scope) + 4:].startswith(COMPARED):
            out[name[len(scope):]] = value
        elif name == scope + "downstream_cx_total":
            out["downstream_cx_total"] = value
    return out


def prometheus_ssl_lines(admin: int, listener_port: int) -> list:
    """The listener's ssl lines of /stats/prometheus that Baton has, its address made neutral."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats/prometheus", timeout=5) as r:
        body = r.read().decode()
    address = f'envoy_listener_address="127.0.0.1_{listener_port}"'
    wanted = tuple(f"envoy_listener_ssl_{name.rstrip('.')}{{" for name in COMPARED)
    return sorted(line.replace(address, 'envoy_listener_address="ADDRESS"') for line in body.splitlines()
                  if line.startswith(wanted) and address in line)


def clients(ca) -> list:
    wrong_ca = make_ca("rsa")
    v12, v13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    old = client_context(ca)
    old.minimum_version, old.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    return [
        ("plain", "TLS 1.3, http/1.1", client_context(ca, alpn=["http/1.1"], version=v13)),
        ("plain", "TLS 1.3, h2 first", client_context(ca, alpn=["h2", "http/1.1"], version=v13)),
        ("plain", "unknown ALPN", client_context(ca, alpn=["x-unknown"], version=v13)),
        ("plain", "TLS 1.2", client_context(ca, version=v12)),
        ("plain", "TLS 1.1 only", old),
        ("mtls", "SPIFFE client", client_context(ca, spiffe_leaf(ca))),
        ("mtls", "no client certificate", client_context(ca)),
        ("mtls", "wrong SAN", client_context(ca, spiffe_leaf(ca, spiffe_id="spiffe://other/sa/x"))),
        ("mtls", "wrong CA", client_context(ca, spiffe_leaf(wrong_ca))),
        ("mtls", "SPIFFE client, TLS 1.2", client_context(ca, spiffe_leaf(ca), version=v12)),
    ]


def test_tls_termination_matches_envoy(tmp_path, upstreams):
    ca = make_ca("ecdsa")
    echo = upstreams("echo")
    observed, counters = {}, {}
    for proxy in ("envoy", "baton"):
        admin, plain, mtls = free_port(), free_port(), free_port()
        data = bootstrap(admin, plain, mtls, echo.port, ca)
        process = (Envoy(tmp_path / proxy, data) if proxy == "envoy"
                   else Baton(tmp_path / proxy, data, concurrency=1))
        process.start()
        try:
            ports = {"plain": plain, "mtls": mtls}
            observed[proxy] = [(name, attempt(ports[where], ctx)) for where, name, ctx in clients(ca)]
            expected_handshakes = sum(1 for _, (outcome, *_) in observed[proxy] if outcome == "ok")
            # Counters reach the admin API a little after the connection ends (Baton's workers
            # report them to the master), so wait for the handshakes the clients saw.
            wait_until(lambda: sum(ssl_counters(admin, p).get("ssl.handshake", 0) for p in ports.values())
                       == expected_handshakes, 10, f"{proxy}'s handshake counters")
            counters[proxy] = {where: ssl_counters(admin, port) for where, port in ports.items()}
            # Every accepted connection counts for tcp_proxy, whatever its handshake did.
            counters[proxy]["tcp"] = stats(admin)["tcp.tls.downstream_cx_total"]
            counters[proxy]["prometheus"] = prometheus_ssl_lines(admin, plain)
        finally:
            process.stop()
    envoy = dict(observed["envoy"])
    # The cases mean something: what Envoy does with them, as written down here.
    assert envoy["TLS 1.3, h2 first"] == ("ok", "TLSv1.3", "h2")
    assert envoy["unknown ALPN"] == ("ok", "TLSv1.3", None)
    assert envoy["TLS 1.2"] == ("ok", "TLSv1.2", None)
    assert envoy["SPIFFE client"][0] == "ok"
    for refused in ("TLS 1.1 only", "no client certificate", "wrong SAN", "wrong CA"):
        assert envoy[refused][0] == "refused", refused
    assert 'envoy_listener_ssl_ciphers{envoy_ssl_cipher="TLS_AES_256_GCM_SHA384",' \
        'envoy_listener_address="ADDRESS"} 3' in counters["envoy"]["prometheus"]
    assert counters["envoy"]["mtls"]["ssl.sigalgs.ecdsa_secp256r1_sha256"] == 2
    assert counters["envoy"]["plain"]["ssl.curves.X25519"] == 4
    assert observed["baton"] == observed["envoy"]
    assert counters["baton"] == counters["envoy"]


def after_the_handshake(port: int, ca, tmp_path) -> list:
    """What a client sees when its session breaks after the handshake: a record that does not
    authenticate (TLS 1.3 and 1.2), a FIN without close_notify, a renegotiation (openssl
    s_client's "R", TLS 1.2); and the listener's ssl.connection_error after each."""
    import subprocess
    import time

    seen = []
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2, None):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            tls = client_context(ca, version=version or ssl.TLSVersion.TLSv1_3).wrap_socket(
                raw, server_hostname="localhost")
            tls.sendall(b"ping")
            assert tls.recv(10) == b"ping"
            if version is None:
                socket.socket.shutdown(tls, socket.SHUT_WR)
            else:
                socket.socket.send(tls, b"\x17\x03\x03\x00\x20" + bytes(32))
            try:
                outcome = ("closed", tls.recv(10))
            except ssl.SSLError as exc:
                outcome = ("alert", exc.reason)
        seen.append(outcome)
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.cert_pem)
    client = subprocess.Popen(["openssl", "s_client", "-tls1_2", "-CAfile", str(ca_path),
                               "-connect", f"127.0.0.1:{port}", "-servername", "localhost"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client.stdin.write(b"ping\n")
        client.stdin.flush()
        for line in client.stdout:
            if line == b"ping\n":
                break
        client.stdin.write(b"R\n")
        client.stdin.flush()
        deadline = time.monotonic() + 10
        renegotiation = b""
        while b"alert" not in renegotiation and time.monotonic() < deadline:
            line = client.stdout.readline()
            if not line:
                break
            renegotiation += line
    finally:
        client.kill()
        client.wait(10)
    seen.append(("renegotiation", b"alert no renegotiation" in renegotiation))
    return seen


def test_sessions_that_break_after_the_handshake_count_as_envoy(tmp_path, upstreams):
    ca = make_ca("ecdsa")
    echo = upstreams("echo")
    observed = {}
    for proxy in ("envoy", "baton"):
        admin, plain, mtls = free_port(), free_port(), free_port()
        data = bootstrap(admin, plain, mtls, echo.port, ca)
        process = (Envoy(tmp_path / proxy, data) if proxy == "envoy"
                   else Baton(tmp_path / proxy, data, concurrency=1))
        process.start()
        try:
            seen = after_the_handshake(plain, ca, tmp_path / proxy)
            wait_until(lambda: ssl_counters(admin, plain).get("ssl.connection_error") == 6, 10,
                       f"{proxy}'s connection errors")
            observed[proxy] = (seen, ssl_counters(admin, plain)["ssl.connection_error"])
        finally:
            process.stop()
    assert observed["envoy"][0] == [("alert", "SSLV3_ALERT_BAD_RECORD_MAC")] * 2 + [
        ("closed", b""), ("renegotiation", True)]
    assert observed["baton"] == observed["envoy"]
