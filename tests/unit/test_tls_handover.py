"""worker/tls/handover.py and keylog.py: what cannot be handed over is a clear error."""

from __future__ import annotations

import ssl

import pytest

from baton.worker.tls.handover import HandoverError, HandshakeFailed, TlsHandshake
from baton.worker.tls.keylog import KeyLog

from ..tls_helpers import TLS12, TLS13, MemoryPeer, baton_server, client_context, handshake, server_context


def test_garbage_instead_of_a_client_hello_is_a_handshake_failure_with_openssls_alert():
    server_ctx = server_context("ecdsa")
    keylog = KeyLog(server_ctx)
    hs = TlsHandshake(server_ctx, keylog, server_side=True)
    hs.receive_data(b"\x16\x03\x01\x00\x05hello" + b"\0" * 40)
    with pytest.raises(HandshakeFailed) as caught:
        hs.step()
    assert str(caught.value) and "Traceback" not in str(caught.value)
    assert caught.value.data[:1] == b"\x15"           # OpenSSL's alert record, to be sent
    keylog.close()


def test_a_handshake_bigger_than_the_bound_is_refused():
    server_ctx = server_context("ecdsa")
    keylog = KeyLog(server_ctx)
    hs = TlsHandshake(server_ctx, keylog, server_side=True, max_bytes=1000)
    with pytest.raises(HandshakeFailed, match="larger than 1000 bytes"):
        hs.receive_data(b"\x16" * 1001)
    keylog.close()


def test_a_suite_without_an_aead_cannot_be_handed_over():
    cbc = "ECDHE-ECDSA-AES128-SHA256"
    server_ctx = server_context("ecdsa", TLS12, cbc)
    keylog = KeyLog(server_ctx)
    hs = TlsHandshake(server_ctx, keylog, server_side=True)
    handshake(hs, MemoryPeer(client_context(TLS12, cbc)))
    with pytest.raises(HandoverError, match="cannot be handed over"):
        hs.handover()
    keylog.close()


def test_handover_before_the_end_of_the_handshake_is_refused():
    server_ctx = server_context("ecdsa")
    keylog = KeyLog(server_ctx)
    with pytest.raises(HandoverError, match="not finished"):
        TlsHandshake(server_ctx, keylog, server_side=True).handover()
    keylog.close()


def test_without_the_key_log_lines_there_is_no_handover():
    hs, keylog, _peer = baton_server("ecdsa")
    keylog.take(b"")                                  # drain the pipe into the log ...
    keylog._sessions.clear()                          # ... and lose what it held
    with pytest.raises(HandoverError, match="no TLS 1.3 traffic secrets"):
        hs.handover()
    keylog.close()


def test_key_log_keeps_only_what_the_handover_needs_and_is_bounded():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    keylog = KeyLog(context, max_sessions=2)
    for n in range(3):
        keylog._add(b"CLIENT_TRAFFIC_SECRET_0 %02x%s 00ff" % (n, b"00" * 31))
        keylog._add(b"SERVER_HANDSHAKE_TRAFFIC_SECRET %02x%s 00ff" % (n, b"00" * 31))
    keylog._add(b"# a comment")
    keylog._add(b"CLIENT_RANDOM zz 00")
    assert keylog.take(bytes(32)) == {}               # the oldest was evicted
    assert keylog.take(bytes((2,)) + bytes(31)) == {"CLIENT_TRAFFIC_SECRET_0": b"\x00\xff"}
    keylog.close()


@pytest.mark.parametrize("version", [TLS13, TLS12], ids=["1.3", "1.2"])
def test_resumed_sessions_are_handed_over(version):
    """A resumed handshake (TLS 1.3 PSK from a ticket; TLS 1.2 abbreviated, server Finished
    first) has its own record counts; the handover finds them from the bytes."""
    server_ctx = server_context("ecdsa", version)
    keylog = KeyLog(server_ctx)
    client_ctx = client_context(version)
    first = TlsHandshake(server_ctx, keylog, server_side=True)
    peer = MemoryPeer(client_ctx)
    handshake(first, peer)
    peer.feed(first.handover().send_data(b"first"))
    assert peer.read_all() == b"first"          # the client takes its tickets here

    again = TlsHandshake(server_ctx, keylog, server_side=True)
    resumed = MemoryPeer(client_ctx, session=peer.obj.session)
    handshake(again, resumed)
    assert resumed.obj.session_reused and again.ssl_object.session_reused
    layer = again.handover()
    resumed.feed(layer.send_data(b"resumed"))
    assert resumed.read_all() == b"resumed"
    resumed.obj.write(b"and back")
    assert layer.receive_data(resumed.take()) == b"and back"
    keylog.close()


