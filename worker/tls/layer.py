"""Baton's TLS record layer after the handshake (sans-IO): bytes in, plaintext out, and back.

    layer = RecordLayer(...)            # from handover.py, or state.import_state(...)
    plaintext = layer.receive_data(ciphertext)   # may queue records (refusals, a fatal alert)
    plaintext = layer.receive_data(b"")          # first call after a handover or an import:
                                                 # whole records may be waiting already
    wire = layer.send_data(plaintext)   # every record queued so far, in sequence order,
                                        # and the KeyUpdate the peer asked for, if it did
    wire = layer.data_to_send()         # what receive_data queued, if nothing is sent after
                                        # (b"" while only held records wait: see hold())
    wire = layer.update_keys()          # TLS 1.3 KeyUpdate, update_requested by default
    wire = layer.close()                # close_notify

Rules of this file:
- Every record this layer produces goes through one outgoing queue, so bytes always leave in
  sequence-number order: a KeyUpdate sealed under the old key precedes data sealed under the
  new one. Held records (`hold()`: a server's NewSessionTickets, sealed by OpenSSL before the
  handover) go out in front of the layer's first record of its own, whatever it is, and not
  on their own: as Envoy (BoringSSL) sends its tickets with its first write or its
  close_notify (checked against Envoy 1.40), and a connection spares a send of its own.
- Bad input raises `TLSAlert` and nothing else; the fatal alert for the peer is queued first,
  and the plaintext that arrived before the bad record is on the exception (`.data`). After
  an alert the layer is dead: every later call raises the same alert.
- After the peer's close_notify everything that follows is ignored (RFC 8446 §6.1).
- Post-handshake handshake messages (RFC 8446 §4.6, RFC 5246 §7.4.1) are reassembled across
  records and must not be interleaved with other record types (RFC 8446 §5.1):
    TLS 1.3  KeyUpdate                 -> new read key; if update_requested, ours goes out
                                          before our next data or the peer's next message
             NewSessionTicket          -> ignored when we are the client, else unexpected
    TLS 1.2  HelloRequest (to client)  -> warning no_renegotiation (RFC 5246 §7.2.2)
             ClientHello (to server)   -> fatal no_renegotiation (as BoringSSL, so Envoy,
                                          answers a client's renegotiation; checked with
                                          Envoy 1.40 and openssl s_client's "R")
             anything else             -> unexpected_message
"""

from __future__ import annotations

from .protection import Tls12Protection, Tls13Protection
from .records import (
    ALERT, APPLICATION_DATA, CLOSE_NOTIFY, DECODE_ERROR, FATAL, HANDSHAKE, ILLEGAL_PARAMETER,
    MAX_PLAINTEXT, MAX_TLS12_CIPHERTEXT, MAX_TLS13_CIPHERTEXT, NO_RENEGOTIATION,
    UNEXPECTED_MESSAGE, USER_CANCELED, WARNING,
    RecordReader, TLSAlert, alert_name,
)
from .suites import CipherSuite

HELLO_REQUEST = 0
CLIENT_HELLO = 1
NEW_SESSION_TICKET = 4
KEY_UPDATE = 24
MAX_HANDSHAKE_MESSAGE = 1 << 17     # a NewSessionTicket: ticket < 2^16 plus extensions
# RFC 8446 §5.5: AES-GCM keys should protect at most 2^24.5 full records; rekey well before.
KEY_UPDATE_AFTER_RECORDS = 1 << 24


