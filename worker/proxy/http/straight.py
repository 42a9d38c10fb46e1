"""The Stream's straight step: a request that needs nothing of the router but a host and a
connection is sent by the Stream itself, and its response taken by the Stream itself,
without the Router and UpstreamRequest (router.py) the full path otherwise makes.

Why: those two objects and their steps (Router.start, _attempt, on_pool_ready,
on_response_head, UpstreamRequest.finish) are most of what the full path costs beyond the
express lane (express.py), and every one of them tests again what most requests settle at
once: no retry policy that may fire, no hash key, no stream duration, no body to hold, an
HTTP/1.1 cluster of plain hosts with an idle keep-alive connection. HTTP/2 clients and
filter chains cannot use the lane; they take this step (Stream._route decides, per request,
with the route, the cluster and the timeouts in hand).

Rules of this file:
- The straight step is taken only when its outcome cannot differ from the Router's: the
  request came whole with its head, no retry policy, no hash policy, no max stream
  duration, no attempt counts, no CONNECT termination, no body hooks, an HTTP/1.1 cluster
  without internal hosts or ORIGINAL_DST, and an idle upstream connection. Without a host or
  an idle connection the Router runs, given the host already picked (`Stream.picked`): the
  balancer is asked once, as always.
- While straight, the stream is its own router (`stream.router is stream`: the connection's
  deadline sweep reads `router.deadline` and calls `router.on_timeout()`, as for an express
  exchange) and the upstream connection's stream (`on_upstream_event`, `on_upstream_reset`,
  `on_upstream_paused`).
- Only the happy ending is handled here: a response head and its body. Anything else (a
  timeout, a reset or protocol error on either side, trailers, a local reply, a reset of the
  stream) first makes the Router and UpstreamRequest the full path would have by then
  (`Router.from_express`, which reads the same facts from the stream as from an exchange)
  and hands them the event: failures are handled once, in router.py.
- The header edits, the filters' response hooks and the stream's end are the Stream's own
  (_send_head, upstream_response_body, _end): only the router's part is done here.
"""

from __future__ import annotations

import time

from ...codecs.events import Body, ResponseHead
from . import stream as _stream     # (stream.py imports this module: read at call time)
from .router import Router, count_status

_monotonic = time.monotonic     # the real clock, as the Router's route timeout uses

# The Stream's fields for the straight step (in its __slots__), set only when it is taken;
# named as on an express exchange, for Router.from_express.
FIELDS = ("cluster", "host", "pool", "upstream", "upstream_id", "sent_at", "timeout",
          "started_at", "deadline", "paused", "holding", "headers_received")


def needs_router(stream, route, cluster, retry, hash_key) -> bool:
    """Whether this request needs the Router (see the rules above); per request, after
    routing, with what decides it in hand. `route` None: Stream.start's plain step, whose
    config and route verdicts settled all but the request's end, the host and the cluster
    (no retry or hash policy, upgrade, filter, stream duration)."""
    if (not stream.end_at_head or stream.picked is not None or cluster.http2 is not False
            or cluster.internal_hosts or cluster.type == "ORIGINAL_DST"):
        return True
    if route is None:
        return False
    return (retry is not None or stream.body_chain is not None or stream.upgrade
            or stream.dynamic_metadata or stream.hcm.max_stream_duration
            # The route's own conditions, none of which a route the lane may serve has
            # (Route.express_cluster: no hash policy, stream duration, CONNECT or counts).
            or route.express_cluster is None and (
                hash_key is not None or route.max_stream_duration is not None
                or route.connect_terminate or route.attempt_count_to_upstream
                or route.attempt_count_in_response))


