"""The HTTP/1.1 express lane: the common exchange served by one small object instead of the
Stream, StreamInfo, Router and UpstreamRequest (stream.py, router.py) that a request otherwise
builds and calls through.

Why: a plain keep-alive request spent ~105 us in Baton, spread thinly over those layers
(bench/RESULTS.md), most of it in objects and calls that only matter when something goes
wrong: retries, filters, timeouts, resets. The common exchange is a bodiless request, one
plain cluster route, an idle keep-alive upstream connection and an upstream that answers.

Rules of this file:
- The lane is taken only when its outcome cannot differ from the full path's, and `take` is
  the one place that decides, per exchange. It reads two verdicts made once per config
  (`config_allows`, kept on HttpConfig.express) and once per route table (`admit_routes`,
  kept on each Route.express_cluster), both by `blockers` from what the config classes
  declare: every field of HttpConfig, RouteTable, its virtual hosts and Route is declared
  either safe for the lane (EXPRESS_SAFE: the lane honours it, or it does not change a
  request) or blocking (EXPRESS_BLOCKING: name -> whether a value keeps the lane closed), and
  tests/unit/test_http_express.py fails on a field declared neither way. Per exchange, before
  anything is changed, `take` then knows everything that decides it: the route, the cluster
  and its request circuit breaker, the host and an idle upstream connection. When one is
  missing the full path runs from the start; if the balancer was asked already, the full
  path gets that host (Router's `picked`), so the balancer is asked once, as always.
- The header edits are the full path's own functions (stream.mutate_request_headers,
  stream.own_response_headers, router.count_status), not copies.
- Only the happy ending is handled here. Anything else (a timeout, a reset or protocol error
  on either side, the stream idle sweep) first hands the exchange back to the full path's
  objects, each class rebuilding the state it would have had by then (`from_express` on
  Stream, StreamInfo, Router and UpstreamRequest), and hands them the event: failures are
  handled once, in stream.py and router.py.
- An Exchange stands in for three objects, so it answers their callers: the connection
  manager (as a Stream: id, done, reset, ...), the connection's deadline sweep (as the
  Router: router, deadline, on_timeout) and the upstream connection (as the UpstreamRequest:
  on_upstream_event, on_upstream_reset, on_upstream_paused).
"""

from __future__ import annotations

import time

from ...codecs.events import Body, ResponseHead
from .router import Router, UpstreamRequest, count_status, expected_timeout_header
from .stream import Stream, mutate_request_headers, own_response_headers

_monotonic = time.monotonic     # the real clock, as the Router's route timeout uses


# -- who takes the lane ------------------------------------------------------------------

def blockers(obj, declared=None) -> list:
    """The fields of a config object (HttpConfig, RouteTable, a virtual host, Route) that keep
    the lane closed as they are set, by its class's EXPRESS_BLOCKING (or `declared`). Run once
    per config and per route table, never per request."""
    if declared is None:
        declared = obj.EXPRESS_BLOCKING
    return [name for name, blocks in declared.items() if blocks(getattr(obj, name))]


def config_allows(hcm) -> bool:
    """Whether this connection manager's config leaves room for the lane at all."""
    from .config import HttpConfig      # config.py imports this module
    return not blockers(hcm, HttpConfig.EXPRESS_BLOCKING)


def admit_routes(table) -> None:
    """Mark each route of a new route table with the cluster the lane may serve it from
    (Route.express_cluster), or None: the full path serves it."""
    closed = bool(blockers(table))
    for vhost in table.virtual_hosts:
        vhost_closed = closed or bool(blockers(vhost))
        for route in vhost.routes:
            route.express_cluster = None if vhost_closed or blockers(route) else route._cluster


def take(conn, event):
    """The decision, per exchange: (Exchange, None) when the lane serves this request
    (started by `.start()`), else (None, picked): the full path serves it, `picked` being
    None or the (host,) the balancer already gave. Only called when the config allows the
    lane (HttpConnection.express: HTTP/1.1 and config_allows)."""
    request = event.request
    if (not event.end_stream or event.upgrade or event.expect_continue
            or request.version != "1.1" or not request.authority):
        return None, None
    routes = conn.hcm.routes
    if routes is None:          # an RDS update took the table away under this connection
        return None, None
    route = routes.route(request)
    if route is None or route.express_cluster is None:
        return None, None
    cluster = conn.worker.clusters.get(route.express_cluster)
    if (cluster is None or cluster.http2 or cluster.type == "ORIGINAL_DST"
            or cluster.rq_active >= cluster.max_requests):
        return None, None
    host = cluster.pick((), None)
    if host is None:
        return None, (None,)
    pool = conn.worker.http_pools.http1_pool(cluster, host, request)   # auto_sni: its Host
    upstream = pool.take_idle()
    if upstream is None:
        return None, (host,)
    return Exchange(conn, event, route, cluster, host, pool, upstream), None


