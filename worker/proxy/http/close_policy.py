"""How an HTTP connection ends, as Envoy 1.40's connection manager decides it: the close
itself (the delayed close that holds the FIN, or the close once the bytes are written), the
idle timeout (closed at once before any request, drained after one), and the timers of a
request head still arriving (request_headers_timeout, stream_idle_timeout) with their 408s;
the replies of codec errors. The methods of `HttpConnection` (connection_manager.py), kept
apart so that connection_manager.py is the connection's reading, dispatching and writing;
what ends are counted as is downstream_end.py's.

The mixin reads and writes HttpConnection's own attributes (set in its __init__ or as its
class defaults); nothing here is state of its own.
"""

from __future__ import annotations

from ...codecs.events import ProtocolError
from . import downstream_end
from .timer_queue import queue_for


class ClosePolicy:
    """The closing and timing-out methods of HttpConnection (connection_manager.py)."""

    __slots__ = ()

    def close(self, flush_only: bool = False) -> None:
        """Close after the queued bytes, Envoy 1.40's delayed close (FlushWriteAndDelay):
        what the client still sends is read and dropped until it closes too, or until
        delayed_close_timeout passes (then counted in downstream_cx_delayed_close_timeout).
        Closing with unread bytes would make the kernel send a RST, and a RST can destroy our
        last bytes (a final GOAWAY, an error reply) before the client reads them. The FIN is
        held for that time too, as Envoy holds it (no shutdown: the socket closes when the
        client's FIN comes, or when the timer fires): a client that waits for the close after
        an error reply meets the timer, as it does in Envoy, and is counted so.

        `flush_only`: the response that ends the connection answered a request read whole,
        or is an HTTP/1.0 body delimited by the close (downstream_end.last_stream_done), or
        the client is gone, or nothing was ever read: the socket closes once the queued bytes
        are written (Envoy's FlushWrite, which it chooses in those cases): no half close, no
        timer and no read of the client's FIN a connection per request.

        Either close waits for its bytes to be written at most delayed_close_timeout without
        write progress (_close_overdue); a close with nothing left to write arms no timer."""
        if self.closed:
            return
        if self.transport is None:
            self.draining = True    # accepted, its transport not made yet: connection_made
            return                  # drains it (closes it, idle as it is then)
        self.flush()
        if self.streams:        # (the usual close, its last stream done, has none)
            downstream_end.closing(self, False)
        self._closed()
        transport = self.transport
        timeout = self.hcm.delayed_close_timeout
        if flush_only or not timeout or not transport.can_write_eof() or transport.is_closing():
            if not self.destroy_counted:        # (counted as the last stream ended, usually)
                downstream_end.connection_ends(self, False)
            unsent = transport.get_write_buffer_size()
            transport.close()
            if unsent and timeout:
                # The close waits for the bytes to be written: a client that does not read
                # would hold the socket for ever. Envoy bounds FlushWrite's flush as it does
                # FlushWriteAndDelay's wait (its delayed_close_timeout docs: "enforced even
                # when the socket ... is pending a flush of the write buffer"). The usual
                # close, everything written, arms nothing.
                self.lingering = self.loop.call_later(timeout, self._close_overdue, unsent)
            return
        if self.read_pauses:
            transport.resume_reading()      # (the client's FIN must be seen: eof_received)
        self.lingering = self.loop.call_later(timeout, self._close_overdue,
                                              transport.get_write_buffer_size())

    def _close_overdue(self, unsent: int) -> None:
        """delayed_close_timeout passed since close() (or since the last look): the socket
        closes now, with what is still unwritten dropped (abort: a plain close would wait for
        it). Writes that went on since the last look restart the wait, as Envoy restarts its
        timer on write progress. Counted in downstream_cx_delayed_close_timeout: here for a
        close counted when it was decided (flush_only), else by transport_lost (a local
        close, the client having not closed in time)."""
        transport = self.transport
        left = transport.get_write_buffer_size()
        if left and left < unsent:
            self.lingering = self.loop.call_later(self.hcm.delayed_close_timeout,
                                                  self._close_overdue, left)
            return
        if self.destroy_counted:
            self.worker.stats.counters[self.hcm.stat_cx_delayed_close_timeout] += 1
        if not left:
            # Everything written: a plain close, which over TLS sends close_notify before the
            # FIN, as Envoy's SslSocket shuts TLS down when its timer closes the socket (an
            # abort drops the session unannounced: the client reads an unexpected EOF). If
            # the close_notify cannot go at once either (the client reads nothing), it is
            # dropped as Envoy's non-blocking shutdown drops it: the close waits no longer.
            transport.close()
            if not transport.get_write_buffer_size():
                return
        transport.abort()

    def _arm_idle(self) -> None:
        """One lazy timer (STYLE.md pattern 5): going idle moves the deadline; the timer,
        armed once, re-arms itself when it fires early or finds requests in flight. Armed, it
        is a place in the loop's queue of this idle timeout (timer_queue.py: every
        connection's idle timer of one duration under one loop timer; a connection per
        request arms no loop timer of its own for it)."""
        timeout = self.hcm.idle_timeout
        if timeout and not self.closed:
            loop = self.loop
            self.idle_deadline = due = loop.time() + timeout
            if self.idle_timer is None:
                queue = queue_for(loop, timeout, "idle_timer", ClosePolicy._on_idle_timeout)
                queue.add(self, due)
                self.idle_timer = queue

    def _on_idle_timeout(self) -> None:
        self.idle_timer = None
        if self.closed:
            return
        if self.streams:
            return          # stream_done re-arms
        if getattr(self.codec, "awaiting_head", False):
            # A request's head is arriving: Envoy 1.40 made its stream at the first byte, which
            # disarms the idle timer; its request_headers_timeout or stream_idle_timeout
            # answers the 408 (_on_header_timeout; measured with idle_timeout below, equal to
            # and above them), and with both off nothing times the head: the client has it
            # for as long as it takes (measured: open 4 s past a 0.5 s idle timeout).
            # stream_done re-arms. A head begun in the read that brought the request before
            # it (pipelined) has no head timer yet (that request's head cancelled it): timed
            # from now.
            if self.header_timer is None and _head_timeout(self.hcm)[0]:
                self._header_deadline(self.codec)
            return
        now = self.loop.time()
        if now < self.idle_deadline:
            self.idle_timer = self.loop.call_at(self.idle_deadline, self._on_idle_timeout)
            return
        if not self.streams and not self.closed:
            self.worker.stats.counters[self.hcm.stat_cx_idle_timeout] += 1
            if not self.requests and (self.codec is None or not self.codec.multiplexed):
                # No request read: Envoy 1.40, which makes its codec at the first bytes, has
                # none and closes at once (onIdleTimeout's FlushWrite), no delayed close.
                self.close(flush_only=True)
                return
            if self.codec.multiplexed:
                self.drain()
            elif not self.idle_draining:
                self._drain_when_idle()

    def _drain_when_idle(self) -> None:
        """HTTP/1.1 idle after a request: Envoy 1.40's drain sequence (onIdleTimeout's
        startDrainSequence). Nothing is sent (HTTP/1.1 has no GOAWAY); the requests that come
        within drain_timeout are served, each with `connection: close` (codec.announce_close),
        and the connection stays (Envoy's Draining state, not Closing);
        at drain_timeout it closes with its delayed close (the FIN held). Measured with the
        real Envoy (idle 0.5 s, drain 0.7 s): the FIN 2.2 s after the response with the
        default delayed close, 1.5 s with 0.3 s, counting downstream_cx_idle_timeout,
        destroy_local and delayed_close_timeout (destroy_remote for a client that closes
        first); a request at 0.8 s was answered 200 with `connection: close`, the FIN still
        at drain_timeout and the delayed close."""
        self.idle_draining = True
        self.drain_timer = self.loop.call_later(self.hcm.drain_timeout, self._idle_drained)

    def _idle_drained(self) -> None:
        self.drain_timer = None
        self.idle_draining = False
        if self.closed:
            return
        self.codec.goaway()
        if not self.streams:
            self.close()
            return
        # The response in flight says connection: close, and its end closes: Envoy's
        # onDrainTimeout made the connection Closing, whose close after the last stream is
        # the delayed one however whole the request was (measured: the FIN 0.2 s after the
        # answer with delayed_close_timeout 0.2 s, counted in delayed_close_timeout), not
        # the FlushWrite of a request that asked to close (downstream_end.last_stream_done).
        self.idle_drain_closing = True

    def _header_deadline(self, codec) -> None:
        """A request begun must finish its headers in time: request_headers_timeout, and
        stream_idle_timeout, for Envoy's stream exists from the head's first byte (no byte of
        a head restarts its idle timer: Envoy's stream sees none until the head is whole)."""
        timeout = _head_timeout(self.hcm)[0]
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
        reason, stat = _head_timeout(self.hcm)[1:]
        self.worker.stats.counters[stat] += 1
        self._on_protocol_error(ProtocolError(reason, 408, self.codec.abandon_head()))


