"""The router: `envoy.filters.http.router`, the last filter of every HTTP connection manager.

Per request it picks the cluster (the route's action) and a host (the cluster's balancer, with
the route's hash key), takes a connection from the host's pool (pool.py), sends the request,
and hands the response to the stream. It owns what Envoy's router owns:

- the route timeout (started once the whole request was received; 504 "upstream request
  timeout", flag UT) and the per-try timeout (flag UT too, and a retry if allowed);
- retries (retry_on 5xx, gateway-error, reset, connect-failure, retriable-4xx,
  refused-stream, retriable-status-codes), with Envoy's fully jittered exponential back-off
  and the cluster's max_retries circuit breaker. A response can only be retried before any of
  it went downstream; so can a request whose body is still held in full (the body is kept, up
  to the buffer limit, until the response starts);
- the local replies of an upstream failure, with Envoy's bodies:
  "upstream connect error or disconnect/reset before headers. reset reason: ...",
  "no healthy upstream", "upstream request timeout".
"""

from __future__ import annotations

import random
import time

from ...codecs.events import Body, ProtocolError, ResponseHead, StreamReset, Trailers
from .pool import CONNECTION_TERMINATION

GATEWAY_ERRORS = frozenset({502, 503, 504})
_monotonic = time.monotonic   # the real clock: libuv's is cached per loop iteration
_STATUS_STATS: dict = {}      # (cluster, status) -> its two stat names: a memo, not state
REMOTE_RESET = "remote reset"
RESET_BEFORE_HEADERS = "upstream connect error or disconnect/reset before headers. reset reason: "
RETRIED_BEFORE_HEADERS = ("upstream connect error or disconnect/reset before headers. "
                          "retried and the latest reset reason: ")


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
        info = stream.info
        info.upstream_local = conn.local
        self.sent_at = router.loop.time()
        if router.tried[1:]:
            router.expected_timeout_header()
        trailers = stream.trailers if stream.request_complete else None
        end = stream.request_complete and not router.body and trailers is None
        self.stream_id = conn.start_stream(self, stream.request, end)
        for i, chunk in enumerate(router.body):
            last = stream.request_complete and i == len(router.body) - 1 and trailers is None
            conn.codec.send_body(self.stream_id, chunk, last)
        if stream.trailers is not None and stream.request_complete:
            conn.codec.send_trailers(self.stream_id, stream.trailers)
        self.request_complete = stream.request_complete
        conn.flush()
        if not router.retains_body:
            router.body = []
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
            if event.end_stream:
                self.response_complete = True
            router.on_response_body(self, event.data, event.end_stream)
            if event.data:
                self.conn.codec.consumed(self.stream_id, len(event.data))
        elif kind is ResponseHead:
            status = event.response.status
            if status < 200 and status != 101:
                return          # Envoy answers Expect: 100-continue itself; drop upstream 1xx
            self.headers_received = True
            self._cancel_timer()        # the per-try timeout ends when the response begins
            if event.end_stream:
                self.response_complete = True
            router.on_response_head(self, event.response, event.end_stream)
        elif kind is Trailers:
            self.response_complete = True
            router.on_response_trailers(self, event.headers)
        elif kind is StreamReset:
            self.on_upstream_reset(REMOTE_RESET)
        elif kind is ProtocolError:
            # A close before the response ended is Envoy's "connection termination"; bytes
            # that do not parse are a protocol error.
            closed = event.reason == "upstream closed the connection"
            self.on_upstream_reset(CONNECTION_TERMINATION if closed else "protocol error")

    def on_upstream_reset(self, reason: str) -> None:
        if self.done:
            return
        self._mark_done()
        self._cancel_timer()
        self.router.attempt_failed(self, reason, "UC", reset=True)

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
        self._mark_done()
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


class RetryState:
    __slots__ = ("policy", "remaining", "attempt")

    def __init__(self, policy):
        self.policy = policy
        self.remaining = policy.num_retries
        self.attempt = 0

    def retriable_status(self, status: int, stream) -> bool:
        on = self.policy.retry_on
        if "5xx" in on and status >= 500:
            return True
        if "gateway-error" in on and status in GATEWAY_ERRORS:
            return True
        if "retriable-4xx" in on and status == 409:
            return True
        if "retriable-status-codes" in on and status in self.policy.retriable_status_codes:
            return True
        return False

    def retriable_failure(self, reset: bool, connect_failure: bool, timeout: bool) -> bool:
        on = self.policy.retry_on
        if connect_failure:
            return bool(on & {"connect-failure", "5xx", "gateway-error", "reset"})
        if timeout:
            return bool(on & {"5xx", "gateway-error"})
        if reset:
            return bool(on & {"reset", "5xx", "gateway-error", "refused-stream"})
        return False

    def backoff(self) -> float:
        """Envoy's fully jittered exponential back-off."""
        self.attempt += 1
        policy = self.policy
        ceiling = min(policy.base * ((1 << self.attempt) - 1), policy.max)
        return random.random() * ceiling


