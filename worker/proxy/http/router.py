"""The router: `envoy.filters.http.router`, the last filter of every HTTP connection manager.

Per request it picks the cluster (the route's action) and a host (the cluster's balancer, with
the route's hash key), takes a connection from the host's pool (pool.py), sends the request,
and hands the response to the stream. It owns what Envoy's router owns:

- the route timeout (started once the whole request was received; 504 "upstream request
  timeout", flag UT) and the per-try timeout (flag UT too, and a retry if allowed);
- retries (retry_on 5xx, gateway-error, reset, reset-before-request, connect-failure,
  retriable-4xx, refused-stream, retriable-status-codes, retriable-headers,
  envoy-ratelimited, and the gRPC ones on a trailers-only grpc-status: cancelled,
  deadline-exceeded, internal, resource-exhausted, unavailable), with Envoy's fully jittered
  exponential back-off, the previous_hosts host predicate and the cluster's max_retries
  circuit breaker. A response can only be retried before any of it went downstream; so can
  a request whose body is still held in full (the body is kept, up to the buffer limit,
  until the response starts); x-envoy-attempt-count when the virtual host asks for it;
- the gRPC timeout (max_grpc_timeout, or max_stream_duration's grpc_timeout_header_max: a
  gRPC request's grpc-timeout becomes its route timeout) and the stream's max duration
  (the route's max_stream_duration, else the connection manager's: "downstream duration
  timeout", flag DT);
- the local replies of an upstream failure, with Envoy's bodies:
  "upstream connect error or disconnect/reset before headers. reset reason: ...",
  "no healthy upstream", "upstream request timeout".
"""

from __future__ import annotations

import time

from ...codecs.events import Body, ProtocolError, ResponseHead, StreamReset, Trailers
from .grpc_reply import DEADLINE_EXCEEDED, is_grpc
from .alpn_override import alpn_override
from .held_chunks import with_chunk
from .pool import CONNECTION_TERMINATION
from .retry_state import RetryState

REFUSED_STREAM = 0x7                    # the HTTP/2 error code of RST_STREAM
ATTEMPT_COUNT = "x-envoy-attempt-count"
_monotonic = time.monotonic   # the real clock: libuv's is cached per loop iteration
_STATUS_STATS: dict = {}      # (cluster, status) -> its two stat names: a memo, not state
REMOTE_RESET = "remote reset"
RESET_BEFORE_HEADERS = "upstream connect error or disconnect/reset before headers. reset reason: "
RETRIED_BEFORE_HEADERS = ("upstream connect error or disconnect/reset before headers. "
                          "retried and the latest reset reason: ")


_EXPECTED_TIMEOUT: dict = {}    # seconds -> its x-envoy-expected-rq-timeout-ms pair: a memo


def expected_timeout_header(seconds: float) -> tuple:
    """("x-envoy-expected-rq-timeout-ms", whole milliseconds) for a route or per-try timeout,
    built once per value (a route's timeout is the same for all its requests); bounded."""
    header = _EXPECTED_TIMEOUT.get(seconds)
    if header is None:
        header = ("x-envoy-expected-rq-timeout-ms", str(int(seconds * 1000)))
        if len(_EXPECTED_TIMEOUT) < 256:
            _EXPECTED_TIMEOUT[seconds] = header
    return header


def count_status(stats, cluster, status: int) -> None:
    """upstream_rq_<class>xx and upstream_rq_<code>, names built once per cluster and code."""
    key = (cluster.name, status)
    names = _STATUS_STATS.get(key)
    if names is None:
        prefix = f"cluster.{cluster.name}.upstream_rq_"
        names = _STATUS_STATS[key] = (f"{prefix}{status // 100}xx", f"{prefix}{status}")
    stats[names[0]] += 1
    stats[names[1]] += 1


