"""Upstream connections for RPC: one multiplexed connection per (protocol, cluster, host) in a
worker, each with its own request-id space.

A request from any client connection is written to the host's connection under an id that
connection allocated (the client's own id is kept in the `Exchange`), so ids from different
clients never collide upstream; the response comes back under that id and is rewritten to
the client's. One connection per host is what MOSN does for multiplexed protocols: the
protocol carries the concurrency, not the number of sockets.

An upstream connection without a request in flight for the cluster's idle_timeout
(common_http_protocol_options, default 1 h, as Envoy's connection pools) is closed, and its
pool forgotten: hosts that left the cluster do not keep sockets open.

Circuit breakers: cluster max_connections (an upstream connection that cannot be opened:
overflow) and max_requests (requests in flight). Outlier detection hears every outcome:
a response (success), an error status (5xx-like), a reset, a connect failure or a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import weakref

from . import protocols as P

log = logging.getLogger("baton.rpc")

_POOLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def pools_of(worker) -> dict:
    """The worker's host pools, keyed (protocol name, cluster name, address, port)."""
    pools = _POOLS.get(worker)
    if pools is None:
        pools = _POOLS[worker] = {}
    return pools


class Exchange:
    """One request in flight: who asked (the client connection and its request frame),
    where it went, and its deadline."""

    __slots__ = ("client", "frame", "cluster", "host", "pool", "upstream", "upstream_id",
                 "timer", "done", "retries", "tried", "hash_key", "info")

    def __init__(self, client, frame, cluster):
        self.client = client
        self.frame = frame
        self.cluster = cluster
        self.host = None
        self.pool = None
        self.upstream = None
        self.upstream_id = None
        self.timer = None
        self.done = False
        self.retries = 0                    # tries left on connect failure or reset
        self.tried: tuple = ()              # the hosts it went to
        self.hash_key = None                # a hashing cluster's key for it
        self.info = None                    # its access log's RpcLogInfo, when the chain logs

    def finish(self) -> None:
        """No longer in flight (answered, failed or abandoned): release what it holds."""
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.upstream is not None and self.upstream_id is not None:
            self.upstream.pending.pop(self.upstream_id, None)
        cluster = self.cluster
        cluster.rq_active -= 1
        gauges = self.client.worker.stats.gauges
        gauges[cluster.stat["upstream_rq_active"]] -= 1
        self.client.exchange_done(self)


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("pool", "transport", "decoder", "pending", "next_id", "closed", "ready")

    def __init__(self, pool: "HostPool"):
        self.pool = pool
        self.transport = None
        self.decoder = pool.protocol.decoder()
        self.pending: dict[int, Exchange] = {}
        self.next_id = 1
        self.closed = False
        self.ready = False

    # -- asyncio ------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.ready = True

    def data_received(self, data: bytes) -> None:
        pool = self.pool
        protocol = pool.protocol
        counters = pool.stats.counters
        counters[pool.cluster.stat["upstream_cx_rx_bytes_total"]] += len(data)
        try:
            frames = self.decoder.feed(data)
        except protocol.error as exc:
            log.info("rpc: upstream %s:%d sent a bad frame: %s", pool.host.address,
                     pool.host.port, exc)
            counters[pool.cluster.stat["upstream_cx_protocol_error"]] += 1
            self.abort()
            return
        for frame in frames:
            if protocol.is_request(frame):
                # The provider's own heartbeat (Dubbo providers send them on idle
                # connections): answered here; nothing else flows that way.
                if protocol.is_event(frame):
                    self.transport.write(protocol.heartbeat_response(frame))
                continue
            if protocol.is_event(frame):
                continue                    # a heartbeat answer: Baton sends no heartbeat up
            exchange = self.pending.pop(frame.request_id, None)
            if exchange is None:
                continue                    # answered already (timed out, client gone)
            exchange.upstream_id = None
            exchange.client.upstream_response(exchange, frame)
        pool.touch()

    def eof_received(self):
        return False                        # close: a half-open RPC connection is of no use

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool.connection_gone(self)
        pending, self.pending = self.pending, {}
        for exchange in pending.values():
            exchange.upstream_id = None
            exchange.client.upstream_failed(exchange, P.RESET, self.pool.host_name)

    # -- sending ------------------------------------------------------------------------------

    def send(self, exchange: Exchange, oneway: bool) -> None:
        protocol = self.pool.protocol
        request_id = self._allocate()
        raw = protocol.with_request_id(exchange.frame.raw, request_id)
        if not oneway:
            exchange.upstream = self
            exchange.upstream_id = request_id
            self.pending[request_id] = exchange
        self.pool.stats.counters[self.pool.cluster.stat["upstream_cx_tx_bytes_total"]] += len(raw)
        self.transport.write(raw)
        self.pool.touch()

    def _allocate(self) -> int:
        limit = self.pool.protocol.MAX_REQUEST_ID
        request_id = self.next_id
        while request_id in self.pending:
            request_id = request_id + 1 if request_id < limit else 1
        self.next_id = request_id + 1 if request_id < limit else 1
        return request_id

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


