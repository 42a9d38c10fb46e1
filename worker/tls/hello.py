"""The randoms of ClientHello and ServerHello, read from the cleartext start of a stream.

OpenSSL's key log names a session by its client_random (NSS key log format), and TLS 1.2's key
block needs both randoms (RFC 5246 §6.3). Both hellos travel in cleartext handshake records:

    record: type 22 | version u16 | length u16 | handshake fragment ...
    handshake: msg_type u8 | length u24 | legacy_version u16 | random[32] | ...

(RFC 8446 §4.1.2-4.1.3, RFC 5246 §7.4.1.2-7.4.1.3.) A hello may be split over several records,
so fragments are joined until the random is complete.
"""

from __future__ import annotations

from .records import HANDSHAKE, HEADER_SIZE, split_records

CLIENT_HELLO = 1
SERVER_HELLO = 2
RANDOM_OFFSET = 4 + 2            # handshake header, legacy_version
RANDOM_LENGTH = 32


def hello_random(stream: bytes, msg_type: int) -> bytes | None:
    """The random of the hello that opens `stream`, or None if it is not there (yet)."""
    # The usual case, a first record that is whole and holds the random: read it there
    # instead of cutting the whole handshake (a few KiB) into records first.
    if len(stream) >= HEADER_SIZE and stream[0] == HANDSHAKE:
        length = int.from_bytes(stream[3:5], "big")
        if length >= RANDOM_OFFSET + RANDOM_LENGTH and len(stream) >= HEADER_SIZE + length:
            if stream[HEADER_SIZE] != msg_type:
                return None
            start = HEADER_SIZE + RANDOM_OFFSET
            return bytes(stream[start:start + RANDOM_LENGTH])
    records, _ = split_records(stream)
    handshake = bytearray()
    for content_type, _version, _header, fragment in records:
        if content_type != HANDSHAKE:
            break
        handshake += fragment
        if len(handshake) >= RANDOM_OFFSET + RANDOM_LENGTH:
            if handshake[0] != msg_type:
                return None
            return bytes(handshake[RANDOM_OFFSET:RANDOM_OFFSET + RANDOM_LENGTH])
    return None
