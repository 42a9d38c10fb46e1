"""`envoy.filters.network.http_connection_manager`: one client connection speaking HTTP.

An `HttpConnection` is a thin asyncio.Protocol adapter (STYLE.md): bytes from the socket go
into the codec (HTTP/1.1, or HTTP/2 for codec_type HTTP2 and for AUTO when the client opens
with the HTTP/2 preface), the codec's events drive one `Stream` per request (stream.py), and
what the streams send is written once per batch of events.

HTTP/1.1 pipelining: requests are parsed as they come, but served one at a time in order;
the events of later requests wait in `queued` (reading pauses when too many wait).
Backpressure is counted (STYLE.md pattern 4): reading from the client pauses while any
upstream it feeds cannot take more, and an upstream's reading pauses while the client's
socket is full. The connection also owns the timers of its streams (route deadlines, the
idle and request timeout sweep), so that a request costs no timer of its own. Its moves to
another worker at a reload are connection_move.py's; its close, its idle timeout and the
timers of a request head still arriving, close_policy.py's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from ...codecs.events import (Body, HeadersRefused, ProtocolError, RequestHead, StreamReset,
                              Trailers, WindowOpen)
from ...codecs.h2limits import TOO_MANY_PREMATURE_RESETS
from ...codecs.http1_server import Http1ServerCodec
from ...connection import Connection, Lifecycle, register
from . import close_policy, downstream_end, express
from .close_policy import ClosePolicy
from .connection_move import HttpConnectionMoves, no_http_chain
from .stream import Stream
from .timer_queue import TimerQueue, queue_for

log = logging.getLogger("baton.http")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# The timers of HttpConnection that a connection per request never arms (_cancel_timers).
_OTHER_TIMERS = ("header_timer", "duration_timer", "stream_timer", "drain_timer", "hold_timer",
                 "unsent_poll")
MAX_QUEUED_EVENTS = 64          # pipelined events waiting before reading pauses
HOLD_BUFFER_LIMIT = 256 * 1024  # HTTP/2 bytes left unread while a move waits (h2move.py)


class HttpConnection(asyncio.Protocol, ClosePolicy, HttpConnectionMoves, Connection):
    """One downstream connection."""

    kind = "http"
    tls = None          # the TLS session's facts (an SSLObject-like), on an HTTPS transport

    # What most connections never change, as class defaults (an instance sets its own when
    # it does): a connection per request pays for the attributes it uses, not for all of them.
    header_timer = None
    lingering = None                          # delayed close: the final close() timer
    destroy_counted = False                   # downstream_end.connection_ends ran
    duration_timer = None                     # max_connection_duration
    stream_timer = None                       # stream_idle_timeout / request_timeout sweep
    sweep_due = 0.0                           # the sweep, while the deadline timer arms it
    starting = False                          # in a stream's start(): its request's head
    deadline_timer = None                     # route timeouts of the streams (watch_deadline)
    drain_timer = None                        # HTTP/2's final GOAWAY, HTTP/1.1's idle drain
    idle_draining = False                     # HTTP/1.1 after its idle timeout (_drain_when_idle)
    idle_drain_closing = False                # and its drain_timeout passed, a response in flight
    deadline_at = 0.0
    draining = False
    on_idle = None                            # migration waits for this connection
    moving_fd = -1
    backlog = None                            # HTTP/2: the call that reads the frames left
    flush_handle = None                       # HTTP/2: the write at the end of this turn
    # Write migration (inflight.py): in the old worker, the transport to the new one once
    # the client moved mid-response; in the new one, the exchange the old one serves.
    moved_to = None
    moving_client = None                      # the client's transport, while moving
    moving_upstream = None                    # a tunnel moving with both sockets (tunnel_move.py)
    hold_timer = None                         # HTTP/2: how long new streams wait unread
    hold_paused = False                       # and reading paused while they wait
    unsent_poll = None                        # a move waits for the kernel to take our bytes
    forwarded_response = None
    # And what every connection starts with (set on the instance once it changes). CPython
    # 3.11 keeps an instance's attributes in a compact array shared with its class while it
    # has at most 30 of them; past that, the instance gets a dict of its own, and every
    # attribute access on it takes the slower path: a connection per request ended with 36
    # set when these were set in __init__ (27 now; bench/RESULTS.md, 2026-12-08).
    initial = None                            # what the listener's inspectors read first
    transport = None
    codec = None
    active = None                             # HTTP/1.1: the stream being served
    read_pauses = 0
    idle_timer = None                         # a loop timer, or its place in a TimerQueue
    idle_deadline = 0.0
    state = Lifecycle.OPEN
    local = None
    requests = 0
    dirty = False                             # queued bytes wait for flush_dirty()
    express = False                           # HTTP/1.1 and the config allows express.py

    def __init__(self, worker, listener, chain, peer, original, conn_id: int, initial=None):
        self.worker = worker
        self.loop = worker.loop
        self.listener = listener
        self.chain = chain
        self.hcm = chain.http_config              # HttpConfig (config.py)
        self.peer = peer
        self.original = original
        self.id = conn_id
        if initial is not None:
            self.initial = initial
        self.streams: dict = {}
        self.queued: deque = deque()              # HTTP/1.1: events of pipelined requests
        # Read on every request: an instance's own attribute is read for less than a class
        # default (CPython 3.11 specializes only the former).
        self.closed = False
        self.write_paused = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        hcm = self.hcm
        transport.set_write_buffer_limits(high=hcm.buffer_limit)
        self.local = self.original or self.listener.local_address or \
            transport.get_extra_info("sockname")[:2]
        tls = transport.get_extra_info("ssl_object")
        if tls is not None:
            self.tls = tls
        stats = self.worker.stats
        stats.counters[hcm.stat_cx_total] += 1
        stats.gauges[hcm.stat_cx_active] += 1
        if self.codec is None:      # else adopted with its state (h2move.py, inflight.py)
            self._choose_codec()
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
        if self.forwarded_response is not None:
            self.forwarded_response.transport_ready()   # what came before this transport
        elif self.codec is not None and self.codec.multiplexed and self.codec.backlog:
            # Adopted with frames still unread (h2move.py): read them on the next turn.
            self.pause_reading(True)
            self.backlog = self.loop.call_soon(self._receive_backlog)
        if self.draining and not self.closed:
            self.drain()            # told to before its transport existed (drain, close)

    def _choose_codec(self) -> None:
        """HTTP/1.1 or HTTP/2 by codec_type; AUTO over TLS by ALPN, as in Envoy; AUTO in
        clear text waits for the first bytes (data_received: the HTTP/2 preface)."""
        codec_type = self.hcm.codec_type
        if codec_type == "HTTP2":
            self._use_http2()
        elif codec_type == "HTTP1":
            self._use_http1()
        elif self.tls is not None and self.tls.selected_alpn_protocol() == "h2":
            self._use_http2()

    def _use_http1(self) -> None:
        hcm = self.hcm
        self.codec = Http1ServerCodec(max_header_bytes=hcm.max_header_bytes,
                                      max_headers=hcm.max_headers)
        self.express = hcm.express
        self.worker.stats.counters[hcm.stat_cx_http1_total] += 1

    def _use_http2(self) -> None:
        from ...codecs.http2 import Http2ServerCodec
        hcm = self.hcm
        self.codec = Http2ServerCodec(max_header_bytes=hcm.max_header_bytes,
                                      max_headers=hcm.max_headers, **hcm.http2_options,
                                      counters=self.worker.stats.counters)
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
        if codec.multiplexed:
            # What the transport still buffers counts against HTTP/2's max_outbound_frames.
            codec.unsent(self.transport.get_write_buffer_size())
        self._received(codec, codec.receive(data))
        if self.hold_timer is not None and not self.hold_paused and \
                codec.buffered_input > HOLD_BUFFER_LIMIT:
            self.hold_paused = True     # new streams wait unread (h2move.py): not unbounded
            self.pause_reading(True)

    def _received(self, codec, events) -> None:
        if codec.multiplexed:
            if codec.flood is not None:
                self._flooded(codec.flood)
                return
            if codec.backlog and self.backlog is None:
                # Fairness: this connection read more frames than one turn may handle; the
                # rest waits for a later turn, and reading pauses until it is done.
                self.pause_reading(True)
                self.backlog = self.loop.call_soon(self._receive_backlog)
        if not events and self.active is None and not self.streams and \
                (self.hcm.request_headers_timeout or self.hcm.stream_idle_timeout):
            # A read that made no event may have begun a head (a head completed cancels the
            # timer: _on_request_head), so a request read whole in one read pays nothing.
            self._header_deadline(codec)
        if codec.multiplexed and events:
            # One batch (pool.py): a stream reset within this read gives its upstream
            # connection back instead of sending its request and closing it.
            pools = self.worker.http_pools
            pools.begin_batch()
            try:
                for event in events:
                    # A new stream, the usual event, without _dispatch's tests (HTTP/1.1's
                    # queue and close, which a multiplexed connection never has).
                    if event.__class__ is RequestHead:
                        self._on_request_head(event)
                    else:
                        self._dispatch(event)
            finally:
                pools.end_batch()
        else:
            for event in events:
                self._dispatch(event)
        self.flush()
        if codec.closed and not self.streams and not self.closed and not self.idle_draining:
            # HTTP/2 after its final GOAWAY (drain), or a peer's GOAWAY, with nothing open.
            self.close()

    def _receive_backlog(self) -> None:
        self.backlog = None
        codec = self.codec
        if self.closed:
            return
        codec.unsent(self.transport.get_write_buffer_size())
        self._received(codec, codec.receive_more())
        # The pause taken for this turn ends (a further backlog took its own).
        self.pause_reading(False)

    def _flooded(self, stat: str) -> None:
        """An HTTP/2 limit was crossed (h2limits.py): count it and drop the connection at
        once, as Envoy does; the client is not reading, or not worth a goodbye."""
        if self.closed:
            return
        self.abort()        # first: ending the streams flushes, which must not come back here
        self._abort_streams("downstream connection closed")
        counters = self.worker.stats.counters
        counters[self.hcm.stat_rq_premature_resets if stat == TOO_MANY_PREMATURE_RESETS
                 else stat] += 1
        log.debug("connection %d: %s", self.id, stat)

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
            codec = self.codec      # (HTTP/2's `closed` is a property: not asked)
            if not codec.multiplexed and codec.closed:
                return      # read behind a response that said connection: close (RFC 9112 9.6)
            if self.idle_draining:
                # Its response says connection: close, and what follows it is served too:
                # Envoy's drain window (_drain_when_idle) keeps the connection Draining, not
                # Closing, until drain_timeout.
                codec.announce_close()
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
        elif kind is HeadersRefused:
            # Its stream was reset by the codec: a request that was never served, as Envoy
            # counts it (downstream_rq_total and _http2_total, a reset, the codec's stat).
            counters = self.worker.stats.counters
            hcm = self.hcm
            if event.stat is not None:      # (an undecodable block: no codec stat)
                counters[event.stat] += 1
            counters[hcm.stat_rq_total] += 1
            counters[hcm.stat_rq_http2_total] += 1
            counters[hcm.stat_rq_rx_reset] += 1
        elif kind is WindowOpen:
            # The codec flushed what the window allows on this stream: if it was held for
            # it, it may read again. (Only this stream: a walk of every stream per event made
            # many-stream connections quadratic.)
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.window_held and \
                    self.codec.pending(stream.id) <= stream.buffer_limit // 2:
                stream.window_held = False
                stream.downstream_paused(False)
        # GoAway needs nothing here.

    def eof_received(self):
        if self.closed:
            if self.lingering is not None:
                downstream_end.linger_ended_by_client(self)
                self.lingering.cancel()
                self.lingering = None
            if self.transport.get_write_buffer_size():
                # The client is gone: Envoy closes at once on its FIN (RemoteClose), what is
                # unwritten dropped; a plain close would wait for a reader that left.
                self.transport.abort()
            else:
                self.transport.close()
            return False
        # Envoy does not half-close HTTP connections: the client closing ends them, and cuts
        # what is in flight (no codec error: the codec is not told of the end of input).
        downstream_end.client_closed(self)
        self._abort_streams("downstream remote disconnect")
        self.close(flush_only=True)     # (the client is gone: nothing to wait for)
        return False

    def connection_lost(self, exc) -> None:
        if self.closed and self.destroy_counted and self.lingering is None and not self.streams:
            return      # the usual end: closed here, counted, nothing in flight or waiting
        downstream_end.transport_lost(self, exc)
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
        elif self.on_idle is not None:
            self.move_if_ready()

    # -- streams ----------------------------------------------------------------------------

    def _on_request_head(self, event: RequestHead) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        stream = picked = None
        if self.express and not self.worker.overload.http_active:
            # The common exchange skips the Stream/Router objects (express.py).
            stream, picked = express.take(self, event)
        if stream is None:
            stream = Stream(self, event)
            stream.picked = picked
        self.streams[event.stream_id] = stream
        self.requests += 1
        if not self.codec.multiplexed:
            self.active = stream
        self.starting = True        # (a response ended in it: downstream_end.last_stream_done)
        stream.start()
        self.starting = False
        if self.stream_timer is None and not self.sweep_due and self.streams and \
                (self.hcm.shortest_idle or self.hcm.request_timeout):
            self._arm_sweep()        # (after start: a stream answered at once needs none)

    def stream_done(self, stream) -> None:
        self.streams.pop(stream.id, None)
        if self.active is stream:
            self.active = None
            queue = self.queued
            if queue and self.codec.closed:
                # The response just sent ends the connection (Connection: close, HTTP/1.0, a
                # drain): what the client sent after that request is never served, as in
                # Envoy 1.40, whose codec stops at such a request (no 400 for the bytes after
                # it, no downstream_cx_protocol_error; measured with the real Envoy).
                queue.clear()
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
        if self.codec.multiplexed and self.on_idle is None and self.moved_to is None:
            # One write for the responses that end in this turn (and the local replies of one
            # read, each of which is the last stream when it ends). A connection that a move
            # waits for, or that moved, writes at once: it must hold nothing queued.
            # (flush_soon's tests inline, as in mark_dirty: the turn's write is usually
            # already due, and this runs once a response.)
            if self.flush_handle is None or len(self.codec.out) >= self.hcm.buffer_limit:
                self.flush_soon()
        else:
            self.flush()
        if not self.streams and self.codec.closed:    # (HTTP/2's closed is a property)
            if self.idle_draining:
                # A request that asked to close, served while the idle timeout drains (the
                # drain window's own answers leave the codec open): Envoy, Draining already,
                # does not become Closing for it; its drain_timeout closes, with the delayed
                # close (measured: the FIN 0.8 s after that answer, idle 0.3/drain 0.6/delayed
                # 0.2 s). Envoy's idle timer runs again meanwhile (counted again if it fires
                # first).
                self._arm_idle()
                return
            self.close(flush_only=downstream_end.last_stream_done(self, stream))
        elif not self.streams:
            if self.moved_to is not None:
                # The exchange that stayed here ended with the connection open: the new
                # worker, which holds the client, serves what comes next (if the move is
                # still being answered, migrated() or resume() decides).
                self.moved_to.response_done()
                if self.moved_to.channel is not None:
                    self._closed()
                return
            if self.draining:
                self.codec.goaway()
                self.flush()
                if self.codec.closed:
                    # Idle now in a drain: closed as drain() closes an idle one.
                    self.close(flush_only=not self.codec.multiplexed)
                    return
            if self.on_idle is not None and self.move_if_ready():
                return
            self._arm_idle()

    def _on_protocol_error(self, event: ProtocolError) -> None:
        downstream_end.protocol_error(self, event)
        stream = self.streams.get(event.stream_id)
        if event.status and event.stream_id and (stream is None or not stream.response_started):
            if stream is None:
                stream = Stream.for_error(self, event.stream_id)
                self.streams[event.stream_id] = stream
                if not self.codec.multiplexed:
                    self.active = stream
            stream.close_connection = not self.codec.multiplexed
            downstream_end.codec_error(stream, event)
            body, details = close_policy.HEAD_TIMEOUT_REPLIES.get(event.reason) or (
                close_policy.ERROR_BODIES.get(event.status, ""),
                close_policy.ERROR_DETAILS.get(event.status, "codec_error"))
            stream.local_reply(event.status, body, details)
            return
        if stream is not None:
            stream.reset(event.reason)
        if not self.codec.multiplexed or not event.stream_id:
            self.flush()
            self.close()

    def _abort_streams(self, reason: str) -> None:
        # The queue goes first: ending the active stream must not start the pipelined ones.
        self.queued.clear()
        self.active = None
        for stream in list(self.streams.values()):
            downstream_end.stream_cut(stream)
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
        elif self.codec is not None and self.codec.multiplexed and self.codec.flood is not None:
            # Responses crossed max_outbound_frames (the codec sends nothing more): drop the
            # connection now, before any graceful close could wait on a peer that never reads.
            self._flooded(self.codec.flood)

    def flush_soon(self) -> None:
        """HTTP/2: write what the codec queued once, at the end of this turn of the loop (the
        call runs first in the next pass, before any new I/O), rather than once per response:
        under h2load -m10 the ten responses of a batch arrive from ten upstream connections,
        each in its own callback, and a write(2) apiece took ~27% of the worker's busy time.
        Past the write buffer's limit, the bytes go at once: the transport's pause_writing
        then holds the streams as before, and no more than that waits in the codec."""
        # (len(codec.out): the codec's queued_bytes without a property call, ~0.5k
        # instructions less on Python 3.11, three times a response.)
        if self.flush_handle is None:
            if len(self.codec.out) >= self.hcm.buffer_limit:
                self.flush()
                return
            self.flush_handle = self.loop.call_soon(self._flush_turn)
        elif len(self.codec.out) >= self.hcm.buffer_limit:
            self.flush()

    def _flush_turn(self) -> None:
        self.flush_handle = None
        self.flush()
        if self.on_idle is not None and not self.closed:
            # A move waits for this connection (hold_when_idle): what kept it from moving
            # may have been these very bytes, unsent while the last stream ended.
            self.move_if_ready()

    def mark_dirty(self) -> None:
        """Bytes are queued in the codec: written when the current batch of upstream events
        is done (one write for a response's head and body), see pool.PoolManager.flush_dirty;
        HTTP/2: at the end of the turn (flush_soon)."""
        codec = self.codec
        if codec.multiplexed:
            # flush_soon's tests inline: a head and a body mark a stream's response twice.
            if self.flush_handle is None or len(codec.out) >= self.hcm.buffer_limit:
                self.flush_soon()
            return
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

    def abort(self) -> None:
        if self.transport is None:
            self.draining = True    # as close(): nothing to abort before connection_made
            return
        if not self.closed:
            downstream_end.closed_here(self)
            self._closed()
            self.transport.abort()

    def _closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.state = Lifecycle.CLOSED
        self._cancel_timers()
        gauges = self.worker.stats.gauges
        gauges[self.hcm.stat_cx_active] -= 1
        gauges[self.listener.stat_cx_active] -= 1
        self.worker.connection_closed(self)

    def _cancel_timers(self) -> None:
        # The idle timer and the route deadline, the two a connection per request has, are
        # usually places in a loop's TimerQueue; the others are loop timers when set.
        timer = self.idle_timer
        if timer is not None:
            self.idle_timer = None
            if timer.__class__ is TimerQueue:
                timer.entries.pop(self, None)
            else:
                timer.cancel()
        timer = self.deadline_timer
        if timer is not None:
            self.deadline_timer = None
            if timer.__class__ is TimerQueue:
                timer.entries.pop(self, None)
            else:
                timer.cancel()
        if self.header_timer is not None or self.duration_timer is not None or \
                self.stream_timer is not None or self.drain_timer is not None or \
                self.hold_timer is not None or self.unsent_poll is not None:
            for name in _OTHER_TIMERS:
                timer = getattr(self, name)
                if timer is not None:
                    timer.cancel()
                    setattr(self, name, None)

    def drain(self) -> None:
        """Stop taking requests: HTTP/1.1 says `connection: close` on the response in flight
        (or closes now when idle); HTTP/2 sends GOAWAY and lets open streams finish."""
        if self.moved_to is not None:
            return      # the client is the new worker's: its response must not say close
        self.draining = True
        if self.closed or self.transport is None:
            return      # (no transport yet: connection_made drains it)
        if self.codec is None:
            self.close(flush_only=True)
            return
        self.codec.goaway()
        self.flush()
        if self.codec.multiplexed and self.drain_timer is None:
            # A client that never answers our PING still gets its final GOAWAY (Envoy's
            # drain_timeout between the two phases).
            self.drain_timer = self.loop.call_later(self.hcm.drain_timeout, self._final_goaway)
        # HTTP/1.1 idle: close now, the FIN not held: Envoy 1.40 closes a drained listener's
        # idle HTTP/1.1 connections without the delayed close when its drain time ends (an
        # LDS change or removal: the FIN at --drain-time-s, at once with 0, whatever
        # delayed_close_timeout; Baton does not wait the drain time for an idle one).
        # HTTP/2: only once the final GOAWAY is out (the codec sends it when our PING comes
        # back): streams the client opened before it saw the first GOAWAY are still on their
        # way and must be served, not dropped.
        if not self.streams and (not self.codec.multiplexed or self.codec.closed):
            self.close(flush_only=not self.codec.multiplexed)

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
        timer = self.deadline_timer
        if timer is None or deadline < self.deadline_at:
            if timer is not None:
                if timer.__class__ is TimerQueue:
                    timer.discard(self)
                else:
                    timer.cancel()
            self.deadline_at = deadline
            # A place in the loop's queue of deadlines this far off (to the millisecond,
            # timer_queue.py): the requests of one route timeout share one loop timer.
            delay = deadline - time.monotonic()
            queue = queue_for(self.loop, int(delay * 1000) if delay > 0 else 0,
                              "deadline_timer", HttpConnection._on_deadline, time.monotonic)
            queue.add(self, deadline)
            self.deadline_timer = queue

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
        if self.sweep_due:
            due, self.sweep_due = self.sweep_due, 0.0
            if self.streams and not self.closed and self.stream_timer is None:
                self.stream_timer = self.loop.call_later(max(due - now, 0), self._sweep_streams)

    def _arm_sweep(self) -> None:
        """The stream sweep's first look, a quarter of the shorter timeout from now. When the
        route deadline's timer (watch_deadline) is due before it, no timer of its own yet: that
        timer arms the sweep for the same time when it fires (_on_deadline). So a connection
        per request, whose stream ends long before either, arms one loop timer for both."""
        interval = self._sweep_interval()
        if self.deadline_timer is not None:
            now = time.monotonic()          # (sweep_due on the deadlines' clock)
            if self.deadline_at - now <= interval:
                self.sweep_due = now + interval
                return
        self.stream_timer = self.loop.call_later(interval, self._sweep_streams)

    def _sweep_interval(self) -> float:
        idle, request = self.hcm.shortest_idle, self.hcm.request_timeout
        return (min(idle, request) if idle and request else idle or request) / 4

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
                    not stream.remote_complete and \
                    now - stream.info.start_monotonic >= hcm.request_timeout:
                stream.timed_out(408, "request timeout", "request_overall_timeout",
                                 self.hcm.stat_rq_timeout)
            elif stream.idle_timeout and now - stream.last_activity >= stream.idle_timeout:
                stream.timed_out(408, "stream timeout", "stream_idle_timeout",
                                 self.hcm.stat_rq_idle_timeout)
        self.flush()
        if self.streams and not self.closed:
            self.stream_timer = self.loop.call_later(self._sweep_interval(), self._sweep_streams)

    # -- the Connection interface (worker/connection.py); moving is connection_move.py --------

    def shutdown_now(self) -> None:
        """Worker stopping: close at once."""
        self._abort_streams("worker stopping")
        self.abort()


register("http1-idle", HttpConnection.adopt, no_http_chain)