class StraightSteps:
    """The Stream's straight request and response steps (a base of Stream: stream.py holds
    the fields, named as on an express exchange so that Router.from_express reads either)."""

    __slots__ = ()

    def send_straight(self, cluster, timeout) -> bool:
        """Router.start, _attempt and UpstreamRequest.on_pool_ready for a request that needs
        none of them (needs_router): True when sent, else False with `picked` set for the
        Router (no host: (None,), its 503; the circuit breaker or no idle connection: the
        host, which the Router takes as its first pick)."""
        host = cluster.pick((), None)
        if host is None or cluster.rq_active >= cluster.max_requests:
            self.picked = (host,)
            return False
        request = self.request
        pool = self.worker.http_pools.http1_pool(cluster, host, request)   # auto_sni: its Host
        upstream = pool.take_idle()
        if upstream is None:
            self.picked = (host,)
            return False
        self.router = self
        self.cluster = cluster
        self.host = host
        self.pool = pool
        self.upstream = upstream
        self.timeout = timeout
        self.started_at = self.deadline = 0.0
        self.paused = self.holding = self.headers_received = False
        self.upstream_host = host.stat_id
        self.upstream_local = upstream.local
        self.attempts += 1
        self.stats[cluster.stat["upstream_rq_total"]] += 1
        cluster.rq_active += 1
        self.sent_at = self.loop.time()
        self.upstream_id = upstream.start_stream(self, request, True)
        upstream.flush()
        if upstream.paused:
            self.pause_downstream(True)
            self.paused = True
        conn = self.conn
        if conn.write_paused or self.window_held:
            self.downstream_paused(True)    # the client was already full when we started
        if timeout:
            self.started_at = started = _monotonic()
            self.deadline = started + timeout
            conn.watch_deadline(self.deadline)
        return True

    # -- as the UpstreamRequest ----------------------------------------------------------

    def on_upstream_event(self, event) -> None:
        if self.upstream is None:
            self._handed_on("on_upstream_event", event)
            return
        kind = event.__class__
        if kind is Body and self.headers_received:
            # UpstreamRequest's body step (HTTP/1.1 upstream: no window to give back).
            end_stream = event.end_stream
            if end_stream:
                self.deadline = 0.0
            self.upstream_response_body(event.data, end_stream)
            if end_stream:
                self._release()
        elif kind is ResponseHead and event.response.status >= 200:
            self._head(event.response, event.end_stream)
        elif kind is ResponseHead and event.response.status != 101:
            return          # Envoy answers Expect: 100-continue itself; drop upstream 1xx
        else:
            self.hand_to_router()
            self._handed_on("on_upstream_event", event)

    def on_upstream_reset(self, reason: str, refused: bool = False) -> None:
        if self.upstream is not None:
            self.hand_to_router()
        attempt = self.router.upstream if self.router is not None else None
        if attempt is not None:
            attempt.on_upstream_reset(reason, refused)

    def on_upstream_paused(self, paused: bool) -> None:
        """The upstream socket's send buffer is full (or drained): hold the client."""
        if self.upstream is None:
            self._handed_on("on_upstream_paused", paused)
        elif paused != self.paused:
            self.paused = paused
            self.pause_downstream(paused)

    # -- as the Router --------------------------------------------------------------------

    def on_timeout(self) -> None:
        """The route timeout passed (the connection's deadline sweep)."""
        self.hand_to_router().on_timeout()

    def _head(self, response, end_stream: bool) -> None:
        """Router.on_response_head without a retry policy or attempt count."""
        status = response.status
        cluster = self.cluster
        outlier = cluster.outlier
        if outlier is not None:
            outlier.report(self.host, status)
        self.headers_received = True
        count_status(self.stats, cluster, status)
        first_byte = self.first_upstream_byte = self.loop.time()
        if end_stream:
            self.deadline = 0.0
        route = self.route
        plan = route.response_steps
        if plan is None:                    # a weighted split's clusters differ
            plan = route.response_plan(self.cluster_name)
        if plan:
            if plan.pairs is not None:      # fixed pairs appended: the plan's, no call
                response.headers.items.extend(plan.pairs)
            else:
                self._apply_mutations(response.headers, plan)
        hcm = self.hcm
        service_time = None if hcm.suppress_envoy_headers else (
            "x-envoy-upstream-service-time", str(int((first_byte - self.sent_at) * 1000)))
        if not hcm.plain_streams:
            self._send_head(response, end_stream, service_time)
            if end_stream:
                self._release()
            return
        # Stream._send_head for the config's verdict (HttpConfig.plain_streams: no via, no
        # request id to echo, no filter to pass), inline: the head as the lane writes it.
        _stream.own_response_headers(hcm, response.headers, service_time)
        self.response_started = True
        self.response = response
        self.response_code = status
        if not self.response_code_details:
            self.response_code_details = "via_upstream"
        conn = self.conn
        codec = conn.codec
        limit = hcm.max_requests_per_connection
        if self.close_connection or (limit and conn.requests >= limit) or conn.draining or (
                self.worker.overload.disable_keepalive and self.worker.overload.closes_connection(self)):
            codec.goaway()      # HTTP/1.1: this response says connection: close; HTTP/2: GOAWAY
        codec.send_head(self.id, response, end_stream)
        conn.mark_dirty()
        if end_stream:
            self.response_complete = True
            self._end()
            self._release()

    def _release(self) -> None:
        """UpstreamRequest.finish: the response came whole; the connection goes back to its
        pool (unless a local reply or reset handed the attempt to a Router meanwhile)."""
        upstream = self.upstream
        if upstream is None:
            return
        self.upstream = None
        if self.router is self:
            self.router = None          # (the stream's end drops it too)
        self.cluster.rq_active -= 1
        if self.holding:
            self.holding = False
            upstream.pause_reading(False)
        if self.paused:
            self.paused = False
            self.pause_downstream(False)
        upstream.stream_done(self.upstream_id, True)

    # -- handing over to the Router -------------------------------------------------------

    def router_now(self) -> Router:
        """The Router and UpstreamRequest the full path would have now, made from the
        stream's facts (Router.from_express), not yet in the stream's place."""
        router = Router.from_express(self, self)
        router.response_started = self.headers_received     # (the stream's flag waits for
        if router.upstream is not None:                     # the filters' response hooks)
            router.upstream.headers_received = self.headers_received
        return router

    def hand_to_router(self) -> Router:
        """router_now(), in the stream's place: as its router and as the upstream
        connection's stream."""
        router = self.router = self.router_now()
        attempt = router.upstream
        upstream, self.upstream = self.upstream, None
        if attempt is not None:
            if upstream.streams.get(self.upstream_id) is self:
                upstream.streams[self.upstream_id] = attempt
        return router

    def _handed_on(self, callback: str, argument) -> None:
        """An upstream callback after the hand-over, for the UpstreamRequest that took the
        attempt; none once the response came whole (nothing is left to do then)."""
        router = self.router
        attempt = router.upstream if router is not None else None
        if attempt is not None:
            getattr(attempt, callback)(argument)