class HostPool:
    """The connection to one host for one protocol and cluster, and the requests waiting
    for it to connect."""

    __slots__ = ("worker", "protocol", "cluster", "host", "stats", "conn", "waiting",
                 "host_name", "key", "last_active", "idle_timer")

    def __init__(self, worker, protocol, cluster, host, key):
        self.worker = worker
        self.protocol = protocol
        self.cluster = cluster
        self.host = host
        self.stats = worker.stats
        self.conn: UpstreamConnection | None = None
        self.waiting: list = []             # (exchange, oneway) until connected
        self.host_name = f"{host.address}:{host.port}"
        self.key = key
        self.last_active = 0.0
        self.idle_timer = None

    def submit(self, exchange: Exchange, oneway: bool) -> None:
        conn = self.conn
        if conn is not None and conn.ready and not conn.closed:
            conn.send(exchange, oneway)
            return
        if conn is None:
            cluster = self.cluster
            if cluster.active >= cluster.max_connections:
                self.stats.counters[cluster.stat["upstream_cx_overflow"]] += 1
                exchange.client.upstream_failed(exchange, P.OVERFLOW, self.host_name)
                return
            self._connect()
        self.waiting.append((exchange, oneway))

    def cancel(self, exchange: Exchange) -> None:
        self.waiting = [(e, o) for e, o in self.waiting if e is not exchange]

    def _connect(self) -> None:
        cluster, host = self.cluster, self.host
        self.conn = UpstreamConnection(self)
        cluster.active += 1
        host.active += 1
        host.total += 1
        counters = self.stats.counters
        counters[cluster.stat["upstream_cx_total"]] += 1
        self.stats.gauges[cluster.stat["upstream_cx_active"]] += 1
        self.worker.loop.create_task(self._open(self.conn))

    async def _open(self, conn: UpstreamConnection) -> None:
        cluster, host, loop = self.cluster, self.host, self.worker.loop
        sock = None
        failure = None
        try:
            sock = await cluster.dial(loop, host, getattr(self.worker, "upstream_mark", 0))
            await loop.create_connection(lambda: conn, sock=sock)
        except asyncio.TimeoutError:
            failure = (P.CONNECT_TIMEOUT, "upstream_cx_connect_timeout")
        except OSError:
            failure = (P.CONNECT_FAILURE, "upstream_cx_connect_fail")
        if failure is None:
            waiting, self.waiting = self.waiting, []
            for exchange, oneway in waiting:
                if exchange.done and not oneway:
                    continue                # timed out or its client left while connecting
                if conn.closed:             # lost before its first write
                    exchange.client.upstream_failed(exchange, P.RESET, self.host_name)
                else:
                    conn.send(exchange, oneway)
            return
        if sock is not None:
            sock.close()
        host.connect_fail += 1
        self.stats.counters[cluster.stat[failure[1]]] += 1
        if cluster.outlier is not None:
            cluster.outlier.report(host, "timeout" if failure[0] == P.CONNECT_TIMEOUT
                                   else "connect_failure")
        conn.closed = True
        self.connection_gone(conn)
        waiting, self.waiting = self.waiting, []
        for exchange, oneway in waiting:
            exchange.client.upstream_failed(exchange, failure[0], self.host_name)

    def touch(self) -> None:
        """Traffic now: the idle deadline moves (the timer re-arms lazily, when it fires)."""
        loop = self.worker.loop
        self.last_active = loop.time()
        if self.idle_timer is None:
            timeout = self.cluster.common_http.get("idle_timeout", 3600.0)
            if timeout:
                self.idle_timer = loop.call_later(timeout, self._idle_check, timeout)

    def _idle_check(self, timeout: float) -> None:
        self.idle_timer = None
        conn = self.conn
        if conn is None or conn.closed:
            return
        left = self.last_active + timeout - self.worker.loop.time()
        if conn.pending or self.waiting or left > 0:
            self.idle_timer = self.worker.loop.call_later(max(left, 0.05), self._idle_check,
                                                          timeout)
            return
        self.stats.counters[self.cluster.stat["upstream_cx_idle_timeout"]] += 1
        conn.abort()

    def connection_gone(self, conn: UpstreamConnection) -> None:
        if self.conn is not conn:
            return
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        pools = pools_of(self.worker)
        if pools.get(self.key) is self:
            del pools[self.key]
        self.conn = None
        cluster = self.cluster
        cluster.active -= 1
        self.host.active -= 1
        self.stats.gauges[cluster.stat["upstream_cx_active"]] -= 1
        self.stats.counters[cluster.stat["upstream_cx_destroy"]] += 1

    def close(self) -> None:
        if self.conn is not None:
            self.conn.abort()


def pool_for(worker, protocol, cluster, host) -> HostPool:
    key = (protocol.name, cluster.name, host.address, host.port)
    pools = pools_of(worker)
    pool = pools.get(key)
    if pool is not None and (pool.cluster is not cluster or pool.host is not host):
        # The cluster or host was replaced (a config update): the old connection finishes
        # what it carries and goes at its idle timeout; new requests use a new one.
        pools.pop(key)
        pool = None
    if pool is None:
        pool = pools[key] = HostPool(worker, protocol, cluster, host, key)
    return pool