class UpstreamRequest:
    """One attempt of one request on one upstream connection."""

    __slots__ = ("router", "pool", "host", "conn", "stream_id", "headers_received",
                 "done", "try_timer", "sent_at", "request_complete", "response_complete",
                 "paused", "holding")

    def __init__(self, router, pool, host):
        self.router = router
        self.pool = pool
        self.host = host
        self.conn = None
        self.stream_id = 0
        self.headers_received = False
        self.done = False
        self.try_timer = None
        self.sent_at = 0.0
        self.request_complete = False
        self.response_complete = False
        self.paused = False
        self.holding = False        # we paused the upstream connection's reading for our client

    @classmethod
    def from_express(cls, router, exchange) -> "UpstreamRequest":
        """The attempt the full path would have made for an express exchange (express.py),
        as far as it got: the request sent whole, the response begun or not."""
        ureq = cls(router, exchange.pool, exchange.host)
        ureq.conn = exchange.upstream
        ureq.stream_id = exchange.upstream_id
        ureq.sent_at = exchange.sent_at
        ureq.request_complete = True
        ureq.paused = exchange.paused
        ureq.holding = exchange.holding
        ureq.headers_received = exchange.response_started
        ureq.response_complete = exchange.response_complete
        ureq.done = exchange.done
        return ureq

    # -- pool callbacks ---------------------------------------------------------------------

    def on_pool_ready(self, conn) -> None:
        if self.done:
            self.pool.release(conn)
            return
        router = self.router
        stream = router.stream
        self.conn = conn
        info = stream
        info.upstream_local = conn.local
        self.sent_at = router.loop.time()
        if len(router.tried) > 1:
            router.expected_timeout_header()
        if router.route.attempt_count_to_upstream:
            stream.request.headers.set(ATTEMPT_COUNT, str(len(router.tried)))
        trailers = stream.trailers if stream.request_complete else None
        end = stream.request_complete and not router.body and trailers is None
        self.stream_id = conn.start_stream(self, stream.request, end)
        if router.body:
            for i, chunk in enumerate(router.body):
                last = stream.request_complete and i == len(router.body) - 1 and trailers is None
                conn.codec.send_body(self.stream_id, chunk, last)
        if stream.trailers is not None and stream.request_complete:
            conn.codec.send_trailers(self.stream_id, stream.trailers)
        self.request_complete = stream.request_complete
        conn.flush()
        if router.body and not router.retains_body:
            router.body = ()
        per_try = router.per_try_timeout
        if per_try and router.stream.request_complete:
            self.try_timer = router.loop.call_later(per_try, self.on_per_try_timeout)
        if conn.paused:
            stream.pause_downstream(True)
            self.paused = True
        if stream.conn.write_paused or stream.window_held:
            self.hold_upstream(True)    # the client was already full when we started

    def on_pool_failure(self, reason: str, flag: str) -> None:
        if not self.done:
            self._mark_done()
            self.router.attempt_failed(self, reason, flag, connect_failure=flag == "UF")

    # -- request body after the head ------------------------------------------------------------

    def send_body(self, data: bytes, end_stream: bool) -> None:
        conn = self.conn
        conn.codec.send_body(self.stream_id, data, end_stream)
        conn.flush()
        if end_stream:
            self.request_complete = True
            per_try = self.router.per_try_timeout
            if per_try and self.try_timer is None:
                self.try_timer = self.router.loop.call_later(per_try, self.on_per_try_timeout)

    def send_trailers(self, trailers) -> None:
        self.conn.codec.send_trailers(self.stream_id, trailers)
        self.conn.flush()
        self.request_complete = True

    # -- connection callbacks -----------------------------------------------------------------

    def on_upstream_event(self, event) -> None:
        if self.done:
            return
        router = self.router
        kind = type(event)
        if kind is Body:
            data, end_stream = event.data, event.end_stream
            if end_stream:
                self.response_complete = True
            if router.response_started:
                # The router's response body step, inline: every response passes here.
                if end_stream:
                    # _cancel_timers, inline
                    router.deadline = router.route_deadline = router.duration_deadline = 0.0
                    if router.backoff_timer is not None:
                        router._cancel_timers()
                router.stream.upstream_response_body(data, end_stream)
                if end_stream:
                    router.finished = True      # _complete, inline: every response ends here
                    router.upstream = None
                    self.finish()
            if data:
                self.conn.codec.consumed(self.stream_id, len(data))
        elif kind is ResponseHead:
            status = event.response.status
            if status < 200 and status != 101:
                return          # Envoy answers Expect: 100-continue itself; drop upstream 1xx
            self.headers_received = True
            if self.try_timer is not None:
                self._cancel_timer()    # the per-try timeout ends when the response begins
            if event.end_stream:
                self.response_complete = True
            router.on_response_head(self, event.response, event.end_stream)
        elif kind is Trailers:
            self.response_complete = True
            router.on_response_trailers(self, event.headers)
        elif kind is StreamReset:
            self.on_upstream_reset(REMOTE_RESET, refused=event.code == REFUSED_STREAM)
        elif kind is ProtocolError:
            # A close before the response ended is Envoy's "connection termination"; bytes
            # that do not parse are a protocol error.
            closed = event.reason == "upstream closed the connection"
            self.on_upstream_reset(CONNECTION_TERMINATION if closed else "protocol error")

    def on_upstream_reset(self, reason: str, refused: bool = False) -> None:
        if self.done:
            return
        self._mark_done()
        self._cancel_timer()
        self.router.attempt_failed(self, reason, "UC", reset=True, refused=refused)

    def on_upstream_paused(self, paused: bool) -> None:
        """The upstream socket's send buffer is full (or drained): hold the client's body."""
        if paused != self.paused:
            self.paused = paused
            self.router.stream.pause_downstream(paused)

    def on_per_try_timeout(self) -> None:
        self.try_timer = None
        if self.done:
            return
        router = self.router
        router.stats[router.cluster.stat["upstream_rq_per_try_timeout"]] += 1
        self.abandon()
        router.attempt_failed(self, "per_try_timeout", "UT", timeout=True)

    # -- ending -------------------------------------------------------------------------------

    def hold_upstream(self, on: bool) -> None:
        """Pause (or resume) reading the upstream connection because our client is full;
        remembered, so that ending this attempt always gives the pause back."""
        conn = self.conn
        if conn is None or on == self.holding:
            return
        self.holding = on
        conn.pause_reading(on)

    def _mark_done(self) -> None:
        if not self.done:
            self.done = True
            self.router.cluster.rq_active -= 1
            if self.holding:
                self.hold_upstream(False)

    def _cancel_timer(self) -> None:
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None

    def finish(self) -> None:
        """The response went downstream in full: give the connection back."""
        if self.done:
            return
        self.done = True                # _mark_done, inline
        self.router.cluster.rq_active -= 1
        if self.holding:
            self.hold_upstream(False)
        if self.try_timer is not None:
            self._cancel_timer()
        if self.paused:
            self.paused = False
            self.router.stream.pause_downstream(False)
        conn = self.conn
        if conn is not None:
            conn.stream_done(self.stream_id, self.request_complete and self.response_complete)

    def abandon(self) -> None:
        """Stop this attempt (timeout, client gone, retry): reset the upstream stream."""
        self._mark_done()
        self._cancel_timer()
        if self.paused:
            self.paused = False
            self.router.stream.pause_downstream(False)
        conn = self.conn
        if conn is None:
            self.pool.cancel(self)
            return
        if not conn.closed:
            conn.streams.pop(self.stream_id, None)
            if self.pool.http2:
                conn.codec.reset(self.stream_id)
                conn.flush()
                conn.stream_done(self.stream_id, True)
            elif not conn.take_back(self.stream_id):    # not written yet: kept
                conn.abort(None)


