"""A client's RPC connection (Dubbo or Bolt): frames in, routed, multiplexed upstream.

Every request frame is handled on its own as it arrives (a client pipelines freely):
heartbeats are answered here; a request is routed (routing.py) to a cluster, a host is
picked by the cluster's balancer, and the frame goes to that host's shared connection
(upstream.py) under an id of that connection's; its response comes back rewritten to the
client's id. Responses reach the client in the order the upstreams answer, which is what
both protocols expect (they match by id, not by order).

A frame that cannot be read closes this connection only (counted in
request_decoding_error), as Envoy does; a request that cannot be served gets a local reply
in the protocol's own format (protocols.py).

At a reload the connection moves at once, its requests in flight answered from here through
the new worker (move.py); this class is both halves: `moved_to` set, the old worker's, serving
what was sent before the move; `forwarded` set, the new worker's, writing those answers too.
"""

from __future__ import annotations

import asyncio
import logging
import os

from ...connection import Connection, Export, Lifecycle, Move
from ..lb import xxhash64
from ..http.inflight import ForwardedTransport, detach
from . import access_log, move
from . import protocols as P
from .chain import FLAGS
from .upstream import Exchange, pool_for

log = logging.getLogger("baton.rpc")


def start_rpc(worker, listener, chain, client, peer, original, initial=None,
              conn_id: int | None = None) -> None:
    """Serve `client` on an RPC chain (worker/main.py's start_connection). `conn_id` given:
    an inspected connection, already counted on its listener; `initial` then is (what the
    inspectors read, eof): an end the socket still reports to the transport, which closes."""
    if isinstance(initial, tuple):
        initial = initial[0]
    if conn_id is None:
        worker.stats.counters[listener.stat_cx_total] += 1
        worker.stats.gauges[listener.stat_cx_active] += 1
        conn_id = worker.next_connection_id()
    conn = RpcConnection(worker, listener, chain, peer, conn_id, initial)
    conn.original = original
    worker.connections[conn.id] = conn
    run(worker, conn, client)


def run(worker, conn, client) -> None:
    """Serve `conn` on the socket `client` (accepted here, or adopted: move.py)."""
    async def accept():
        try:
            await worker.loop.connect_accepted_socket(lambda: conn, client)
        except OSError as exc:
            log.debug("rpc connection %d: %s", conn.id, exc)
            client.close()
            conn.connection_lost(exc)

    worker.loop.create_task(accept())


