"""One unary gRPC call from the worker to a cluster (Envoy's AsyncClient over envoy_grpc).

A filter that must ask a service before it lets a request go on (ext_authz's Check) sends
its call over the worker's own upstream pools, as Envoy sends it through its cluster
manager: the cluster's balancer picks a host, the pool gives an HTTP/2 connection (shared
with the router's requests to that cluster), and the call is one stream on it:

    POST /<service>/<method>, content-type application/grpc, te: trailers, grpc-timeout
    DATA: 0, length (4 bytes, big-endian), the message           (gRPC length-prefixed)
    <- HEADERS (:status 200), DATA (one message), TRAILERS (grpc-status, grpc-message)

The outcome goes to `done(status, message, text)` once: gRPC status 0 with the reply's bytes,
or a non-zero status (the server's, or 14 UNAVAILABLE for a connection that failed, 4
DEADLINE_EXCEEDED when the timeout fired) with None. `cancel()` stops a call whose caller
went away; `done` is then never called.

The call is the pool's waiter and the connection's stream, like the router's
UpstreamRequest (on_pool_ready / on_pool_failure / on_upstream_event / on_upstream_reset /
on_upstream_paused).
"""

from __future__ import annotations

from ...codecs.events import Body, ProtocolError, ResponseHead, StreamReset, Trailers
from ...codecs.message import Headers, Request

OK = 0
DEADLINE_EXCEEDED = 4
INTERNAL = 13
UNAVAILABLE = 14


def frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: flag 0 (not compressed), 4-byte length, bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def unframe(data: bytes) -> bytes | None:
    """The first message of a gRPC body, or None when the body holds no whole message."""
    if len(data) < 5 or data[0] != 0:
        return None
    length = int.from_bytes(data[1:5], "big")
    return data[5:5 + length] if len(data) >= 5 + length else None


def grpc_timeout(seconds: float) -> str:
    """grpc-timeout as Envoy writes it: whole milliseconds ("200m")."""
    return f"{max(int(seconds * 1000), 0)}m"


class UnaryCall:
    __slots__ = ("worker", "cluster", "done", "pool", "conn", "stream_id", "timer", "body",
                 "finished", "stats", "request", "message")

    def __init__(self, worker, cluster, done):
        self.worker = worker
        self.cluster = cluster
        self.done = done
        self.pool = None
        self.conn = None
        self.stream_id = None
        self.timer = None
        self.body = bytearray()
        self.finished = False
        self.stats = worker.stats.counters
        self.request = None
        self.message = b""

    def start(self, path: str, authority: str, message: bytes, timeout: float | None,
              metadata=()) -> None:
        """Send the call. `timeout` None or 0: no deadline."""
        cluster = self.cluster
        host = cluster.pick()
        if host is None:
            self.stats[cluster.stat["upstream_cx_none_healthy"]] += 1
            self._finish(UNAVAILABLE, None, "no healthy upstream")
            return
        if timeout:
            self.timer = self.worker.loop.call_later(timeout, self._timed_out)
        headers = [("content-type", "application/grpc"), ("te", "trailers")]
        if timeout:
            headers.append(("grpc-timeout", grpc_timeout(timeout)))
        headers.extend(metadata)
        self.request = Request("POST", path, authority, Headers(headers), "http", "2")
        self.message = frame(message)
        self.pool = self.worker.http_pools.get(cluster, host, True)
        self.stats[cluster.stat["upstream_rq_total"]] += 1
        self.pool.request(self)

    def cancel(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._release(reset=True)

    # -- the pool's waiter ------------------------------------------------------------------

    def on_pool_ready(self, conn) -> None:
        if self.finished:
            self.pool.release(conn)
            return
        self.conn = conn
        self.stream_id = conn.start_stream(self, self.request, False)
        conn.codec.send_body(self.stream_id, self.message, True)
        conn.flush()

    def on_pool_failure(self, reason: str, flag: str) -> None:
        self.pool = None                    # no longer waiting in it
        self._finish(UNAVAILABLE, None, reason)

    # -- the connection's stream ------------------------------------------------------------

    def on_upstream_event(self, event) -> None:
        if self.finished:
            return
        kind = type(event)
        if kind is Body:
            self.body += event.data
            if event.data:
                self.conn.codec.consumed(self.stream_id, len(event.data))
            if event.end_stream:        # no trailers: a broken call
                self._finish(INTERNAL, None, "no grpc-status")
        elif kind is ResponseHead:
            response = event.response
            if response.status != 200:
                # gRPC's HTTP-to-status mapping (a proxy or server answering without gRPC).
                self._finish(UNAVAILABLE if response.status in (502, 503, 504) else 2, None,
                             f"HTTP {response.status}")
            elif event.end_stream:      # trailers-only: the status is in these headers
                self._trailers(response.headers)
        elif kind is Trailers:
            self._trailers(event.headers)
        elif kind is StreamReset or kind is ProtocolError:
            self.on_upstream_reset("reset")

    def on_upstream_reset(self, reason, refused: bool = False) -> None:
        self.conn = None                # the connection dropped the stream already
        self._finish(UNAVAILABLE, None, str(reason))

    def on_upstream_paused(self, paused: bool) -> None:
        """One small message: nothing to hold back."""

    # -- ending -----------------------------------------------------------------------------

    def _trailers(self, headers) -> None:
        status = headers.get("grpc-status")
        code = int(status) if status is not None and status.isdigit() else 2
        message = unframe(bytes(self.body)) if code == OK else None
        if code == OK and message is None:
            code = INTERNAL
        self._finish(code, message, headers.get("grpc-message") or "", clean=True)

    def _timed_out(self) -> None:
        self.timer = None
        self._finish(DEADLINE_EXCEEDED, None, "timeout")

    def _finish(self, code: int, message: bytes | None, text: str, clean: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        self._release(reset=not clean)
        self.done(code, message, text)

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
            conn.codec.reset(self.stream_id)
            conn.flush()
        conn.stream_done(self.stream_id, True)