class Router:
    """The router of one request."""

    __slots__ = ("stream", "loop", "stats", "route", "cluster", "upstream", "body", "body_bytes",
                 "retains_body", "retry", "deadline", "per_try_timeout", "backoff_timer",
                 "tried", "response_started", "hash_key", "buffer_limit", "finished",
                 "timeout", "started_at", "picked", "route_deadline", "duration_deadline")

    def __init__(self, stream, route, cluster, hash_key, timeout=None, policy=None,
                 picked=None):
        self.stream = stream
        self.loop = stream.loop
        self.stats = stream.stats
        self.route = route
        self.cluster = cluster
        self.hash_key = hash_key
        self.upstream: UpstreamRequest | None = None
        self.body = ()                  # request body held for (re)sending (a list once
                                        # some is)
        self.body_bytes = 0
        self.buffer_limit = stream.buffer_limit
        self.timeout = timeout
        self.started_at = 0.0
        self.retry = RetryState(policy) if policy is not None and policy.num_retries else None
        self.retains_body = self.retry is not None
        # Monotonic times: `deadline` is the earlier of the route timeout's and the stream's
        # max duration's (the connection's deadline timer watches it); 0: none running.
        self.deadline = self.route_deadline = self.duration_deadline = 0.0
        self.per_try_timeout = policy.per_try_timeout if policy is not None else None
        self.backoff_timer = None
        self.tried: list = []
        self.response_started = False
        self.finished = False
        # (host,) when the first attempt's host was already picked (express.py asked the
        # balancer before handing the request over): the balancer is asked once per attempt.
        self.picked = picked

    @classmethod
    def from_express(cls, stream, exchange) -> "Router":
        """The router the full path would have for an express exchange (express.py): no
        retry policy and no hash key (a route with either never takes the lane), one attempt
        on the exchange's host, its route timeout running since the request was sent."""
        router = cls(stream, exchange.route, exchange.cluster, None, exchange.timeout, None)
        router.tried.append(exchange.host)
        router.started_at = exchange.started_at
        router.deadline = router.route_deadline = exchange.deadline
        router.response_started = exchange.response_started
        if exchange.done:
            router.finished = True      # the client has its response: only the upstream is left
        else:
            router.upstream = UpstreamRequest.from_express(router, exchange)
        return router

    # -- from the stream ------------------------------------------------------------------------

    def start(self) -> None:
        route, request = self.route, self.stream.request
        if route.max_stream_duration is None:       # stream_duration's answer, without a call
            duration = self.stream.hcm.max_stream_duration
        else:
            duration = stream_duration(route, request, self.stream.hcm)
            if duration and _is_grpc(request):
                # The connection manager tells a gRPC upstream the stream's time (Envoy's
                # refreshDurationTimeout, for a route with max_stream_duration).
                request.headers.set("grpc-timeout", grpc_timeout_value(duration))
        if duration:
            # Counted from the request's arrival, as Envoy's max_stream_duration is.
            started = self.stream.start_monotonic
            self._watch(route=self.route_deadline, duration=started + duration)
        self._attempt()
        if self.stream.request_complete:
            timeout = self.timeout
            if timeout and not duration and not self.finished:
                # request_complete and _watch, inline for the usual request (whole at its
                # head, a route timeout and no stream duration): this runs for every one.
                self.started_at = started = _monotonic()
                self.deadline = self.route_deadline = started + timeout
                self.stream.conn.watch_deadline(self.deadline)
            else:
                self.request_complete()

    def request_complete(self) -> None:
        """The whole request is in: the route timeout starts (as in Envoy). No timer of its
        own: the client connection keeps one for the earliest deadline of its streams
        (connection_manager.py: HttpConnection.watch_deadline)."""
        timeout = self.timeout
        if timeout and not self.route_deadline and not self.finished:
            self.started_at = _monotonic()
            self._watch(route=self.started_at + timeout, duration=self.duration_deadline)

    def _watch(self, route: float, duration: float) -> None:
        self.route_deadline, self.duration_deadline = route, duration
        self.deadline = min(route or duration, duration or route)
        if self.deadline and not self.finished:
            self.stream.conn.watch_deadline(self.deadline)

    def expected_timeout_header(self) -> None:
        """A retry tells the upstream the time left, as Envoy does: the per-try timeout or
        what remains of the route timeout, whichever is smaller."""
        headers = self.stream.request.headers
        if "x-envoy-expected-rq-timeout-ms" not in headers or not self.timeout:
            return
        left = self.timeout - (_monotonic() - self.started_at) if self.started_at else self.timeout
        if self.per_try_timeout:
            left = min(left, self.per_try_timeout)
        headers.set("x-envoy-expected-rq-timeout-ms", str(max(int(left * 1000), 0)))

    def request_body(self, data: bytes, end_stream: bool) -> None:
        upstream = self.upstream
        if self.retains_body or upstream is None or upstream.conn is None:
            self.body = with_chunk(self.body, data)
            self.body_bytes += len(data)
            if self.body_bytes > self.buffer_limit:
                if upstream is None or upstream.conn is None:
                    # Held for a connection and over the limit: Envoy's 413.
                    self.stream.local_reply(413, "Payload Too Large", "request_payload_too_large")
                    self.cancel()
                    return
                self.retains_body = False   # too big to replay: no retry from here on
                self.retry = None
        if upstream is not None and upstream.conn is not None and not upstream.done:
            if not self.retains_body:
                self.body = ()
            upstream.send_body(data, end_stream)
        if end_stream:
            self.request_complete()

    def request_trailers(self, trailers) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.conn is not None and not upstream.done:
            upstream.send_trailers(trailers)
        self.request_complete()

    def cancel(self) -> None:
        """The client went away or the stream ended otherwise: stop everything."""
        self.finished = True
        self._cancel_timers()
        upstream, self.upstream = self.upstream, None
        if upstream is not None and not upstream.done:
            self.stats[self.cluster.stat["upstream_rq_tx_reset"]] += 1
            upstream.abandon()

    # -- attempts ------------------------------------------------------------------------------

    def _attempt(self) -> None:
        self.backoff_timer = None
        if self.finished:
            return
        stream, cluster = self.stream, self.cluster
        if self.picked is not None:
            (host,), self.picked = self.picked, None
        elif cluster.type == "ORIGINAL_DST":
            host = self._original_destination()
        elif self.tried and self.retry is not None and self.retry.policy.previous_hosts:
            host = self._pick_avoiding_tried()
        else:
            host = cluster.pick(self.tried if len(self.tried) < len(cluster.hosts) else (),
                                self.hash_key)
            if host is None and self.tried:
                host = cluster.pick((), self.hash_key)
        if host is None:
            self.stats[cluster.stat["upstream_cx_none_healthy"]] += 1
            stream.response_flags.append("UH")
            self.finish_local(503, "no healthy upstream", "no_healthy_upstream")
            return
        if cluster.rq_active >= cluster.max_requests:
            # The max_requests circuit breaker: Envoy counts it as a pending overflow.
            self.stats[cluster.stat["upstream_rq_pending_overflow"]] += 1
            stream.response_flags.append("UO")
            self.finish_local(503, RESET_BEFORE_HEADERS + "overflow",
                              "upstream_reset_before_response_started{overflow}")
            return
        self.tried.append(host)
        stream.upstream_host = host.stat_id
        stream.upstream_local = None       # each attempt's own (Envoy: a new UpstreamInfo)
        stream.attempts += 1
        if self.route.connect_terminate and stream.request.method == "CONNECT":
            from .connect_tunnel import TcpUpstream, connect_destination, connect_peer
            pool = TcpUpstream(stream.worker, cluster, host, stream.conn.peer,      # bytes over TCP
                               connect_destination(self.route, stream.request.authority),
                               connect_peer(stream))
        elif cluster.http2 is False and not cluster.internal_hosts and \
                not stream.dynamic_metadata:
            # An HTTP/1.1 cluster's own pool, found as the express lane finds it (get()'s
            # answer for it, without its key of eight), and an idle connection taken at once
            # (the pool's request() would take it the same way, one call further in).
            pool = stream.worker.http_pools.http1_pool(cluster, host, stream.request)
            upstream = self.upstream = UpstreamRequest(self, pool, host)
            self.stats[cluster.stat["upstream_rq_total"]] += 1
            cluster.rq_active += 1
            conn = pool.take_idle()
            if conn is not None:
                upstream.on_pool_ready(conn)
            else:
                pool.request(upstream)
            return
        else:
            info = stream
            pool = stream.worker.http_pools.get(cluster, host, stream.request.version == "2",
                                                stream.request,     # auto_sni: its Host
                                                alpn_override(info) if info.dynamic_metadata
                                                else None)
        upstream = self.upstream = UpstreamRequest(self, pool, host)
        self.stats[cluster.stat["upstream_rq_total"]] += 1
        cluster.rq_active += 1
        pool.request(upstream)

    def _pick_avoiding_tried(self):
        """The previous_hosts predicate as Envoy applies it: the balancer picks again while
        its host was already tried, up to host_selection_retry_max_attempts times, and the
        last pick stands."""
        cluster, tried = self.cluster, self.tried
        host = cluster.pick((), self.hash_key)
        for _ in range(self.retry.policy.host_selection_attempts):
            if host is None or host not in tried:
                break
            host = cluster.pick((), self.hash_key)
        return host

    def _original_destination(self):
        """ORIGINAL_DST (Envoy's PassthroughCluster): the address the client dialled, unless
        that is one of our own listeners (a loop). On an internal connection, what its
        connecting side named first (connect_authority's `port`), as Envoy's ORIGINAL_DST
        load balancer prefers the DestinationAddress filter state in any LB context."""
        from ..internal_listener import original_dst_upstream
        stream = self.stream
        dst = original_dst_upstream(stream.conn, stream.conn.original)
        if dst is None or stream.worker.is_own_listener(tuple(dst[:2])):
            return None
        return stream.worker.http_pools.original_host(self.cluster, dst)

    def attempt_failed(self, upstream, reason: str, flag: str, reset: bool = False,
                       connect_failure: bool = False, timeout: bool = False,
                       refused: bool = False) -> None:
        if upstream is not self.upstream or self.finished:
            return
        self.upstream = None
        status = 503
        if reason == "protocol error":
            # As Envoy: an upstream whose response does not parse (a bad status line, a head
            # over the limits) is a bad gateway, UPE, counted on the cluster's connections.
            flag, status = "UPE", 502
            self.stats[self.cluster.stat["upstream_cx_protocol_error"]] += 1
        outlier = self.cluster.outlier
        if outlier is not None and flag != "UO":
            outlier.report(upstream.host, "timeout" if timeout else
                           "connect_failure" if connect_failure else "reset")
        if self.response_started:
            self.stats[self.cluster.stat["upstream_rq_rx_reset"]] += 1
            self.stream.reset_downstream(reason)
            self.finish_quiet()
            return
        if flag != "UO" and self._may_retry() and self.retry.retriable_failure(
                reset, connect_failure, timeout, refused, started=upstream.conn is not None):
            self._schedule_retry()
            return
        info = self.stream          # (a Stream is its own StreamInfo)
        retry = self.retry
        if retry is not None and retry.remaining <= 0 and flag != "UO" and retry.retriable_failure(
                reset, connect_failure, timeout, refused, started=upstream.conn is not None):
            info.response_flags.append("URX")       # before the failure's, as Envoy 1.40
        info.response_flags.append(flag)
        if timeout:
            self.finish_local(504, "upstream request timeout", "upstream_per_try_timeout")
            return
        if flag == "UO":
            self.finish_local(503, RESET_BEFORE_HEADERS + "overflow",
                              "upstream_reset_before_response_started{overflow}")
            return
        # The transport detail goes to the access log, the client sees the reset reason.
        reason, _, transport = reason.partition(", transport failure reason: ")
        info.upstream_failure = transport
        prefix = RESET_BEFORE_HEADERS if not self.tried[1:] else RETRIED_BEFORE_HEADERS
        # Envoy 1.40's details carry the transport reason too:
        # upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}
        details = reason + "|" + transport if transport else reason
        self.finish_local(status, prefix + reason,
                          "upstream_reset_before_response_started{" + details.replace(" ", "_") + "}")

    def _may_retry(self) -> bool:
        retry = self.retry
        if retry is None or retry.remaining <= 0 or not self.retains_body and self.body_bytes:
            return False
        cluster = self.cluster
        if cluster.retries_active >= cluster.max_retries:
            self.stats[cluster.stat["upstream_rq_retry_overflow"]] += 1
            return False
        return True

    def _schedule_retry(self) -> None:
        retry = self.retry
        retry.remaining -= 1
        cluster = self.cluster
        self.stats[cluster.stat["upstream_rq_retry"]] += 1
        cluster.retries_active += 1
        self.backoff_timer = self.loop.call_later(retry.backoff(), self._retry_now)

    def _retry_now(self) -> None:
        self.cluster.retries_active -= 1
        self._attempt()

    # -- response ------------------------------------------------------------------------------

    def on_response_head(self, upstream, response, end_stream: bool) -> None:
        status = response.status
        cluster = self.cluster
        outlier = cluster.outlier
        if outlier is not None:
            outlier.report(upstream.host, status)
        retry = self.retry
        if retry is not None and retry.retriable_response(response):
            if self._may_retry():
                upstream.abandon()
                self.upstream = None
                self._schedule_retry()
                return
            if retry.remaining <= 0:    # Envoy's NoRetryLimitExceeded: the flag URX
                self.stream.response_flags.append("URX")
        if self.retry is not None and self.retry.attempt:
            self.stats[cluster.stat["upstream_rq_retry_success"]] += 1
        self.response_started = True
        self.retains_body = False
        if self.body:
            self.body = ()
        count_status(self.stats, cluster, status)
        info = self.stream
        info.first_upstream_byte = self.loop.time()
        if end_stream:
            self._cancel_timers()
        service_ms = int((info.first_upstream_byte - upstream.sent_at) * 1000)
        route = self.route
        if route.attempt_count_in_response:
            response.headers.set(ATTEMPT_COUNT, str(len(self.tried)))
        # The route's response header mutations, then the stream's head (what a
        # Stream.upstream_response_head step did, one call fewer on every response).
        stream = self.stream
        route = stream.route                # (the stream's, as its own step read it)
        plan = route.response_steps
        if plan is None:                    # a weighted split's clusters differ
            plan = route.response_plan(stream.cluster_name)
        if plan:
            if plan.pairs is not None:      # fixed pairs appended: the plan's, no call
                response.headers.items.extend(plan.pairs)
            else:
                stream._apply_mutations(response.headers, plan)
        stream._send_head(response, end_stream, None if stream.hcm.suppress_envoy_headers else
                          ("x-envoy-upstream-service-time", str(service_ms)))
        if end_stream:
            self._complete(upstream)

    def on_response_trailers(self, upstream, trailers) -> None:
        if not self.response_started:
            return
        self._cancel_timers()
        self.stream.upstream_response_trailers(trailers)
        self._complete(upstream)

    def _complete(self, upstream) -> None:
        self.finished = True
        self.upstream = None
        upstream.finish()

    def _count_status(self, status: int) -> None:
        count_status(self.stats, self.cluster, status)

    # -- timeouts and local replies -------------------------------------------------------------

    def on_timeout(self) -> None:
        """The route timeout or the stream's max duration passed (the connection's deadline
        timer checked, on the real clock, that it has)."""
        if self.finished:
            self.deadline = 0.0
            return
        duration, route = self.duration_deadline, self.route_deadline
        if duration and (not route or duration <= route):     # the earlier of the two fired
            self._duration_reached()
            return
        self.deadline = self.route_deadline = 0.0
        self.stats[self.cluster.stat["upstream_rq_timeout"]] += 1
        upstream, self.upstream = self.upstream, None
        if upstream is not None and not upstream.done:
            upstream.abandon()
        if self.response_started:
            self.stream.reset_downstream("upstream request timeout")
            self.finish_quiet()
            return
        self.stream.response_flags.append("UT")
        self.finish_local(504, "upstream request timeout", "response_timeout")

    def _duration_reached(self) -> None:
        """max_stream_duration: Envoy's connection manager ends the stream with a local reply,
        408 while the request is still arriving, 504 once it is in (a reset once the
        response began), counted in downstream_rq_max_duration_reached."""
        self.deadline = self.route_deadline = self.duration_deadline = 0.0
        stream = self.stream
        self.stats[stream.hcm.stat_rq_max_duration_reached] += 1
        upstream, self.upstream = self.upstream, None
        if upstream is not None and not upstream.done:
            upstream.abandon()
        stream.response_flags.append("DT")
        if self.response_started:
            stream.reset_downstream("max_duration_timeout")
            self.finish_quiet()
            return
        self.finished = True
        self._cancel_timers()
        status = 504 if stream.remote_complete else 408
        stream.local_reply(status, "downstream duration timeout", "max_duration_timeout",
                           grpc_status=DEADLINE_EXCEEDED)

    def finish_local(self, status: int, body: str, details: str) -> None:
        self.finish_quiet()
        self._count_status(status)
        extra = ((ATTEMPT_COUNT, str(len(self.tried) or 1)),) \
            if self.route.attempt_count_in_response else ()
        self.stream.local_reply(status, body, details, extra=extra)

    def finish_quiet(self) -> None:
        self.finished = True
        self._cancel_timers()

    def _cancel_timers(self) -> None:
        # the connection's deadline timer skips us from now
        self.deadline = self.route_deadline = self.duration_deadline = 0.0
        if self.backoff_timer is not None:
            self.backoff_timer.cancel()
            self.backoff_timer = None
            self.cluster.retries_active -= 1




