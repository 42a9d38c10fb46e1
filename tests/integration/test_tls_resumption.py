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