class RecordLayer:
    __slots__ = ("suite", "role", "read", "write", "info", "peer_closed", "closed", "error", "_tls13",
                 "key_updates_received", "tickets_received", "_reader", "_handshake", "_out",
                 "_update_owed", "_held")

    def __init__(self, suite: CipherSuite, role: str, read, write, *, pending_in: bytes = b"",
                 handshake_in: bytes = b"", pending_out: bytes = b"", peer_closed: bool = False,
                 closed: bool = False, update_owed: bool = False, info: dict | None = None) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"role must be 'server' or 'client', not {role!r}")
        self.suite = suite
        self._tls13 = suite.version == "TLSv1.3"
        self.role = role
        self.read = read
        self.write = write
        self.info = info or {}           # handshake facts (ALPN, SNI, peer certificate)
        self.peer_closed = peer_closed
        self.closed = closed
        self.error: TLSAlert | None = None
        self.key_updates_received = 0
        self.tickets_received = 0
        limit = MAX_TLS13_CIPHERTEXT if self._tls13 else MAX_TLS12_CIPHERTEXT
        self._reader = RecordReader(limit, pending_in, self._tls13)
        self._handshake = bytearray(handshake_in)
        self._out: list[bytes] = [pending_out] if pending_out else []
        self._held = b""                # sealed already, sent before our first own record
        # The peer asked for a KeyUpdate and ours is not sent yet. It goes out in front of our
        # next data (RFC 8446 §4.6.3), or when the peer's next handshake message arrives, which
        # is when OpenSSL 3.0 sends it too (so the differential test can compare bytes).
        self._update_owed = update_owed

    @property
    def tls13(self) -> bool:
        return self._tls13

    # -- receiving ------------------------------------------------------------------------

    def receive_data(self, data) -> bytes:
        """The application data in `data` (and earlier partial records), in order."""
        if self.error is not None:
            raise self.error
        if self.peer_closed:
            return b""
        reader = self._reader
        reader.feed(data)
        plaintext = []
        try:
            while not self.peer_closed:
                record = reader.next_record()
                if record is None:
                    break
                self._receive_record(record, plaintext)
        except TLSAlert as exc:
            exc.data = b"".join(plaintext)
            self._fail(exc)
            raise
        if len(plaintext) == 1:
            return plaintext[0]
        return b"".join(plaintext)

    def _receive_record(self, record, plaintext: list) -> None:
        _outer_type, _version, header, fragment = record    # the header was checked by the reader
        content_type, content = self.read.open(header, fragment)
        if self._handshake and content_type != HANDSHAKE:
            raise TLSAlert(UNEXPECTED_MESSAGE, "record interleaved with a fragmented handshake message")
        if content_type == APPLICATION_DATA:
            if content:
                plaintext.append(content)
        elif content_type == HANDSHAKE:
            if not content:
                raise TLSAlert(UNEXPECTED_MESSAGE, "empty handshake record")
            self._receive_handshake(content)
        elif content_type == ALERT:
            self._receive_alert(content)
        else:       # change_cipher_spec after the handshake, or a type TLS does not have
            raise TLSAlert(UNEXPECTED_MESSAGE, f"protected record of content type {content_type}")

    def _receive_handshake(self, content: bytes) -> None:
        buf = self._handshake
        buf += content
        while len(buf) >= 4:
            msg_type = buf[0]
            length = int.from_bytes(buf[1:4], "big")
            if length > MAX_HANDSHAKE_MESSAGE:
                raise TLSAlert(DECODE_ERROR, f"handshake message of {length} bytes")
            if len(buf) < 4 + length:
                return
            body = bytes(buf[4:4 + length])
            del buf[:4 + length]
            if self._tls13:
                self._tls13_message(msg_type, body, record_ended=not buf)
            else:
                self._tls12_message(msg_type, body)

    def _tls13_message(self, msg_type: int, body: bytes, record_ended: bool) -> None:
        if not self.closed:
            self._pay_update_owed()
        if msg_type == KEY_UPDATE:
            if len(body) != 1:
                raise TLSAlert(DECODE_ERROR, "KeyUpdate body is not one byte")
            if body[0] not in (0, 1):
                raise TLSAlert(ILLEGAL_PARAMETER, f"KeyUpdate request_update {body[0]}")
            if not record_ended:
                # A key change must fall on a record boundary (RFC 8446 §5.1).
                raise TLSAlert(UNEXPECTED_MESSAGE, "KeyUpdate not at the end of its record")
            self.read.update()
            self.key_updates_received += 1
            if body[0] == 1 and not self.closed:
                self._update_owed = True
        elif msg_type == NEW_SESSION_TICKET and self.role == "client":
            self.tickets_received += 1      # resumption is OpenSSL's business, not ours
        else:
            raise TLSAlert(UNEXPECTED_MESSAGE, f"post-handshake message type {msg_type}")

    def _tls12_message(self, msg_type: int, body: bytes) -> None:
        renegotiation = ((msg_type == HELLO_REQUEST and self.role == "client")
                         or (msg_type == CLIENT_HELLO and self.role == "server"))
        if not renegotiation:
            raise TLSAlert(UNEXPECTED_MESSAGE, f"post-handshake message type {msg_type}")
        if self.role == "server":
            raise TLSAlert(NO_RENEGOTIATION, "the client asked to renegotiate")
        if not self.closed:
            self._queue(ALERT, bytes((WARNING, NO_RENEGOTIATION)))

    def _receive_alert(self, content: bytes) -> None:
        if len(content) != 2:
            raise TLSAlert(DECODE_ERROR, f"alert of {len(content)} bytes")
        level, description = content
        if description == CLOSE_NOTIFY:
            self.peer_closed = True
        elif self._tls13 and description == USER_CANCELED:
            pass                            # followed by close_notify (RFC 8446 §6.1)
        elif not self._tls13 and level == WARNING:
            pass                            # e.g. no_renegotiation: the session carries on
        else:
            # TLS 1.3: every other alert is fatal whatever its level (RFC 8446 §6).
            raise TLSAlert(description, f"{alert_name(description)} (level {level})", remote=True)

    # -- sending --------------------------------------------------------------------------

    def hold(self, records: bytes) -> None:
        """Records sealed before this layer's first (a server's NewSessionTickets, by OpenSSL,
        its write sequence number already past them): they go out in front of the layer's
        first record of its own."""
        self._held += records

    def send_data(self, data) -> bytes:
        """Protect `data` as application_data records of at most 2^14 bytes each."""
        if self.error is not None or self.closed:
            self._check_open()
        size = len(data)
        if not size:
            return self.data_to_send()
        write = self.write
        if (size <= MAX_PLAINTEXT and not self._out and not self._update_owed
                and not (self._tls13 and write.seq >= KEY_UPDATE_AFTER_RECORDS)):
            record = write.seal(APPLICATION_DATA, data)    # the common case: one record
            if self._held:
                record, self._held = self._held + record, b""
            return record
        self._pay_update_owed()
        if type(data) is not bytes:
            data = memoryview(data)
        out = self._out
        for start in range(0, size, MAX_PLAINTEXT):
            if self._tls13 and write.seq >= KEY_UPDATE_AFTER_RECORDS:
                self._queue_key_update(request_peer=False)
            out.append(write.seal(APPLICATION_DATA, data[start:start + MAX_PLAINTEXT]))
        return self.data_to_send()

    def update_keys(self, request_peer: bool = True) -> bytes:
        """Send a KeyUpdate (TLS 1.3 only) and move to the next write key."""
        self._check_open()
        if not self._tls13:
            raise ValueError("KeyUpdate exists only in TLS 1.3")
        self._update_owed = False       # this KeyUpdate is the answer too, as with OpenSSL
        self._queue_key_update(request_peer)
        return self.data_to_send()

    def close(self) -> bytes:
        """close_notify; the read side stays open until the peer's own close_notify."""
        if self.error is None and not self.closed:
            self._queue(ALERT, bytes((WARNING, CLOSE_NOTIFY)))
            self.closed = True
        return self.data_to_send()

    def abort(self, description: int, reason: str) -> bytes:
        """End the session with a fatal alert of our own: something the handshake let through
        is refused afterwards (a client certificate's SANs). The alert's bytes."""
        if self.error is None:
            self._fail(TLSAlert(description, reason))
        return self.data_to_send()

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        if self._held:
            self._out.insert(0, self._held)
            self._held = b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _check_open(self) -> None:
        if self.error is not None:
            raise self.error
        if self.closed:
            raise ValueError("the TLS session was closed (close_notify sent)")

    def _queue(self, content_type: int, payload: bytes) -> None:
        self._out.append(self.write.seal(content_type, payload))

    def _pay_update_owed(self) -> None:
        if self._update_owed:
            self._update_owed = False
            self._queue_key_update(request_peer=False)

    def _queue_key_update(self, request_peer: bool) -> None:
        self._queue(HANDSHAKE, bytes((KEY_UPDATE, 0, 0, 1, 1 if request_peer else 0)))
        self.write.update()

    def _fail(self, exc: TLSAlert) -> None:
        self.error = exc
        if not exc.remote and not self.closed:
            try:
                self._queue(ALERT, bytes((FATAL, exc.description)))
            except TLSAlert:
                pass                        # the write side is exhausted too; just close
        self.closed = True

    # -- for state.py ---------------------------------------------------------------------

    def pending_in(self) -> bytes:
        return self._reader.pending()

    def handshake_in(self) -> bytes:
        return bytes(self._handshake)

    def pending_out(self) -> bytes:
        return self._held + b"".join(self._out)

    def update_owed(self) -> bool:
        return self._update_owed


def protections(suite: CipherSuite, read: dict, write: dict):
    """(read, write) protections from their exported dicts."""
    if suite.version == "TLSv1.3":
        return (Tls13Protection(suite, read["secret"], read["seq"]),
                Tls13Protection(suite, write["secret"], write["seq"]))
    return (Tls12Protection(suite, read["key"], read["iv"], read["seq"], read.get("nonce_offset", 0)),
            Tls12Protection(suite, write["key"], write["iv"], write["seq"], write.get("nonce_offset", 0)))