# -- gRPC timeouts and the stream's duration ----------------------------------------------------

_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def grpc_timeout_header(headers) -> float | None:
    """grpc-timeout ("<up to 8 digits><unit>") in seconds; None when absent or malformed."""
    value = headers.get("grpc-timeout")
    if not value or len(value) > 9 or not value[:-1].isdigit():
        return None
    unit = _GRPC_UNITS.get(value[-1])
    return int(value[:-1]) * unit if unit is not None else None


def _is_grpc(request) -> bool:
    return is_grpc(request.headers)


def grpc_timeout_value(seconds: float) -> str:
    """grpc-timeout as Envoy writes it: milliseconds, or a larger unit past 8 digits."""
    value = int(seconds * 1000)
    for unit, size in (("m", 1), ("S", 1000), ("M", 60), ("H", 60)):
        value //= size
        if value <= 99999999:
            return f"{value}{unit}"
    return "99999999H"


def _capped(header: float | None, cap: float, offset: float) -> float:
    """Envoy's arithmetic for a gRPC request's timeout: the header (none: 0, no limit) less
    the offset when the offset is smaller, then capped by a non-zero cap."""
    timeout = header or 0.0
    if offset and offset < timeout:
        timeout -= offset
    if cap and (not timeout or timeout > cap):
        timeout = cap
    return timeout