class Exchange:
    """One request/response exchange on the express lane (see the rules above)."""

    __slots__ = ("conn", "id", "event", "route", "cluster", "host", "pool", "upstream",
                 "upstream_id", "start_time", "start_monotonic", "sent_at", "timeout",
                 "started_at", "deadline", "request_id", "response", "first_byte",
                 "bytes_sent", "response_started", "response_complete", "done", "paused",
                 "holding", "idle_timeout", "last_activity", "handed_to")
    info = None             # no StreamInfo on the lane (downstream_end reads it as a Stream's)

    # Read by the connection manager as on a Stream.
    request_complete = True
    window_held = False
    upgrade = None

    def __init__(self, conn, event, route, cluster, host, pool, upstream):
        self.conn = conn
        self.id = event.stream_id
        self.event = event
        self.route = route
        self.cluster = cluster
        self.host = host
        self.pool = pool
        self.upstream = upstream
        self.upstream_id = 0
        self.start_time = time.time()
        self.start_monotonic = self.last_activity = conn.loop.time()
        self.sent_at = 0.0
        self.timeout = route.timeout
        self.started_at = 0.0
        self.deadline = 0.0
        self.request_id = None
        self.response = None
        self.first_byte = None
        self.bytes_sent = 0
        self.response_started = False
        self.response_complete = False
        self.done = False
        self.paused = False         # we paused the client's reading: the upstream is full
        self.holding = False        # we paused the upstream's reading: the client is full
        self.idle_timeout = route.idle_timeout if route.idle_timeout_set else \
            conn.hcm.stream_idle_timeout
        self.handed_to = None       # the Stream that took over, once handed back

    @property
    def router(self):
        """The connection's deadline sweep looks for `stream.router.deadline`."""
        return self

    # -- request --------------------------------------------------------------------------

    def start(self) -> None:
        """What Stream.start, Router.start and UpstreamRequest.on_pool_ready do for it."""
        conn = self.conn
        hcm = conn.hcm
        stats = conn.worker.stats
        counters = stats.counters
        counters[hcm.stat_rq_total] += 1
        counters[hcm.stat_rq_http1_total] += 1
        stats.gauges[hcm.stat_rq_active] += 1
        request = self.event.request
        self.request_id, _ = mutate_request_headers(hcm, request, conn.peer, conn.tls)
        timeout = self.timeout
        if timeout and not hcm.suppress_envoy_headers:
            # x-envoy-expected-rq-timeout-ms came in stripped (an external request), so the
            # router's set() is an add here.
            request.headers.items.append(expected_timeout_header(timeout))
        cluster = self.cluster
        counters[cluster.stat["upstream_rq_total"]] += 1
        cluster.rq_active += 1
        upstream = self.upstream
        self.sent_at = conn.loop.time()
        self.upstream_id = upstream.start_stream(self, request, True)
        upstream.flush()
        if upstream.paused:
            self.on_upstream_paused(True)
        if conn.write_paused:
            self.downstream_paused(True)
        if timeout:
            self.started_at = _monotonic()
            self.deadline = self.started_at + timeout
            conn.watch_deadline(self.deadline)

    # -- as the UpstreamRequest ----------------------------------------------------------

    def on_upstream_event(self, event) -> None:
        if self.handed_to is not None:
            self._upstream_handed_back("on_upstream_event", event)
            return
        if self.done:
            return
        kind = event.__class__
        if kind is Body and self.response_started:
            self._body(event.data, event.end_stream)
        elif kind is ResponseHead and event.response.status >= 200 and \
                event.response.status != 101:
            self._head(event.response, event.end_stream)
        elif kind is ResponseHead and event.response.status < 200:
            return          # Envoy answers Expect: 100-continue itself; drop upstream 1xx
        else:
            self._upstream_handed_back("on_upstream_event", event)

    def on_upstream_reset(self, reason: str) -> None:
        if not self.done or self.handed_to is not None:
            self._upstream_handed_back("on_upstream_reset", reason)

    def on_upstream_paused(self, paused: bool) -> None:
        if self.handed_to is not None:
            self._upstream_handed_back("on_upstream_paused", paused)
        elif paused != self.paused:
            self.paused = paused
            self.conn.pause_reading(paused)

    # -- response -------------------------------------------------------------------------

    def _head(self, response, end_stream: bool) -> None:
        """Router.on_response_head and Stream._send_head."""
        conn = self.conn
        hcm = conn.hcm
        cluster = self.cluster
        status = response.status
        if cluster.outlier is not None:
            cluster.outlier.report(self.host, status)
        self.response_started = True
        count_status(conn.worker.stats.counters, cluster, status)
        self.first_byte = conn.loop.time()
        if end_stream:
            self.deadline = 0.0
        service_time = None if hcm.suppress_envoy_headers else (
            "x-envoy-upstream-service-time", str(int((self.first_byte - self.sent_at) * 1000)))
        own_response_headers(hcm, response.headers, service_time)
        self.response = response
        codec = conn.codec
        limit = hcm.max_requests_per_connection
        if (limit and conn.requests >= limit) or conn.draining:
            codec.goaway()      # this response says connection: close
        codec.send_head(self.id, response, end_stream)
        if end_stream:
            self.response_complete = True
            self._end()         # flushes (HttpConnection.stream_done)
            self._release()
        else:
            conn.mark_dirty()

    def _body(self, data: bytes, end_stream: bool) -> None:
        """UpstreamRequest.on_upstream_event's body step and Stream.upstream_response_body."""
        conn = self.conn
        if end_stream:
            self.deadline = 0.0
        self.last_activity = conn.loop.time()
        self.bytes_sent += len(data)
        conn.codec.send_body(self.id, data, end_stream)
        if end_stream:
            self.response_complete = True
            self._end()         # flushes (HttpConnection.stream_done)
            self._release()
        else:
            conn.mark_dirty()

    def _end(self) -> None:
        """Stream._end: the client has its response."""
        self.done = True
        if self.paused:
            self.paused = False
            self.conn.pause_reading(False)
        conn = self.conn
        hcm = conn.hcm
        stats = conn.worker.stats
        name = hcm.stat_rq_class.get(self.response.status // 100)
        if name is not None:
            stats.counters[name] += 1
        stats.gauges[hcm.stat_rq_active] -= 1
        conn.stream_done(self)

    def _release(self) -> None:
        """UpstreamRequest.finish: the upstream connection goes back to its pool."""
        self.cluster.rq_active -= 1
        if self.holding:
            self.holding = False
            self.upstream.pause_reading(False)
        self.upstream.stream_done(self.upstream_id, True)

    # -- as a Stream, for the connection manager ------------------------------------------

    def downstream_paused(self, on: bool) -> None:
        """The client cannot take more: hold the upstream (UpstreamRequest.hold_upstream)."""
        if self.handed_to is not None:
            self.handed_to.downstream_paused(on)
        elif on != self.holding and not self.done:
            self.holding = on
            self.upstream.pause_reading(on)

    def reset(self, reason: str, notify: bool = True) -> None:
        if not self.done or self.handed_to is not None:
            self._hand_back().reset(reason, notify)

    def reset_by_overload(self) -> None:
        if not self.done or self.handed_to is not None:
            self._hand_back().reset_by_overload()

    def timed_out(self, status: int, body: str, details: str, stat: str) -> None:
        self._hand_back().timed_out(status, body, details, stat)

    def on_timeout(self) -> None:
        """The route timeout passed (as Router.on_timeout)."""
        self.deadline = 0.0
        if not self.done or self.handed_to is not None:
            self._hand_back().router.on_timeout()

    def local_reply(self, status: int, body, details: str, extra=(), content_type=True) -> None:
        self._hand_back().local_reply(status, body, details, extra, content_type)

    @property
    def close_connection(self) -> bool:
        return False if self.handed_to is None else self.handed_to.close_connection

    @close_connection.setter
    def close_connection(self, on: bool) -> None:
        self._hand_back().close_connection = on

    def on_request_body(self, data: bytes, end_stream: bool) -> None:
        self._hand_back().on_request_body(data, end_stream)

    def on_request_trailers(self, headers) -> None:
        self._hand_back().on_request_trailers(headers)

    # -- handing back to the full path ----------------------------------------------------

    def _hand_back(self) -> Stream:
        """The Stream, StreamInfo, Router and UpstreamRequest this exchange stands for, each
        rebuilt by its own class (`from_express`) in the state the full path would have them
        now; they replace the exchange wherever it is known."""
        stream = self.handed_to
        if stream is not None:
            return stream
        stream = self.handed_to = Stream.from_express(self)
        conn = self.conn
        if conn.streams.get(self.id) is self:
            conn.streams[self.id] = stream
        if conn.active is self:
            conn.active = stream
        upstream = self.upstream
        if stream.router.upstream is not None and \
                upstream.streams.get(self.upstream_id) is self:
            upstream.streams[self.upstream_id] = stream.router.upstream
        return stream

    def _upstream_handed_back(self, callback: str, argument) -> None:
        """An upstream connection's callback, for the UpstreamRequest that took over; there is
        none once the client has its whole response (nothing is left to do then)."""
        upstream_request = self._hand_back().router.upstream
        if upstream_request is not None:
            getattr(upstream_request, callback)(argument)
