"""Upstream HTTP connections and their pools, per cluster host, per worker.

HTTP/1.1: one request at a time per connection, idle keep-alive connections reused (newest
first, so the rest can time out upstream); HTTP/2 (cluster `http2`): requests multiplexed on
one connection up to the peer's stream limit, a second connection when it is full.

Circuit breakers, as Envoy counts them per cluster: `max_connections` caps connections (the
tcp_proxy shares that count), a request that finds none free waits as *pending*, and more than
`max_pending_requests` waiting is an overflow (503, flag UO).

A waiter is any object with `on_pool_ready(connection)` and `on_pool_failure(reason, flag)`;
the router's UpstreamRequest is the only one.

Batches (PoolManager.batch): while an HTTP/2 client connection dispatches the events of one
read, a new HTTP/1.1 upstream request is written, and a new upstream connection started, only
when the batch ends. A stream the client resets later in the same read (a rapid reset) then
gives its connection back untouched (UpstreamConnection.take_back) and starts no connect:
without this, each reset stream cost an idle keep-alive connection (its request sent, its
response never read, so the connection had to close) and the next client paid a new connect.

Upstream TLS (the cluster's transport_socket, or the transport_socket_matches entry of the
host): the pool's connections handshake in OpenSSL (worker/tls/client.py) within the
connect timeout, then run on Baton's record layer (worker/tls/transport.py) as HTTPS does
downstream; pooled connections belong to their generation and are never moved, the layer
is simply the one TLS client Baton has. Pools are keyed by everything that makes two TLS
connections different — the TLS client (its certificate, CA, SANs), the SNI (auto_sni takes
it from each request's Host) and the SAN to verify (auto_san_validation) — so a TLS and a
plain connection, or two different TLS contexts, never share a pool. The ALPN offered is
the context's alpn_protocols, else "h2" for an HTTP/2 pool and "http/1.1" for an HTTP/1.1
one (Envoy's fallback).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque

from .alpn_override import AlpnOverride

from ...codecs.events import GoAway, ProtocolError
from ...codecs.http1_client import Http1ClientCodec
from ...tls.accept import HandshakeRefused
from ..lb import Host

log = logging.getLogger("baton.http.pool")

# Envoy's transport failure reasons, as they appear in its local reply bodies.
CONNECT_FAILURE = "remote connection failure"
CONNECT_TIMEOUT = "connection timeout"
OVERFLOW = "overflow"
CONNECTION_TERMINATION = "connection termination"
MAX_POOLS = 4096            # pools kept without a connection before unused ones are dropped


def connect_error_text(exc: OSError) -> str:
    """A failed connect's reason as Envoy 1.40 words it ("Connection refused", its
    strerror), not the errno's number."""
    return os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream host; streams are UpstreamRequests by stream id."""

    __slots__ = ("pool", "transport", "codec", "streams", "closed", "paused", "requests",
                 "idle_handle", "idle_deadline", "local", "unsent")

    def __init__(self, pool: "HostPool"):
        self.pool = pool
        self.transport = None
        # auto_config: the codec waits for the handshake's ALPN (connection_made).
        self.codec = None if pool.auto else _codec(pool.http2, pool.http2_options)
        self.streams: dict = {}
        self.closed = False
        self.paused = False
        self.requests = 0
        self.idle_handle = None
        self.idle_deadline = 0.0
        self.local = None
        self.unsent = False         # HTTP/1.1: a request started in a batch, not yet written

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.codec is None:
            self.pool.learn_protocol(transport)
            self.codec = _codec(self.pool.http2, self.pool.http2_options)
        transport.set_write_buffer_limits(high=self.pool.cluster.buffer_limit)
        try:
            self.local = transport.get_extra_info("sockname")
        except Exception:       # a socket without a name is no reason to fail the request
            self.local = None
        self.codec.initiate()
        self.flush()

    def data_received(self, data: bytes) -> None:
        streams = self.streams
        # (Classes by identity, not isinstance, and stream_id read directly: the events have no
        # subclasses, and every one but GoAway has a stream_id; two C calls an event less.)
        for event in self.codec.receive(data):
            if event.__class__ is GoAway:
                if event.code:
                    self.abort(CONNECTION_TERMINATION)
                    break
                # Graceful: the streams it accepted finish here; no new one starts (the codec
                # reports no room), and the connection closes when the last one ends.
                if not streams:
                    self.abort(None)
                    break
                continue
            stream = streams.get(event.stream_id)
            if stream is not None:
                stream.on_upstream_event(event)
            elif event.__class__ is ProtocolError:
                self.abort(CONNECTION_TERMINATION)
                break
        self.pool.manager.flush_dirty()
        if self.closed:
            return
        self.flush()
        if self.codec.closed:
            self.abort(CONNECTION_TERMINATION)

    def eof_received(self):
        for event in self.codec.receive(b""):
            stream = self.streams.get(getattr(event, "stream_id", 0))
            if stream is not None:
                stream.on_upstream_event(event)
        self.pool.manager.flush_dirty()
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pool.connection_gone(self)
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.on_upstream_reset(CONNECTION_TERMINATION)
        self.pool.manager.flush_dirty()

    def pause_writing(self) -> None:
        self.paused = True
        for stream in list(self.streams.values()):
            stream.on_upstream_paused(True)

    def resume_writing(self) -> None:
        self.paused = False
        for stream in list(self.streams.values()):
            stream.on_upstream_paused(False)

    # -- used by the router -----------------------------------------------------------------

    def flush(self) -> None:
        if self.unsent:
            return                  # written when the batch ends (send_unsent)
        data = self.codec.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    def start_stream(self, ureq, request, end_stream: bool) -> int:
        stream_id = self.codec.send_head(request, end_stream)
        self.streams[stream_id] = ureq
        self.requests += 1
        manager = self.pool.manager
        if manager.batching and not self.pool.http2:
            self.unsent = True
            manager.unsent.append(self)
        return stream_id

    def send_unsent(self) -> None:
        """The batch ended: write the request held back (if nobody took it back)."""
        if self.unsent:
            self.unsent = False
            self.flush()

    def take_back(self, stream_id: int) -> bool:
        """The router gives up an HTTP/1.1 request: when none of it was written yet, the
        connection is as it was before (a fresh codec) and goes back to the pool; else False
        (the upstream has it: the connection must close)."""
        if not self.unsent or self.closed:
            return False
        self.unsent = False
        self.streams.pop(stream_id, None)
        self.codec = _codec(False, {})
        self.requests -= 1
        self.pool.release(self)
        return True

    def stream_done(self, stream_id: int, clean: bool) -> None:
        """The router is finished with a stream. `clean`: request and response both complete,
        so an HTTP/1.1 connection may carry the next request."""
        self.streams.pop(stream_id, None)
        if not clean and not self.pool.http2:
            self.abort(None)
            return
        self.pool.release(self)

    def pause_reading(self, on: bool) -> None:
        if self.transport is None or self.closed:
            return
        if on:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def abort(self, reason) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.pool.connection_gone(self)
            streams, self.streams = self.streams, {}
            for stream in streams.values():
                stream.on_upstream_reset(reason or CONNECTION_TERMINATION)

    @property
    def reusable(self) -> bool:
        pool = self.pool
        if self.closed or self.codec.available_streams() <= 0:
            return False
        if pool.max_requests and self.requests >= pool.max_requests:
            return False        # common_http_protocol_options.max_requests_per_connection
        return not pool.http2 or len(self.streams) < pool.max_streams

    def reusable_http1(self, max_requests: int) -> bool:
        """`reusable` for an HTTP/1.1 pool (`max_requests`: its max_requests_per_connection),
        as a plain method: the property is a call from C on CPython 3.11, and the pool asks
        twice a request (take_idle, release)."""
        return not self.closed and self.codec.available_streams() > 0 and \
            (not max_requests or self.requests < max_requests)


def _codec(http2: bool, http2_options: dict):
    if http2:
        from ...codecs.http2 import Http2ClientCodec
        return Http2ClientCodec(**http2_options)
    return Http1ClientCodec()


class HostPool:
    """Connections to one host of one cluster. `http2` "auto" (auto_config): HTTP/1.1 until
    a handshake's ALPN says h2, as Envoy's mixed pool; the host's answer then holds for the
    pool (a server does not change its protocols between connections)."""

    __slots__ = ("manager", "cluster", "host", "loop", "idle", "busy", "connecting", "waiters",
                 "http2", "http2_options", "mark", "stat", "max_requests", "max_streams",
                 "idle_timeout", "tls", "sni", "expected_san", "auto", "deferred", "alpn",
                 "destination", "common")

    def __init__(self, manager, cluster, host, http2=None, tls=None, sni=None, expected_san=None,
                 alpn=None):
        self.manager = manager
        self.cluster = cluster
        self.host = host
        self.loop = manager.loop
        self.idle: list[UpstreamConnection] = []
        self.busy: set[UpstreamConnection] = set()
        self.connecting = 0         # connects started or reserved in a batch (`deferred`)
        self.deferred = 0           # connects counted in this batch, started when it ends
        self.waiters: deque = deque()
        self.auto = http2 == "auto"
        self.http2 = False if self.auto else cluster.http2 is True if http2 is None else http2
        options = cluster.http2_options or {}
        self.max_streams = options.get("max_concurrent_streams") or 2147483647
        self._read_common(cluster.common_http)
        # Cluster option names (Envoy's) -> the client codec's arguments.
        self.http2_options = {arg: options[key] for key, arg in (
            ("initial_stream_window_size", "initial_stream_window"),
            ("initial_connection_window_size", "initial_connection_window"))
            if options.get(key) is not None}
        self.mark = manager.mark
        self.stat = manager.stats.counters
        self.tls = tls                      # the TlsClient of this pool's connections, or None
        self.sni = sni
        self.expected_san = expected_san    # auto_san_validation's host
        self.alpn = alpn                    # a filter's ALPN list (istio.alpn), or None
        self.destination = None             # an internal host's: what downstreams share

    def request(self, waiter) -> None:
        """Give `waiter` a connection now, or when one is free, or fail it (overflow)."""
        conn = self.take_idle()
        if conn is not None:
            waiter.on_pool_ready(conn)
            return
        if self.http2:
            for conn in self.busy:
                if conn.reusable:
                    waiter.on_pool_ready(conn)
                    return
        cluster = self.cluster
        if cluster.active < cluster.max_connections and self.connecting <= len(self.waiters):
            self._connect()
        elif cluster.rq_pending >= cluster.max_pending_requests:
            self.stat[cluster.stat["upstream_rq_pending_overflow"]] += 1
            waiter.on_pool_failure(OVERFLOW, "UO")
            return
        elif cluster.active >= cluster.max_connections:
            self.stat[cluster.stat["upstream_cx_overflow"]] += 1
        cluster.rq_pending += 1
        self.stat[cluster.stat["upstream_rq_pending_total"]] += 1
        self.manager.stats.gauges[cluster.stat["upstream_rq_pending_active"]] += 1
        self.waiters.append(waiter)

    def take_idle(self):
        """The newest idle connection that can carry a request now, marked busy (HTTP/1.1),
        or None. Idle connections that cannot are dropped from the list on the way."""
        idle = self.idle
        if self.common is not self.cluster.common_http:     # CDS updated the cluster
            self._read_common(self.cluster.common_http)
        if not self.http2:
            max_requests = self.max_requests
            while idle:
                conn = idle.pop()
                if conn.reusable_http1(max_requests):
                    self.busy.add(conn)
                    return conn
            return None
        while idle:
            conn = idle.pop()
            if conn.reusable:
                idle.append(conn)
                return conn
        return None

    def cancel(self, waiter) -> None:
        """A waiting request went away (client reset, timeout)."""
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return
        self._unpend()

    def _unpend(self) -> None:
        self.cluster.rq_pending -= 1
        self.manager.stats.gauges[self.cluster.stat["upstream_rq_pending_active"]] -= 1

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed:
            return
        if self.common is not self.cluster.common_http:     # CDS updated the cluster
            self._read_common(self.cluster.common_http)
        if self.http2:
            while self.waiters and conn.reusable:
                self._unpend()
                self.waiters.popleft().on_pool_ready(conn)
            if not conn.streams and not conn.reusable:
                conn.abort(None)            # max_requests_per_connection reached
                return
            if not conn.streams:
                if conn not in self.idle:
                    self.busy.discard(conn)
                    self.idle.append(conn)
                self._arm_idle(conn)
            return
        # reusable_http1 (not closed: asked above) and _arm_idle inline: two calls a response
        # less on every HTTP/1.1 exchange.
        max_requests = self.max_requests
        if conn.codec.available_streams() <= 0 or (max_requests and
                                                    conn.requests >= max_requests):
            conn.abort(None)
            return
        if self.waiters:
            self._unpend()
            self.waiters.popleft().on_pool_ready(conn)
            return
        self.busy.discard(conn)
        self.idle.append(conn)
        timeout = self.idle_timeout
        if timeout:
            conn.idle_deadline = self.loop.time() + timeout
            if conn.idle_handle is None:
                conn.idle_handle = self.loop.call_at(conn.idle_deadline, self._idle_check, conn)

    def _read_common(self, common: dict) -> None:
        """The cluster's common HTTP options this pool applies, kept here (read per request);
        `common` is the dict they came from: a CDS update replaces the cluster's in place."""
        self.common = common
        self.max_requests = common.get("max_requests_per_connection") or 0
        self.idle_timeout = common.get("idle_timeout", 3600.0)

    def _arm_idle(self, conn) -> None:
        """Lazy, as the client side's: releasing moves the deadline, the timer re-arms
        (release() has read the cluster's options again if CDS replaced them)."""
        timeout = self.idle_timeout
        if timeout:
            conn.idle_deadline = self.loop.time() + timeout
            if conn.idle_handle is None:
                conn.idle_handle = self.loop.call_at(conn.idle_deadline, self._idle_check, conn)

    def _idle_check(self, conn) -> None:
        conn.idle_handle = None
        if conn.closed or conn not in self.idle or conn.streams:
            return              # busy: release() re-arms when its last stream ends
        if self.loop.time() >= conn.idle_deadline:
            conn.abort(None)
        else:
            conn.idle_handle = self.loop.call_at(conn.idle_deadline, self._idle_check, conn)

    def connection_gone(self, conn: UpstreamConnection) -> None:
        if conn in self.busy:
            self.busy.discard(conn)
        elif conn in self.idle:
            self.idle.remove(conn)
        else:
            return
        if conn.idle_handle is not None:
            conn.idle_handle.cancel()
            conn.idle_handle = None
        self._closed_one()
        if self.waiters and self.cluster.active < self.cluster.max_connections:
            self._connect()

    def _closed_one(self) -> None:
        cluster = self.cluster
        cluster.active -= 1
        self.host.active -= 1
        self.manager.stats.gauges[cluster.stat["upstream_cx_active"]] -= 1
        self.stat[cluster.stat["upstream_cx_destroy"]] += 1

    def _connect(self) -> None:
        """Count a new connection (circuit breakers, stats) and open it; in a batch, opened
        when the batch ends, and only if a waiter still needs it (start_deferred)."""
        self._reserve()
        manager = self.manager
        if manager.batching:
            if not self.deferred:
                manager.deferred.append(self)
            self.deferred += 1
            return
        self.loop.create_task(self._open())

    def start_deferred(self) -> None:
        """The batch ended: open the connects it counted that waiters still need (one per
        waiter beyond the connects already under way); the others are uncounted."""
        count, self.deferred = self.deferred, 0
        under_way = self.connecting - count
        start = min(count, max(len(self.waiters) - under_way, 0))
        for _ in range(start):
            self.loop.create_task(self._open())
        for _ in range(count - start):
            self._unreserve()

    def _reserve(self) -> None:
        cluster = self.cluster
        cluster.active += 1
        self.host.active += 1
        self.host.total += 1
        self.connecting += 1
        self.stat[cluster.stat["upstream_cx_total"]] += 1
        if not self.auto:                   # auto: counted once ALPN says (learn_protocol)
            self.stat[cluster.stat["upstream_cx_http2_total" if self.http2 else
                                   "upstream_cx_http1_total"]] += 1
        self.manager.stats.gauges[cluster.stat["upstream_cx_active"]] += 1

    def _unreserve(self) -> None:
        """Undo _reserve for a connect never started: as if it had not been counted."""
        cluster = self.cluster
        cluster.active -= 1
        self.host.active -= 1
        self.host.total -= 1
        self.connecting -= 1
        self.stat[cluster.stat["upstream_cx_total"]] -= 1
        if not self.auto:
            self.stat[cluster.stat["upstream_cx_http2_total" if self.http2 else
                                   "upstream_cx_http1_total"]] -= 1
        self.manager.stats.gauges[cluster.stat["upstream_cx_active"]] -= 1

    async def _open(self) -> None:
        cluster, host, loop = self.cluster, self.host, self.loop
        conn = UpstreamConnection(self)
        internal = host.address.startswith("internal:")     # a listener of this worker
        family = socket.AF_UNIX if internal else \
            socket.AF_INET6 if ":" in host.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        failure = None
        layer = None
        try:
            sock.setblocking(False)
            if not internal:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.mark:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
            try:
                # upstream_bind_config is an IP source address: an internal host's socket
                # pair has none to bind (and a Unix socket would raise TypeError on it).
                bind_error = 0 if internal else cluster.bind_source(sock)
                if bind_error:
                    raise OSError(bind_error, os.strerror(bind_error))
                # Envoy's connect timeout covers the TLS handshake too.
                layer = await asyncio.wait_for(self._dial(sock), cluster.connect_timeout)
            except asyncio.TimeoutError:
                failure = (CONNECT_TIMEOUT, "upstream_cx_connect_timeout")
            except HandshakeRefused as exc:
                # Envoy 1.40's local reply for a refused upstream handshake names no
                # transport failure reason (checked: a SAN mismatch).
                self.tls.count(exc.counter)
                _send_best_effort(sock, exc.data)
                log.debug("TLS to %s refused: %s", host.stat_id, exc)
                failure = (CONNECT_FAILURE, "upstream_cx_connect_fail")
            except OSError as exc:
                failure = (f"{CONNECT_FAILURE}, transport failure reason: delayed connect "
                           f"error: {connect_error_text(exc)}", "upstream_cx_connect_fail")
            if failure is None and layer is not None:
                from ...tls.transport import Session, TlsTransport
                TlsTransport(loop, sock, layer, bytearray(), Session(layer)).start(conn)
            elif failure is None:
                await loop.create_connection(lambda: conn, sock=sock)
        except OSError as exc:
            failure = (f"{CONNECT_FAILURE}, transport failure reason: {exc.strerror}",
                       "upstream_cx_connect_fail")
        finally:
            self.connecting -= 1
        if failure is not None:
            sock.close()
            host.connect_fail += 1
            self.stat[cluster.stat[failure[1]]] += 1
            self._closed_one()
            # One failed connect fails one waiter (Envoy: the pending request gets the
            # connection failure; the others keep waiting for the next attempt).
            if self.waiters:
                self._unpend()
                self.waiters.popleft().on_pool_failure(failure[0], "UF")
            if self.waiters and cluster.active < cluster.max_connections:
                self._connect()
            return
        if conn.closed:
            return
        self.busy.add(conn)
        if self.waiters:
            self._unpend()
            self.waiters.popleft().on_pool_ready(conn)
            if self.http2:
                while self.waiters and conn.reusable:
                    self._unpend()
                    self.waiters.popleft().on_pool_ready(conn)
        else:
            self.release(conn)

    def learn_protocol(self, transport) -> None:
        """auto_config: the protocol a new connection speaks, from its ALPN (HTTP/1.1 for a
        plain host or no ALPN, as Envoy falls back)."""
        session = transport.get_extra_info("ssl_object")
        alpn = session.selected_alpn_protocol() if session is not None else None
        self.http2 = alpn == "h2"
        self.stat[self.cluster.stat["upstream_cx_http2_total" if self.http2 else
                                    "upstream_cx_http1_total"]] += 1

    async def _dial(self, sock):
        """Connect, then, for a TLS pool, run the client handshake over the socket: the
        record layer that carries the session on (None for plain TCP)."""
        loop, host = self.loop, self.host
        if host.address.startswith("internal:"):
            from ..internal_listener import connect_into
            connect_into(sock, loop, self.cluster, host, self.destination)
        else:
            await loop.sock_connect(sock, (host.address, host.port))
        if self.tls is None:
            return None
        from ...tls.client import ClientConnect
        alpn = ("h2", "http/1.1") if self.auto else ("h2",) if self.http2 else ("http/1.1",)
        client = self.tls if self.alpn is None else AlpnOverride(self.tls, self.alpn)
        connect = ClientConnect(client, self.sni, alpn, self.expected_san)
        out = connect.start()
        while True:
            if out:
                await loop.sock_sendall(sock, out)
            if connect.layer is not None:
                return connect.layer
            data = await loop.sock_recv(sock, 65536)
            out = connect.receive(data, not data)

    def close(self) -> None:
        for conn in list(self.idle) + list(self.busy):
            conn.abort(None)


