"""Key derivation of worker/tls/keyschedule.py against published vectors."""

from __future__ import annotations

from baton.worker.tls.keyschedule import tls12_prf, tls13_key_iv, tls13_next_secret
from baton.worker.tls.suites import SUITES


def test_tls13_traffic_key_and_iv_rfc8448():
    # RFC 8448 §3 (simple 1-RTT handshake): {server} derive write traffic keys for
    # application data, from the server application traffic secret.
    secret = bytes.fromhex("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643")
    key, iv = tls13_key_iv(SUITES["TLS_AES_128_GCM_SHA256"], secret)
    assert key.hex() == "9f02283b6c9c07efc26bb9f2ac92e356"
    assert iv.hex() == "cf782b88dd83549aadf1e984"


def test_tls13_next_secret_has_the_hash_length_and_changes():
    suite = SUITES["TLS_AES_256_GCM_SHA384"]
    secret = bytes(range(48))
    following = tls13_next_secret(suite, secret)
    assert len(following) == 48 and following != secret
    assert tls13_next_secret(suite, following) != following


def test_tls12_prf_sha256_vector():
    # The widely used TLS 1.2 PRF (P_SHA256) test vector (IETF TLS list, 2009).
    out = tls12_prf(bytes.fromhex("9bbe436ba940f017b17652849a71db35"), b"test label",
                    bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c"), 100, "sha256")
    assert out.hex().startswith("e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a")
    assert out.hex().endswith("a48082d122ee42c5a72e5a5110fff70187347b66")
