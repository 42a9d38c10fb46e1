"""Upgraded (websocket) and CONNECT tunnels that move at a reload with both their sockets.

Once a tunnel is open, HTTP is over for its connection: bytes pass each way unchanged. So it
moves as an open tcp_proxy connection does (record "tcp"): the client socket and the upstream
socket both go to the new worker, which splices between them, and the old generation keeps
nothing of it and can exit. Before this a tunnel moved client-only (record "tcp-split",
inflight.py): the old generation served its upstream for as long as the tunnel lived, and
while it did, the two-generation limit refused the next reload.

A tunnel moves this way when (`movable_upstream`):
- the receiver adopts record "http-tunnel" (an older generation, e.g. at a rollback, does
  not: then it moves client-only, as before);
- its response has begun (101, or 2xx to CONNECT): the upstream codec reads raw bytes;
- both sides are plain TCP (the record layer's state of a TLS side would have to move too),
  the upstream is an HTTP/1.1 connection (an HTTP/2 one carries other streams);
- nothing is unsent either way and neither side has half-closed: the sockets are then the
  whole state, with no byte held in Python on either side.
Otherwise it moves client-only.

Accounting, as an operator reads it: the old worker ends the request when the tunnel leaves
it, so its access log line is written then (the bytes and duration up to the move, response
code details unchanged); the new worker counts the connection in the listener's and the
connection manager's `downstream_cx_active` and the cluster's `upstream_cx_active`, and the
bytes in the cluster's `upstream_cx_{tx,rx}_bytes_total`, until it ends.
"""

from __future__ import annotations

import os
import types

from ...connection import Export, register
from ..tcp_proxy import CLOSED, TcpProxyConnection, _cluster_missing
from ..internal_listener import is_internal
from .connect_tunnel import TcpUpstream

RECORD = "http-tunnel"
_UNTOUCHED = {"data": b"", "eof": False, "done": False}


def movable_upstream(conn):
    """The UpstreamRequest of `conn`'s tunnel if both its sockets can move now, else None."""
    if RECORD not in conn.worker.handoff_accepts or conn.tls is not None:
        return None
    stream = conn.active
    router = stream.router if stream is not None else None
    ureq = router.upstream if router is not None else None
    if ureq is None or ureq.done or not ureq.headers_received:
        return None
    if ureq.request_complete or ureq.response_complete:
        return None                     # a side sent FIN: the split move carries half-closes
    up = ureq.conn
    pool = up.pool if up is not None else None
    if up is None or up.closed or up.transport is None or isinstance(pool, TcpUpstream):
        return None                     # a terminated CONNECT's own TCP connection: split
    if pool.tls is not None or pool.http2 or is_internal(pool.host):
        return None                     # (an internal listener's end stays with its other end)
    if up.transport.get_write_buffer_size() or up.transport.is_closing():
        return None
    return ureq


def export(conn, ureq, fields: dict) -> Export:
    """Pause the tunnel's upstream too and describe both sockets. The connection keeps them
    until `let_go` (adopted) or `resume` (not)."""
    up = ureq.conn
    sock = up.transport.get_extra_info("socket")
    fd = os.dup(sock.fileno())          # first: EMFILE here leaves the upstream reading
    up.transport.pause_reading()
    conn.moving_upstream = (ureq, fd)
    stream = conn.active
    return Export(RECORD, {**fields, "cluster": ureq.router.cluster.name,
                           "host": [ureq.host.address, ureq.host.port],
                           "up": _UNTOUCHED, "down": _UNTOUCHED,
                           "idle": float(stream.idle_timeout or 0)},
                  [conn.moving_fd, conn.moving_upstream[1]])


def resume(conn) -> None:
    """The move failed: the upstream reads again (the client side resumes in the caller)."""
    ureq, fd = conn.moving_upstream
    conn.moving_upstream = None
    os.close(fd)
    up = ureq.conn
    if not up.closed and not ureq.holding:
        up.transport.resume_reading()


def let_go(conn) -> None:
    """The new worker adopted both sockets: end the request here without a byte, FIN or RST
    on either (the adopter holds the same sockets). `conn` is already closed, so the ending
    request starts nothing on it; the caller lets go of the client's transport."""
    ureq, fd = conn.moving_upstream
    conn.moving_upstream = None
    os.close(fd)
    ureq._mark_done()       # not a reset: the request goes on, elsewhere
    ureq._cancel_timer()
    up = ureq.conn
    up.streams.pop(ureq.stream_id, None)
    up.abort(None)          # no stream left on it: nothing is reset
    stream = conn.active
    if stream is not None:
        stream.reset("tunnel moved", notify=False)     # its access log line, as it ends here


class MovedTunnel(TcpProxyConnection):
    """The new worker's side of a tunnel another worker moved: two sockets spliced as a
    tcp_proxy connection is, with the HTTP connection manager's timeout and counters."""

    kind = RECORD

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)     # never the TLS variant: both sides are plain

    def __init__(self, worker, listener, client, peer, conn_id, chain, idle: float = 0.0):
        hcm = chain.http_config
        self.hcm = hcm
        # What TcpProxyConnection reads of its chain, from the HTTP chain: its index (a
        # further move names it), the stream idle timeout (Envoy times an upgraded stream
        # out by stream_idle_timeout or the route's idle_timeout), its counter, no tcp_proxy
        # access log (the request's line was written by the worker that served it).
        view = types.SimpleNamespace(index=chain.index, tcp_proxy={"idle_timeout": idle},
                                     idle_timeout=hcm.stat_rq_idle_timeout, access_logs=None,
                                     network_filters=())    # none of its own
        super().__init__(worker, listener, client, peer, conn_id, view)

    def _byte_stats(self):
        stat = self.cluster.stat
        return (stat["upstream_cx_tx_bytes_total"],), (stat["upstream_cx_rx_bytes_total"],)

    def export(self, client_only: bool = False) -> Export:
        out = super().export(client_only or RECORD not in self.worker.handoff_accepts)
        if out.kind != "tcp":
            return out              # tcp-split: the upstream stays here, forwarded
        return Export(RECORD, {**out.fields, "idle": float(self.idle_timeout or 0)}, out.fds)

    def close(self) -> None:
        if self.state is not CLOSED:
            self.stats.gauges[self.hcm.stat_cx_active] -= 1
        super().close()

    def migrated(self, channel, new_id: int) -> None:
        if self.state is not CLOSED:
            self.stats.gauges[self.hcm.stat_cx_active] -= 1
        super().migrated(channel, new_id)

    @classmethod
    def adopt(cls, worker, listener, fields: dict, fds: list[int], conn_id: int, channel=None):
        chain = listener.chains[fields.get("chain") or 0]
        conn = cls.adopt_sockets(worker, listener, fields, fds, conn_id,
                                 chain=chain, idle=fields.get("idle") or 0.0)
        worker.stats.gauges[chain.http_config.stat_cx_active] += 1
        return conn


def _not_adoptable(worker, listener, fields: dict) -> str | None:
    index = fields.get("chain") or 0
    if index >= len(listener.chains) or listener.chains[index].http_config is None:
        return "no http_connection_manager at that filter chain here"
    return _cluster_missing(worker, listener, fields)


register(RECORD, MovedTunnel.adopt, _not_adoptable)
