"""istio.stats on a tcp_proxy chain: Istio's istio_tcp_* counters for one connection.

tcp_proxy.py calls `opened` once the upstream connection is up; it returns the names its
pumps add each read to (bytes from the client: received, bytes to it: sent), so the byte
counters move as the bytes do, not only at the close; `closed` counts the close. Labels as
for HTTP (http_stats.py) without the response ones: request_protocol "tcp", response_flags
"-". The peer is unknown
until the TCP metadata exchange tells it (not implemented: Istio's istio-peer-exchange).
"""

from __future__ import annotations

from ..internal_listener import peer_workload as internal_peer
from .direction import local_node
from .http_stats import mesh_side
from .metrics import IstioMetrics, service_of
from .workload import UNKNOWN_WORKLOAD, from_metadata

KIND = "istio.stats"
_BY_WORKER: dict = {}       # id(worker) -> TcpStats (one worker per process; tests run several)


def opened(conn, counted: bool = False) -> tuple[tuple, tuple]:
    """The connection is up: count it (unless `counted`: it moved here from another worker,
    which counted it), and return the names its pumps add their bytes to, ((received,),
    (sent,)), or ((), ()) when its chain has no istio.stats."""
    stats = _for(conn)
    return stats.opened(conn, counted) if stats is not None else ((), ())


def closed(conn) -> None:
    stats = _for(conn)
    if stats is not None:
        stats.metrics.tcp(stats.key(conn), closed=1)


def _for(conn):
    chain = conn.chain
    if chain is None or not any(f.get("type") == KIND
                                for f in chain.network_filters):
        return None
    stats = _BY_WORKER.get(id(conn.worker))
    if stats is None:
        stats = _BY_WORKER[id(conn.worker)] = TcpStats(conn.worker)
    return stats


class TcpStats:
    """One worker's istio.stats for tcp_proxy connections."""

    __slots__ = ("local", "metrics")

    def __init__(self, worker):
        self.local = from_metadata(local_node(worker).get("metadata"))
        self.metrics = IstioMetrics(worker.stats)

    def key(self, conn) -> tuple:
        gateway = next((f.get("reporter") for f in conn.chain.network_filters
                        if f.get("type") == KIND), None)
        peer = internal_peer(conn)  # an internal connection's, from a CONNECT's baggage
        reporter, source, source_principal, destination, destination_principal, policy = \
            mesh_side(_Downstream(conn), self.local, peer or UNKNOWN_WORKLOAD, reporter=gateway)
        service = service_of(getattr(conn.cluster, "metadata", None), None, False)
        return (reporter, source, source_principal, destination, destination_principal, service,
                (("request_protocol", "tcp"), ("response_flags", "-"),
                 ("connection_security_policy", policy)))

    def opened(self, conn, counted: bool) -> tuple[tuple, tuple]:
        key = self.key(conn)
        if not counted:
            self.metrics.tcp(key, opened=1)
        names = self.metrics.names_for(key, tcp=True).tcp
        return (names["received_bytes"],), (names["sent_bytes"],)


class _Downstream:
    """A tcp_proxy connection seen as mesh_side expects (its listener, its TLS session, its
    socket: what an internal connection was shared is kept by it)."""

    __slots__ = ("listener", "tls", "client")

    def __init__(self, conn):
        self.listener = conn.listener
        self.tls = getattr(conn, "tls", None)
        self.client = conn.client