def test_hello_retry_request_is_handed_over():
    """The server accepts only P-256, the client's first key share is X25519: a
    HelloRetryRequest, a second ClientHello (same client_random), then the handover."""
    server_ctx = server_context("ecdsa")
    server_ctx.set_ecdh_curve("prime256v1")
    keylog = KeyLog(server_ctx)
    hs = TlsHandshake(server_ctx, keylog, server_side=True)
    peer = MemoryPeer(client_context())
    handshake(hs, peer)
    layer = hs.handover()
    peer.feed(layer.send_data(b"after a retry"))
    assert peer.read_all() == b"after a retry"
    keylog.close()


@pytest.mark.parametrize("route", ["callback", "pipe"])
def test_the_key_log_reaches_baton_by_either_route(route, monkeypatch):
    """The capture routes themselves (OpenSSL 3.0 here): Baton's own callback through ctypes,
    and where that is unavailable Python 3.11's keylog_filename writing to a pipe. The lines a
    handover needs arrive for both protocol versions, and the session is handed over."""
    from baton.worker.tls import openssl
    if route == "pipe":
        monkeypatch.setattr(openssl, "_why_not", "not here")
        monkeypatch.setattr(openssl, "_checked", True)
    for version, labels in ((TLS13, {"CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"}),
                            (TLS12, {"CLIENT_RANDOM"})):
        hs, keylog, peer = baton_server("ecdsa", version)
        assert (keylog._fd >= 0) == (route == "pipe")
        keylog.collect()
        assert len(keylog._sessions) == 1, ssl.OPENSSL_VERSION
        (secrets,) = keylog._sessions.values()
        assert set(secrets) == labels, ssl.OPENSSL_VERSION
        peer.feed(hs.handover().send_data(b"by " + route.encode()))
        assert peer.read_all() == b"by " + route.encode()
        keylog.close()


def test_interleaved_handshakes_on_one_context_find_their_own_secrets():
    """A worker runs many handshakes on one context at once: the key log lines interleave
    and each handover picks its own by client_random."""
    server_ctx = server_context("ecdsa")
    keylog = KeyLog(server_ctx)
    client_ctx = client_context()
    pairs = [(TlsHandshake(server_ctx, keylog, server_side=True), MemoryPeer(client_ctx))
             for _ in range(4)]
    for _ in range(6):                            # one step of each in turn
        for hs, peer in pairs:
            try:
                peer.obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            hs.receive_data(peer.take())
            peer.feed(hs.step())
    for n, (hs, peer) in reversed(list(enumerate(pairs))):
        layer = hs.handover()
        peer.feed(layer.send_data(b"session %d" % n))
        assert peer.read_all() == b"session %d" % n
    assert keylog._sessions == {}                 # every secret was taken
    keylog.close()


@pytest.mark.parametrize("suite", ["AES128-GCM-SHA256", "AES256-GCM-SHA384"])
def test_rsa_key_exchange_gcm_suites_are_handed_over(suite):
    """The TLS 1.2 suites Istio still lists (RSA key exchange): OpenSSL's key exchange, the
    same AES-GCM records and key block as the ECDHE suites, so they move like them."""
    hs, keylog, peer = baton_server("rsa", TLS12, suite)
    assert hs.ssl_object.cipher()[0] == suite
    layer = hs.handover()
    peer.feed(layer.send_data(b"rsa kx"))
    assert peer.read_all() == b"rsa kx"
    peer.obj.write(b"and back")
    assert layer.receive_data(peer.take()) == b"and back"
    keylog.close()


def test_a_server_handover_opens_only_its_tickets(monkeypatch):
    """The tickets of the server's last flight are opened where they start (no probes of the
    handshake-key records before them, none of the client's records: nothing OpenSSL read is
    under the client's application secret); the sequence numbers are the ones a scan finds."""
    from baton.worker.tls import protection
    hs, keylog, peer = baton_server("ecdsa")
    opened = []
    real_open = protection.Tls13Protection.open
    monkeypatch.setattr(protection.Tls13Protection, "open",
                        lambda self, header, fragment: opened.append(1) or real_open(self, header, fragment))
    layer = hs.handover()
    assert len(opened) == 2                          # the 2 NewSessionTickets
    assert (layer.write.seq, layer.read.seq) == (2, 0)
    peer.feed(layer.send_data(b"counted right"))
    assert peer.read_all() == b"counted right"
    keylog.close()
