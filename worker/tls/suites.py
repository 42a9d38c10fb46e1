"""The cipher suites whose records Baton protects itself after OpenSSL's handshake.

Only AEAD suites: TLS 1.3's three (RFC 8446 §B.4) and TLS 1.2's ECDHE suites with AES-GCM
(RFC 5289 §3, record format RFC 5288 §3) and ChaCha20-Poly1305 (RFC 7905 §2), plus the two
RSA key exchange AES-GCM suites Istio still lists (RFC 5288 §3): the key exchange is
OpenSSL's business, their records are the same AES-GCM with an explicit nonce, and the key
block comes from the master secret the same way. A handshake that negotiated anything else
cannot be handed over. `TLS12_CIPHERS` is the OpenSSL cipher string a context offers when
its config names no suites: the ECDHE ones only (no forward secrecy without ECDHE; Envoy's
server default leaves the RSA ones out too).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305


@dataclass(frozen=True)
class CipherSuite:
    name: str             # OpenSSL's name, as SSLObject.cipher()[0] reports it
    code: int             # IANA value
    version: str          # "TLSv1.3" or "TLSv1.2", as SSLObject.version() reports it
    aead: type            # the `cryptography` AEAD class
    key_length: int
    hash_name: str        # HKDF hash (1.3) or PRF hash (1.2)
    fixed_iv_length: int  # 12 for TLS 1.3 and ChaCha20; 4 for TLS 1.2 GCM (the salt)

    @property
    def explicit_nonce(self) -> bool:
        """TLS 1.2 GCM carries 8 bytes of nonce in each record (RFC 5288 §3)."""
        return self.version == "TLSv1.2" and self.aead is AESGCM


SUITES = {s.name: s for s in (
    CipherSuite("TLS_AES_128_GCM_SHA256", 0x1301, "TLSv1.3", AESGCM, 16, "sha256", 12),
    CipherSuite("TLS_AES_256_GCM_SHA384", 0x1302, "TLSv1.3", AESGCM, 32, "sha384", 12),
    CipherSuite("TLS_CHACHA20_POLY1305_SHA256", 0x1303, "TLSv1.3", ChaCha20Poly1305, 32, "sha256", 12),
    CipherSuite("ECDHE-ECDSA-AES128-GCM-SHA256", 0xC02B, "TLSv1.2", AESGCM, 16, "sha256", 4),
    CipherSuite("ECDHE-ECDSA-AES256-GCM-SHA384", 0xC02C, "TLSv1.2", AESGCM, 32, "sha384", 4),
    CipherSuite("ECDHE-RSA-AES128-GCM-SHA256", 0xC02F, "TLSv1.2", AESGCM, 16, "sha256", 4),
    CipherSuite("ECDHE-RSA-AES256-GCM-SHA384", 0xC030, "TLSv1.2", AESGCM, 32, "sha384", 4),
    CipherSuite("ECDHE-ECDSA-CHACHA20-POLY1305", 0xCCA9, "TLSv1.2", ChaCha20Poly1305, 32, "sha256", 12),
    CipherSuite("ECDHE-RSA-CHACHA20-POLY1305", 0xCCA8, "TLSv1.2", ChaCha20Poly1305, 32, "sha256", 12),
    CipherSuite("AES128-GCM-SHA256", 0x009C, "TLSv1.2", AESGCM, 16, "sha256", 4),
    CipherSuite("AES256-GCM-SHA384", 0x009D, "TLSv1.2", AESGCM, 32, "sha384", 4),
)}

TLS12_CIPHERS = ":".join(s.name for s in SUITES.values()
                         if s.version == "TLSv1.2" and s.name.startswith("ECDHE-"))


class UnsupportedSuite(ValueError):
    pass


def suite_named(name: str) -> CipherSuite:
    try:
        return SUITES[name]
    except KeyError:
        raise UnsupportedSuite(
            f"cipher suite {name!r} cannot be handed over to Baton's record layer "
            f"(supported: {', '.join(SUITES)})") from None
