"""Istio's network filters on a tcp_proxy connection that speaks TLS (tls_proxy.py): the
TCP metadata exchange on either side, and istio.stats with the peer it found.

tls_proxy.py calls, in order:

    session = start(conn)        both handshakes done, before any byte moves (None: no Istio
                                 filter applies to this connection)
    session.from_client(data)    decrypted bytes from the client -> the bytes to forward
    session.from_upstream(data)  decrypted bytes from the upstream -> the bytes to forward
    session.closed()

Downstream exchange: the chain has istio.metadata_exchange and the client negotiated its
`protocol` (istio-peer-exchange) as ALPN: this node's frame goes to the client first and the
client's frame is taken off what it sends. Upstream exchange: the cluster has Istio's upstream
filter and the upstream handshake negotiated its protocol: this node's frame goes upstream
before the client's bytes and the upstream's frame is taken off its answer. Any other
connection is untouched, as with Istio's filter (peer_exchange.py).

istio.stats (when the chain has it): the connection is counted opened once the peer is known
(its frame arrived, or it was not an exchange), so all of its counts carry one label set;
bytes are counted as they pass, those that passed before that moment with it; the close is
counted at the close. Inbound the peer is the client (reporter=destination), outbound the
upstream (reporter=source).
"""

from __future__ import annotations

from .direction import is_inbound, local_node
from .metrics import IstioMetrics, service_of
from .peer_exchange import FrameReader, frame
from .workload import UNKNOWN, UNKNOWN_WORKLOAD, from_metadata, shared_metadata, spiffe_principal

EXCHANGE = "istio.metadata_exchange"
STATS = "istio.stats"


def _exchange_protocol(filters) -> str | None:
    for entry in filters or ():
        if entry.get("type") == EXCHANGE:
            return entry.get("protocol") or ""
    return None


def start(conn) -> "TlsSession | None":
    chain_filters = conn.chain.network_filters
    down_protocol = _exchange_protocol(chain_filters)
    up_protocol = _exchange_protocol(getattr(conn.cluster, "upstream_filters", ()))
    layer, up_layer = conn.layer, conn.up_layer
    down = down_protocol is not None and layer is not None and \
        layer.info.get("alpn") == down_protocol
    up = up_protocol is not None and up_layer is not None and \
        up_layer.info.get("alpn") == up_protocol
    stats = any(entry.get("type") == STATS for entry in chain_filters)
    if not (down or up or stats):
        return None
    return TlsSession(conn, down, up, stats)


class TlsSession:
    __slots__ = ("conn", "down", "up", "metrics", "local", "inbound", "pending_rx",
                 "pending_tx", "names")

    def __init__(self, conn, down: bool, up: bool, stats: bool):
        self.conn = conn
        node = local_node(conn.worker)
        self.local = from_metadata(node.get("metadata"))
        self.inbound = is_inbound(conn.listener)
        self.down = FrameReader() if down else None
        self.up = FrameReader() if up else None
        self.metrics = IstioMetrics(conn.worker.stats) if stats else None
        self.names = None                       # the label set's names, once the peer is known
        self.pending_rx = self.pending_tx = 0
        # conn.to_upstream holds the client's plaintext that came with its handshake.
        early = self.from_client(bytes(conn.to_upstream))
        conn.to_upstream[:] = early
        if down or up:
            own = frame(node.get("id") or "", shared_metadata(node.get("metadata")))
            if down:
                conn._for_client(own)
            if up:
                conn.to_upstream[:0] = own      # before the client's bytes
        self._maybe_known()

    # -- the data path ----------------------------------------------------------------------

    def from_client(self, data) -> bytes:
        if self.down is not None and not self.down.done:
            data = self.down.feed(data)
            self._maybe_known()
        self._count("received_bytes", len(data))
        return data

    def from_upstream(self, data) -> bytes:
        if self.up is not None and not self.up.done:
            data = self.up.feed(data)
            self._maybe_known()
        self._count("sent_bytes", len(data))
        return data

    def closed(self) -> None:
        if self.metrics is None:
            return
        if self.names is None:
            self._resolve()
        self.metrics.counters[self.names["connections_closed"]] += 1

    # -- istio.stats ------------------------------------------------------------------------

    def _count(self, name: str, n: int) -> None:
        if self.metrics is None or not n:
            return
        if self.names is not None:
            self.metrics.counters[self.names[name]] += n
        elif name == "received_bytes":
            self.pending_rx += n
        else:
            self.pending_tx += n

    def _maybe_known(self) -> None:
        reader = self.down if self.inbound else self.up
        if self.metrics is not None and self.names is None and (reader is None or reader.done):
            self._resolve()

    def _resolve(self) -> None:
        reader = self.down if self.inbound else self.up
        peer = from_metadata(reader.peer_metadata) if reader is not None and \
            reader.peer_metadata else UNKNOWN_WORKLOAD
        conn = self.conn
        service = service_of(getattr(conn.cluster, "metadata", None), None, False)
        tail = (("request_protocol", "tcp"), ("response_flags", "-"))
        if self.inbound:
            layer = conn.layer
            peer_der = layer.info.get("peer_certificate") if layer is not None else None
            principal = spiffe_principal(peer_der) if peer_der else UNKNOWN
            own = (getattr(conn.tls, "local_uris", None) or [UNKNOWN])[0] \
                if conn.tls is not None else UNKNOWN
            key = ("destination", peer, principal, self.local, own, service,
                   tail + (("connection_security_policy",
                            "mutual_tls" if peer_der else "none"),))
        else:
            up_layer = conn.up_layer
            peer_der = up_layer.info.get("peer_certificate") if up_layer is not None else None
            principal = spiffe_principal(peer_der) if peer_der else UNKNOWN
            key = ("source", self.local, UNKNOWN, peer, principal, service,
                   tail + (("connection_security_policy", UNKNOWN),))
        metrics = self.metrics
        self.names = metrics.names_for(key, tcp=True).tcp
        counters = metrics.counters
        counters[self.names["connections_opened"]] += 1
        for name, pending in (("received_bytes", self.pending_rx),
                              ("sent_bytes", self.pending_tx)):
            if pending:
                counters[self.names[name]] += pending
        self.pending_rx = self.pending_tx = 0
