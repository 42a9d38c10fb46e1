"""One direction's record protection: AEAD key, nonce, sequence number (sans-IO).

TLS 1.3 (RFC 8446 §5.2-5.4): the outer header says application_data; the AAD is that header;
the nonce is the IV XOR the 64-bit sequence number; the true content type and optional zero
padding are inside the ciphertext (TLSInnerPlaintext).

TLS 1.2 AEAD (RFC 5246 §6.2.3.3): the header is the true type; the AAD is
seq_num || type || version || plaintext length. AES-GCM's nonce is the 4-byte salt from the
key block followed by an 8-byte nonce_explicit sent in front of each record (RFC 5288 §3);
ChaCha20-Poly1305's is the 12-byte IV XOR the sequence number, nothing explicit (RFC 7905 §2).

Rules of this file:
- `seal` returns a whole record (header included); `open` takes a header and fragment and
  returns (content type, plaintext). Each advances the sequence number by exactly one.
- Every failure is a `TLSAlert` (bad_record_mac, record_overflow, unexpected_message).
- `export()` is everything needed to carry on: plain bytes and ints.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag

from .keyschedule import tls13_key_iv, tls13_next_secret
from .records import (
    APPLICATION_DATA, BAD_RECORD_MAC, HEADER, INTERNAL_ERROR, MAX_PLAINTEXT, RECORD_OVERFLOW,
    TLS12_VERSION, UNEXPECTED_MESSAGE, TLSAlert,
)
from .suites import CipherSuite

TAG_LENGTH = 16
EXPLICIT_NONCE_LENGTH = 8
SEQ_LIMIT = 1 << 64
U64 = struct.Struct("!Q")
TLS12_AAD = struct.Struct("!QBHH")
CONTENT_TYPE_BYTE = [bytes((i,)) for i in range(256)]     # TLSInnerPlaintext's trailing type


class Tls13Protection:
    """Records under one application traffic secret; `update()` moves to the next one.

    The record key and IV are derived from the secret when the first record is sealed or
    opened, not before: a connection that ends without a record in one direction (a client
    that hangs up after its handshake never sends one) never pays that direction's HKDF.
    The secret and the sequence number are the whole state either way."""

    __slots__ = ("suite", "secret", "seq", "_aead", "_iv_int")

    def __init__(self, suite: CipherSuite, secret: bytes, seq: int = 0) -> None:
        self.suite = suite
        self._rekey(secret)
        self.seq = seq

    def _rekey(self, secret: bytes) -> None:
        self.secret = secret
        self._aead = None
        self.seq = 0

    def _derive(self):
        key, iv = tls13_key_iv(self.suite, self.secret)
        self._iv_int = int.from_bytes(iv, "big")
        self._aead = aead = self.suite.aead(key)
        return aead

    def update(self) -> None:
        """KeyUpdate (RFC 8446 §4.6.3): the next secret, sequence number back to 0 (§5.3)."""
        self._rekey(tls13_next_secret(self.suite, self.secret))

    def seal(self, content_type: int, data) -> bytes:
        # On the data path: per-record Python work is the cost of small records, so no helper
        # calls and one copy of the plaintext (bench/tls_record.py).
        if self.seq >= SEQ_LIMIT - 1:
            raise TLSAlert(INTERNAL_ERROR, "write sequence number exhausted")
        if type(data) is not bytes:
            data = bytes(data)
        aead = self._aead or self._derive()
        inner = data + CONTENT_TYPE_BYTE[content_type]
        header = HEADER.pack(APPLICATION_DATA, TLS12_VERSION, len(inner) + TAG_LENGTH)
        sealed = aead.encrypt((self._iv_int ^ self.seq).to_bytes(12, "big"), inner, header)
        self.seq += 1
        return header + sealed

    def open(self, header: bytes, fragment: bytes) -> tuple[int, bytes]:
        if header[0] != APPLICATION_DATA:
            # Only application_data carries protected records in TLS 1.3 (RFC 8446 §5, §5.1);
            # the record reader already refuses others, this guards direct callers.
            raise TLSAlert(UNEXPECTED_MESSAGE, f"cleartext record of type {header[0]} after the handshake")
        if self.seq >= SEQ_LIMIT - 1:
            raise TLSAlert(UNEXPECTED_MESSAGE, "read sequence number exhausted")
        aead = self._aead or self._derive()
        try:
            inner = aead.decrypt((self._iv_int ^ self.seq).to_bytes(12, "big"), fragment, header)
        except (InvalidTag, ValueError):
            raise TLSAlert(BAD_RECORD_MAC, "record does not authenticate") from None
        self.seq += 1
        if len(inner) > MAX_PLAINTEXT + 1:
            raise TLSAlert(RECORD_OVERFLOW, f"inner plaintext of {len(inner)} bytes")
        if inner[-1:] == b"\0":
            inner = inner.rstrip(b"\0")         # padding (RFC 8446 §5.4)
            if not inner:
                raise TLSAlert(UNEXPECTED_MESSAGE, "record with no content type")
        return inner[-1], inner[:-1]

    def export(self) -> dict:
        return {"secret": self.secret, "seq": self.seq}


class Tls12Protection:
    """Records under a TLS 1.2 AEAD key from the key block (no rekeying in TLS 1.2)."""

    __slots__ = ("suite", "key", "iv", "seq", "nonce_offset", "_aead", "_iv_int", "_explicit")

    def __init__(self, suite: CipherSuite, key: bytes, iv: bytes, seq: int = 0,
                 nonce_offset: int = 0) -> None:
        if len(key) != suite.key_length or len(iv) != suite.fixed_iv_length:
            raise ValueError(f"{suite.name} needs a {suite.key_length}-byte key and "
                             f"{suite.fixed_iv_length}-byte IV")
        self.suite = suite
        self.key = key
        self.iv = iv
        self.seq = seq
        # GCM's nonce_explicit is the sender's choice (RFC 5288 §3); OpenSSL starts it at a
        # random value and counts up, so a session carried on from OpenSSL keeps that offset
        # and no nonce is ever used twice under the key.
        self.nonce_offset = nonce_offset
        self._aead = suite.aead(key)
        self._iv_int = int.from_bytes(iv, "big")
        self._explicit = suite.explicit_nonce

    def seal(self, content_type: int, data) -> bytes:
        if self.seq >= SEQ_LIMIT - 1:
            raise TLSAlert(INTERNAL_ERROR, "write sequence number exhausted")
        if type(data) is not bytes:
            data = bytes(data)
        aad = TLS12_AAD.pack(self.seq, content_type, TLS12_VERSION, len(data))
        if self._explicit:
            explicit = U64.pack((self.nonce_offset + self.seq) % SEQ_LIMIT)
            body = explicit + self._aead.encrypt(self.iv + explicit, data, aad)
        else:
            body = self._aead.encrypt((self._iv_int ^ self.seq).to_bytes(12, "big"), data, aad)
        self.seq += 1
        return HEADER.pack(content_type, TLS12_VERSION, len(body)) + body

    def open(self, header: bytes, fragment: bytes) -> tuple[int, bytes]:
        content_type = header[0]
        if self.seq >= SEQ_LIMIT - 1:
            raise TLSAlert(UNEXPECTED_MESSAGE, "read sequence number exhausted")
        if self._explicit:
            nonce = self.iv + bytes(fragment[:EXPLICIT_NONCE_LENGTH])
            sealed = fragment[EXPLICIT_NONCE_LENGTH:]
            overhead = EXPLICIT_NONCE_LENGTH + TAG_LENGTH
        else:
            nonce = (self._iv_int ^ self.seq).to_bytes(12, "big")
            sealed = fragment
            overhead = TAG_LENGTH
        plain_length = len(fragment) - overhead
        if plain_length < 0:
            raise TLSAlert(BAD_RECORD_MAC, "record shorter than its AEAD overhead")
        aad = TLS12_AAD.pack(self.seq, content_type, TLS12_VERSION, plain_length)
        try:
            plaintext = self._aead.decrypt(nonce, sealed, aad)
        except (InvalidTag, ValueError):
            raise TLSAlert(BAD_RECORD_MAC, "record does not authenticate") from None
        self.seq += 1
        if plain_length > MAX_PLAINTEXT:
            # Checked after the tag, as OpenSSL does: only the peer itself can send this.
            raise TLSAlert(RECORD_OVERFLOW, f"plaintext of {plain_length} bytes")
        return content_type, plaintext

    def export(self) -> dict:
        return {"key": self.key, "iv": self.iv, "seq": self.seq, "nonce_offset": self.nonce_offset}
