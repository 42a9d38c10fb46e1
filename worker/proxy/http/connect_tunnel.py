"""CONNECT terminated here: a route with `upgrade_configs[{upgrade_type: CONNECT,
connect_config: {}}]` sends the CONNECT stream's payload to its cluster over plain TCP (Envoy's
"CONNECT termination"; Istio's HBONE `connect_terminate` listener on port 15008).

The router asks `TcpUpstream` for its one connection instead of an HTTP pool, and drives it
through the same calls as a pooled connection (UpstreamRequest in router.py): so retries,
timeouts, the upstream's counters and the access log's upstream fields work as for any
request. Once the TCP connect succeeds the stream is answered 200 (as in Envoy: the 200 means
the upstream connection is up, and no byte of the payload went before it); from then on:

- the request body (HTTP/2 DATA, or the raw bytes after an HTTP/1.1 CONNECT) is written to
  the socket; the request's end (END_STREAM, the client's FIN) is the socket's FIN;
- what the upstream sends is the response body; its FIN ends the response (END_STREAM, or
  the FIN toward an HTTP/1.1 client); a reset or error resets the stream.

Backpressure is the pools': the socket's full write buffer pauses the client stream
(`on_upstream_paused`), a full client pauses reading the socket (`pause_reading`).
"""

from __future__ import annotations

import asyncio
import logging

from ...codecs.events import Body, ResponseHead
from ...codecs.message import Headers, Response
from .pool import CONNECT_FAILURE, CONNECT_TIMEOUT, CONNECTION_TERMINATION, connect_error_text

log = logging.getLogger("baton.connect_tunnel")

STREAM_ID = 1       # one stream per connection; the router only hands the id back


class TcpUpstream:
    """The "pool" of one terminated CONNECT: a single TCP connection to `host`."""

    __slots__ = ("worker", "cluster", "host", "conn", "task", "waiter", "peer", "authority",
                 "shared")

    http2 = False

    def __init__(self, worker, cluster, host, peer=None, authority=None, shared=None):
        self.worker = worker
        self.cluster = cluster
        self.host = host
        # For an internal listener host: the client, and where the CONNECT asked to go
        # (its authority, as Istio's connect_authority filter passes it on).
        self.peer = peer
        self.authority = authority
        self.shared = shared                # what the stream shares (connect_peer)
        self.conn = None
        self.task = None
        self.waiter = None

    def request(self, waiter) -> None:
        self.waiter = waiter
        self.task = self.worker.loop.create_task(self._open())

    def cancel(self, waiter) -> None:
        self.waiter = None
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def release(self, conn) -> None:
        conn.abort(None)

    async def _open(self) -> None:
        cluster, host, loop = self.cluster, self.host, self.worker.loop
        stats = self.worker.stats.counters
        gauges = self.worker.stats.gauges
        conn = TcpTunnelConnection(self)
        sock = None
        failure = None
        stats[cluster.stat["upstream_cx_total"]] += 1
        # Everything that can fail is inside the try (making the socket too: EMFILE), so the
        # waiter always hears of the failure; else the stream hung until its route timeout.
        try:
            if host.address.startswith("internal:"):    # an internal listener here: no socket
                from ..internal_listener import connect
                sock = connect(self.worker, cluster, host, self.peer,
                               shared=self.shared, authority=self.authority)
            else:
                sock = await cluster.dial(loop, host, self.worker.upstream_mark)
            await loop.create_connection(lambda: conn, sock=sock)
        except asyncio.TimeoutError:
            failure = (CONNECT_TIMEOUT, "upstream_cx_connect_timeout")
        except OSError as exc:
            failure = (f"{CONNECT_FAILURE}, transport failure reason: delayed connect error: "
                       f"{connect_error_text(exc)}", "upstream_cx_connect_fail")
        except asyncio.CancelledError:
            if sock is not None:
                sock.close()
            return
        except Exception:               # a bug: still a failed connect, not a hung stream
            log.exception("connect to %s failed", host.stat_id)
            failure = (CONNECT_FAILURE, "upstream_cx_connect_fail")
        waiter = self.waiter
        if failure is not None:
            if sock is not None:
                sock.close()
            host.connect_fail += 1
            stats[cluster.stat[failure[1]]] += 1
            if waiter is not None:
                waiter.on_pool_failure(failure[0], "UF")
            return
        cluster.active += 1
        host.active += 1
        gauges[cluster.stat["upstream_cx_active"]] += 1
        self.conn = conn
        if waiter is None:
            conn.abort(None)
            return
        waiter.on_pool_ready(conn)

    def connection_gone(self) -> None:
        self.cluster.active -= 1
        self.host.active -= 1
        self.worker.stats.gauges[self.cluster.stat["upstream_cx_active"]] -= 1
        self.worker.stats.counters[self.cluster.stat["upstream_cx_destroy"]] += 1


