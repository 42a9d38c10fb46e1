"""One request from the worker itself to a cluster, answered whole (Envoy's AsyncClient).

A filter that must ask a service before it lets a request go on (ext_authz) sends its own
request over the worker's upstream pools, as Envoy sends it through its cluster manager: the
cluster's balancer picks a host, the pool gives a connection (shared with the router's
requests to that cluster), and the request is one stream on it. The response is collected
whole (these answers are small) and handed to `done(response, body, trailers, failure)`
once: the Response head, its body bytes and trailers (or None), and "" — or, when no
complete response came, None, b"", None and why ("timeout", "no healthy upstream", a
reset, a body past the cluster's buffer limit...). `cancel()` stops a call whose caller went away; `done` is then never called.

The call is the pool's waiter and the connection's stream, like the router's
UpstreamRequest (on_pool_ready / on_pool_failure / on_upstream_event / on_upstream_reset /
on_upstream_paused).
"""

from __future__ import annotations

from ...codecs.events import Body, ProtocolError, ResponseHead, StreamReset, Trailers

TIMEOUT = "timeout"


class UpstreamCall:
    __slots__ = ("worker", "cluster", "done", "pool", "conn", "stream_id", "timer", "response",
                 "body", "finished", "request", "payload")

    def __init__(self, worker, cluster, done):
        self.worker = worker
        self.cluster = cluster
        self.done = done
        self.pool = None
        self.conn = None
        self.stream_id = None
        self.timer = None
        self.response = None
        self.body = bytearray()
        self.finished = False
        self.request = None
        self.payload = b""

    def start(self, request, payload: bytes, timeout: float | None, http2: bool) -> None:
        """Send `request` (worker/codecs/message.py Request) with `payload` as its body.
        `timeout` None or 0: no deadline; `http2`: the protocol when the cluster follows the
        downstream's (use_downstream_protocol_config)."""
        cluster = self.cluster
        host = cluster.pick()
        if host is None:
            self.worker.stats.counters[cluster.stat["upstream_cx_none_healthy"]] += 1
            self._finish(None, None, "no healthy upstream")
            return
        if timeout:
            self.timer = self.worker.loop.call_later(timeout, self._finish, None, None,
                                                     TIMEOUT)
        self.request, self.payload = request, payload
        self.pool = self.worker.http_pools.get(cluster, host, http2)
        self.worker.stats.counters[cluster.stat["upstream_rq_total"]] += 1
        self.pool.request(self)

    def cancel(self) -> None:
        if not self.finished:
            self.finished = True
            self._release(reset=True)

    # -- the pool's waiter ------------------------------------------------------------------

    def on_pool_ready(self, conn) -> None:
        if self.finished:
            self.pool.release(conn)
            return
        self.conn = conn
        payload = self.payload
        self.stream_id = conn.start_stream(self, self.request, not payload)
        if payload:
            conn.codec.send_body(self.stream_id, payload, True)
        conn.flush()

    def on_pool_failure(self, reason: str, flag: str) -> None:
        self.pool = None                    # no longer waiting in it
        self._finish(None, None, reason)

    # -- the connection's stream ------------------------------------------------------------

    def on_upstream_event(self, event) -> None:
        if self.finished:
            return
        kind = type(event)
        if kind is Body:
            if len(self.body) + len(event.data) > self.cluster.buffer_limit:
                # An answer is small; a service streaming more must not grow the worker.
                self._finish(None, None, "response body over the cluster's buffer limit")
                return
            self.body += event.data
            if event.data:
                self.conn.codec.consumed(self.stream_id, len(event.data))
            if event.end_stream:
                self._finish(self.response, None, "", clean=True)
        elif kind is ResponseHead:
            if event.response.status < 200:
                return                      # 1xx: the answer is still to come
            self.response = event.response
            if event.end_stream:
                self._finish(self.response, None, "", clean=True)
        elif kind is Trailers:
            self._finish(self.response, event.headers, "", clean=True)
        elif kind is StreamReset or kind is ProtocolError:
            self.on_upstream_reset("upstream reset")

    def on_upstream_reset(self, reason, refused: bool = False) -> None:
        self.conn = None                # the connection dropped the stream already
        self._finish(None, None, str(reason))

    def on_upstream_paused(self, paused: bool) -> None:
        """One small request: nothing to hold back."""

    # -- ending -----------------------------------------------------------------------------

    def _finish(self, response, trailers, failure: str, clean: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        self._release(reset=not clean)
        if response is None:
            self.done(None, b"", None, failure)
        else:
            self.done(response, bytes(self.body), trailers, "")

    def _release(self, reset: bool) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn, self.conn = self.conn, None
        if conn is None:
            if self.pool is not None and self.stream_id is None:
                self.pool.cancel(self)          # still waiting for a connection
            return
        if conn.closed:
            return
        if reset:
            conn.streams.pop(self.stream_id, None)
            if conn.pool.http2:
                conn.codec.reset(self.stream_id)
                conn.flush()
            else:                               # HTTP/1.1: the connection cannot be reused
                conn.abort(None)
                return
        conn.stream_done(self.stream_id, True)
