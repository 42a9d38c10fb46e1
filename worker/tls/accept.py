"""One server-side TLS handshake from the first byte to Baton's record layer (sans-IO).

    accept = ServerAccept(server)           # server: a TlsServer (server.py)
    wire = accept.receive(data, eof)        # bytes for the client; raises HandshakeRefused
    if accept.layer is not None: ...        # done: the session is the layer's from here on

The steps every TLS-terminating connection takes, whatever runs behind it (tcp_proxy in
worker/proxy/tls_proxy.py, HTTP through worker/tls/transport.py): OpenSSL's handshake
(handover.py), the handover to the record layer, the SAN checks OpenSSL does not do, and
the ssl.* counters of a handshake that succeeded. A refused handshake is not counted here:
its counter travels on the exception, because a timeout (the caller's) is counted the same
way.
"""

from __future__ import annotations

from . import openssl
from .handover import HandoverError, HandshakeFailed
from .records import CERTIFICATE_UNKNOWN


class HandshakeRefused(Exception):
    """The handshake failed: `counter` is the ssl.* stat that counts why, `data` the bytes
    still owed to the client (OpenSSL's alert, or ours under the session's keys)."""

    def __init__(self, counter: str, reason: str, data: bytes = b"") -> None:
        super().__init__(reason)
        self.counter = counter
        self.data = data


class HandshakeSteps:
    """Feeding one handshake (self.handshake, a TlsHandshake) until `_hand_over(out)` sets
    self.layer and says what of the last output is to be sent now; the server side here, the
    client side in client.py (TLS origination)."""

    __slots__ = ()
    peer = "peer"                           # who closed early, for the refusal's reason

    def receive(self, data: bytes, eof: bool) -> bytes:
        hs = self.handshake
        try:
            if data:
                hs.receive_data(data)
            out = hs.step()
        except HandshakeFailed as exc:
            raise HandshakeRefused(self._failure_of(exc), str(exc), exc.data) from None
        if hs.done:
            try:
                out = self._hand_over(out)
            except HandshakeRefused as exc:
                exc.data = out + exc.data       # our last flight, then the alert
                raise
            return out
        if eof:
            raise HandshakeRefused("connection_error", f"the {self.peer} closed during the handshake", out)
        return out


class ServerAccept(HandshakeSteps):
    __slots__ = ("server", "handshake", "layer")
    peer = "client"

    def __init__(self, server) -> None:
        self.server = server
        self.handshake = server.handshake()
        self.layer = None

    def _failure_of(self, exc: HandshakeFailed) -> str:
        return self.server.failure_of(exc)

    def _hand_over(self, out: bytes) -> bytes:
        """The layer, from the finished handshake whose last output was `out`; what of `out`
        is to be sent now: not its NewSessionTickets, which the layer sends in front of its
        first record, as Envoy sends them with its first write or its close_notify (layer.py)."""
        hs = self.handshake
        obj = hs.ssl_object
        try:
            layer = hs.handover()
        except HandoverError as exc:
            raise HandshakeRefused("connection_error", f"handover: {exc}") from None
        failure = self.server.verify(obj)
        if failure is not None:
            # OpenSSL accepted the certificate, its SANs do not match: the fatal alert Envoy
            # sends for it (certificate_unknown), under the keys the session now has (after
            # the tickets in `out`, which the caller sends first).
            reason = "client certificate SAN mismatch"
            raise HandshakeRefused(failure, reason, layer.abort(CERTIFICATE_UNKNOWN, reason))
        if hs.tickets:
            out, tickets = out[:len(out) - hs.tickets], out[len(out) - hs.tickets:]
            layer.hold(tickets)
        self.server.count_handshake(obj)
        openssl.keep_session(obj)           # the layer goes on; OpenSSL keeps the session cached
        self.layer = layer
        return out
