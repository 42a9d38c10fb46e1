"""TLS session resumption through a real `baton` (worker/tls/tickets.py): a session a client
got from one worker resumes on the others, on workers that replaced them (`baton recycle`)
and on the next generation (`baton reload`), TLS 1.3 and 1.2, with Python's ssl and with
`openssl s_client -sess_out/-sess_in`; configured session_ticket_keys as files; and Envoy
1.40 on the same bootstrap and key file for the outcomes a client sees and the counters."""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest

from ..tls_certs import leaf, make_ca
from ..waiting import wait_until
from .conftest import free_port
from .tls_clients import client_context, echo, ssl_stats, tls_bootstrap, tls_transport_socket

VERSIONS = (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2)


def connect(port: int, ctx: ssl.SSLContext, session=None) -> tuple[bool, ssl.SSLSession]:
    """One connection through the echo upstream: (resumed?, the session the client holds
    after reading the echo, which brings TLS 1.3's tickets)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            assert echo(tls, b"ping") == b"ping"
            return tls.session_reused, tls.session


def s_client(port: int, ca_path, version: str, sess_flag: str, sess_path) -> str:
    """openssl s_client with a session file; its output (which says New or Reused)."""
    client = subprocess.Popen(["openssl", "s_client", "-verify_return_error", "-CAfile", str(ca_path),
                               "-connect", f"127.0.0.1:{port}", "-servername", "localhost", version,
                               sess_flag, str(sess_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client.stdin.write(b"ping\n")
        client.stdin.flush()
        lines = []
        for line in client.stdout:
            lines.append(line.decode(errors="replace"))
            if line == b"ping\n":        # the echo: TLS 1.3's tickets came before it
                break
        return "".join(lines)
    finally:
        client.kill()
        client.wait(10)


@pytest.fixture
def resuming_baton(baton, upstreams, tmp_path):
    ca = make_ca("ecdsa")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    port = free_port()
    b = baton(tls_bootstrap(port, upstreams("echo").port, tls_transport_socket(leaf(ca, "ecdsa"))),
              concurrency=2)
    return b, port, ca


def test_sessions_resume_on_every_worker_after_recycles_and_reloads(resuming_baton):
    b, port, ca = resuming_baton
    sessions, contexts = {}, {v: client_context(ca, version=v) for v in VERSIONS}
    for version, ctx in contexts.items():
        reused, sessions[version] = connect(port, ctx)
        assert not reused
        # Two workers behind one port: eight resumptions land on both of them.
        assert all(connect(port, ctx, sessions[version])[0] for _ in range(8))
    for worker in range(2):
        old = b.status()["workers"][worker]["pid"]
        assert b.cli("recycle", "--worker", str(worker)).returncode == 0
        wait_until(lambda: b.status()["workers"][worker]["pid"] not in (old, None), 20, "the recycle")
    for _ in range(2):
        old = b.master_pid()
        result = b.reload()
        assert result.returncode == 0, result.stderr
        b.wait_previous_gone(old)
        for version, ctx in contexts.items():
            assert connect(port, ctx, sessions[version])[0], f"{version.name} after a reload"
    wait_until(lambda: ssl_stats(b, port).get("session_reused") == 2 * 8 + 2 * 2, 10,
               "the resumptions counted")
    assert ssl_stats(b, port)["handshake"] == 2 + 2 * 8 + 2 * 2


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_openssl_s_client_resumes_after_a_reload(resuming_baton, tmp_path, version):
    b, port, _ca = resuming_baton
    ca_path, sess = tmp_path / "ca.pem", tmp_path / "session.pem"
    first = s_client(port, ca_path, version, "-sess_out", sess)
    assert "New, TLSv1." in first, first
    old = b.master_pid()
    assert b.reload().returncode == 0
    b.wait_previous_gone(old)
    again = s_client(port, ca_path, version, "-sess_in", sess)
    assert "Reused, TLSv1." in again, again


def test_session_ticket_keys_file_as_envoy(tmp_path, upstreams):
    """The same bootstrap and 80-byte key file for Envoy 1.40 and Baton: each resumes its own
    tickets and counts it alike; a ticket one issued reaches the other's key (same name, same
    HMAC) but not its session format (BoringSSL's vs OpenSSL's), so it means a full handshake,
    never a failure. A key file of the wrong length is refused by both."""
    from .conftest import Baton
    from .differential.proxies import Envoy
    from .test_tls_differential import ssl_counters

    ca = make_ca("ecdsa")
    echo_port = upstreams("echo").port
    (tmp_path / "ticket.key").write_bytes(bytes(range(7, 87)))
    (tmp_path / "short.key").write_bytes(bytes(79))

    def bootstrap(key_file, admin, port):
        socket_ = tls_transport_socket(leaf(ca, "ecdsa"))
        socket_["typed_config"]["session_ticket_keys"] = {"keys": [{"filename": str(key_file)}]}
        data = tls_bootstrap(port, echo_port, socket_)
        data["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}}
        return data

    ctx = client_context(ca, version=ssl.TLSVersion.TLSv1_3)
    sessions, counters, ports = {}, {}, {}
    for proxy in ("envoy", "baton"):
        admin, ports[proxy] = free_port(), free_port()
        data = bootstrap(tmp_path / "ticket.key", admin, ports[proxy])
        process = (Envoy(tmp_path / proxy, data) if proxy == "envoy"
                   else Baton(tmp_path / proxy, data, concurrency=2))
        process.start()
        try:
            reused, sessions[proxy] = connect(ports[proxy], ctx)
            assert not reused
            assert all(connect(ports[proxy], ctx, sessions[proxy])[0] for _ in range(4)), proxy
            if proxy == "baton":
                assert connect(ports[proxy], ctx, sessions["envoy"])[0] is False
            wait_until(lambda: ssl_counters(admin, ports[proxy]).get("ssl.handshake") == (5 if proxy == "envoy" else 6),
                       10, f"{proxy}'s counters")
            counters[proxy] = ssl_counters(admin, ports[proxy])
        finally:
            process.stop()
    assert counters["envoy"]["ssl.session_reused"] == counters["baton"]["ssl.session_reused"] == 4
    for proxy in ("envoy", "baton"):
        data = bootstrap(tmp_path / "short.key", free_port(), free_port())
        process = (Envoy(tmp_path / f"{proxy}-short", data) if proxy == "envoy"
                   else Baton(tmp_path / f"{proxy}-short", data, concurrency=1))
        with pytest.raises(Exception) as refused:
            process.start()
            process.stop()
        text = str(refused.value) + (process.log if proxy == "envoy" else "")
        assert "Incorrect TLS session ticket key length. Length 79, expected length 80." in text, text[-2000:]


def test_two_batons_sharing_a_ticket_key_secret_resume_each_others_sessions(baton, upstreams, tmp_path):
    """session_ticket_keys from a Secret (session_ticket_keys_sds_secret_config, a static one
    here): two separate Batons, two lineages with their own seeds, one key, as a fleet behind a
    load balancer would run them."""
    ca = make_ca("ecdsa")
    (tmp_path / "stek.key").write_bytes(bytes(range(40, 120)))
    echo_port = upstreams("echo").port
    pair = leaf(ca, "ecdsa")

    def start():
        socket_ = tls_transport_socket(pair)
        socket_["typed_config"]["session_ticket_keys_sds_secret_config"] = {"name": "stek"}
        port = free_port()
        data = tls_bootstrap(port, echo_port, socket_)
        data["static_resources"]["secrets"] = [
            {"name": "stek", "session_ticket_keys": {"keys": [{"filename": str(tmp_path / "stek.key")}]}}]
        return baton(data, concurrency=1), port

    (_, first), (_, second) = start(), start()
    ctx = client_context(ca, version=ssl.TLSVersion.TLSv1_3)
    reused, session = connect(first, ctx)
    assert not reused
    assert connect(second, ctx, session)[0]
