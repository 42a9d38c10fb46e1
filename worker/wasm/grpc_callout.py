"""proxy-wasm gRPC callouts: proxy_grpc_call / _stream / _send / _close / _cancel over the
worker's HTTP/2 pools, answered to the root context's proxy_on_grpc_* callbacks.

    service_cluster(service bytes, cluster exists?) -> (status, cluster, authority)
    GrpcCallouts (one per plugin root): call(), stream(), send(), close(), cancel()
    Callout: one call on an HTTP/2 stream of the cluster's pool (an upstream_call.UpstreamCall
             that streams: messages sent as the plugin gives them, answered as they come)

Envoy 1.40's semantics (source/extensions/common/wasm/context.cc, proxy-wasm-cpp-host
exports.cc), each checked with tests/integration/test_differential_wasm_grpc.py:

- Every call belongs to the root context (cpp-host hands grpc_* to root_context()), which
  gets the callbacks, after the current VM call. Tokens are per VM: calls odd, streams even.
- `service` is a serialized envoy.config.core.v3.GrpcService (envoy_grpc.cluster_name and
  authority); bytes that do not parse as one are taken as a cluster name, PARSE_FAILURE when
  no such cluster exists. google_grpc is refused (BAD_ARGUMENT: Baton has no Google gRPC
  client). A parsed service naming a cluster Baton lacks fails the call (UNAVAILABLE).
- A unary call gets proxy_on_grpc_receive with its answer, and nothing else; a failed one
  proxy_on_grpc_close(status), whose message proxy_get_status gives. A stream gets
  proxy_on_grpc_receive_initial_metadata, _receive per message, _receive_trailing_metadata
  and proxy_on_grpc_close.
- The close message is Envoy's: the server's grpc-message followed by the stream's
  response code details in braces ("denied here{via_upstream}", "via_upstream" alone for an
  empty one); a call the proxy could not complete is its local reply's text and details:
  14 "upstream request timeout{response_timeout}" at its timeout, 14 "upstream connect
  error or disconnect/reset before headers. reset reason: ...{upstream_reset_before_
  response_started{...}}" when the connection failed.
- grpc_send on a call token: BAD_ARGUMENT; an unknown token: NOT_FOUND; grpc_close of a
  call cancels it, of a stream half-closes it (the stream is forgotten once both ends
  closed); grpc_cancel resets either and forgets it: no callback comes for it after.
"""

from __future__ import annotations

import os

from ..codecs.events import Body, ProtocolError, ResponseHead, StreamReset, Trailers
from ..codecs.message import Headers, Request
from ..proxy.http.grpc_call import frame, grpc_status, grpc_timeout
from ..proxy.http.upstream_call import UpstreamCall
from .foreign import wire_fields
from .header_check import details, invalid_header

OK, NOT_FOUND, BAD_ARGUMENT, PARSE_FAILURE, INTERNAL_FAILURE = 0, 1, 2, 4, 10
GRPC_OK, GRPC_UNKNOWN, GRPC_INTERNAL, GRPC_UNAVAILABLE = 0, 2, 13, 14


def close_text(text: str, details: str) -> str:
    """The message proxy_get_status gives, as Envoy's async gRPC client makes it: the
    grpc-message, then the stream's response code details in braces."""
    return f"{text}{{{details}}}" if text else details


def service_cluster(service: bytes, has_cluster) -> tuple[int, str | None, str | None]:
    """(status, cluster name, :authority or None) for proxy_grpc_call's `service`."""
    fields = wire_fields(service)
    if fields is None:
        name = service.decode("utf-8", "replace")
        return (OK, name, None) if has_cluster(name) else (PARSE_FAILURE, None, None)
    envoy_grpc = fields.get(1)
    inner = wire_fields(envoy_grpc) if isinstance(envoy_grpc, bytes) else None
    cluster = inner.get(1) if inner is not None else None
    if not isinstance(cluster, bytes) or not cluster:
        return BAD_ARGUMENT, None, None
    authority = inner.get(2)
    return (OK, cluster.decode("utf-8", "replace"),
            authority.decode("utf-8", "replace") if isinstance(authority, bytes) and authority
            else None)


