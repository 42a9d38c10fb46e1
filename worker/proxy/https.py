"""HTTPS: TLS termination in front of the HTTP connection manager.

While the handshake runs, the worker holds an `HttpsHandshake` under the connection's id;
once it is done, the HttpConnection takes that id and runs on a TlsTransport
(worker/tls/transport.py) exactly as it runs on a plain asyncio transport. So a handshake
that fails never reaches the connection manager (asyncio's SSL transport behaves the same).
A drain lets the handshake end, then drains the connection; a stop closes it.

At a reload an HTTPS/1.1 connection moves between requests as a plain one does (readiness
NOW when idle, WHEN_IDLE otherwise), as record "https1-idle": the socket and the record
layer's state; the next generation continues the session without a handshake. A reload
that finds a handshake running waits for it (WHEN_IDLE), then for the connection's first
idle moment. HTTP/2 over TLS drains by GOAWAY, as plain HTTP/2 does.
"""

from __future__ import annotations

import logging

from ...supervisor.handoff import ownership
from ..connection import Connection, Lifecycle, Move, register
from ..tls.state import StateError, import_state
from ..tls.transport import TlsAcceptor, TlsTransport

log = logging.getLogger("baton.https")


def ssl_stats(hcm) -> tuple[str, str]:
    """The connection manager's downstream_cx_ssl_total and downstream_cx_ssl_active."""
    return (hcm.stat_cx_total.replace("_cx_total", "_cx_ssl_total"),
            hcm.stat_cx_active.replace("_cx_active", "_cx_ssl_active"))


def declare_stats(hcm, stats) -> None:
    """Listed at 0 from the start, as Envoy lists them."""
    total, active = ssl_stats(hcm)
    stats.counters.setdefault(total, 0)
    stats.gauges.setdefault(active, 0)


class HttpsHandshake(Connection):
    kind = "https-handshake"
    __slots__ = ("worker", "conn", "acceptor", "state", "on_idle", "draining")

    def __init__(self, worker, conn, client, initial=None) -> None:
        self.worker = worker
        self.conn = conn                    # the HttpConnection to run once it is done
        self.state = Lifecycle.CONNECTING
        self.on_idle = None                 # a reload waits for the handshake to end
        self.draining = False               # the worker drains: end once the handshake did
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
        self._count(+1)
        self.acceptor.start()

    def _count(self, step: int) -> None:
        """Envoy counts an HTTPS connection in the connection manager's downstream_cx_total,
        _ssl_total and _active from the accept, handshake or not (checked against Envoy
        1.40): counted here, and handed to connection_made's own count when it is done."""
        hcm = self.conn.hcm
        counters, gauges = self.worker.stats.counters, self.worker.stats.gauges
        ssl_total, ssl_active = ssl_stats(hcm)
        if step > 0:
            counters[hcm.stat_cx_total] += 1
            counters[ssl_total] += 1
        gauges[hcm.stat_cx_active] += step
        gauges[ssl_active] += step

    def _done(self, transport) -> None:
        self.state = Lifecycle.CLOSED
        self.worker.connections[self.id] = self.conn
        # connection_made counts the connection again, in this same turn of the loop (so
        # no stats snapshot sees the difference).
        self.worker.stats.counters[self.conn.hcm.stat_cx_total] -= 1
        self.worker.stats.gauges[self.conn.hcm.stat_cx_active] -= 1
        ssl_active = ssl_stats(self.conn.hcm)[1]
        gauges = self.worker.stats.gauges
        transport.on_lost = lambda: gauges.__setitem__(ssl_active, gauges[ssl_active] - 1)
        conn = self.conn
        transport.start(conn)
        on_idle, self.on_idle = self.on_idle, None
        if on_idle is not None and not conn.closed and conn.readiness() is not Move.NEVER:
            conn.hold_when_idle(on_idle)    # the reload takes it between requests
            return
        if (on_idle is not None or self.draining) and not conn.closed:
            conn.drain()                    # HTTP/2: GOAWAY; HTTP/1.1: after the response
        if on_idle is not None:
            on_idle(self)                   # nothing to move: the reload's wait ends here

    def _refused(self, reason: str) -> None:
        log.debug("connection %d: TLS handshake failed: %s", self.id, reason)
        self._gone()

    def _gone(self) -> None:
        self.state = Lifecycle.CLOSED
        self._count(-1)
        self.worker.stats.gauges[self.listener.stat_cx_active] -= 1
        self.worker.connection_closed(self)
        on_idle, self.on_idle = self.on_idle, None
        if on_idle is not None:
            on_idle(self)                   # a reload waiting for it need not wait longer

    # -- the Connection interface -----------------------------------------------------------

    def readiness(self) -> Move:
        # The handshake is short: a reload waits for it, then for the connection's first
        # idle moment (HTTPS/1.1), instead of cutting it.
        return Move.NEVER if self.state is Lifecycle.CLOSED else Move.WHEN_IDLE

    def hold_when_idle(self, on_idle) -> None:
        self.on_idle = on_idle

    def cancel_hold(self) -> None:
        self.on_idle = None
        self.conn.cancel_hold()

    def drain(self) -> None:
        """Let the handshake finish (or fail, or time out); the connection drains then."""
        self.draining = True

    def close(self) -> None:
        if self.state is not Lifecycle.CLOSED:
            self.acceptor.cancel("connection closed during the TLS handshake")
            self._gone()

    def shutdown_now(self) -> None:
        self.close()


