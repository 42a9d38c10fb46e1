"""HTTPS: TLS termination in front of the HTTP connection manager.

While the handshake runs, the worker holds an `HttpsHandshake` under the connection's id;
once it is done, the HttpConnection takes that id and runs on a TlsTransport
(worker/tls/transport.py) exactly as it runs on a plain asyncio transport. So a handshake
that fails never reaches the connection manager (asyncio's SSL transport behaves the same),
and a drain or a stop during it closes it: it is short, and nothing was served on it yet.
"""

from __future__ import annotations

import logging

from ..connection import Connection, Lifecycle, Move
from ..tls.transport import TlsAcceptor

log = logging.getLogger("baton.https")


class HttpsHandshake(Connection):
    kind = "https-handshake"
    __slots__ = ("worker", "conn", "acceptor", "state")

    def __init__(self, worker, conn, client, initial=None) -> None:
        self.worker = worker
        self.conn = conn                    # the HttpConnection to run once it is done
        self.state = Lifecycle.CONNECTING
        self.acceptor = TlsAcceptor(worker.loop, client, conn.chain.tls, self._done,
                                    self._refused, initial)

    @property
    def id(self) -> int:
        return self.conn.id

    @property
    def listener(self):
        return self.conn.listener

    @property
    def chain(self):
        return self.conn.chain

    def start(self) -> None:
        self.worker.connections[self.id] = self
        self.acceptor.start()

    def _done(self, transport) -> None:
        self.state = Lifecycle.CLOSED
        self.worker.connections[self.id] = self.conn
        transport.start(self.conn)

    def _refused(self, reason: str) -> None:
        log.debug("connection %d: TLS handshake failed: %s", self.id, reason)
        self._gone()

    def _gone(self) -> None:
        self.state = Lifecycle.CLOSED
        self.worker.stats.gauges[self.listener.stat_cx_active] -= 1
        self.worker.connection_closed(self)

    # -- the Connection interface -----------------------------------------------------------

    def readiness(self) -> Move:
        return Move.NEVER

    def drain(self) -> None:
        self.close()

    def close(self) -> None:
        if self.state is not Lifecycle.CLOSED:
            self.acceptor.cancel("connection closed during the TLS handshake")
            self._gone()

    def shutdown_now(self) -> None:
        self.close()