class TcpTunnelConnection(asyncio.Protocol):
    """The TCP connection under one terminated CONNECT; it is its own codec (send_body,
    consumed...), since the bytes need no framing."""

    __slots__ = ("pool", "transport", "stream", "closed", "paused", "local", "streams",
                 "codec", "request_ended", "counters", "early")

    def __init__(self, pool: TcpUpstream):
        self.pool = pool
        self.transport = None
        self.stream = None                  # the UpstreamRequest
        self.streams: dict = {}
        self.closed = False
        self.paused = False
        self.local = None
        self.codec = self
        self.request_ended = False
        # What the upstream sent before the stream was answered 200 ([bytes, FIN]): the socket
        # is read from the connect on, and a greeting (even the FIN after it) could come
        # before the stream was attached; it was lost.
        self.early = [bytearray(), False]
        stat = pool.cluster.stat
        self.counters = (pool.worker.stats.counters, stat["upstream_cx_tx_bytes_total"],
                         stat["upstream_cx_rx_bytes_total"])

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=self.pool.cluster.buffer_limit)
        self.local = transport.get_extra_info("sockname")

    def data_received(self, data: bytes) -> None:
        counters, _, rx = self.counters
        counters[rx] += len(data)
        if self.early is not None:          # before the 200: after it (_answer)
            self.early[0].extend(data)
        elif self.stream is not None:
            self.stream.on_upstream_event(Body(STREAM_ID, data, False))
            self.pool.worker.http_pools.flush_dirty()

    def eof_received(self):
        if self.early is not None:
            self.early[1] = True
        elif self.stream is not None:
            self.stream.on_upstream_event(Body(STREAM_ID, b"", True))
            self.pool.worker.http_pools.flush_dirty()
        return True                         # keep writing: the client's half may go on

    def connection_lost(self, exc) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool.connection_gone()
        stream, self.stream = self.stream, None
        self.streams = {}
        if stream is not None:
            stream.on_upstream_reset(CONNECTION_TERMINATION)
            self.pool.worker.http_pools.flush_dirty()

    def pause_writing(self) -> None:
        self.paused = True
        if self.stream is not None:
            self.stream.on_upstream_paused(True)

    def resume_writing(self) -> None:
        self.paused = False
        if self.stream is not None:
            self.stream.on_upstream_paused(False)

    # -- the connection, as the router uses a pooled one -------------------------------------

    def start_stream(self, ureq, request, end_stream: bool) -> int:
        """The CONNECT's head is not sent anywhere: the upstream is connected, answer 200
        (on the next turn, once the router has finished taking the connection)."""
        self.stream = ureq
        self.streams = {STREAM_ID: ureq}
        self.pool.worker.loop.call_soon(self._answer)
        if end_stream:
            self.send_body(STREAM_ID, b"", True)
        return STREAM_ID

    def _answer(self) -> None:
        if self.stream is not None and not self.closed:
            self.stream.on_upstream_event(ResponseHead(STREAM_ID, Response(200, Headers()), False))
            early, self.early = self.early, None
            if early is not None:
                data, ended = early
                if data:
                    self.stream.on_upstream_event(Body(STREAM_ID, bytes(data), False))
                if ended and self.stream is not None:
                    self.stream.on_upstream_event(Body(STREAM_ID, b"", True))
            self.pool.worker.http_pools.flush_dirty()

    def flush(self) -> None:
        pass                                # written as it comes

    def take_back(self, stream_id: int) -> bool:
        return False

    def stream_done(self, stream_id: int, clean: bool) -> None:
        """The response ended (the upstream's FIN went to the client): the connection ends.
        When the request had ended too, what is still buffered for the upstream goes before
        our FIN (abort discarded it, and a RST told the upstream of an error there was not).
        When it had not, the client's stream ends here all the same (the connection manager
        ends a stream with its response), so the rest of the request cannot be carried: the
        upstream connection is dropped, as Envoy 1.40 drops it (an HTTP/2 client then gets
        RST_STREAM NO_ERROR: test_connect_upstream_half_close.py)."""
        self.stream = None
        self.streams = {}
        if self.request_ended:
            self._close()
        else:
            self.abort(None)

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool.connection_gone()
        if self.transport is not None:
            self.transport.close()      # what is buffered goes first

    def pause_reading(self, on: bool) -> None:
        if self.transport is None or self.closed:
            return
        if on:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def abort(self, reason) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.pool.connection_gone()
        stream, self.stream = self.stream, None
        self.streams = {}
        if stream is not None:
            stream.on_upstream_reset(reason or CONNECTION_TERMINATION)

    # -- the codec's part ---------------------------------------------------------------------

    def send_body(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if self.closed:
            return
        if data:
            counters, tx, _ = self.counters
            counters[tx] += len(data)
            self.transport.write(data)
        if end_stream and not self.request_ended:
            self.request_ended = True
            if self.transport.can_write_eof():
                self.transport.write_eof()

    def send_trailers(self, stream_id: int, trailers) -> None:
        self.send_body(stream_id, b"", True)    # a tunnel's trailers end it; nothing to send

    def consumed(self, stream_id: int, n: int) -> None:
        pass

    def reset(self, stream_id: int, code: int = 0) -> None:
        self.abort(None)

    def data_to_send(self) -> bytes:
        return b""


def connect_peer(stream):
    """What a terminated CONNECT's stream shares with its internal connection
    (internal_listener.Shared), None when nothing: the peer workload its `baggage` names
    where the connection manager runs Istio's connect_baggage (istio/connect_baggage.py),
    and the downstream's SPIFFE ids, Istio's io.istio.peer_principal and local_principal,
    which istio_authn on connect_terminate's chain writes and shares with the upstream
    connection once (the waypoint's main_internal RBAC and stats read them: istio/proxy
    source/extensions/filters/network/istio_authn); a chain without it shares none."""
    from ..internal_listener import Shared
    from ..istio.connect_baggage import baggage_peer
    from ..istio.principal_state import own_principals
    workload = baggage_peer(stream)
    principal, local = own_principals(stream.conn)
    if workload is None and principal is None and local is None:
        return None
    return Shared(workload, principal, local)


def connect_destination(route, authority: str):
    """What Istio's connect_authority shares of a terminated CONNECT with its internal
    connection (internal_listener.Authority), when the most specific level that configures
    it (the route's, else its virtual host's) enables it; None otherwise. The authority must
    be an IP address and port, else nothing is restored (istio/proxy parses an ip:port or
    restores nothing). Its port stays the internal connection's local port; the config's
    `port` is only where an ORIGINAL_DST cluster behind it dials (istio/proxy
    set_internal_dst_address: the local address is the authority, the DestinationAddress
    the authority's ip with `port`). Unset, `port` leaves the ORIGINAL_DST cluster the
    local address (istio/proxy would name port 0)."""
    from ..internal_listener import Authority, ip_and_port
    found, config = False, None
    for level in getattr(route, "per_filter", None) or ():     # (the route's, its vhost's)
        for value in (level or {}).values():
            if isinstance(value, dict) and "connect_authority" in value:
                found, config = True, value["connect_authority"]
                break
        if found:
            break
    if config is None:              # not configured, or turned off where it is most specific
        return None
    address = ip_and_port(authority)
    if address is None:
        return None
    return Authority(*address, config.get("port") or None)

