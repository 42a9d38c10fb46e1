"""Access logs of connections: a listener's own (Listener.access_log) and tcp_proxy's
(TcpProxy.access_log), one line per connection when it ends.

Envoy writes a listener's access log when a connection ends: for the connections no filter
chain took (response flag NR, Envoy's "no route" for a listener) and for the others too.
Istio configures it with a response_flag_filter on NR, so that only the unmatched ones are
logged (a chain's own HCM or tcp_proxy access logs cover the others). Here a listener line is
written for unmatched connections and for tcp_proxy connections, not yet for those of an
HTTP connection manager (xds/translate.py warns when a listener log could want them). The
same formatter, files and flag filter serve as for the HTTP access logs
(worker/proxy/http/access_log.py).
"""

from __future__ import annotations

from .proxy.http.stream_info import StreamInfo


class ConnectionInfo(StreamInfo):
    """StreamInfo for a connection rather than a request: no request, no response."""

    __slots__ = ("requested_server_name", "connection_termination_details")

    def __init__(self, now: float, downstream_remote, downstream_local, connection_id: int,
                 server_name: str | None = None):
        super().__init__(None, now, None, downstream_remote, downstream_local, connection_id)
        self.requested_server_name = server_name
        self.connection_termination_details = None


def build_access_logs(specs, worker) -> list:
    from .proxy.http.config import _access_logs
    return _access_logs(specs, worker)


def log_unmatched(listener, peer, local, conn_id: int, server_name: str | None = None) -> None:
    """A connection closed because no filter chain matched (Envoy: flag NR)."""
    now = listener.loop.time()
    info = ConnectionInfo(now, peer[:2], local[:2], conn_id, server_name)
    info.response_flags.append("NR")
    info.last_downstream_byte = now
    for log in listener.access_logs:
        log.log(info)


def log_tcp_proxy(conn) -> None:
    """A tcp_proxy connection's access log line (TcpProxy.access_log), when it closes."""
    now = conn.loop.time()
    local = conn.original
    if local is None:
        try:
            local = conn.client.getsockname()
        except OSError:
            local = None
    info = ConnectionInfo(now, conn.peer[:2] if conn.peer else None,
                          local[:2] if local else None, conn.id)
    info.start_monotonic = conn.started
    info.last_downstream_byte = now
    pumps = getattr(conn, "pumps", None)
    if pumps is not None and all(hasattr(p, "total") for p in pumps):
        info.bytes_received, info.bytes_sent = pumps[0].total, pumps[1].total
    cluster, host = conn.cluster, conn.host
    if cluster is not None:
        info.upstream_cluster = cluster.name
    else:
        info.response_flags.append("NC")         # Envoy: no cluster found
    if host is not None:
        info.upstream_host = host.stat_id
    if cluster is not None and pumps is None and conn.tried:
        info.response_flags.append("UF")         # never connected: every attempt failed
    upstream = conn.upstream
    if upstream is not None:
        try:
            info.upstream_local = upstream.getsockname()[:2]
        except OSError:
            pass
    for log in conn.chain.access_logs or ():
        log.log(info)
    for log in conn.listener.access_logs or ():
        log.log(info)
