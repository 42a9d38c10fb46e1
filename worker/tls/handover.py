"""OpenSSL does the handshake, then Baton's record layer takes the session over.

    hs = TlsHandshake(context, keylog, server_side=True)
    hs.receive_data(bytes_from_peer); wire = hs.step()      # until hs.done
    layer = hs.handover()                                   # RecordLayer; drop hs
    plaintext = layer.receive_data(b"")     # records that came in behind the peer's Finished

The handshake runs in an `ssl.SSLObject` over two MemoryBIOs, so OpenSSL sees only bytes.
Every byte that goes in and out is also kept (a handshake is a few KiB; `max_bytes` bounds
it), because at the handover point four things are read from them:

- what OpenSSL has not consumed: the rest of the incoming BIO. OpenSSL reads a record's
  header, then exactly its body (no read-ahead), so it stops at the end of the last
  handshake record; what follows is the first ciphertext Baton's layer processes.
- the client_random (and, for TLS 1.2, the server_random) from the cleartext hellos, to find
  the secrets in the key log (keylog.py).
- the sequence numbers. TLS 1.3 (RFC 8446 §5.3): the count of records we already sent under
  our application traffic secret — a server's NewSessionTickets usually, found by opening the
  records with that secret; the peer's count is 0 (`_tls13_protections` says why).
  TLS 1.2 (RFC 5246 §6.1): the count of records after each side's ChangeCipherSpec, where
  Finished is sequence number 0 of the new epoch.
- TLS 1.2 AES-GCM: the nonce_explicit OpenSSL chose for its Finished, from which our writes
  count on (protection.py says why).

Every record used for counting is opened with the derived keys, so a handover whose secrets
or arithmetic are wrong fails here (`HandoverError`) instead of corrupting the session. The
keys of a direction with nothing to count are derived when its first record comes
(protection.py).
"""

from __future__ import annotations

import ssl

from .hello import CLIENT_HELLO, SERVER_HELLO, hello_random
from .keylog import KeyLog
from .keyschedule import tls12_key_block
from .layer import RecordLayer
from .protection import EXPLICIT_NONCE_LENGTH, Tls12Protection, Tls13Protection
from .records import APPLICATION_DATA, CHANGE_CIPHER_SPEC, TLSAlert, split_records
from .suites import CipherSuite, suite_named

MAX_HANDSHAKE_BYTES = 256 * 1024


class HandshakeFailed(Exception):
    """OpenSSL refused the handshake; `data` is what it wants sent (its alert), if anything."""

    def __init__(self, reason: str, data: bytes = b"") -> None:
        super().__init__(reason)
        self.data = data


class HandoverError(Exception):
    """The finished handshake cannot be carried on by Baton's record layer."""