# -- moving: record "https1-idle" (HttpConnection.export writes it) ---------------------------

def adopt_idle(worker, listener, fields: dict, fds: list[int], conn_id: int, channel=None,
               prepare=None):
    """An idle HTTPS keep-alive connection another process exported: the same session goes
    on here, on a transport built from the record layer's state; no handshake. `prepare(conn)`
    runs before the transport starts (the HTTP/2 codec state or the forwarded response of the
    records that are more than a socket: h2move.py, inflight.py)."""
    from .http.connection_manager import HttpConnection
    from .http.connection_move import made_for_adoption
    chain = listener.chains[fields.get("chain") or 0]
    client = ownership.socket_from(fds, 0, listener.family)
    conn = made_for_adoption(HttpConnection, worker, listener, chain, fields, conn_id, client,
                             prepare)
    try:
        transport = TlsTransport.adopted(worker.loop, client, fields["tls"], chain.tls)
    except BaseException:
        client.close()          # struck from the record: the refusal no longer closes it
        raise
    # Counted and listed only once nothing before the transport's start can fail: a refused
    # record leaves no gauge raised and no half-made connection in worker.connections.
    gauges = worker.stats.gauges
    gauges[listener.stat_cx_active] += 1
    ssl_active = ssl_stats(chain.http_config)[1]
    gauges[ssl_active] += 1
    transport.on_lost = lambda: gauges.__setitem__(ssl_active, gauges[ssl_active] - 1)
    worker.connections[conn_id] = conn
    transport.start(conn)
    if channel is not None:
        # Not a byte read before our answer has left (HttpConnection.after_adoption).
        conn.awaiting_answer = True
        conn.pause_reading(True)
    return conn


def _refusal(worker, listener, fields: dict) -> str | None:
    """Why this worker cannot continue an "https1-idle" record, before its descriptor is used."""
    index = fields.get("chain") or 0
    if index >= len(listener.chains):
        return f"no filter chain {index} in {listener.name!r} here"
    chain = listener.chains[index]
    if chain.http_config is None or chain.tls is None:
        return f"filter chain {index} of {listener.name!r} is not an HTTPS chain here"
    try:
        import_state(fields["tls"])
    except StateError as exc:
        return str(exc)
    return None


register("https1-idle", adopt_idle, _refusal)
