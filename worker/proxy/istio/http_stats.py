"""istio.stats on an HTTP connection manager: one istio_requests_total and three histogram
observations per stream, at its end (metrics.py names them).

    reporter                "destination" on an inbound listener, else "source"; "waypoint"
                            with stats.PluginConfig's reporter SERVER_GATEWAY (mesh_side)
    source_* / destination_*   this node (bootstrap node metadata) on its own side, the peer
                            the metadata exchange found (peer_metadata.py) on the other
                            (inbound, else the peer a terminated CONNECT's baggage shared
                            with this internal connection), "unknown" without one
    *_principal             inbound: the client certificate's URI SAN and this listener's
                            own; outbound: this cluster's client certificate's and the
                            upstream certificate's, read from the upstream connection when
                            the response head passes ("unknown" over plaintext)
    destination_service*    the upstream cluster's Istio metadata, else the Host header
                            (unless disable_host_header_fallback)
    request_protocol        "grpc" for application/grpc requests, else "http"
    response_code           the status sent downstream (0 when none was)
    grpc_response_status    grpc-status of the response (trailers, else headers), else ""
    response_flags          Envoy's short flags, comma-separated, "-" when none
    connection_security_policy   inbound: "mutual_tls" when the client presented a
                            certificate, else "none"; outbound: "unknown"
"""

from __future__ import annotations

from ..http.filter import FilterFactory, StreamFilter, register
from ..http.grpc_stats import grpc_status, is_grpc
from .direction import is_inbound, local_node
from .metrics import IstioMetrics, service_of
from ..internal_listener import shared_principals
from .connect_baggage import downstream_peer
from .peer_metadata import peer_of
from .workload import UNKNOWN, UNKNOWN_WORKLOAD, Workload, from_metadata, spiffe_principal


@register("istio.stats")
class IstioStatsFactory(FilterFactory):
    def __init__(self, config: dict, context):
        super().__init__(config, context)
        self.local = from_metadata(local_node(context.worker).get("metadata"))
        self.metrics = IstioMetrics(context.stats)
        self.host_fallback = not config.get("disable_host_header_fallback")
        self.reporter = config.get("reporter")     # None, or "waypoint" (SERVER_GATEWAY)

    def create(self, stream):
        return IstioStatsFilter(stream, self)


def mesh_side(conn, local, peer, upstream_principals=(UNKNOWN, UNKNOWN), reporter=None):
    """(reporter, source, source_principal, destination, destination_principal, policy);
    `upstream_principals`: (ours, the upstream's) on the upstream connection, outbound;
    `reporter` "waypoint" (stats.PluginConfig SERVER_GATEWAY): the client is the source as
    on an inbound listener, and the destination is the workload behind this gateway, which
    only a workload lookup by address (not done) would name: unknown but for this node's
    cluster, as Istio reports it without that lookup."""
    tls = getattr(conn, "tls", None)
    if reporter is not None or is_inbound(conn.listener):
        peer_der = getattr(tls, "peer_der", None) if tls is not None else None
        principal = spiffe_principal(peer_der, getattr(tls, "cache", None)) if peer_der \
            else UNKNOWN
        own = (getattr(tls, "local_uris", None) or [UNKNOWN])[0] if tls is not None \
            else UNKNOWN
        mutual = peer_der is not None
        if tls is None:
            # An internal connection: the principals its connecting side shared (Istio's
            # io.istio.peer_principal / local_principal, which the stats read first), mutual
            # TLS when both are known, as istio/proxy's stats decide it.
            shared = shared_principals(conn)
            if shared is not None:
                principal, own = (name or UNKNOWN for name in shared)
                mutual = principal != UNKNOWN and own != UNKNOWN
        policy = "mutual_tls" if mutual else "none"
        if reporter is not None:
            return (reporter, peer, principal, Workload(cluster=local.cluster), UNKNOWN, policy)
        return ("destination", peer, principal, local, own, policy)
    return "source", local, upstream_principals[0], peer, upstream_principals[1], UNKNOWN


def upstream_principals(stream) -> tuple[str, str]:
    """(our certificate's URI SAN, the upstream's) on the connection the response came from:
    the router's current attempt, its pooled connection's TLS session and the pool's client
    (worker/proxy/http/router.py, pool.py); "unknown" for what is not there."""
    attempt = getattr(getattr(stream, "router", None), "upstream", None)
    transport = getattr(getattr(attempt, "conn", None), "transport", None)
    session = transport.get_extra_info("ssl_object") if transport is not None else None
    peer_der = getattr(session, "peer_der", None)
    if peer_der is None:
        return UNKNOWN, UNKNOWN
    cache = session.cache
    ours = cache.get("istio.local_principal")
    if ours is None:
        client = getattr(getattr(attempt, "pool", None), "tls", None)
        certificates = (getattr(client, "spec", None) or {}).get("certificates") or ()
        ours = UNKNOWN
        if certificates:
            from ...tls.server import _uri_sans
            ours = (_uri_sans(certificates[0]["chain"]) or [UNKNOWN])[0]
        cache["istio.local_principal"] = ours
    return ours, spiffe_principal(peer_der, cache)


class IstioStatsFilter(StreamFilter):
    __slots__ = ("factory", "principals")

    def __init__(self, stream, factory):
        super().__init__(stream)
        self.factory = factory
        self.principals = (UNKNOWN, UNKNOWN)

    def on_response_headers(self, response, end_stream: bool):
        if self.factory.reporter is None and not is_inbound(self.stream.conn.listener):
            self.principals = upstream_principals(self.stream)
        return None

    def on_log(self) -> None:
        stream, factory = self.stream, self.factory
        info = stream.info
        inbound = factory.reporter is not None or is_inbound(stream.conn.listener)
        # Inbound, Istio's wasm.downstream_peer: the exchange's, else what the connecting
        # side shared with this internal connection (a terminated CONNECT's baggage).
        peer = (downstream_peer(stream, None) or UNKNOWN_WORKLOAD) if inbound else \
            peer_of(stream, False)
        reporter, source, source_principal, destination, destination_principal, policy = \
            mesh_side(stream.conn, factory.local, peer, self.principals, factory.reporter)
        cluster = stream.worker.clusters.get(info.upstream_cluster) \
            if info.upstream_cluster else None
        request = info.request
        service = service_of(getattr(cluster, "metadata", None),
                             request.authority if request is not None else None,
                             factory.host_fallback)
        tail = (("request_protocol", "grpc" if is_grpc(request) else "http"),
                ("response_code", str(info.response_code)),
                ("grpc_response_status", grpc_status(info) or ""),
                ("response_flags", ",".join(info.response_flags) or "-"),
                ("connection_security_policy", policy))
        end = info.last_downstream_byte or stream.loop.time()
        factory.metrics.request(
            (reporter, source, source_principal, destination, destination_principal, service,
             tail),
            (end - info.start_monotonic) * 1000.0, info.bytes_received, info.bytes_sent)
