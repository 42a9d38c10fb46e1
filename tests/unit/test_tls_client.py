"""Baton's TLS client (worker/tls/client.py) against a real OpenSSL server (Python ssl over
MemoryBIOs): handshake to the record layer in TLS 1.2 and 1.3, SNI and ALPN as offered,
chain and SAN verification with Envoy's counters, mTLS, TLS 1.2 session resumption, and a
session whose state moves (state.py) and carries on."""

from __future__ import annotations

import ssl

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from baton.worker.tls.accept import HandshakeRefused
from baton.worker.tls.client import EXCHANGE_ALPN, ClientConnect, TlsClient
from baton.worker.tls.state import export_state, import_state

from ..tls_certs import SPIFFE_ID, leaf, make_ca, spiffe_leaf
from ..tls_helpers import MemoryPeer

CA = make_ca("ecdsa")


def spec(**overrides) -> dict:
    base = {"sni": None, "alpn": [], "certificates": [], "min_version": "TLSv1_2",
            "max_version": "TLSv1_3", "cipher_suites": None, "ecdh_curve": None,
            "trusted_ca": CA.cert_pem.decode(), "san_matchers": [], "max_session_keys": 1}
    return {**base, **overrides}


def server(pair=None, alpn=None, client_ca=None, version=None):
    pair = pair or leaf(CA, dns=["backend.example"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        ctx.load_cert_chain(*pair.write(tmp, "s"))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if client_ca is not None:
        ctx.load_verify_locations(cadata=client_ca.cert_pem.decode())
        ctx.verify_mode = ssl.CERT_REQUIRED
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    names = []
    ctx.sni_callback = lambda obj, name, _ctx: names.append(name)
    return ctx, names


def run(connect: ClientConnect, peer: MemoryPeer, rounds: int = 10):
    """Pump until Baton's side has its layer (or refuses); the server's side finishes too."""
    peer.feed(connect.start())
    for _ in range(rounds):
        try:
            peer.obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            pass                # the server refused: its alert is what Baton reads next
        out = connect.receive(peer.take(), False)
        peer.feed(out)
        if connect.layer is not None:
            try:
                peer.obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            return connect.layer
    raise AssertionError("handshake did not finish")


def exact(value: str) -> dict:
    return {"kind": "exact", "value": value, "ignore_case": False}


def client_with_stats(**overrides):
    client = TlsClient(spec(**overrides))
    counters: dict = {}
    client.declare_stats("cluster.c.", counters)
    return client, counters


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_handshake_then_record_layer_both_ways(version):
    client, counters = client_with_stats()
    ctx, names = server(alpn=["h2", "http/1.1"], version=version)
    peer = MemoryPeer(ctx, server_side=True)
    layer = run(ClientConnect(client, "backend.example", ("h2",)), peer)
    assert names == ["backend.example"]
    assert peer.obj.selected_alpn_protocol() == "h2" and layer.info["alpn"] == "h2"
    peer.feed(layer.send_data(b"hello upstream"))
    assert peer.read_all() == b"hello upstream"
    peer.obj.write(b"hello baton")
    assert layer.receive_data(peer.take()) == b"hello baton"
    assert counters["cluster.c.ssl.handshake"] == 1
    assert counters[f"cluster.c.ssl.versions.{peer.obj.version()}"] == 1
    # The session moves: exported, imported elsewhere, it carries on in sequence.
    moved = import_state(export_state(layer))
    peer.feed(moved.send_data(b"after the move"))
    assert peer.read_all() == b"after the move"


def test_unknown_ca_is_fail_verify_error():
    client, counters = client_with_stats(trusted_ca=make_ca("rsa").cert_pem.decode())
    peer = MemoryPeer(server()[0], server_side=True)
    with pytest.raises(HandshakeRefused) as info:
        run(ClientConnect(client, "backend.example"), peer)
    assert info.value.counter == "fail_verify_error"
    assert info.value.data                  # OpenSSL's alert for the server


def test_san_mismatch_is_fail_verify_san_with_certificate_unknown():
    matcher = {"type": "URI", "matcher": exact("spiffe://cluster.local/ns/x/sa/y")}
    client, _ = client_with_stats(san_matchers=[matcher])
    peer = MemoryPeer(server()[0], server_side=True)
    with pytest.raises(HandshakeRefused) as info:
        run(ClientConnect(client, "backend.example"), peer)
    assert info.value.counter == "fail_verify_san"
    peer.feed(info.value.data)
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_UNKNOWN"):
        peer.obj.read(100)


def test_spiffe_san_match_and_client_certificate():
    workload = spiffe_leaf(CA, client=False)
    matcher = {"type": "URI", "matcher": exact(SPIFFE_ID)}
    me = leaf(CA, client=True, dns=["client.example"])
    client, _ = client_with_stats(san_matchers=[matcher], certificates=[
        {"chain": me.cert_pem.decode(), "key": me.key_pem.decode()}])
    peer = MemoryPeer(server(workload, client_ca=CA)[0], server_side=True)
    run(ClientConnect(client, None), peer)
    assert peer.obj.getpeercert(binary_form=True) == me.cert.public_bytes(Encoding.DER)


def test_auto_san_validation_checks_the_host():
    client, _ = client_with_stats()
    ok = MemoryPeer(server()[0], server_side=True)
    run(ClientConnect(client, "backend.example", expected_san="backend.example"), ok)
    bad = MemoryPeer(server()[0], server_side=True)
    with pytest.raises(HandshakeRefused) as info:
        run(ClientConnect(client, "other.example", expected_san="other.example"), bad)
    assert info.value.counter == "fail_verify_san"


def test_no_trusted_ca_verifies_nothing():
    client, _ = client_with_stats(trusted_ca=None)
    stranger = leaf(make_ca("rsa"), "rsa", dns=["elsewhere"])
    run(ClientConnect(client, "x"), MemoryPeer(server(stranger)[0], server_side=True))


def test_tls12_session_resumes():
    client, counters = client_with_stats(max_version="TLSv1_2")
    ctx, _ = server()
    for _ in range(2):
        run(ClientConnect(client, "backend.example"), MemoryPeer(ctx, server_side=True))
    assert counters["cluster.c.ssl.handshake"] == 2
    assert counters["cluster.c.ssl.session_reused"] == 1


def test_max_session_keys_zero_never_resumes():
    client, counters = client_with_stats(max_version="TLSv1_2", max_session_keys=0)
    ctx, _ = server()
    for _ in range(2):
        run(ClientConnect(client, "backend.example"), MemoryPeer(ctx, server_side=True))
    assert counters["cluster.c.ssl.session_reused"] == 0


def test_a_secret_not_yet_received_fails_closed():
    """An SDS reference not resolved yet: no handshake at all (the server would otherwise go
    unverified), counted as Envoy counts it."""
    client, counters = client_with_stats(trusted_ca=None, missing_secrets=["ROOTCA"])
    with pytest.raises(HandshakeRefused) as info:
        ClientConnect(client, "backend.example").start()
    client.count(info.value.counter)
    assert counters["cluster.c.client_ssl_socket_factory.upstream_context_secrets_not_ready"] == 1
    assert counters["cluster.c.ssl.handshake"] == 0


def test_tls_params_reach_the_handshake():
    """tls_params: the TLS 1.2 suite and the curve offered are the configured ones."""
    client, counters = client_with_stats(max_version="TLSv1_2", ecdh_curve="prime256v1",
                                         cipher_suites=["ECDHE-ECDSA-AES128-GCM-SHA256"])
    peer = MemoryPeer(server()[0], server_side=True)
    layer = run(ClientConnect(client, "backend.example"), peer)
    assert peer.obj.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256" == layer.suite.name
    assert counters["cluster.c.ssl.ciphers.ECDHE-ECDSA-AES128-GCM-SHA256"] == 1
    too_new = TlsClient(spec(min_version="TLSv1_3"))
    old_server = MemoryPeer(server(version=ssl.TLSVersion.TLSv1_2)[0], server_side=True)
    with pytest.raises(HandshakeRefused) as info:
        run(ClientConnect(too_new, "backend.example"), old_server)
    assert info.value.counter == "connection_error"


def test_sessions_are_kept_per_alpn_list_as_their_contexts_are():
    """One context per ALPN list (tcp_proxy's metadata exchange list, an HTTP pool's own): a
    session made under one must not be offered under another (Python refuses it: "Session
    refers to a different SSLContext") and resumes under its own."""
    client, counters = client_with_stats(max_version="TLSv1_2", alpn=[],
                                         exchange_alpn=["istio-peer-exchange", "istio"])
    ctx, _ = server(alpn=["istio-peer-exchange", "istio", "h2", "http/1.1"])
    run(ClientConnect(client, "backend.example", EXCHANGE_ALPN), MemoryPeer(ctx, server_side=True))
    run(ClientConnect(client, "backend.example", ("h2",)), MemoryPeer(ctx, server_side=True))
    assert counters["cluster.c.ssl.session_reused"] == 0
    for alpn in (EXCHANGE_ALPN, ("h2",)):
        run(ClientConnect(client, "backend.example", alpn), MemoryPeer(ctx, server_side=True))
    assert counters["cluster.c.ssl.handshake"] == 4
    assert counters["cluster.c.ssl.session_reused"] == 2
