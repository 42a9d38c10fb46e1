"""The server side of a TLS filter chain (worker/tls/server.py), over memory BIOs: the context
built from the snapshot's spec, SAN matching in Envoy's types, and the counters."""

from __future__ import annotations

import ssl

import pytest

from baton.worker.stats import Stats
from baton.worker.tls.handover import HandshakeFailed
from baton.worker.tls.server import TlsServer

from ..tls_certs import SPIFFE_ID, leaf, make_ca, spiffe_leaf
from ..tls_helpers import MemoryPeer, handshake


def spec(server, ca=None, sans=(), require=False, **extra):
    return {"certificates": [{"chain": server.cert_pem.decode(), "key": server.key_pem.decode()}],
            "min_version": "TLSv1_2", "max_version": "TLSv1_3", "cipher_suites": None,
            "ecdh_curve": None, "alpn": [], "trusted_ca": ca.cert_pem.decode() if ca else None,
            "san_matchers": list(sans), "require_client_certificate": require,
            "handshake_timeout": 15.0, **extra}


def client(ca, certificate=None, alpn=None, version=None) -> MemoryPeer:
    import tempfile
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    if certificate is not None:
        with tempfile.TemporaryDirectory() as tmp:
            ctx.load_cert_chain(*certificate.write(tmp, "c"))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if version:
        ctx.minimum_version = ctx.maximum_version = version
    return MemoryPeer(ctx)


def served(server: TlsServer, peer: MemoryPeer):
    hs = server.handshake()
    handshake(hs, peer)
    return hs


def uri(value):
    return {"type": "URI", "matcher": {"kind": "exact", "value": value, "ignore_case": False}}


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_handshake_counts_as_envoy_names_it(kind):
    ca = make_ca("ecdsa")
    server = TlsServer(spec(leaf(ca, kind), alpn=["h2", "http/1.1"]))
    stats = Stats()
    server.declare_stats("listener.x.", stats)
    assert {k: v for k, v in stats.counters.items()} == {
        f"listener.x.ssl.{n}": 0 for n in ("connection_error", "handshake", "session_reused",
                                           "no_certificate", "fail_verify_no_cert", "fail_verify_error",
                                           "fail_verify_san", "fail_verify_cert_hash")}
    hs = served(server, client(ca, alpn=["http/1.1", "h2"]))
    assert hs.ssl_object.selected_alpn_protocol() == "h2"          # the server's order, as Envoy
    assert server.verify(hs.ssl_object) is None
    server.count_handshake(hs.ssl_object)
    cipher = hs.ssl_object.cipher()[0]
    assert stats.counters["listener.x.ssl.handshake"] == 1
    assert stats.counters["listener.x.ssl.no_certificate"] == 1
    assert stats.counters[f"listener.x.ssl.ciphers.{cipher}"] == 1
    assert stats.counters["listener.x.ssl.versions.TLSv1.3"] == 1


def test_san_matchers_by_type_and_untyped():
    ca = make_ca("ecdsa")
    good = spiffe_leaf(ca)
    ip_client = leaf(ca, "ecdsa", dns=["client.example"], ips=["::1"], client=True, slot=4)
    cases = [
        ([uri(SPIFFE_ID)], good, None),
        ([uri("spiffe://cluster.local/ns/other/sa/x")], good, "fail_verify_san"),
        ([{"type": "DNS", "matcher": {"kind": "exact", "value": SPIFFE_ID, "ignore_case": False}}], good,
         "fail_verify_san"),                                   # the right value, the wrong type
        ([{"type": None, "matcher": {"kind": "prefix", "value": "spiffe://cluster.local/", "ignore_case": False}}],
         good, None),                                          # match_subject_alt_names: any type
        ([{"type": "IP_ADDRESS", "matcher": {"kind": "exact", "value": "::1", "ignore_case": False}}],
         ip_client, None),                                     # IPv6 in its compressed form
        ([{"type": "DNS", "matcher": {"kind": "suffix", "value": ".EXAMPLE", "ignore_case": True}}],
         ip_client, None),
    ]
    for matchers, certificate, expected in cases:
        server = TlsServer(spec(leaf(ca, "ecdsa"), ca, matchers, require=True))
        hs = served(server, client(ca, certificate))
        assert server.verify(hs.ssl_object) == expected, matchers


def test_refusals_by_openssl_map_to_envoys_counters():
    ca, other = make_ca("ecdsa"), make_ca("rsa")
    server = TlsServer(spec(leaf(ca, "ecdsa"), ca, require=True))
    for certificate, counter in ((None, "fail_verify_no_cert"), (spiffe_leaf(other), "fail_verify_error")):
        with pytest.raises(HandshakeFailed) as info:
            served(server, client(ca, certificate))
        assert server.failure_of(info.value) == counter
    assert server.failure_of(HandshakeFailed("WRONG_VERSION_NUMBER")) == "connection_error"


def test_tls12_only_aead_suites_and_one_curve():
    ca = make_ca("ecdsa")
    server = TlsServer(spec(leaf(ca, "ecdsa"), cipher_suites=["ECDHE-ECDSA-CHACHA20-POLY1305"],
                            ecdh_curve="prime256v1", max_version="TLSv1_2"))
    hs = served(server, client(ca, version=ssl.TLSVersion.TLSv1_2))
    assert hs.ssl_object.cipher()[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"
    hs.handover()                                               # Baton's layer carries it on
