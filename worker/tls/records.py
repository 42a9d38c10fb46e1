"""TLS record framing and alerts, shared by both protocol versions (sans-IO).

    0      1      3      5                          5+length
    +------+------+------+--------------------------+
    | type | ver  |length|  fragment (length bytes)  |
    +------+------+------+--------------------------+
      u8    u16 BE u16 BE

RFC 8446 §5.1 (TLSPlaintext / TLSCiphertext) and RFC 5246 §6.2.1 use the same five-byte
header. Rules of this file:
- `RecordReader` only frames: it never decrypts and never looks inside a fragment.
- A header that cannot start a valid record is a `TLSAlert` as soon as its five bytes are
  in, with the alert OpenSSL 3.0 sends for it, in OpenSSL's order of checks (the differential
  test compares the alert records byte for byte):
    version major != 3, or TLS 1.2 and version != 0x0303   -> protocol_version
    TLS 1.3: outer type != application_data                 -> unexpected_message (RFC 8446 §5)
    TLS 1.3: version != 0x0303 -> decode_error (RFC 8446 §5.1 says to ignore the field;
                                  OpenSSL rejects it, and a changed one fails the tag anyway)
    length over the limit      -> record_overflow (RFC 8446 §5.2, RFC 5246 §6.2.3)
  A TLS 1.2 record type is checked after decryption, as OpenSSL does: it is part of the AAD
  (RFC 5246 §6.2.3.3), so a garbled one is bad_record_mac.
- `TLSAlert` is the only exception the record layer lets out on bad input.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!BHH")
HEADER_SIZE = 5

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23

TLS12_VERSION = 0x0303          # also TLS 1.3's legacy_record_version (RFC 8446 §5.1)

MAX_PLAINTEXT = 1 << 14                         # RFC 8446 §5.1, RFC 5246 §6.2.1
MAX_TLS13_CIPHERTEXT = MAX_PLAINTEXT + 256      # RFC 8446 §5.2
# RFC 5246 §6.2.3 allows 2^14 + 2048, but an AEAD record is never longer than 2^14 + 24;
# OpenSSL refuses anything over 2^14 + 320 (its largest MAC and padding), and so do we.
MAX_TLS12_CIPHERTEXT = MAX_PLAINTEXT + 320

# Alert levels and the descriptions this layer sends or names (RFC 8446 §6, RFC 5246 §7.2).
WARNING = 1
FATAL = 2
CLOSE_NOTIFY = 0
UNEXPECTED_MESSAGE = 10
BAD_RECORD_MAC = 20
RECORD_OVERFLOW = 22
HANDSHAKE_FAILURE = 40
CERTIFICATE_UNKNOWN = 46
ILLEGAL_PARAMETER = 47
DECODE_ERROR = 50
PROTOCOL_VERSION = 70
INTERNAL_ERROR = 80
USER_CANCELED = 90
NO_RENEGOTIATION = 100

ALERT_NAMES = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 21: "decryption_failed",
    22: "record_overflow", 40: "handshake_failure", 42: "bad_certificate",
    43: "unsupported_certificate", 44: "certificate_revoked", 45: "certificate_expired",
    46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca", 49: "access_denied",
    50: "decode_error", 51: "decrypt_error", 70: "protocol_version",
    71: "insufficient_security", 80: "internal_error", 86: "inappropriate_fallback",
    90: "user_canceled", 100: "no_renegotiation", 109: "missing_extension",
    110: "unsupported_extension", 112: "unrecognized_name", 116: "certificate_required",
    120: "no_application_protocol",
}


def alert_name(description: int) -> str:
    return ALERT_NAMES.get(description, f"alert_{description}")


class TLSAlert(Exception):
    """The connection is over: `description` is the alert, `remote` says who sent it.

    A local one (remote=False) means this layer found the peer's input bad; the layer has
    already queued the fatal alert record for the caller to send before closing.
    """

    def __init__(self, description: int, reason: str, remote: bool = False) -> None:
        # The message is built only when someone reads it: a handover probes the handshake's
        # records with the application keys and raises (and drops) one of these for every
        # record still under the handshake keys, five or so per handshake.
        self.description = description
        self.reason = reason
        self.remote = remote

    def __str__(self) -> str:
        who = "peer sent" if self.remote else "sending"
        return f"{who} fatal alert {alert_name(self.description)}: {self.reason}"


def pack_header(content_type: int, length: int, version: int = TLS12_VERSION) -> bytes:
    return HEADER.pack(content_type, version, length)


class RecordReader:
    """Cuts a byte stream into records: (type, version, header, fragment).

    Whole records are served as memoryviews into an immutable bytes buffer, so a segment that
    holds whole records is never copied before the AEAD reads it. A record that is not whole
    yet waits in a bytearray that grows by appending (never re-copied per segment, so a peer
    trickling a record byte by byte costs linear time) and becomes the buffer once complete.
    """

    __slots__ = ("_buf", "_view", "_pos", "_partial", "_need", "max_length", "tls13")

    def __init__(self, max_length: int, pending: bytes = b"", tls13: bool = True) -> None:
        self.max_length = max_length
        self.tls13 = tls13
        self._partial: bytearray | None = None
        self._need = 0
        self._serve(bytes(pending))

    def _serve(self, buf: bytes) -> None:
        self._buf = buf
        self._view = memoryview(buf)
        self._pos = 0

    def feed(self, data) -> None:
        if not data:
            return
        if self._partial is not None:
            self._partial += data
            if len(self._partial) < self._need:
                return
            buf, self._partial = bytes(self._partial), None
        elif self._pos < len(self._buf):
            buf = self._buf[self._pos:] + bytes(data)
        else:
            buf = data if type(data) is bytes else bytes(data)
        self._serve(buf)

    def next_record(self):
        """The next complete record, or None until more bytes arrive."""
        if self._partial is not None:
            return None
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE:
            return self._wait(HEADER_SIZE)
        content_type, version, length = HEADER.unpack_from(buf, pos)
        if version != TLS12_VERSION and (version >> 8 != 3 or not self.tls13):
            raise TLSAlert(PROTOCOL_VERSION, f"record version {version:#06x}")
        if self.tls13:
            if content_type != APPLICATION_DATA:
                raise TLSAlert(UNEXPECTED_MESSAGE, f"cleartext record of type {content_type} after the handshake")
            if version != TLS12_VERSION:
                raise TLSAlert(DECODE_ERROR, f"record version {version:#06x}")
        if length > self.max_length:
            raise TLSAlert(RECORD_OVERFLOW, f"record of {length} bytes (max {self.max_length})")
        body = pos + HEADER_SIZE
        end = body + length
        if len(buf) < end:
            return self._wait(HEADER_SIZE + length)
        self._pos = end
        view = self._view
        return content_type, version, view[pos:body], view[body:end]

    def _wait(self, need: int) -> None:
        """Keep the incomplete rest aside until `need` bytes of it are in."""
        if self._pos < len(self._buf):
            self._partial = bytearray(self._view[self._pos:])
            self._need = need
            self._serve(b"")
        return None

    def pending(self) -> bytes:
        """The bytes not yet returned as a record (a partial record, or records not asked for)."""
        if self._partial is not None:
            return bytes(self._partial)
        return self._buf[self._pos:]


def split_records(data: bytes):
    """Every complete record of a cleartext-framed stream, and the trailing partial bytes.

    For inspecting what OpenSSL wrote or read during a handshake; no limit on length beyond the
    16-bit field, because the caller only looks at bytes OpenSSL already accepted.
    """
    records = []
    pos = 0
    while len(data) - pos >= HEADER_SIZE:
        content_type, version, length = HEADER.unpack_from(data, pos)
        end = pos + HEADER_SIZE + length
        if end > len(data):
            break
        records.append((content_type, version, data[pos:pos + HEADER_SIZE], data[pos + HEADER_SIZE:end]))
        pos = end
    return records, data[pos:]
