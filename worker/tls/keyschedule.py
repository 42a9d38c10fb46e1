"""Record keys from handshake secrets: TLS 1.3's HKDF-Expand-Label and TLS 1.2's PRF.

Pure functions over bytes (HMAC from the standard library): the record layer calls them when a
session is handed over, imported, or its keys are updated.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from .suites import CipherSuite

NONCE_LENGTH = 12       # every AEAD here uses a 96-bit nonce (RFC 8446 §5.3, RFC 7905 §2)

_DIGEST_SIZES: dict[str, int] = {}
# (label, context, length) -> HkdfLabel with HKDF-Expand's first counter byte: the labels are
# a handful of constants, and a key or IV is never longer than one hash (one HMAC call).
_LABELS: dict[tuple[bytes, bytes, int], bytes] = {}


def digest_size(hash_name: str) -> int:
    size = _DIGEST_SIZES.get(hash_name)
    if size is None:
        size = _DIGEST_SIZES[hash_name] = hashlib.new(hash_name).digest_size
    return size


def hkdf_expand(secret: bytes, info: bytes, length: int, hash_name: str) -> bytes:
    """HKDF-Expand (RFC 5869 §2.3)."""
    if length > 255 * digest_size(hash_name):
        raise ValueError("HKDF-Expand output too long")
    out = bytearray()
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(secret, block + info + bytes((counter,)), hash_name)
        out += block
        counter += 1
    return bytes(out[:length])


def hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int,
                      hash_name: str) -> bytes:
    """HKDF-Expand-Label (RFC 8446 §7.1): HkdfLabel = length u16, "tls13 "+label<7..255>,
    context<0..255>."""
    block_one = _LABELS.get((label, context, length))
    if block_one is not None and length <= digest_size(hash_name):
        # T(1) = HMAC(secret, info | 0x01) is the whole output (RFC 5869 §2.3).
        return hmac.digest(secret, block_one, hash_name)[:length]
    full_label = b"tls13 " + label
    info = struct.pack("!HB", length, len(full_label)) + full_label + bytes((len(context),)) + context
    if len(_LABELS) < 64:
        _LABELS[(label, context, length)] = info + b"\x01"
    return hkdf_expand(secret, info, length, hash_name)


def tls13_key_iv(suite: CipherSuite, traffic_secret: bytes) -> tuple[bytes, bytes]:
    """The record key and IV of a traffic secret (RFC 8446 §7.3)."""
    key = hkdf_expand_label(traffic_secret, b"key", b"", suite.key_length, suite.hash_name)
    iv = hkdf_expand_label(traffic_secret, b"iv", b"", NONCE_LENGTH, suite.hash_name)
    return key, iv


def tls13_next_secret(suite: CipherSuite, traffic_secret: bytes) -> bytes:
    """application_traffic_secret_N+1 after a KeyUpdate (RFC 8446 §7.2)."""
    length = digest_size(suite.hash_name)
    return hkdf_expand_label(traffic_secret, b"traffic upd", b"", length, suite.hash_name)


def tls12_prf(secret: bytes, label: bytes, seed: bytes, length: int, hash_name: str) -> bytes:
    """PRF(secret, label, seed) = P_hash(secret, label + seed) (RFC 5246 §5)."""
    seed = label + seed
    out = bytearray()
    a = seed                                   # A(0)
    while len(out) < length:
        a = hmac.digest(secret, a, hash_name)  # A(i) = HMAC(secret, A(i-1))
        out += hmac.digest(secret, a + seed, hash_name)
    return bytes(out[:length])


def tls12_key_block(suite: CipherSuite, master_secret: bytes, client_random: bytes,
                    server_random: bytes) -> dict:
    """Client and server write keys and IVs of an AEAD suite (RFC 5246 §6.3).

    AEAD suites have no MAC key (RFC 5246 §6.2.3.3), so the block is client key, server key,
    client IV, server IV; the IV is GCM's 4-byte salt (RFC 5288 §3) or ChaCha20's 12 bytes
    (RFC 7905 §2).
    """
    k, v = suite.key_length, suite.fixed_iv_length
    block = tls12_prf(master_secret, b"key expansion", server_random + client_random,
                      2 * (k + v), suite.hash_name)
    return {
        "client_key": block[:k], "server_key": block[k:2 * k],
        "client_iv": block[2 * k:2 * k + v], "server_iv": block[2 * k + v:],
    }