class TlsHandshake:
    __slots__ = ("_obj", "_incoming", "_outgoing", "_keylog", "_in_log", "_out_log", "_last_flight",
                 "_max_bytes", "server_side", "done", "tickets")

    def __init__(self, context: ssl.SSLContext, keylog: KeyLog, *, server_side: bool,
                 server_hostname: str | None = None, max_bytes: int = MAX_HANDSHAKE_BYTES,
                 session: ssl.SSLSession | None = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # session: a client resuming one (worker/tls/client.py, max_session_keys).
        self._obj = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                     server_hostname=server_hostname, session=session)
        self._keylog = keylog
        self._in_log = bytearray()
        self._out_log = bytearray()
        self._last_flight = 0               # where the output of the step that finished begins
        self._max_bytes = max_bytes
        self.server_side = server_side
        self.done = False
        # After handover(): how many bytes at the end of the last step's output are the
        # server's NewSessionTickets (records under the application secret), which a caller
        # may leave to the layer to send (RecordLayer.hold, accept.py).
        self.tickets = 0

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The SSLObject (for its handshake facts); never read or written after handover."""
        return self._obj

    def receive_data(self, data: bytes) -> None:
        if len(self._in_log) + len(data) > self._max_bytes:
            raise HandshakeFailed(f"handshake larger than {self._max_bytes} bytes")
        self._in_log += data
        self._incoming.write(data)

    def step(self) -> bytes:
        """Run the handshake as far as the bytes received allow; the bytes to send."""
        if not self.done:
            try:
                self._obj.do_handshake()
                self.done = True
                self._last_flight = len(self._out_log)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                raise HandshakeFailed(_reason(exc), self._take_outgoing()) from None
            finally:
                self._keylog.collect()      # keep the pipe empty, whatever happened
        return self._take_outgoing()

    def _take_outgoing(self) -> bytes:
        data = self._outgoing.read()
        self._out_log += data
        return data

    def handover(self) -> RecordLayer:
        if not self.done:
            raise HandoverError("the handshake has not finished")
        obj = self._obj
        if obj.pending():
            raise HandoverError("OpenSSL holds decrypted application data")
        outgoing_left = self._take_outgoing()
        if outgoing_left:
            raise HandoverError("OpenSSL produced records that were never sent")
        unconsumed = self._incoming.read()
        consumed = bytes(self._in_log[:len(self._in_log) - len(unconsumed)])
        sent = bytes(self._out_log)
        try:
            suite = suite_named(obj.cipher()[0])
        except ValueError as exc:
            raise HandoverError(str(exc)) from None
        if obj.version() != suite.version:
            raise HandoverError(f"{obj.version()} negotiated with {suite.name}")
        client_stream, server_stream = (consumed, sent) if self.server_side else (sent, consumed)
        client_random = hello_random(client_stream, CLIENT_HELLO)
        if client_random is None:
            raise HandoverError("no ClientHello at the start of the handshake")
        secrets = self._keylog.take(client_random)
        if suite.version == "TLSv1.3":
            read, write = self._tls13_protections(suite, secrets, consumed, sent)
        else:
            server_random = hello_random(server_stream, SERVER_HELLO)
            if server_random is None:
                raise HandoverError("no ServerHello in the handshake")
            read, write = self._tls12_protections(suite, secrets, client_random, server_random,
                                                  consumed, sent)
        info = {
            "alpn": obj.selected_alpn_protocol(),
            "server_name": obj.server_hostname,
            "peer_certificate": obj.getpeercert(binary_form=True),
        }
        role = "server" if self.server_side else "client"
        if suite.version == "TLSv1.3" and self.server_side and write.seq:
            tail = sent[self._last_flight:]
            if len(split_records(tail)[0]) == write.seq:    # the last flight is the tickets
                self.tickets = len(tail)
        return RecordLayer(suite, role, read, write, pending_in=unconsumed, info=info)

    def _tls13_protections(self, suite, secrets, consumed, sent):
        client_secret = secrets.get("CLIENT_TRAFFIC_SECRET_0")
        server_secret = secrets.get("SERVER_TRAFFIC_SECRET_0")
        if client_secret is None or server_secret is None:
            raise HandoverError("the key log has no TLS 1.3 traffic secrets for this session")
        if self.server_side:
            read_secret, write_secret = client_secret, server_secret
        else:
            read_secret, write_secret = server_secret, client_secret
        # Nothing OpenSSL consumed is under the peer's application secret: the peer's
        # Finished completes the handshake, every record under that secret comes after it,
        # and OpenSSL reads no record past the one it is working on (so 0-RTT aside, which
        # is never enabled here, the read side starts at sequence number 0). Scanning the
        # peer's records for it only ever cost a failed AEAD open per handshake record.
        return (Tls13Protection(suite, read_secret),
                _tls13_protection_after(suite, write_secret, sent, self._last_flight))

    def _tls12_protections(self, suite, secrets, client_random, server_random, consumed, sent):
        master = secrets.get("CLIENT_RANDOM")
        if master is None:
            raise HandoverError("the key log has no TLS 1.2 master secret for this session")
        block = tls12_key_block(suite, master, client_random, server_random)
        ours, theirs = ("server", "client") if self.server_side else ("client", "server")
        read_seq, _ = _tls12_epoch_records(suite, block[f"{theirs}_key"], block[f"{theirs}_iv"], consumed)
        write_seq, nonce_offset = _tls12_epoch_records(suite, block[f"{ours}_key"], block[f"{ours}_iv"], sent)
        read = Tls12Protection(suite, block[f"{theirs}_key"], block[f"{theirs}_iv"], read_seq)
        write = Tls12Protection(suite, block[f"{ours}_key"], block[f"{ours}_iv"], write_seq, nonce_offset)
        return read, write


def _tls13_protection_after(suite: CipherSuite, secret: bytes, stream: bytes,
                            hint: int = 0) -> Tls13Protection:
    """The protection under this application traffic secret, its sequence number past the
    records of `stream` already protected under it.

    Those are a suffix of the stream: the first record that opens starts it, and every later
    record must open too. The protection that opens them is the one returned (opening only
    advances the sequence number), so the keys are derived once.

    `hint`: where that suffix most likely starts. A server's last step writes only its
    NewSessionTickets, under the application secret: opening them from there spares the
    probes of the four records before, under the handshake secret (each a failed AEAD open
    and an exception, about half of a handover). A record there that does not open at
    sequence number 0 is not the suffix's first (an earlier one would be, and would have
    opened): then the whole stream is scanned, and the result is the same either way.
    """
    protection = Tls13Protection(suite, secret)
    if hint:
        tail, rest = split_records(stream[hint:])
        if tail and not rest and all(r[0] == APPLICATION_DATA for r in tail):
            try:
                for _type, _version, header, fragment in tail:
                    protection.open(header, fragment)
                return protection
            except TLSAlert:
                protection.seq = 0
    records, _ = split_records(stream)
    opened = False
    for content_type, _version, header, fragment in records:
        if content_type != APPLICATION_DATA:
            continue                        # cleartext hellos, compatibility CCS
        try:
            protection.open(header, fragment)
        except TLSAlert:
            if opened:
                raise HandoverError("a record after the first application-key record does not open") from None
            protection.seq = 0
            continue
        opened = True
    return protection


def _tls12_epoch_records(suite: CipherSuite, key: bytes, iv: bytes, stream: bytes) -> tuple[int, int]:
    """(records after the ChangeCipherSpec, nonce_explicit offset of the first of them)."""
    records, _ = split_records(stream)
    ccs_at = max((i for i, r in enumerate(records) if r[0] == CHANGE_CIPHER_SPEC), default=None)
    if ccs_at is None:
        raise HandoverError("no ChangeCipherSpec in a finished TLS 1.2 handshake")
    epoch = records[ccs_at + 1:]
    probe = Tls12Protection(suite, key, iv)
    for _type, _version, header, fragment in epoch:
        try:
            probe.open(header, fragment)
        except TLSAlert:
            raise HandoverError("the key block derived from the key log does not open "
                                "OpenSSL's records") from None
    offset = 0
    if suite.explicit_nonce and epoch:
        offset = int.from_bytes(epoch[0][3][:EXPLICIT_NONCE_LENGTH], "big")   # seq 0's nonce
    return len(epoch), offset


def _reason(exc: ssl.SSLError) -> str:
    return exc.reason or exc.strerror or str(exc)