def _head_timeout(hcm) -> tuple:
    """The timer of a request head (request_headers_timeout or stream_idle_timeout, the
    shorter set one): (seconds, the ProtocolError's reason, its counter)."""
    headers, idle = hcm.request_headers_timeout, hcm.stream_idle_timeout
    if headers and (not idle or headers <= idle):
        return headers, downstream_end.HEADER_TIMEOUT, hcm.stat_rq_header_timeout
    return idle, downstream_end.HEAD_IDLE_TIMEOUT, hcm.stat_rq_idle_timeout


# Envoy's local reply bodies for codec errors (the reason phrase) and their details
# (connection_manager's _on_protocol_error answers with them).
ERROR_BODIES = {400: "Bad Request", 413: "Payload Too Large", 426: "Upgrade Required",
                431: "Request Header Fields Too Large", 501: "Not Implemented"}
ERROR_DETAILS = {400: "http1.codec_error", 413: "request_payload_too_large",
                 426: "upgrade_required", 431: "http1.headers_too_large",
                 501: "http1.codec_error"}
# A head late for its timer (_on_header_timeout, a 408): the body and details of the timer that
# fired, as stream.py's timed_out answers a stream idle timeout.
HEAD_TIMEOUT_REPLIES = {
    downstream_end.HEADER_TIMEOUT: ("request header timeout", "request_header_timeout"),
    downstream_end.HEAD_IDLE_TIMEOUT: ("stream timeout", "stream_idle_timeout")}