def route_timeout(route, request) -> float | None:
    """The route timeout of this request before any x-envoy-* control header, as Envoy's
    FilterUtility::finalTimeout computes it: for a gRPC request on a route with
    max_grpc_timeout, its grpc-timeout; 0 is none. The deprecated max_grpc_timeout also
    writes what the upstream has left back into grpc-timeout (set_grpc_timeout)."""
    if route.max_stream_duration is not None:
        # Envoy (usingNewTimeouts): the route has no overall timeout then, not even its own
        # `timeout`; the stream's max duration, grpc-timeout included, bounds it instead.
        return None
    grpc = route.grpc_timeout
    if grpc is None or not _is_grpc(request):
        return route.timeout
    return _capped(grpc_timeout_header(request.headers), grpc["max"], grpc["offset"]) or None


def set_grpc_timeout(route, request, timeout: float | None, retry) -> None:
    """With max_grpc_timeout (and no max_stream_duration), Envoy tells a gRPC upstream the
    time it has, the per-try timeout when shorter than the route's, in grpc-timeout, in
    milliseconds."""
    if route.grpc_timeout is None or route.max_stream_duration is not None \
            or not _is_grpc(request):
        return
    per_try = retry.per_try_timeout if retry is not None else None
    expected = per_try if per_try and (not timeout or per_try < timeout) else timeout
    if expected:
        request.headers.set("grpc-timeout", grpc_timeout_value(expected))


def stream_duration(route, request, hcm) -> float | None:
    """The stream's max duration in seconds, or None: for a gRPC request with a grpc-timeout
    on a route whose max_stream_duration sets grpc_timeout_header_max, that header (capped,
    less the offset); else the route's max_stream_duration (0: none), else the connection
    manager's."""
    msd = route.max_stream_duration
    if msd is None:
        return hcm.max_stream_duration
    header = grpc_timeout_header(request.headers) if msd["grpc_max"] is not None else None
    if header is None:
        if msd["duration"] is None:
            return hcm.max_stream_duration
        return msd["duration"] or None
    timeout = header
    if msd["grpc_max"] and timeout > msd["grpc_max"]:
        timeout = msd["grpc_max"]
    if msd["grpc_offset"] and timeout > msd["grpc_offset"]:
        timeout -= msd["grpc_offset"]
    return timeout or None
