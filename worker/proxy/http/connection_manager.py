"""`envoy.filters.network.http_connection_manager`: one client connection speaking HTTP.

An `HttpConnection` is a thin asyncio.Protocol adapter (STYLE.md): bytes from the socket go
into the codec (HTTP/1.1, or HTTP/2 for codec_type HTTP2 and for AUTO when the client opens
with the HTTP/2 preface), the codec's events drive one `Stream` per request, and what the
streams send is written once per batch of events.

A `Stream` is Envoy's ActiveStream: the request head is mutated as the connection manager
mutates it (x-forwarded-for, x-forwarded-proto, x-request-id), routed (routing.py), passed
through the stream filters (filter.py) and handed to the router (router.py); the response
comes back through the filters in reverse, gets the headers Envoy adds (server, date,
x-envoy-upstream-service-time) and goes to the codec. Local replies (404 route miss, 503 no
healthy upstream, the filters' 429 and fault aborts, codec errors) take the same way out.

HTTP/1.1 pipelining: requests are parsed as they come, but served one at a time in order;
the events of later requests wait in `queued` (reading pauses when too many wait).
Backpressure is counted (STYLE.md pattern 4): reading from the client pauses while any
upstream it feeds cannot take more, and an upstream's reading pauses while the client's
socket is full.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from collections import deque

from ...codecs.events import Body, ProtocolError, RequestHead, StreamReset, Trailers, WindowOpen
from ...codecs.http1 import Http1ServerCodec
from ...codecs.message import Headers, Response
from .filter import Delay, LocalReply
from .router import Router
from .stream_info import StreamInfo

log = logging.getLogger("baton.http")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_QUEUED_EVENTS = 64          # pipelined events waiting before reading pauses
_TEXT_PLAIN = ("content-type", "text/plain")
_DATE_ONLY = frozenset({"date"})
_SLASHES = re.compile(r"/{2,}")


class _DateCache:
    """The Date header value, rebuilt at most once per second (Envoy's DateProvider)."""

    __slots__ = ("second", "value")

    def __init__(self):
        self.second = -1
        self.value = ""

    def get(self) -> str:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second = second
            self.value = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
        return self.value


DATE = _DateCache()


def new_request_id(_bits=random.getrandbits) -> str:
    """A random (version 4) UUID string, without uuid.uuid4()'s object: Envoy's request ids
    are random UUIDs too, not secrets."""
    n = (_bits(128) & ~(0xF000 << 64) & ~(0xC000 << 48)) | (0x4000 << 64) | (0x8000 << 48)
    h = "%032x" % n
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1" or ip.startswith("::ffff:127.")


# The x-envoy-* request headers that steer Envoy itself: removed from every external request
# before anything reads them, and three more from requests at the edge (use_remote_address).
EXTERNAL_STRIPPED = ("x-envoy-retriable-status-codes", "x-envoy-retriable-header-names",
                     "x-envoy-retry-on", "x-envoy-retry-grpc-on", "x-envoy-max-retries",
                     "x-envoy-upstream-alt-stat-name", "x-envoy-upstream-rq-timeout-ms",
                     "x-envoy-upstream-rq-per-try-timeout-ms",
                     "x-envoy-upstream-rq-timeout-alt-response", "x-envoy-expected-rq-timeout-ms",
                     "x-envoy-force-trace", "x-envoy-ip-tags", "x-envoy-original-url",
                     "x-envoy-hedge-on-per-try-timeout")
EDGE_STRIPPED = ("x-envoy-decorator-operation", "x-envoy-downstream-service-cluster",
                 "x-envoy-downstream-service-node")
EXTERNAL_STRIPPED_SET = frozenset(EXTERNAL_STRIPPED) | {"x-envoy-internal"}
EDGE_STRIPPED_SET = EXTERNAL_STRIPPED_SET | frozenset(EDGE_STRIPPED)


class HttpConnection(asyncio.Protocol):
    """One downstream connection."""

    def __init__(self, worker, listener, chain, peer, original, conn_id: int, initial=None):
        self.worker = worker
        self.loop = worker.loop
        self.listener = listener
        self.chain = chain
        self.hcm = chain.http_config              # HttpConfig (config.py)
        self.peer = peer
        self.original = original
        self.id = conn_id
        self.initial = initial
        self.transport = None
        self.codec = None
        self.streams: dict = {}
        self.active = None                        # HTTP/1.1: the stream being served
        self.queued: deque = deque()              # HTTP/1.1: events of pipelined requests
        self.read_pauses = 0
        self.write_paused = False
        self.closed = False
        self.draining = False
        self.idle_timer = None
        self.idle_deadline = 0.0
        self.header_timer = None
        self.state = "http"                       # migration.py: not an L4 connection
        self.local = None
        self.requests = 0
        self.dirty = False                        # queued bytes wait for flush_dirty()
        self.lingering = None                     # delayed close: the final close() timer
        self.duration_timer = None                # max_connection_duration
        self.stream_timer = None                  # stream_idle_timeout / request_timeout sweep
        self.deadline_timer = None                # route timeouts of the streams (watch_deadline)
        self.drain_timer = None                   # HTTP/2: the final GOAWAY's deadline
        self.deadline_at = 0.0
        self.on_idle = None                       # migration waits for this connection
        self.moving_fd = -1

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        hcm = self.hcm
        transport.set_write_buffer_limits(high=hcm.buffer_limit)
        self.local = self.original or transport.get_extra_info("sockname")[:2]
        stats = self.worker.stats
        stats.counters[hcm.stat_cx_total] += 1
        stats.gauges[hcm.stat_cx_active] += 1
        if hcm.codec_type == "HTTP2":
            self._use_http2()
        elif hcm.codec_type == "HTTP1":
            self._use_http1()
        self._arm_idle()
        if hcm.max_connection_duration:
            self.duration_timer = self.loop.call_later(hcm.max_connection_duration, self.drain)
        if self.initial:
            # What the listener's inspectors read first: (bytes, whether EOF followed).
            (data, eof), self.initial = self.initial, None
            if data:
                self.data_received(data)
            if eof and not self.closed:
                self.eof_received()

    def _use_http1(self) -> None:
        hcm = self.hcm
        self.codec = Http1ServerCodec(max_header_bytes=hcm.max_header_bytes,
                                      max_headers=hcm.max_headers)
        self.worker.stats.counters[hcm.stat_cx_http1_total] += 1

    def _use_http2(self) -> None:
        from ...codecs.http2 import Http2ServerCodec
        hcm = self.hcm
        self.codec = Http2ServerCodec(max_header_bytes=hcm.max_header_bytes,
                                      max_headers=hcm.max_headers, **hcm.http2_options)
        self.codec.initiate()
        self.worker.stats.counters[hcm.stat_cx_http2_total] += 1

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return                  # lingering after close(): dropped
        codec = self.codec
        if codec is None:
            # codec_type AUTO: the HTTP/2 preface decides (h2c with prior knowledge).
            if self.initial:
                data = self.initial + data
                self.initial = None
            if len(data) < len(H2_PREFACE) and H2_PREFACE.startswith(data):
                self.initial = data
                return
            if data.startswith(H2_PREFACE):
                self._use_http2()
            else:
                self._use_http1()
            codec = self.codec
        events = codec.receive(data)
        if self.active is None and not self.streams:
            self._header_deadline(codec)
        for event in events:
            self._dispatch(event)
        self.flush()
        if codec.closed and not self.streams and not self.closed:
            # HTTP/2 after its final GOAWAY (drain), or a peer's GOAWAY, with nothing open.
            self.close()

    def _dispatch(self, event, queued: bool = False) -> None:
        kind = type(event)
        if (self.queued and not queued) or (self.active is not None
                                            and event.stream_id != self.active.id):
            # HTTP/1.1: a pipelined request waits for the one being served.
            self.queued.append(event)
            if len(self.queued) == MAX_QUEUED_EVENTS:
                self.pause_reading(True)
            return
        if kind is Body:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_request_body(event.data, event.end_stream)
        elif kind is RequestHead:
            self._on_request_head(event)
        elif kind is Trailers:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_request_trailers(event.headers)
        elif kind is StreamReset:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self.worker.stats.counters[self.hcm.stat_rq_rx_reset] += 1
                stream.reset("downstream reset")
        elif kind is ProtocolError:
            self._on_protocol_error(event)
        elif kind is WindowOpen:
            # The codec flushed what the window allows; streams held for it may read again.
            codec = self.codec
            for stream in list(self.streams.values()):
                if stream.window_held and codec.pending(stream.id) <= stream.buffer_limit // 2:
                    stream.window_held = False
                    stream.downstream_paused(False)
        # GoAway needs nothing here.

    def eof_received(self):
        if self.closed:
            if self.lingering is not None:
                self.lingering.cancel()
                self.lingering = None
            self.transport.close()
            return False
        if self.codec is not None:
            for event in self.codec.receive(b""):
                self._dispatch(event)
        # Envoy does not half-close HTTP connections: the client closing ends them.
        self._abort_streams("downstream remote disconnect")
        self.close()
        return False

    def connection_lost(self, exc) -> None:
        if self.lingering is not None:
            self.lingering.cancel()
            self.lingering = None
        self._abort_streams("downstream connection closed")
        self._closed()

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in list(self.streams.values()):
            stream.downstream_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.downstream_paused(False)
        if self.codec is not None and self.codec.closed and not self.streams:
            self.close()
        elif self.on_idle is not None and self.movable:
            self._held()

    # -- streams ----------------------------------------------------------------------------

    def _on_request_head(self, event: RequestHead) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        stream = Stream(self, event)
        self.streams[event.stream_id] = stream
        self.requests += 1
        if self.stream_timer is None and (self.hcm.shortest_idle or self.hcm.request_timeout):
            self.stream_timer = self.loop.call_later(self._sweep_interval(), self._sweep_streams)
        if self.codec.__class__ is Http1ServerCodec:
            self.active = stream
        stream.start()

    def stream_done(self, stream) -> None:
        self.streams.pop(stream.id, None)
        if self.active is stream:
            self.active = None
            queue = self.queued
            while queue and not self.closed:
                event = queue[0]
                if self.active is not None and event.stream_id != self.active.id:
                    break
                queue.popleft()
                if len(queue) == MAX_QUEUED_EVENTS - 1:
                    self.pause_reading(False)
                self._dispatch(event, queued=True)
        if self.closed:
            return
        self.flush()
        if self.codec.closed and not self.streams:
            self.close()
        elif not self.streams:
            if self.draining:
                self.codec.goaway()
                self.flush()
                if self.codec.closed:
                    self.close()
                    return
            if self.on_idle is not None and self.movable:
                self._held()
                return
            self._arm_idle()

    def _on_protocol_error(self, event: ProtocolError) -> None:
        counters = self.worker.stats.counters
        counters[self.hcm.stat_cx_protocol_error] += 1
        stream = self.streams.get(event.stream_id)
        if event.status and event.stream_id and (stream is None or not stream.response_started):
            if stream is None:
                stream = Stream.for_error(self, event.stream_id)
                self.streams[event.stream_id] = stream
                if self.codec.__class__ is Http1ServerCodec:
                    self.active = stream
            stream.close_connection = self.codec.__class__ is Http1ServerCodec
            stream.local_reply(event.status, _ERROR_BODIES.get(event.status, ""),
                               _ERROR_DETAILS.get(event.status, "codec_error"))
            return
        if stream is not None:
            stream.reset(event.reason)
        if self.codec.__class__ is Http1ServerCodec or not event.stream_id:
            self.flush()
            self.close()

    def _abort_streams(self, reason: str) -> None:
        # The queue goes first: ending the active stream must not start the pipelined ones.
        self.queued.clear()
        self.active = None
        for stream in list(self.streams.values()):
            stream.reset(reason, notify=False)
        self.streams.clear()

    # -- writing, pausing, closing ----------------------------------------------------------

    def flush(self) -> None:
        self.dirty = False
        if self.closed:
            return
        data = self.codec.data_to_send() if self.codec is not None else b""
        if data:
            self.transport.write(data)

    def mark_dirty(self) -> None:
        """Bytes are queued in the codec: written when the current batch of upstream events
        is done (one write for a response's head and body), see pool.PoolManager.flush_dirty."""
        if not self.dirty:
            self.dirty = True
            self.worker.http_pools.dirty.append(self)

    def pause_reading(self, on: bool) -> None:
        """Counted: reading resumes only when every reason to pause is gone."""
        was = self.read_pauses
        self.read_pauses += 1 if on else -1
        if self.closed or self.transport is None:
            return
        if was == 0 and self.read_pauses == 1:
            self.transport.pause_reading()
        elif was == 1 and self.read_pauses == 0:
            self.transport.resume_reading()

    def close(self) -> None:
        """Close after the queued bytes, Envoy's delayed close: our side is shut for writing
        and what the peer still sends is read and dropped until it closes too (or
        delayed_close_timeout passes). Closing with unread bytes would make the kernel send
        a RST, and a RST can destroy our last bytes (a final GOAWAY, an error reply) before
        the peer reads them."""
        if self.closed:
            return
        self.flush()
        self._closed()
        transport = self.transport
        timeout = self.hcm.delayed_close_timeout
        if not timeout or not transport.can_write_eof() or transport.is_closing():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:
            transport.close()
            return
        self.lingering = self.loop.call_later(timeout, transport.close)

    def abort(self) -> None:
        if not self.closed:
            self._closed()
            self.transport.abort()

    def _closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel_timers()
        gauges = self.worker.stats.gauges
        gauges[self.hcm.stat_cx_active] -= 1
        gauges[self.listener.stat_cx_active] -= 1
        self.worker.connection_closed(self)

    def _cancel_timers(self) -> None:
        for timer in (self.idle_timer, self.header_timer, self.duration_timer, self.stream_timer,
                      self.deadline_timer, self.drain_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self.header_timer = self.duration_timer = self.stream_timer = None
        self.deadline_timer = self.drain_timer = None

    def drain(self) -> None:
        """Stop taking requests: HTTP/1.1 says `connection: close` on the response in flight
        (or closes now when idle); HTTP/2 sends GOAWAY and lets open streams finish."""
        self.draining = True
        if self.closed:
            return
        if self.codec is None:
            self.close()
            return
        self.codec.goaway()
        self.flush()
        if self.codec.__class__ is not Http1ServerCodec and self.drain_timer is None:
            # A client that never answers our PING still gets its final GOAWAY (Envoy's
            # drain_timeout between the two phases).
            self.drain_timer = self.loop.call_later(self.hcm.drain_timeout, self._final_goaway)
        # HTTP/1.1 idle: close now. HTTP/2: only once the final GOAWAY is out (the codec sends
        # it when our PING comes back): streams the client opened before it saw the first
        # GOAWAY are still on their way and must be served, not dropped.
        if not self.streams and (self.codec.__class__ is Http1ServerCodec or self.codec.closed):
            self.close()

    def _final_goaway(self) -> None:
        self.drain_timer = None
        if self.closed:
            return
        self.codec.goaway(last_stream_id=max(self.streams, default=0))
        self.flush()
        if self.codec.closed and not self.streams:
            self.close()

    def watch_deadline(self, deadline: float) -> None:
        """A stream's route timeout (monotonic time). One timer per connection, armed for
        the earliest deadline; it finds the streams that are due when it fires and re-arms
        for the next, so a request costs no timer of its own."""
        if self.deadline_timer is None or deadline < self.deadline_at:
            if self.deadline_timer is not None:
                self.deadline_timer.cancel()
            self.deadline_at = deadline
            self.deadline_timer = self.loop.call_later(max(deadline - time.monotonic(), 0),
                                                       self._on_deadline)

    def _on_deadline(self) -> None:
        self.deadline_timer = None
        if self.closed:
            return
        now = time.monotonic()
        upcoming = 0.0
        for stream in list(self.streams.values()):
            router = stream.router
            if router is None or not router.deadline:
                continue
            if router.deadline <= now:
                router.on_timeout()
            elif not upcoming or router.deadline < upcoming:
                upcoming = router.deadline
        self.flush()
        if upcoming and not self.closed:
            # libuv's clock is cached per loop iteration: re-check on the real clock rather
            # than answer a 504 a hair early.
            self.deadline_at = upcoming
            self.deadline_timer = self.loop.call_later(max(upcoming - now, 0.0005), self._on_deadline)

    def _sweep_interval(self) -> float:
        hcm = self.hcm
        return min(t for t in (hcm.shortest_idle, hcm.request_timeout) if t) / 4

    def _sweep_streams(self) -> None:
        """stream_idle_timeout and request_timeout, for every stream of this connection, by
        one timer that looks every quarter of the shorter timeout (so a timeout fires up to
        25% late, never early): no timer per request."""
        self.stream_timer = None
        if self.closed or not self.streams:
            return
        hcm = self.hcm
        now = self.loop.time()
        for stream in list(self.streams.values()):
            if stream.done:
                continue
            if hcm.request_timeout and not stream.request_complete and \
                    now - stream.info.start_monotonic >= hcm.request_timeout:
                stream.timed_out(408, "request timeout", "request_overall_timeout",
                                 self.hcm.stat_rq_timeout)
            elif stream.idle_timeout and now - stream.last_activity >= stream.idle_timeout:
                stream.timed_out(408, "stream timeout", "stream_idle_timeout",
                                 self.hcm.stat_rq_idle_timeout)
        self.flush()
        if self.streams and not self.closed:
            self.stream_timer = self.loop.call_later(self._sweep_interval(), self._sweep_streams)

    def _arm_idle(self) -> None:
        """One lazy timer (STYLE.md pattern 5): going idle moves the deadline; the timer,
        armed once, re-arms itself when it fires early or finds requests in flight."""
        timeout = self.hcm.idle_timeout
        if timeout and not self.closed:
            self.idle_deadline = self.loop.time() + timeout
            if self.idle_timer is None:
                self.idle_timer = self.loop.call_at(self.idle_deadline, self._on_idle_timeout)

    def _on_idle_timeout(self) -> None:
        self.idle_timer = None
        if self.closed:
            return
        if self.streams:
            return          # stream_done re-arms
        now = self.loop.time()
        if now < self.idle_deadline:
            self.idle_timer = self.loop.call_at(self.idle_deadline, self._on_idle_timeout)
            return
        if not self.streams and not self.closed:
            self.worker.stats.counters[self.hcm.stat_cx_idle_timeout] += 1
            self.drain()

    def _header_deadline(self, codec) -> None:
        """request_headers_timeout: a request begun must finish its headers in time."""
        timeout = self.hcm.request_headers_timeout
        if not timeout:
            return
        if getattr(codec, "awaiting_head", False):
            if self.header_timer is None:
                self.header_timer = self.loop.call_later(timeout, self._on_header_timeout)
        elif self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _on_header_timeout(self) -> None:
        self.header_timer = None
        if self.closed or self.streams:
            return
        self.worker.stats.counters[self.hcm.stat_rq_header_timeout] += 1
        self._on_protocol_error(ProtocolError("request header timeout", 408,
                                              self.codec.abandon_head()))

    # -- moving to another worker (migration.py) --------------------------------------------

    @property
    def can_move(self) -> bool:
        """HTTP/1.1 connections can move between requests; HTTP/2 ones (HPACK state,
        windows) drain instead."""
        return self.codec is None or self.codec.__class__ is Http1ServerCodec

    @property
    def movable(self) -> bool:
        """Idle HTTP/1.1 between requests, nothing unsent: the socket alone is the whole
        state, so it can move to another process as a bare descriptor."""
        codec = self.codec
        if self.closed or self.streams or self.queued or self.initial:
            return False
        if codec is not None and (codec.__class__ is not Http1ServerCodec or not codec.idle
                                  or codec.awaiting_head or codec.closed):
            return False
        return self.transport is not None and self.transport.get_write_buffer_size() == 0

    def hold_when_idle(self, on_idle) -> None:
        """Migration: finish the request in flight, then stop reading and call `on_idle`."""
        self.on_idle = on_idle
        if self.movable:
            self._held()

    def _held(self) -> None:
        on_idle, self.on_idle = self.on_idle, None
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()
        if on_idle is not None:
            on_idle(self)

    def export(self) -> tuple[dict, list[int]]:
        self.transport.pause_reading()
        self._cancel_timers()       # none may touch the socket the next worker adopts
        sock = self.transport.get_extra_info("socket")
        self.moving_fd = os.dup(sock.fileno())
        state = {"id": self.id, "listener": self.listener.name, "state": "http",
                 "chain": self.chain.index, "peer": list(self.peer) if self.peer else None,
                 "original": list(self.original) if self.original else None,
                 "initial": None}
        return state, [self.moving_fd]

    def migrated(self) -> None:
        """Another worker adopted the socket: let go without a FIN (it holds the same one)."""
        fd, self.moving_fd = self.moving_fd, -1
        self._closed()
        self.transport.abort()
        if fd >= 0:
            os.close(fd)

    def resume(self) -> None:
        fd, self.moving_fd = self.moving_fd, -1
        if fd >= 0:
            os.close(fd)
        if not self.closed:
            self.transport.resume_reading()
            self._arm_idle()

    def shutdown_now(self) -> None:
        """Worker stopping: close at once."""
        self._abort_streams("worker stopping")
        self.abort()


# Envoy's local reply bodies for codec errors (the reason phrase) and their details.
_ERROR_BODIES = {400: "Bad Request", 408: "request header timeout", 413: "Payload Too Large",
                 426: "Upgrade Required", 431: "Request Header Fields Too Large",
                 501: "Not Implemented"}
_ERROR_DETAILS = {400: "http1.codec_error", 408: "request_header_timeout",
                  413: "request_payload_too_large", 426: "upgrade_required",
                  431: "http1.headers_too_large", 501: "http1.codec_error"}


class Stream:
    """One request/response exchange (Envoy's ActiveStream)."""

    __slots__ = ("conn", "id", "loop", "worker", "stats", "hcm", "request", "info", "route",
                 "filters", "filter_index", "router", "request_complete", "response_started",
                 "response_complete", "trailers", "held_body", "held_bytes", "close_connection",
                 "done", "cluster_name", "delay_timer", "buffer_limit", "paused_downstream",
                 "upgrade", "expect_continue", "end_at_head", "controls", "last_activity",
                 "idle_timeout", "window_held")

    def __init__(self, conn: HttpConnection, event: RequestHead | None):
        self.conn = conn
        self.loop = conn.loop
        self.worker = conn.worker
        self.stats = conn.worker.stats.counters
        self.hcm = conn.hcm
        self.id = event.stream_id if event is not None else 0
        self.request = event.request if event is not None else None
        self.end_at_head = event.end_stream if event is not None else True
        self.request_complete = self.end_at_head
        self.upgrade = event.upgrade if event is not None else None
        self.expect_continue = event.expect_continue if event is not None else False
        protocol = "HTTP/2" if self.request is not None and self.request.version == "2" else \
            f"HTTP/{self.request.version}" if self.request is not None else "HTTP/1.1"
        self.info = StreamInfo(self.request, self.loop.time(), protocol, conn.peer, conn.local,
                               conn.id)
        self.route = None
        self.filters = ()
        self.filter_index = 0
        self.router = None
        self.response_started = False
        self.response_complete = False
        self.trailers = None
        self.held_body: list = []       # body that arrived before the router took over
        self.held_bytes = 0
        self.close_connection = False
        self.done = False
        self.cluster_name = None
        self.delay_timer = None
        self.buffer_limit = conn.hcm.buffer_limit
        self.paused_downstream = False
        self.controls = False
        self.last_activity = self.info.start_monotonic
        self.idle_timeout = conn.hcm.stream_idle_timeout
        self.window_held = False

    @classmethod
    def for_error(cls, conn, stream_id: int) -> "Stream":
        """A stream for a request the codec could not parse: answered with its error."""
        stream = cls(conn, None)
        stream.id = stream_id
        hcm = conn.hcm
        stream.stats[hcm.stat_rq_total] += 1
        conn.worker.stats.gauges[hcm.stat_rq_active] += 1     # _end() counts it down
        return stream

    # -- request path -----------------------------------------------------------------------

    def start(self) -> None:
        hcm = self.hcm
        counters = self.stats
        counters[hcm.stat_rq_total] += 1
        counters[hcm.stat_rq_http2_total if self.request.version == "2" else
                 hcm.stat_rq_http1_total] += 1
        self.worker.stats.gauges[hcm.stat_rq_active] += 1
        request = self.request
        if request.version == "1.0" and not hcm.accept_http_10:
            self.close_connection = True
            self.local_reply(426, "Upgrade Required", "low_version")
            return
        if not request.authority:
            if request.version == "1.0" and hcm.default_host_for_http_10:
                request.authority = hcm.default_host_for_http_10
            else:
                self.close_connection = request.version != "2"
                self.local_reply(400, "missing host header", "missing_host_header")
                return
        if self.upgrade and self.upgrade not in hcm.upgrade_types:
            self.local_reply(403, "", "upgrade_failed")
            return
        if self.expect_continue and request.version != "2":
            self.conn.codec.send_head(self.id, Response(100, Headers()), False)
        self._mutate_request_headers()
        if hcm.merge_slashes and "//" in request.path:
            path, sep, query = request.path.partition("?")
            request.path = _SLASHES.sub("/", path) + sep + query
        if (hcm.strip_any_host_port or hcm.strip_matching_host_port) and ":" in request.authority:
            host, _, port = request.authority.rpartition(":")
            if port.isdigit() and "]" not in port and (
                    hcm.strip_any_host_port or int(port) == self.conn.listener.port):
                request.authority = host
        if hcm.via:
            via = request.headers.get("via")
            request.headers.set("via", f"{via}, {hcm.via}" if via else hcm.via)
        table = hcm.routes
        route = self.route = table.route(request) if table is not None else None
        if route is not None:
            self.info.route_name = route.name
            if route.idle_timeout_set:
                self.idle_timeout = route.idle_timeout      # 0s: none for this route
            if route.kind == "cluster":
                # Chosen with the route, before the filters: the fault filter's
                # upstream_cluster condition reads it.
                self.cluster_name = self.info.upstream_cluster = route.pick_cluster(request, random.random)
        self.filters = [f for f in (factory.create(self) for factory in hcm.filter_factories)
                        if f is not None] if hcm.filter_factories else ()
        self._continue_filters()

    def _mutate_request_headers(self) -> None:
        """What Envoy's connection manager does to every request before routing
        (ConnectionManagerUtility::mutateRequestHeaders): x-forwarded-for and -proto, the
        internal/external decision, the x-envoy-* controls an external client may not send,
        and x-request-id."""
        hcm = self.hcm
        request = self.request
        headers = request.headers
        remote_ip = self.conn.peer[0] if self.conn.peer else ""
        # One pass over the names: most requests carry none of the headers looked at here.
        present = {name for name, _ in headers.items}
        xff = headers.get("x-forwarded-for") if "x-forwarded-for" in present else None
        if hcm.use_remote_address:
            if not hcm.skip_xff_append:
                # A loopback peer is recorded as this node's own address, as Envoy does.
                appended = hcm.node_address if _is_loopback(remote_ip) else remote_ip
                if xff is None:
                    headers.add("x-forwarded-for", appended)
                else:
                    headers.set("x-forwarded-for", f"{xff},{appended}")
            if "x-forwarded-proto" in present:
                headers.set("x-forwarded-proto", request.scheme)
            else:
                headers.add("x-forwarded-proto", request.scheme)
            # Internal only when the peer is the whole chain (no x-forwarded-for came in).
            internal = xff is None and hcm.is_internal(remote_ip)
        else:
            if "x-forwarded-proto" not in present:
                headers.add("x-forwarded-proto", request.scheme)
            # Without use_remote_address the client is what x-forwarded-for names, when it
            # names exactly one address.
            internal = xff is not None and "," not in xff and hcm.is_internal(xff.strip())
        edge = hcm.use_remote_address and not internal
        # x-envoy-* controls survive only on internal requests (and route mutations may add
        # them): only then does the router look.
        self.controls = internal or self.route_adds_headers
        if internal:
            headers.set("x-envoy-internal", "true")
        else:
            # An external request may not steer the proxy (Envoy's cleanInternalHeaders).
            doomed = present & (EDGE_STRIPPED_SET if edge else EXTERNAL_STRIPPED_SET)
            if doomed:
                headers.items = [kv for kv in headers.items if kv[0] not in doomed]
            if edge:
                headers.set("x-envoy-external-address", remote_ip)
        if hcm.generate_request_id:
            request_id = headers.get("x-request-id") if "x-request-id" in present else None
            if request_id is None:
                request_id = new_request_id()
                headers.add("x-request-id", request_id)
            elif edge and not hcm.preserve_external_request_id:
                request_id = new_request_id()
                headers.set("x-request-id", request_id)
            self.info.request_id = request_id
        else:
            self.info.request_id = headers.get("x-request-id")

    @property
    def route_adds_headers(self) -> bool:
        return self.hcm.routes is not None and self.hcm.routes.adds_request_headers

    def _continue_filters(self, reply: LocalReply | None = None) -> None:
        self.delay_timer = None
        filters = self.filters
        while self.filter_index < len(filters) or reply is not None:
            if reply is not None:
                result, reply = reply, None
            else:
                result = filters[self.filter_index].on_request_headers(self.request,
                                                                       self.end_at_head)
                self.filter_index += 1
            if result is None:
                continue
            if isinstance(result, LocalReply):
                if result.flags:
                    self.info.response_flags.append(result.flags)
                self.local_reply(result.status, result.body, result.details,
                                 extra=result.headers)
                return
            if isinstance(result, Delay):
                if result.flags:
                    self.info.response_flags.append(result.flags)
                then = result.then
                self.delay_timer = self.loop.call_later(
                    result.seconds, self._continue_filters if then is None else
                    lambda: self._continue_filters(then))
                return
        self._route()

    def _route(self) -> None:
        if self.done:
            return
        hcm = self.hcm
        route = self.route
        info = self.info
        if route is None:
            self.stats[hcm.stat_no_route] += 1
            info.response_flags.append("NR")
            self.local_reply(404, "", "route_not_found")
            return
        kind = route.kind
        if kind == "direct_response":
            self.stats[hcm.stat_rq_direct_response] += 1
            status, body = route.direct()
            _, location = route.redirect_location(self.request)
            self.local_reply(status, body, "direct_response", content_type=bool(body),
                             extra=[("location", location)] if location else ())
            return
        if kind == "redirect":
            self.stats[hcm.stat_rq_redirect] += 1
            status, location = route.redirect_location(self.request)
            self.local_reply(status, "", "via_redirect", extra=[("location", location)],
                             content_type=False)
            return
        request = self.request
        name = self.cluster_name
        cluster = self.worker.clusters.get(name) if name else None
        if cluster is None:
            self.stats[hcm.stat_no_cluster] += 1
            info.response_flags.append("NC")
            self.local_reply(route.cluster_not_found_status, "", "cluster_not_found")
            return
        # Envoy's order: header mutations first, then host and path rewrites (a
        # host_rewrite_header reads the mutated headers).
        self._apply_mutations(request.headers, route.request_header_mutations(name))
        route.rewrite(request, name, envoy_headers=not hcm.suppress_envoy_headers)
        if self.controls:
            timeout, retry = route_controls(route, request.headers)
        else:
            timeout, retry = route.timeout, route.retry
        if not hcm.suppress_envoy_headers and timeout:
            per_try = retry.per_try_timeout if retry is not None else None
            expected = per_try if per_try else timeout
            request.headers.set("x-envoy-expected-rq-timeout-ms", str(int(expected * 1000)))
        hash_key = route.hash_key(request, self.conn.peer[0] if self.conn.peer else "") \
            if route.hash_policies else None
        router = self.router = Router(self, route, cluster, hash_key, timeout, retry)
        held, self.held_body = self.held_body, []
        for chunk in held:
            router.body.append(chunk)
            router.body_bytes += len(chunk)
        router.start()

    def _apply_mutations(self, headers: Headers, mutations) -> None:
        """Header add/remove from the route config, in the order routing.py gives them."""
        if not mutations:
            return
        render = self.hcm.render_header_value
        info = self.info
        for op, name, template, action in mutations:
            if op == "remove":
                headers.remove(name)
                continue
            value = render(template, info)
            action, keep_empty = _split_action(action)
            if value == "" and not keep_empty:
                continue                # Envoy adds no empty header unless keep_empty_value
            if action == "APPEND_IF_EXISTS_OR_ADD":
                headers.add(name, value)
            elif action == "ADD_IF_ABSENT":
                if name not in headers:
                    headers.add(name, value)
            elif action == "OVERWRITE_IF_EXISTS_OR_ADD":
                headers.remove(name)            # Envoy: every old value goes, the new one
                headers.add(name, value)        # comes last
            elif action == "OVERWRITE_IF_EXISTS":
                if headers.remove(name):
                    headers.add(name, value)

    def on_request_body(self, data: bytes, end_stream: bool) -> None:
        if self.done:
            return
        self.last_activity = self.loop.time()
        self.info.bytes_received += len(data)
        if end_stream:
            self.request_complete = True
            self.info.last_request_byte = self.loop.time()
        router = self.router
        if router is not None:
            router.request_body(data, end_stream)
            self.conn.codec.consumed(self.id, len(data))
            return
        # Held while the filters decide (a fault delay): bounded by the buffer limit.
        self.held_body.append(data)
        self.held_bytes += len(data)
        self.conn.codec.consumed(self.id, len(data))
        if self.held_bytes > self.buffer_limit and not self.response_started:
            self.stats[self.hcm.stat_rq_too_large] += 1
            self.local_reply(413, "Payload Too Large", "request_payload_too_large")

    def on_request_trailers(self, headers) -> None:
        self.request_complete = True
        self.trailers = headers
        if self.router is not None:
            self.router.request_trailers(headers)

    # -- response path ----------------------------------------------------------------------

    def upstream_response_head(self, response, end_stream: bool, service_ms: int) -> None:
        hcm = self.hcm
        headers = response.headers
        if self.route is not None:
            self._apply_mutations(headers, self.route.response_header_mutations(self.cluster_name))
        if not hcm.suppress_envoy_headers:
            self._send_head(response, end_stream, ("x-envoy-upstream-service-time", str(service_ms)))
        else:
            self._send_head(response, end_stream)

    def upstream_response_body(self, data: bytes, end_stream: bool) -> None:
        if self.done:
            return
        self.last_activity = self.loop.time()
        conn = self.conn
        self.info.bytes_sent += len(data)
        codec = conn.codec
        codec.send_body(self.id, data, end_stream)
        conn.mark_dirty()
        if not end_stream and not self.window_held and codec.pending(self.id) > self.buffer_limit:
            # HTTP/2: the client's window holds bytes in the codec; stop reading the upstream
            # until WINDOW_UPDATE lets them out (no unbounded buffer).
            self.window_held = True
            self.downstream_paused(True)
        if end_stream:
            self._response_done()

    def upstream_response_trailers(self, trailers) -> None:
        if self.done:
            return
        self.info.response_trailers = trailers
        self.conn.codec.send_trailers(self.id, trailers)
        self.conn.mark_dirty()
        self._response_done()

    def _send_head(self, response, end_stream: bool, service_time=None) -> None:
        hcm = self.hcm
        headers = response.headers
        transformation = hcm.server_header_transformation
        # The headers the proxy owns, replaced in one pass: date (Envoy's DateProvider),
        # server (OVERWRITE, the default) and x-envoy-upstream-service-time.
        overwrite = hcm.owned_response_headers if transformation == "OVERWRITE" else _DATE_ONLY
        items = headers.items = [kv for kv in headers.items if kv[0] not in overwrite]
        if service_time is not None:
            if transformation != "OVERWRITE" and headers.remove("x-envoy-upstream-service-time"):
                items = headers.items
            items.append(service_time)
        if transformation == "OVERWRITE":
            items.append(("server", hcm.server_name))
        elif transformation == "APPEND_IF_ABSENT" and "server" not in headers:
            items.append(("server", hcm.server_name))
        items.append(("date", DATE.get()))
        if hcm.via and self.request is not None:
            via = headers.get("via")
            headers.set("via", f"{via}, {hcm.via}" if via else hcm.via)
        if hcm.always_set_request_id_in_response and self.info.request_id:
            headers.set("x-request-id", self.info.request_id)

        for stream_filter in reversed(self.filters[:self.filter_index]):
            stream_filter.on_response_headers(response, end_stream)
        self.response_started = True
        info = self.info
        info.response = response
        info.response_code = response.status
        if not info.response_code_details:
            info.response_code_details = "via_upstream"
        codec = self.conn.codec
        conn = self.conn
        limit = hcm.max_requests_per_connection
        if self.close_connection or (limit and conn.requests >= limit) or conn.draining:
            codec.goaway()      # HTTP/1.1: this response says connection: close; HTTP/2: GOAWAY
        codec.send_head(self.id, response, end_stream)
        self.conn.mark_dirty()
        if end_stream:
            self._response_done()

    def local_reply(self, status: int, body, details: str, extra=(), content_type=True) -> None:
        """Answer from the proxy itself, as Envoy's sendLocalReply does."""
        if self.done:
            return
        if self.response_started:
            self.reset(details)
            return
        if self.router is not None and not self.router.finished:
            self.router.cancel()
        if self.delay_timer is not None:
            self.delay_timer.cancel()
            self.delay_timer = None
        if isinstance(body, str):
            body = body.encode()
        info = self.info
        info.response_code_details = details
        # Envoy writes no content-length on a 1xx/204 (RFC 9110 8.6).
        headers = Headers([] if status < 200 or status == 204 else
                          [("content-length", str(len(body)))])
        if body and content_type:
            headers.add(*_TEXT_PLAIN)
        for name, value in extra:
            headers.add(name, value)
        if self.route is not None and self.request is not None and details != "route_not_found":
            self._apply_mutations(headers, self.route.response_header_mutations(self.cluster_name))
        if not self.request_complete and self.request is not None and \
                self.conn.codec.__class__ is Http1ServerCodec:
            # The rest of the request body would be read as the next request: close after.
            self.conn.codec.goaway()
        head_request = self.request is not None and self.request.method == "HEAD"
        if body and not head_request:
            self._send_head(Response(status, headers), False)
            self.info.bytes_sent += len(body)
            self.conn.codec.send_body(self.id, body, True)
            self._response_done()
        else:
            self._send_head(Response(status, headers), True)
        self.conn.flush()

    def _response_done(self) -> None:
        self.response_complete = True
        self._end()

    # -- backpressure -----------------------------------------------------------------------

    def pause_downstream(self, on: bool) -> None:
        if on != self.paused_downstream:
            self.paused_downstream = on
            self.conn.pause_reading(on)

    def downstream_paused(self, on: bool) -> None:
        """The client cannot take more (its socket, or its HTTP/2 window): hold the upstream."""
        router = self.router
        if router is not None and router.upstream is not None:
            router.upstream.hold_upstream(on)

    # -- ending -----------------------------------------------------------------------------

    def reset(self, reason: str, notify: bool = True) -> None:
        """Abort this stream (client reset, upstream reset after the response began)."""
        if self.done:
            return
        if self.router is not None:
            self.router.cancel()
        if self.delay_timer is not None:
            self.delay_timer.cancel()
            self.delay_timer = None
        if not self.info.response_code_details:
            self.info.response_code_details = reason.replace(" ", "_")
        if notify:
            self.stats[self.hcm.stat_rq_tx_reset] += 1
            codec = self.conn.codec
            codec.reset(self.id)
            self.conn.flush()
            if codec.__class__ is Http1ServerCodec:
                self.conn.queued.clear()    # the connection dies: nothing queued may start
                self.conn.active = None
                self._end()
                self.conn.abort()
                return
        self._end()

    def timed_out(self, status: int, body: str, details: str, stat: str) -> None:
        """request_timeout / stream_idle_timeout: Envoy's 408 before the response began, a
        reset after."""
        self.stats[stat] += 1
        if self.response_started:
            self.reset(details)
        else:
            self.close_connection = self.conn.codec.__class__ is Http1ServerCodec
            self.local_reply(status, body, details)

    def reset_downstream(self, reason: str) -> None:
        """The upstream failed after the response began: the client must see it broken."""
        self.info.response_flags.append("UPE" if "protocol" in reason else "UR")
        self.reset(reason)

    def _end(self) -> None:
        if self.done:
            return
        self.done = True
        if self.paused_downstream:
            self.paused_downstream = False
            self.conn.pause_reading(False)
        hcm = self.hcm
        info = self.info
        info.last_downstream_byte = self.loop.time()
        code = info.response_code
        if code:
            name = hcm.stat_rq_class.get(code // 100)
            if name is not None:
                self.stats[name] += 1
        self.worker.stats.gauges[hcm.stat_rq_active] -= 1
        for access_log in hcm.access_logs:
            try:
                access_log.log(info)
            except Exception:       # a log line must never take the stream down with it
                log.exception("access log")
        for stream_filter in self.filters:
            stream_filter.on_log()
        self.conn.stream_done(self)


class HeaderRetryPolicy:
    """A route's retry policy as the request's x-envoy-retry-on / x-envoy-max-retries /
    x-envoy-upstream-rq-per-try-timeout-ms headers amend it (same attributes as
    routing.RetryPolicy)."""

    __slots__ = ("retry_on", "num_retries", "per_try_timeout", "retriable_status_codes",
                 "base", "max")

    def __init__(self, base_policy, retry_on, num_retries, per_try_timeout):
        self.retry_on = set(base_policy.retry_on if base_policy else ()) | retry_on
        self.num_retries = num_retries if num_retries is not None else \
            (base_policy.num_retries if base_policy else 1)
        self.per_try_timeout = per_try_timeout if per_try_timeout is not None else \
            (base_policy.per_try_timeout if base_policy else None)
        self.retriable_status_codes = base_policy.retriable_status_codes if base_policy else frozenset()
        self.base = base_policy.base if base_policy else 0.025
        self.max = base_policy.max if base_policy else 0.25


_CONTROL_HEADERS = ("x-envoy-retry-on", "x-envoy-max-retries", "x-envoy-upstream-rq-timeout-ms",
                    "x-envoy-upstream-rq-per-try-timeout-ms")
_CONTROL_SET = frozenset(_CONTROL_HEADERS)


def route_controls(route, headers):
    """(timeout, retry policy) for this request: the route's, amended by the x-envoy-*
    control headers that survived edge sanitizing; the router consumes those headers, so
    they are removed here."""
    timeout, retry = route.timeout, route.retry
    if _CONTROL_SET.isdisjoint([name for name, _ in headers.items]):
        return timeout, retry
    values = {name: headers.get(name) for name in _CONTROL_HEADERS}
    for name in _CONTROL_HEADERS:
        headers.remove(name)
    ms = _int(values["x-envoy-upstream-rq-timeout-ms"])
    if ms is not None:
        timeout = ms / 1000 or None
    retry_on = {v.strip() for v in (values["x-envoy-retry-on"] or "").split(",") if v.strip()}
    max_retries = _int(values["x-envoy-max-retries"])
    per_try_ms = _int(values["x-envoy-upstream-rq-per-try-timeout-ms"])
    if retry_on or (retry is not None and (max_retries is not None or per_try_ms is not None)):
        retry = HeaderRetryPolicy(retry, retry_on, max_retries,
                                  per_try_ms / 1000 if per_try_ms else None)
    return timeout, retry


def _int(text):
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _split_action(action: str) -> tuple[str, bool]:
    """routing.py's append action, "ACTION" or "ACTION!keep_empty" -> (ACTION, keep_empty)."""
    if action.endswith("!keep_empty"):
        return action[:-len("!keep_empty")], True
    return action, False