def _send_best_effort(sock, data: bytes) -> None:
    if data:
        try:
            sock.send(data)
        except OSError:
            pass


def _auto_sni_host(cluster, request) -> str | None:
    """auto_sni / auto_san_validation: the request's Host (or override_auto_sni_header)
    without its port; None for an IP literal, which is no server name."""
    value = request.get((cluster.auto_sni or {}).get("header") or ":authority") if request else None
    if not value:
        return None
    if value.startswith("["):                       # [v6]:port
        host = value[1:value.find("]")] if "]" in value else value
    else:
        host = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    host = host.lower()
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return None
    except OSError:
        return host


class PoolManager:
    """Every HostPool of a worker, created on first use, and the circuit breakers' counts."""

    __slots__ = ("loop", "stats", "mark", "pools", "original_hosts", "dirty", "batching",
                 "unsent", "deferred", "plain")

    def __init__(self, loop, stats, mark: int = 0):
        self.loop = loop
        self.stats = stats
        self.mark = mark
        self.pools: dict = {}
        self.original_hosts: dict = {}  # ORIGINAL_DST: (cluster, host, port) -> Host
        self.dirty: list = []       # client connections with bytes queued by upstream events
        self.batching = 0           # depth of batch(): writes and connects wait for its end
        self.unsent: list = []      # upstream connections whose new request waits (batch)
        self.deferred: list = []    # pools with connects counted in the batch, not started
        self.plain: dict = {}       # Host -> its plain HTTP/1.1 pool (http1_pool), a shortcut

    def begin_batch(self) -> None:
        """An HTTP/2 client connection dispatches one read's events (see the module's
        Batches): until end_batch(), new upstream requests and connects wait."""
        self.batching += 1

    def end_batch(self) -> None:
        self.batching -= 1
        if self.batching:
            return
        unsent, deferred = self.unsent, self.deferred
        while unsent:
            unsent.pop().send_unsent()
        while deferred:
            deferred.pop().start_deferred()

    def flush_dirty(self) -> None:
        dirty = self.dirty
        while dirty:
            conn = dirty.pop()
            if conn.dirty:          # not flushed since (a finished response flushes at once)
                conn.flush()

    def original_host(self, cluster, destination):
        """The Host for an ORIGINAL_DST destination, one per address (bounded: destinations
        come from the traffic)."""
        key = (cluster.name, *destination[:2])
        host = self.original_hosts.get(key)
        if host is None:
            if len(self.original_hosts) > 4096:
                self.original_hosts.clear()
            host = self.original_hosts[key] = Host(destination[0], destination[1])
        return host

    def get(self, cluster, host, downstream_http2=False, request=None, alpn=None,
            shared=None) -> HostPool:
        """The pool for `host`; with use_downstream_protocol_config (cluster.http2 ==
        "downstream") one pool per protocol, picked by the downstream request's; with
        upstream TLS one per TLS client, SNI, SAN to verify (`request`: auto_sni's) and
        ALPN list a filter asks for (`alpn`, alpn_override). An internal host's pool is
        picked by what the request's downstream shares (`shared`: (destination,), found by
        internal_listener.SharedStatePool, which stands in for the pool until then)."""
        if shared is None and cluster.internal_hosts and host.address.startswith("internal:"):
            from ..internal_listener import SharedStatePool
            return SharedStatePool(self, cluster, host, downstream_http2, request, alpn)
        http2 = cluster.http2
        if http2 == "downstream":
            http2 = downstream_http2
        tls = sni = san = None              # http2 "auto": one pool, ALPN decides
        if cluster.transports is not None or cluster.tls_matches:
            tls = cluster.transport_for(host, count=False)
            if tls is not None:
                sni = tls.sni
                auto = cluster.auto_sni
                if auto is not None:
                    name = _auto_sni_host(cluster, request)
                    if name is not None:
                        sni = name if auto["sni"] else sni
                        san = name if auto["san"] else None
        alpn = alpn if tls is not None else None
        key = (cluster.name, host.address, host.port, http2, id(tls), sni, san, alpn)
        if shared is not None:
            key += shared
        pool = self.pools.get(key)
        if pool is None or pool.cluster is not cluster or pool.tls is not tls:
            if pool is None and len(self.pools) >= MAX_POOLS:
                self._forget_unused_pools()     # auto_sni: one pool per Host seen
            pool = self.pools[key] = HostPool(self, cluster, host, http2, tls, sni, san, alpn)
            if shared is not None:
                pool.destination = shared[0]
        return pool

    def http1_pool(self, cluster, host, request) -> HostPool:
        """get(cluster, host, False, request), for the express lane (an HTTP/1.1 cluster).
        A plain one's pool (no TLS, no internal hosts) is found by the Host alone, not by
        get()'s key of eight built per request. Each answer is checked against what get()
        would see now (the cluster object, its transports, which an update may set in place),
        so a shortcut never outlives its pool."""
        pool = self.plain.get(host)
        if pool is not None and pool.cluster is cluster and cluster.transports is None and \
                not cluster.tls_matches and not cluster.internal_hosts:
            return pool
        pool = self.get(cluster, host, False, request)
        # Only a HostPool of its own: an internal host's is a SharedStatePool
        # (internal_listener.py), which picks its pool per downstream connection.
        if type(pool) is HostPool and pool.tls is None and not cluster.tls_matches \
                and not cluster.internal_hosts and pool.http2 is False and not pool.auto:
            if len(self.plain) >= MAX_POOLS:
                self.plain.clear()
            self.plain[host] = pool
        return pool

    def _forget_unused_pools(self) -> None:
        self.plain.clear()          # (its pools may go)
        for key, pool in list(self.pools.items()):
            if not (pool.idle or pool.busy or pool.connecting or pool.waiters):
                del self.pools[key]

    def drop_idle(self) -> None:
        """Close upstream connections that carry no request (drain). An HTTP/2 connection
        sits in `idle` while it has room for streams, so one with streams stays."""
        for pool in self.pools.values():
            for conn in list(pool.idle):
                if not conn.streams:
                    conn.abort(None)