class RpcConnection(Connection, asyncio.Protocol):
    kind = "rpc"

    def __init__(self, worker, listener, chain, peer, conn_id: int, initial=None):
        self.worker = worker
        self.listener = listener
        self.chain = chain
        self.rpc = chain.rpc
        self.protocol = chain.rpc.protocol
        self.logs = chain.rpc.logs(worker)  # generic_proxy's access_log (access_log.py)
        self.peer = peer
        self.id = conn_id
        self.original = None
        self.state = Lifecycle.OPEN
        self.transport = None
        self.decoder = self.protocol.decoder()
        self.initial = initial
        self.exchanges: set[Exchange] = set()
        self.draining = False
        self.closed = False
        self.closing = False                # we closed it (cx_destroy_local_* vs _remote_*)
        # Moving (move.py). Old side: the client's transport while the move is answered, the
        # ForwardedTransport that replaced it, and whether requests were in flight then.
        self.moving_fd = -1
        self.moving_client = None
        self.moved_to: ForwardedTransport | None = None
        self.moved_with_requests = False
        # New side: the answers the old worker still sends; the move waiting for us.
        self.forwarded: move.ForwardedReplies | None = None
        self.on_idle = None
        self.hold_timer = None
        # Why reading is paused: "move" (held for or crossing a move) and "client" (it reads
        # slower than its answers come). Reading resumes when neither holds any more, so a
        # client catching up cannot let requests in while the connection is being moved.
        self.read_paused: set[str] = set()

    def _pause_reading(self, reason: str) -> None:
        if not self.read_paused:
            self.transport.pause_reading()
        self.read_paused.add(reason)

    def _resume_reading(self, reason: str) -> None:
        if reason in self.read_paused:
            self.read_paused.discard(reason)
            if not self.read_paused and not self.closed:
                self.transport.resume_reading()

    # -- the Connection contract: moving (move.py) -------------------------------------------

    def readiness(self) -> Move:
        if self.closed or self.moved_to is not None or \
                move.RECORD not in self.worker.handoff_accepts:
            return Move.NEVER           # drains here, as before RPC connections moved
        return Move.NOW if self._movable() else Move.WHEN_IDLE

    def _movable(self) -> bool:
        """Nothing unsent to the client (its transport's buffer cannot be exported) and no
        earlier move's answers still coming through us."""
        return (self.transport is not None and not self.closed and self.forwarded is None
                and self.transport.get_write_buffer_size() == 0)

    # How often a held connection looks again: a transport says when its buffer drains only
    # past the high-water mark, so the last few bytes are watched for.
    HOLD_CHECK = 0.02

    def hold_when_idle(self, on_idle) -> None:
        """Serve on (requests still go upstream from here) until movable, then pause."""
        self.on_idle = on_idle
        self._check_hold()

    def _check_hold(self) -> None:
        self.hold_timer = None
        if self.on_idle is None or self.closed:
            return
        if not self._movable():
            self.hold_timer = self.worker.loop.call_later(self.HOLD_CHECK, self._check_hold)
            return
        on_idle, self.on_idle = self.on_idle, None
        self._pause_reading("move")
        on_idle(self)

    def cancel_hold(self) -> None:
        self.on_idle = None
        if self.hold_timer is not None:
            self.hold_timer.cancel()
            self.hold_timer = None
        if self.moving_fd < 0 and self.moved_to is None:
            self._resume_reading("move")    # the hold fired, then the move was cancelled

    def export(self, client_only: bool = False) -> Export:
        self._pause_reading("move")
        self.moving_fd = os.dup(self.transport.get_extra_info("socket").fileno())
        fields = {"id": self.id, "listener": self.listener.name, "chain": self.chain.index,
                  "peer": list(self.peer) if self.peer else None,
                  "original": list(self.original) if self.original else None,
                  "protocol": self.protocol.name, "input": bytes(self.decoder.buffer),
                  "inflight": len(self.exchanges)}
        # From here what the requests in flight answer goes to the new worker (held until it
        # answers the move).
        self.moved_with_requests = bool(self.exchanges)
        self.moving_client = self.transport
        self.transport = self.moved_to = ForwardedTransport(self)
        return Export(move.RECORD, fields, [self.moving_fd])

    def migrated(self, channel=None, new_id: int = 0) -> None:
        fd, self.moving_fd = self.moving_fd, -1
        os.close(fd)
        detach(self.moving_client)
        self.moving_client = None
        self.decoder = None                 # its bytes went with the record
        self.moved_to.attach(channel, new_id)
        if not self.exchanges:
            self._moved_done()

    def resume(self) -> None:
        fd, self.moving_fd = self.moving_fd, -1
        if fd >= 0:
            os.close(fd)
        forwarded, self.moved_to = self.moved_to, None
        if forwarded is not None:       # None: export failed before it took the transport (EMFILE)
            self.transport, self.moving_client = self.moving_client, None
            forwarded.give_back(self.transport)
        if not self.closed:
            self._resume_reading("move")
            self._maybe_drained()

    def _moved_done(self) -> None:
        """Old side: the last request served here is answered. The connection ends once what
        it forwarded has left: a worker exits when its last connection ends, and what its
        channel still held would be lost."""
        if self.moved_with_requests:
            self.moved_to.response_done()
        self.worker.loop.create_task(self._close_when_sent(self.moved_to.channel))

    async def _close_when_sent(self, channel) -> None:
        await channel.drained(timeout=move.FLUSH_TIMEOUT)
        self._closed(local=True)

    def forwarded_done(self) -> None:
        """New side: the old worker owes nothing more."""
        self.forwarded = None
        self._maybe_drained()

    def on_forwarded(self, msg: dict) -> bool:
        if self.forwarded is not None:                      # new side
            self.forwarded.on_message(msg)
            return True
        if self.moved_to is None or self.closed:
            return False
        if msg["type"] in ("reset", "close"):               # old side: the client went away
            self._closed(local=False)
        return True

    def uses_channel(self, channel) -> bool:
        if self.moved_to is not None:
            return self.moved_to.channel is channel and not self.closed
        return self.forwarded is not None and self.forwarded.channel is channel

    def channel_lost(self, channel) -> None:
        if self.moved_to is not None and self.moved_to.channel is channel:
            self._closed(local=False)
        elif self.forwarded is not None and self.forwarded.channel is channel:
            self.forwarded.channel_lost()

    # -- the Connection contract: running ------------------------------------------------------

    def drain(self) -> None:
        if self.moved_to is not None:
            return                          # moved: ends once its last answer is forwarded
        self.draining = True
        self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self.draining and not self.exchanges and self.forwarded is None:
            self.close()

    def abort(self) -> None:
        self.close(abort=True)

    def close(self, abort: bool = False) -> None:
        """Close (after what is written; at once with `abort`)."""
        self.closing = True
        if self.transport is not None and not self.closed:
            (self.transport.abort if abort else self.transport.close)()
        elif self.transport is None:
            self._closed(local=True)

    # -- asyncio ------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.forwarded is not None:      # adopted: answers may have come before the socket
            self.forwarded.transport_ready()
        if self.initial:
            initial, self.initial = self.initial, None
            self.data_received(initial)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        stat, counters = self.rpc.stat, self.worker.stats.counters
        try:
            frames = self.decoder.feed(data)
        except self.protocol.error as exc:
            self._bad_frame(str(exc))
            return
        for frame in frames:
            if self.closed:
                return
            if not self.protocol.is_request(frame):
                continue                    # a response from a client: nothing asked for it
            if self.protocol.is_event(frame):
                counters[stat["request_event"]] += 1
                self.transport.write(self.protocol.heartbeat_response(frame))
                continue
            try:
                self._request(frame)
            except P.DecodeError as exc:
                self._bad_frame(str(exc))
                return

    def eof_received(self):
        return False

    def pause_writing(self) -> None:
        # The client reads slower than its answers come: take no new requests from it until
        # it catches up, so what Baton holds for it stays bounded by what is in flight.
        self._pause_reading("client")

    def resume_writing(self) -> None:
        self._resume_reading("client")

    def connection_lost(self, exc) -> None:
        self._closed(local=self.closing)

    # -- requests -----------------------------------------------------------------------------

    def _bad_frame(self, reason: str) -> None:
        log.info("rpc connection %d from %s: %s; closing it", self.id, self.peer, reason)
        self.worker.stats.counters[self.rpc.stat["request_decoding_error"]] += 1
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def _request(self, frame) -> None:
        stat, counters = self.rpc.stat, self.worker.stats.counters
        protocol = self.protocol
        routes = self.rpc.routes
        request, client_timeout = protocol.request(frame, routes.needs_arguments)
        oneway = protocol.oneway(frame)
        counters[stat["request"]] += 1
        counters[stat["request_decoding_success"]] += 1
        counters[stat["request_oneway" if oneway else "request_twoway"]] += 1
        info = access_log.request_info(self, request, self.worker.loop.time()) \
            if self.logs else None
        if self.rpc.bucket is not None and not self.rpc.bucket.consume():
            counters[stat["request_rate_limited"]] += 1
            self._local_reply(frame, oneway, P.RATE_LIMITED, "", info)
            return
        decision = routes.route(request)
        if decision is None:
            self._local_reply(frame, oneway, P.NO_ROUTE, request.service, info)
            return
        if info is not None:
            info.upstream_cluster = decision.cluster
        cluster = self.worker.clusters.get(decision.cluster)
        if cluster is None:
            self._local_reply(frame, oneway, P.UNKNOWN_CLUSTER, decision.cluster, info)
            return
        hash_key = _hash_key(cluster, decision, request)
        host = cluster.pick((), hash_key) if cluster.balancer is not None else None
        if host is None:
            counters[cluster.stat["upstream_cx_none_healthy"]] += 1
            self._local_reply(frame, oneway, P.NO_HEALTHY_UPSTREAM, decision.cluster, info)
            return
        if info is not None:
            info.upstream_host = host.stat_id
        if cluster.rq_active >= cluster.max_requests:
            counters[cluster.stat["upstream_rq_pending_overflow"]] += 1
            self._local_reply(frame, oneway, P.OVERFLOW, decision.cluster, info)
            return
        exchange = Exchange(self, frame, cluster)
        exchange.host = host
        exchange.tried = (host,)
        exchange.hash_key = hash_key
        exchange.retries = 0 if oneway else decision.retries
        cluster.rq_active += 1
        counters[cluster.stat["upstream_rq_total"]] += 1
        self.worker.stats.gauges[cluster.stat["upstream_rq_active"]] += 1
        if not oneway:
            exchange.info = info            # logged when answered
            self.exchanges.add(exchange)
            self.worker.stats.gauges[stat["request_active"]] += 1
            # The route's timeout (Bolt config), else the client's own deadline.
            timeout = decision.timeout or client_timeout
            if timeout:
                exchange.timer = self.worker.loop.call_later(timeout, self._timed_out,
                                                             exchange, timeout)
        exchange.pool = pool_for(self.worker, protocol, cluster, host)
        exchange.pool.submit(exchange, oneway)
        if oneway:
            if info is not None:            # sent (or queued for the connect): its only line
                access_log.write(self.logs, info, self.worker.loop.time())
            if not exchange.done:
                exchange.finish()           # nothing to await

    def _local_reply(self, frame, oneway: bool, failure: str, detail: str,
                     info=None) -> None:
        if oneway:
            if info is not None:            # nothing is written, but the request is logged
                access_log.write(self.logs, info, self.worker.loop.time(),
                                 details=access_log.DETAILS[failure], flag=FLAGS[failure])
            return                          # nobody waits for an answer (Envoy sends none)
        counters = self.worker.stats.counters
        # Envoy writes every local reply of dubbo_proxy as an exception (AppException).
        counters[self.rpc.stat["local_response_business_exception"]] += 1
        self.transport.write(self.protocol.local_reply(frame, failure, detail))
        if self.rpc.generic:
            status = self.protocol.local_status(failure)
            self.rpc.answered(counters, status, False, failure)
            if info is not None:
                access_log.write(self.logs, info, self.worker.loop.time(), status,
                                 access_log.DETAILS[failure], FLAGS[failure])

    # -- called by upstream.py ----------------------------------------------------------------

    def upstream_response(self, exchange: Exchange, frame) -> None:
        stat, counters = self.rpc.stat, self.worker.stats.counters
        cluster, host = exchange.cluster, exchange.host
        outcome = self.protocol.response_outcome(frame)
        counters[stat["response"]] += 1
        counters[stat["response_decoding_success"]] += 1
        counters[stat["response_" + outcome]] += 1
        counters[cluster.stat["upstream_rq_completed"]] += 1
        if cluster.outlier is not None:
            cluster.outlier.report(host, 500 if outcome == "error" else 200)
        if exchange.done:
            return
        # Written before finish(): a draining connection closes once its last answer is out.
        if not self.closed:
            self.transport.write(self.protocol.with_request_id(frame.raw, exchange.frame.request_id))
            if self.rpc.generic:
                self.rpc.answered(counters, frame.status, outcome == "success")
            if exchange.info is not None:
                access_log.write(self.logs, exchange.info, self.worker.loop.time(), frame.status,
                                 "via_upstream",
                                 properties=self.protocol.response_properties(frame))
        exchange.finish()

    def upstream_failed(self, exchange: Exchange, failure: str, host_name: str) -> None:
        if exchange.done:
            return
        cluster = exchange.cluster
        if failure == P.RESET:
            self.worker.stats.counters[cluster.stat["upstream_rq_rx_reset"]] += 1
            if cluster.outlier is not None:
                cluster.outlier.report(exchange.host, "reset")
        if failure in P.RETRIABLE and exchange.retries and not self.closed and self._retry(exchange):
            return
        if not self.closed:
            self._local_reply(exchange.frame, self.protocol.oneway(exchange.frame), failure,
                              host_name, exchange.info)
        exchange.finish()

    def _retry(self, exchange: Exchange) -> bool:
        """Send the request again, to a host it has not been to while there is one (the
        cluster's balancer, its hash key kept); False: no host left."""
        cluster = exchange.cluster
        tried = exchange.tried if len(exchange.tried) < len(cluster.hosts) else ()
        host = cluster.pick(tried, exchange.hash_key) if cluster.balancer is not None else None
        if host is None:
            return False
        self.worker.stats.counters[cluster.stat["upstream_rq_retry"]] += 1
        exchange.retries -= 1
        exchange.host = host
        exchange.tried += (host,)
        if exchange.info is not None:
            exchange.info.upstream_host = host.stat_id
        exchange.upstream = exchange.upstream_id = None
        exchange.pool = pool_for(self.worker, self.protocol, cluster, host)
        exchange.pool.submit(exchange, False)
        return True

    def _timed_out(self, exchange: Exchange, timeout: float) -> None:
        exchange.timer = None
        if exchange.done:
            return
        cluster = exchange.cluster
        counters = self.worker.stats.counters
        counters[cluster.stat["upstream_rq_timeout"]] += 1
        counters[self.rpc.stat["request_timeout"]] += 1
        if cluster.outlier is not None:
            cluster.outlier.report(exchange.host, "timeout")
        exchange.pool.cancel(exchange)
        if not self.closed:
            self._local_reply(exchange.frame, False, P.TIMEOUT, f"{timeout:g}s", exchange.info)
        exchange.finish()

    def exchange_done(self, exchange: Exchange) -> None:
        if exchange in self.exchanges:
            self.exchanges.discard(exchange)
            self.worker.stats.gauges[self.rpc.stat["request_active"]] -= 1
            if self.exchanges or self.closed:
                return
            if self.moved_to is not None:
                if self.moving_client is None:      # adopted (not while the move is answered)
                    self._moved_done()
            else:
                self._maybe_drained()

    # -- closing ------------------------------------------------------------------------------

    def _closed(self, local: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.state = Lifecycle.CLOSED
        self.cancel_hold()
        if self.forwarded is not None:      # new side: the old worker's requests are moot
            self.forwarded.client_gone()
            self.forwarded = None
        if self.exchanges:
            self.worker.stats.counters[self.rpc.stat[
                "cx_destroy_local_with_active_rq" if local else
                "cx_destroy_remote_with_active_rq"]] += 1
            now = self.worker.loop.time()
            for exchange in list(self.exchanges):
                exchange.pool.cancel(exchange)
                if exchange.info is not None:   # never answered: the client went away
                    access_log.write(self.logs, exchange.info, now, flag="DC")
                exchange.finish()
        self.worker.stats.gauges[self.listener.stat_cx_active] -= 1
        self.worker.connection_closed(self)


def _hash_key(cluster, decision, request) -> int | None:
    """What a RING_HASH or MAGLEV cluster places the request by: the attachment (Dubbo) or
    header (Bolt) the route names, else the service ("interface:version:group"), so the calls
    of one service, or of one key, go to one host while the hosts stay the same."""
    if cluster.lb_policy not in ("RING_HASH", "MAGLEV"):
        return None
    if decision.hash_header is not None:
        key = request.headers.get(decision.hash_header)
        if key is None:
            return None                     # no key: the balancer picks at random
    else:
        key = f"{request.service}:{request.version or ''}:{request.group or ''}"
    return xxhash64(key.encode())