class Router:
    """The router of one request."""

    __slots__ = ("stream", "loop", "stats", "route", "cluster", "upstream", "body", "body_bytes",
                 "retains_body", "retry", "deadline", "per_try_timeout", "backoff_timer",
                 "tried", "response_started", "hash_key", "buffer_limit", "finished",
                 "timeout", "started_at", "picked")

    def __init__(self, stream, route, cluster, hash_key, timeout=None, policy=None,
                 picked=None):
        self.stream = stream
        self.loop = stream.loop
        self.stats = stream.stats
        self.route = route
        self.cluster = cluster
        self.hash_key = hash_key
        self.upstream: UpstreamRequest | None = None
        self.body: list = []            # request body held for (re)sending
        self.body_bytes = 0
        self.buffer_limit = stream.buffer_limit
        self.timeout = timeout
        self.started_at = 0.0
        self.retry = RetryState(policy) if policy is not None and policy.num_retries else None
        self.retains_body = self.retry is not None
        self.deadline = 0.0             # monotonic time of the route timeout; 0: none running
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
        router.deadline = exchange.deadline
        router.response_started = exchange.response_started
        if exchange.done:
            router.finished = True      # the client has its response: only the upstream is left
        else:
            router.upstream = UpstreamRequest.from_express(router, exchange)
        return router

    # -- from the stream ------------------------------------------------------------------------

    def start(self) -> None:
        self._attempt()
        if self.stream.request_complete:
            self.request_complete()

    def request_complete(self) -> None:
        """The whole request is in: the route timeout starts (as in Envoy). No timer of its
        own: the client connection keeps one for the earliest deadline of its streams
        (connection_manager.py: HttpConnection.watch_deadline)."""
        timeout = self.timeout
        if timeout and not self.deadline and not self.finished:
            self.started_at = _monotonic()
            self.deadline = self.started_at + timeout
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
            self.body.append(data)
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
                self.body = []
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
        else:
            host = cluster.pick(self.tried if len(self.tried) < len(cluster.hosts) else (),
                                self.hash_key)
            if host is None and self.tried:
                host = cluster.pick((), self.hash_key)
        if host is None:
            self.stats[cluster.stat["upstream_cx_none_healthy"]] += 1
            stream.info.response_flags.append("UH")
            self.finish_local(503, "no healthy upstream", "no_healthy_upstream")
            return
        if cluster.rq_active >= cluster.max_requests:
            # The max_requests circuit breaker: Envoy counts it as a pending overflow.
            self.stats[cluster.stat["upstream_rq_pending_overflow"]] += 1
            stream.info.response_flags.append("UO")
            self.finish_local(503, RESET_BEFORE_HEADERS + "overflow",
                              "upstream_reset_before_response_started{overflow}")
            return
        self.tried.append(host)
        stream.info.upstream_host = host.stat_id
        stream.info.attempts += 1
        pool = stream.worker.http_pools.get(cluster, host, stream.request.version == "2",
                                            stream.request)     # auto_sni: its Host
        upstream = self.upstream = UpstreamRequest(self, pool, host)
        self.stats[cluster.stat["upstream_rq_total"]] += 1
        cluster.rq_active += 1
        pool.request(upstream)

    def _original_destination(self):
        """ORIGINAL_DST (Envoy's PassthroughCluster): the address the client dialled, unless
        that is one of our own listeners (a loop)."""
        stream = self.stream
        dst = stream.conn.original
        if dst is None or stream.worker.is_own_listener(tuple(dst[:2])):
            return None
        return stream.worker.http_pools.original_host(self.cluster, dst)

    def attempt_failed(self, upstream, reason: str, flag: str, reset: bool = False,
                       connect_failure: bool = False, timeout: bool = False) -> None:
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
        if flag != "UO" and self._may_retry() and \
                self.retry.retriable_failure(reset, connect_failure, timeout):
            self._schedule_retry()
            return
        info = self.stream.info
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
        self.finish_local(status, prefix + reason,
                          "upstream_reset_before_response_started{" + reason.replace(" ", "_") + "}")

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
        if self.retry is not None and self.retry.retriable_status(status, self.stream) and \
                self._may_retry():
            upstream.abandon()
            self.upstream = None
            self._schedule_retry()
            return
        if self.retry is not None and self.retry.attempt:
            self.stats[cluster.stat["upstream_rq_retry_success"]] += 1
        self.response_started = True
        self.retains_body = False
        self.body = []
        self._count_status(status)
        info = self.stream.info
        info.first_upstream_byte = self.loop.time()
        if end_stream:
            self._cancel_timers()
        service_ms = int((info.first_upstream_byte - upstream.sent_at) * 1000)
        self.stream.upstream_response_head(response, end_stream, service_ms)
        if end_stream:
            self._complete(upstream)

    def on_response_body(self, upstream, data: bytes, end_stream: bool) -> None:
        if not self.response_started:
            return
        if end_stream:
            self._cancel_timers()
        self.stream.upstream_response_body(data, end_stream)
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
        """The route timeout passed (the connection's deadline timer checked, on the real
        clock, that it has)."""
        self.deadline = 0.0
        if self.finished:
            return
        self.stats[self.cluster.stat["upstream_rq_timeout"]] += 1
        upstream, self.upstream = self.upstream, None
        if upstream is not None and not upstream.done:
            upstream.abandon()
        if self.response_started:
            self.stream.reset_downstream("upstream request timeout")
            self.finish_quiet()
            return
        self.stream.info.response_flags.append("UT")
        self.finish_local(504, "upstream request timeout", "upstream_response_timeout")

    def finish_local(self, status: int, body: str, details: str) -> None:
        self.finish_quiet()
        self._count_status(status)
        self.stream.local_reply(status, body, details)

    def finish_quiet(self) -> None:
        self.finished = True
        self._cancel_timers()

    def _cancel_timers(self) -> None:
        self.deadline = 0.0             # the connection's deadline timer skips us from now
        if self.backoff_timer is not None:
            self.backoff_timer.cancel()
            self.backoff_timer = None
            self.cluster.retries_active -= 1