class Callout(UpstreamCall):
    """One gRPC call (unary: `unary`, one message sent with the end of the stream) on a
    stream of the cluster's HTTP/2 pool. Events go to `events(kind, *args)`:
    ("initial", headers pairs), ("message", bytes), ("trailing", pairs), ("close", status,
    message); "close" is the last, once. UpstreamCall's waiting for the pool, cancel() and
    release are this call's; `finished` once closed."""

    __slots__ = ("events", "unary", "pending", "buffer", "local_end", "answer")

    def __init__(self, worker, cluster, events, unary: bool):
        super().__init__(worker, cluster, None)
        self.events = events
        self.unary = unary
        self.pending: list[tuple[bytes, bool]] = []     # sends before the stream exists
        self.buffer = bytearray()
        self.local_end = False
        self.answer: bytes | None = None                # a unary call's last message

    def start(self, path: str, authority: str, metadata, timeout: float | None) -> None:
        headers = [("content-type", "application/grpc"), ("te", "trailers")]
        if timeout:
            headers.append(("grpc-timeout", grpc_timeout(timeout)))
        headers.extend(metadata)
        self.request = Request("POST", path, authority, Headers(headers), "http", "2")
        cluster = self.cluster
        host = cluster.pick()
        if host is None:
            self.worker.stats.counters[cluster.stat["upstream_cx_none_healthy"]] += 1
            self._close(GRPC_UNAVAILABLE,
                        close_text("no healthy upstream", "no_healthy_upstream"))
            return
        if timeout:
            self.timer = self.worker.loop.call_later(timeout, self._timed_out)
        self.pool = self.worker.http_pools.get(cluster, host, True)
        self.worker.stats.counters[cluster.stat["upstream_rq_total"]] += 1
        self.pool.request(self)

    def send(self, message: bytes, end_stream: bool) -> None:
        if self.finished or self.local_end:
            return
        self.local_end = end_stream
        if self.stream_id is None:
            self.pending.append((message, end_stream))
            return
        self.conn.codec.send_body(self.stream_id, frame(message), end_stream)
        self.conn.flush()

    def half_close(self) -> None:
        """The end of what the plugin sends (proxy_grpc_close of a stream)."""
        if not self.local_end:
            self.local_end = True
            if self.stream_id is None:
                self.pending.append((None, True))
            elif not self.finished:
                self.conn.codec.send_body(self.stream_id, b"", True)
                self.conn.flush()

    # -- the pool's waiter (cancel(): UpstreamCall's, without a callback) --------------------
    def on_pool_ready(self, conn) -> None:
        if self.finished:
            self.pool.release(conn)
            return
        self.conn = conn
        pending, self.pending = self.pending, []
        self.stream_id = conn.start_stream(self, self.request, False)
        for message, end_stream in pending:
            conn.codec.send_body(self.stream_id, b"" if message is None else frame(message),
                                 end_stream)
        conn.flush()

    def on_pool_failure(self, reason: str, flag: str) -> None:
        self.pool = None
        self._failed(reason)

    # -- the connection's stream ------------------------------------------------------------
    def on_upstream_event(self, event) -> None:
        if self.finished:
            return
        kind = type(event)
        if kind is Body:
            self._body(event.data)
            if event.end_stream and not self.finished:
                self._close(GRPC_INTERNAL, close_text("", "via_upstream"))     # no trailers
        elif kind is ResponseHead:
            response = event.response
            if response.status < 200:
                return
            pairs = [(":status", str(response.status)), *response.headers.items]
            if event.end_stream:                        # trailers-only
                self._trailers(response.headers, pairs, response.status)
            elif response.status != 200:
                self._close(GRPC_UNAVAILABLE if response.status in (502, 503, 504)
                            else GRPC_UNKNOWN, close_text(f"HTTP {response.status}",
                                                          "via_upstream"))
            elif not self.unary:
                self.events("initial", pairs)
        elif kind is Trailers:
            self._trailers(event.headers, list(event.headers.items), 200)
        elif kind is StreamReset or kind is ProtocolError:
            self.on_upstream_reset("remote reset")

    def on_upstream_reset(self, reason, refused: bool = False) -> None:
        self.conn = None
        self._failed(str(reason))

    # -- answers ----------------------------------------------------------------------------
    def _body(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if data and self.conn is not None:
            self.conn.codec.consumed(self.stream_id, len(data))
        while len(buffer) >= 5:
            size = int.from_bytes(buffer[1:5], "big")
            if buffer[0] != 0 or size > self.cluster.buffer_limit:
                self._close(GRPC_INTERNAL, close_text("", "via_upstream"))
                return
            if len(buffer) < 5 + size:
                return
            message = bytes(buffer[5:5 + size])
            del buffer[:5 + size]
            if self.unary:
                # Envoy's AsyncRequestImpl keeps the last message a unary call got (each
                # replaces the one before: a server that floods holds one message, not all).
                self.answer = message
            else:
                self.events("message", message)

    def _trailers(self, headers, pairs, http_status: int) -> None:
        code = grpc_status(headers.get("grpc-status"))
        if code is None:
            code = GRPC_UNAVAILABLE if http_status in (502, 503, 504) else GRPC_UNKNOWN
        text = _percent_decoded(headers.get("grpc-message") or "")
        if not self.unary:
            self.events("trailing", pairs)
        self._close(code, close_text(text, "via_upstream"), clean=True)

    def _timed_out(self) -> None:
        self.timer = None
        self._close(GRPC_UNAVAILABLE, close_text("upstream request timeout", "response_timeout"))

    def _failed(self, reason: str) -> None:
        reason, _, transport = reason.partition(", transport failure reason: ")
        # pool.py writes the errno's number ("delayed connect error: 111"); Envoy its text.
        prefix, _, errno = transport.rpartition(": ")
        if errno.isdigit():
            transport = f"{prefix}: {os.strerror(int(errno))}"
        details = reason + ("|" + transport if transport else "")
        self._close(GRPC_UNAVAILABLE, close_text(
            "upstream connect error or disconnect/reset before headers. reset reason: " + reason,
            "upstream_reset_before_response_started{" + details.replace(" ", "_") + "}"))

    def _close(self, code: int, text: str, clean: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        self._release(reset=not clean)
        if self.unary and code == GRPC_OK:
            if self.answer is not None:
                self.events("message", self.answer)
                return
            code, text = GRPC_INTERNAL, ""      # OK with no message: Envoy's onFailure(13, "")
        self.events("close", code, text)


def _percent_decoded(text: str) -> str:
    """grpc-message's %XX escapes (gRPC's PROTOCOL-HTTP2), as Envoy reads it."""
    if "%" not in text:
        return text
    from urllib.parse import unquote_to_bytes
    return unquote_to_bytes(text).decode("utf-8", "replace")


class GrpcCallouts:
    """One plugin root's gRPC calls and streams by token. `deliver(token, kind, *args)`
    enters the VM (the plugin layer schedules it after the current call)."""

    def __init__(self, worker, deliver, after_call: list):
        self.worker = worker
        self.deliver = deliver
        self.after_call = after_call            # the host's: run when the VM call returns
        self.calls: dict[int, Callout] = {}
        self.local_closed: set[int] = set()     # streams the plugin closed its end of

    def open(self, token: int, service: bytes, service_name: str, method: str, metadata,
             timeout: float | None, unary: bool) -> tuple[int, Callout | None]:
        clusters = self.worker.clusters
        status, cluster_name, authority = service_cluster(
            service, lambda name: clusters.get(name) is not None)
        if status != OK:
            return status, None
        call = Callout(self.worker, clusters.get(cluster_name),
                       lambda kind, *args: self._event(token, kind, args), unary)
        refused = "Cluster not available" if call.cluster is None else invalid_header(metadata)
        if refused is not None:
            # A GrpcService naming no cluster, or metadata the router refuses (header_check):
            # Envoy's client fails the call as it starts (its close, UNAVAILABLE, comes when
            # the VM call returns) and the hostcall answers INTERNAL_FAILURE, the token used.
            text = refused if call.cluster is None else close_text(refused, details(refused))
            call.finished = True
            self.after_call.append(lambda: self.deliver(token, "close", GRPC_UNAVAILABLE, text))
            return INTERNAL_FAILURE, call
        self.calls[token] = call
        call.start(f"/{service_name}/{method}", authority or cluster_name, metadata, timeout)
        return OK, call

    def _event(self, token: int, kind: str, args) -> None:
        self.worker.loop.call_soon(self._deliver, token, kind, args)

    def _deliver(self, token: int, kind: str, args) -> None:
        call = self.calls.get(token)
        if call is None:                    # cancelled: Envoy forgets it, no callback
            return
        if kind == "close" or (kind == "message" and call.unary):
            if call.unary or token in self.local_closed:
                self.forget(token)
        self.deliver(token, kind, *args)

    def send(self, token: int, message: bytes, end_stream: bool) -> int:
        if token & 1:                       # a unary call's
            return BAD_ARGUMENT
        call = self.calls.get(token)
        if call is None:
            return NOT_FOUND
        call.send(message, end_stream)
        return OK

    def close(self, token: int) -> int:
        """A call: cancelled; a stream: its end sent, forgotten once the other end closed."""
        call = self.calls.get(token)
        if call is None:
            return NOT_FOUND
        if call.unary:
            call.cancel()
            self.forget(token)
        else:
            call.half_close()
            if call.finished:
                self.forget(token)
            else:
                self.local_closed.add(token)
        return OK

    def cancel(self, token: int) -> int:
        call = self.calls.get(token)
        if call is None:
            return NOT_FOUND
        call.cancel()
        self.forget(token)
        return OK

    def forget(self, token: int) -> None:
        self.calls.pop(token, None)
        self.local_closed.discard(token)

    def cancel_all(self) -> None:
        for call in self.calls.values():
            call.cancel()
        self.calls.clear()
