"""An HTTP connection's moves to another worker at a reload: the Connection interface's
moving half (worker/connection.py) for `HttpConnection` (connection_manager.py), kept apart
so that connection_manager.py is the connection manager only.

What moves, by record (the records themselves: inflight.py, h2move.py, tunnel_move.py,
https.py):
- "http1-idle" / "https1-idle": an idle HTTP/1.1 connection, as a bare socket (plus the
  record layer's state over TLS);
- inflight.RECORD: one request fully received and being answered; the response follows
  from the old worker through the new one;
- "tcp-split" / tunnel_move.RECORD: an upgraded or CONNECT tunnel, client-only or with both
  sockets;
- h2move.RECORD: HTTP/2 with no stream open, after holding new streams for a moment.

The mixin reads and writes HttpConnection's own attributes (set in its __init__); nothing
here is state of its own.
"""

from __future__ import annotations

import os

from ....supervisor.handoff import ownership
from ...connection import Export, Move
from . import h2move, inflight, tunnel_move

TUNNEL_RECORD = "tcp-split"     # an upgraded connection moves as an L4 one (forwarding.py)
UNSENT_POLL = 0.01              # s: how often a waiting move looks at unsent bytes again


class HttpConnectionMoves:
    """The moving methods of HttpConnection (connection_manager.py)."""

    __slots__ = ()
    # The connection-wide deadlines export cancels ((max_connection_duration, the final
    # GOAWAY), loop times or None), armed again by resume() if the connection stays after all.
    exported_deadlines = None
    # Reading paused by the hold that fired (_held) and not yet taken over by export: a hold
    # cancelled then (the move cancelled before it sent this one) reads again.
    held_reading = False
    # Adopted over TLS with its reading paused until our answer has left (https.adopt_idle):
    # a sender that finds us dead with the answer unsent resumes the connection, safe only
    # if nothing here read a record (its record layer's sequence numbers would be stale).
    awaiting_answer = False

    def after_adoption(self) -> None:
        """The sender has our answer (or the channel closed, this worker running on): the
        connection is ours, and reading begins."""
        if self.awaiting_answer:
            self.awaiting_answer = False
            self.pause_reading(False)

    def readiness(self) -> Move:
        """HTTP/1.1 connections move at once when idle, and when their request has arrived
        and its response is coming if the receiver adopts that (inflight.py); else once the
        exchange in flight ends. HTTP/2 ones (HPACK state, windows) drain instead, and so
        does the old half of a connection that already moved."""
        if self.closed or self.moved_to is not None or self.listener.spec.get("internal"):
            return Move.NEVER           # (an internal listener's socket pair stays in its worker)
        if self.codec is not None and self.codec.multiplexed and \
                h2move.RECORD not in self.worker.handoff_accepts:
            return Move.NEVER           # a receiver that cannot continue it: GOAWAY
        return Move.NOW if self._ready_to_move() else Move.WHEN_IDLE

    def _ready_to_move(self) -> bool:
        codec = self.codec
        if codec is not None and codec.multiplexed:
            return (h2move.RECORD in self.worker.handoff_accepts and not self.streams
                    and codec.movable and self.transport is not None
                    and self.transport.get_write_buffer_size() == 0)
        accepts = self.worker.handoff_accepts
        return self._idle() or (inflight.RECORD in accepts and self._in_flight_movable()) or \
            (TUNNEL_RECORD in accepts and self._tunnel_movable())

    def _tunnel_movable(self) -> bool:
        """An upgraded (websocket) or CONNECT tunnel, nothing unsent: bytes each way from now
        on, so it moves as an L4 connection whose upstream stays (inflight.py)."""
        codec = self.codec
        return (codec is not None and not codec.multiplexed and bool(codec.tunnel)
                and self.tls is None and len(self.streams) == 1 and not self.queued
                and not self.initial and not self.write_paused and not self.closed
                and self.transport is not None and self.transport.get_write_buffer_size() == 0)

    def _in_flight_movable(self) -> bool:
        """One request, fully received, being answered, nothing else read or unsent: the
        socket (and the record layer's state) is then all the new worker needs, and the
        response can follow from here (inflight.py)."""
        codec, stream = self.codec, self.active
        if self.closed or stream is None or codec is None or codec.multiplexed:
            return False
        if len(self.streams) != 1 or self.queued or self.initial or self.write_paused:
            return False
        if not stream.request_complete or stream.upgrade or stream.done:
            return False
        if codec.open_streams != 1 or codec.tunnel or codec.receiving or codec.closed:
            return False
        return self.transport is not None and self.transport.get_write_buffer_size() == 0

    def _idle(self) -> bool:
        """Idle HTTP/1.1 between requests, nothing unsent: the socket alone is the whole
        state, so it can move to another process as a bare descriptor."""
        codec = self.codec
        if self.closed or self.streams or self.queued or self.initial:
            return False
        if codec is not None and (codec.multiplexed or not codec.idle or codec.awaiting_head
                                  or codec.closed):
            return False
        return self.transport is not None and self.transport.get_write_buffer_size() == 0

    def hold_when_idle(self, on_idle) -> None:
        """Finish the request in flight, then stop reading and call `on_idle`. HTTP/2 stops
        reading new streams meanwhile, for at most h2move.HOLD_LIMIT (h2move.py)."""
        self.on_idle = on_idle
        if self.codec is not None and self.codec.multiplexed:
            self.codec.hold_new_streams()
            self.hold_timer = self.loop.call_later(h2move.HOLD_LIMIT, self._hold_expired)
        self.move_if_ready()

    def move_if_ready(self) -> bool:
        """Hand the connection to the waiting move if it can go now. If only bytes still in
        the transport's buffer keep it, look again every UNSENT_POLL: asyncio tells a
        protocol that its buffer drained only after it paused writing (resume_writing), so
        bytes under the high-water mark that the kernel takes later raise no event, and the
        move would wait for HOLD_LIMIT and drain the connection instead."""
        if self._ready_to_move():
            self._held()
            return True
        transport = self.transport
        if self.unsent_poll is None and transport is not None and not self.closed and \
                transport.get_write_buffer_size():
            self.unsent_poll = self.loop.call_later(UNSENT_POLL, self._unsent_polled)
        return False

    def _unsent_polled(self) -> None:
        self.unsent_poll = None
        if self.on_idle is not None and not self.closed:
            self.move_if_ready()

    def cancel_hold(self) -> None:
        self.on_idle = None
        self._cancel_unsent_poll()
        self._release_held_streams()
        if self.held_reading:
            self.held_reading = False
            if self.transport is not None and not self.closed and not self.read_pauses:
                self.transport.resume_reading()

    def _cancel_unsent_poll(self) -> None:
        if self.unsent_poll is not None:
            self.unsent_poll.cancel()
            self.unsent_poll = None

    def _hold_expired(self) -> None:
        """HTTP/2 that a long stream kept from becoming movable: the held streams are read
        here after all, and the client is told to go elsewhere for the next ones (GOAWAY),
        as at every drain."""
        self.hold_timer = None
        on_idle = self.on_idle
        self.cancel_hold()
        self.drain()
        if on_idle is not None:
            on_idle(self)       # the move stops waiting for it: readiness() says it stays

    def _release_held_streams(self) -> None:
        if self.hold_timer is not None:
            self.hold_timer.cancel()
            self.hold_timer = None
        if self.hold_paused:
            self.hold_paused = False
            self.pause_reading(False)
        codec = self.codec
        if codec is not None and codec.multiplexed and not self.closed:
            codec.hold_new_streams(False)
            if codec.backlog and self.backlog is None:
                self.pause_reading(True)
                self.backlog = self.loop.call_soon(self._receive_backlog)

    def _held(self) -> None:
        self._cancel_unsent_poll()
        if self.hold_timer is not None:
            self.hold_timer.cancel()
            self.hold_timer = None
        on_idle, self.on_idle = self.on_idle, None
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()
            self.held_reading = True
        if on_idle is not None:
            on_idle(self)

    def export(self, client_only: bool = False) -> Export:
        self.transport.pause_reading()
        self.held_reading = False       # resume() reads again if the move fails
        in_flight = bool(self.streams)
        self.exported_deadlines = tuple(None if timer is None else timer.when()
                                        for timer in (self.duration_timer, self.drain_timer))
        if in_flight:
            # The exchange stays here: its route deadline and stream sweeps go on.
            for timer in (self.idle_timer, self.header_timer, self.duration_timer, self.drain_timer):
                if timer is not None:
                    timer.cancel()
            self.idle_timer = self.header_timer = self.duration_timer = self.drain_timer = None
        else:
            self._cancel_timers()       # none may touch the socket the next worker adopts
        sock = self.transport.get_extra_info("socket")
        self.moving_fd = os.dup(sock.fileno())
        fields = {"id": self.id, "listener": self.listener.name, "chain": self.chain.index,
                  "peer": list(self.peer) if self.peer else None,
                  "original": list(self.original) if self.original else None}
        if self.codec is not None and self.codec.multiplexed:
            if self.backlog is not None:
                self.backlog.cancel()       # what it would read is in the state
                self.backlog = None
                self.read_pauses -= 1
            tls = self.transport.export_state() if self.tls is not None else None
            return Export(h2move.RECORD, {**fields, "h2": self.codec.export_state(), "tls": tls},
                          [self.moving_fd])
        if in_flight and self.codec.tunnel:
            # `client_only` (--l4-move client-only): the tunnel's upstream stays, forwarded.
            ureq = None if client_only else tunnel_move.movable_upstream(self)
            if ureq is not None:
                return tunnel_move.export(self, ureq, fields)
            self.moving_client = self.transport
            self.transport = self.moved_to = inflight.ForwardedTransport(
                self, tunnel=True, limit=self.hcm.buffer_limit)
            return Export(TUNNEL_RECORD, {**fields, "up": {"eof": False},
                                          "down": {"data": b"", "eof": False, "done": False},
                                          "limit": self.hcm.buffer_limit}, [self.moving_fd])
        if in_flight:
            tls = self.transport.export_state() if self.tls is not None else None
            # From here the exchange writes to the new worker (held until it answers).
            self.moving_client = self.transport
            self.transport = self.moved_to = inflight.ForwardedTransport(
                self, limit=self.hcm.buffer_limit)
            fields["tls"] = tls
            if self.idle_draining and self.exported_deadlines[1] is not None:
                # In the idle timeout's drain window: the new worker goes on with it.
                fields["idle_drain"] = max(0.0, self.exported_deadlines[1] - self.loop.time())
            return Export(inflight.RECORD, fields, [self.moving_fd])
        if self.tls is not None:
            # HTTPS: the record layer's state goes with the socket (worker/proxy/https.py).
            return Export("https1-idle", {**fields, "tls": self.transport.export_state()},
                          [self.moving_fd])
        return Export("http1-idle", {**fields, "initial": None}, [self.moving_fd])

    def migrated(self, channel=None, new_id: int = 0) -> None:
        """Another worker adopted the socket: let go without a FIN (it holds the same one).
        With a response in flight the exchange goes on here, writing through the new worker."""
        fd, self.moving_fd = self.moving_fd, -1
        if fd >= 0:
            os.close(fd)
        if self.moving_upstream is not None:
            self._closed()          # first: the request ending must not touch the connection
            tunnel_move.let_go(self)
            self.transport.abort()
            return
        if self.moved_to is not None:
            inflight.detach(self.moving_client)
            self.moving_client = None
            self.moved_to.attach(channel, new_id)
            if self.moved_to.ended and not self.closed:
                self._closed()          # the exchange ended while the move was answered
            return
        self._closed()
        self.transport.abort()

    def keeps_exchange_here(self) -> bool:
        """A response in flight, or a tunnel's upstream, exported and not yet attached to the
        new worker: its output is held (inflight.ForwardedTransport) until the answer."""
        return self.moved_to is not None and self.moved_to.channel is None and not self.closed

    def resume(self) -> None:
        fd, self.moving_fd = self.moving_fd, -1
        if fd >= 0:
            os.close(fd)
        if self.moving_upstream is not None:
            tunnel_move.resume(self)
        if self.moved_to is not None:           # an exchange in flight stays here after all
            forwarded, self.moved_to = self.moved_to, None
            self.transport, self.moving_client = self.moving_client, None
            forwarded.give_back(self.transport)
        self._release_held_streams()
        deadlines, self.exported_deadlines = self.exported_deadlines, None
        if not self.closed:
            self.transport.resume_reading()
            self._arm_idle()
            if deadlines is not None:
                # An export that failed (EMFILE) or a record the receiver refused: the
                # connection serves on here, still bound by its duration and drain deadlines.
                duration, final_goaway = deadlines
                if duration is not None and self.duration_timer is None:
                    self.duration_timer = self.loop.call_at(duration, self.drain)
                if final_goaway is not None and self.drain_timer is None:
                    # The one drain timer is HTTP/2's final GOAWAY or HTTP/1.1's idle drain.
                    ends = self._idle_drained if self.idle_draining else self._final_goaway
                    self.drain_timer = self.loop.call_at(final_goaway, ends)

    def adopt_codec(self, codec) -> None:
        """Adopted with its codec's state (h2move.py), before the transport exists."""
        self.codec = codec

    def adopt_forwarded_response(self, response) -> None:
        """Adopted mid-response (inflight.py): `response` holds the place of the exchange the
        old worker still serves; pipelined requests queue behind it."""
        if self.codec is None:
            self._use_http1()
        self.forwarded_response = response
        self.streams[response.id] = response
        self.active = response
        if self.transport is not None:          # connection_made came first
            response.transport_ready()

    def on_forwarded(self, msg: dict) -> bool:
        # The old side first: a connection adopted in flight that moved on in flight keeps
        # its first stand-in (done), but its new receiver is the one that talks to it now.
        if self.moved_to is None and self.forwarded_response is not None:     # new side
            self.forwarded_response.on_message(msg)
            return True
        if self.moved_to is None or self.closed:            # old side
            return False
        kind = msg["type"]
        if kind == "data":                      # a tunnel's client bytes
            self.data_received(msg["data"])
        elif kind == "eof":
            self.eof_received()
        elif kind in ("pause", "resume"):       # with the hold's own pause (inflight.py)
            self.moved_to.receiver_paused(kind == "pause")
        elif kind in ("reset", "close"):        # the client went away
            self._abort_streams("downstream remote disconnect")
            self._closed()
        return True

    def uses_channel(self, channel) -> bool:
        if self.moved_to is not None:
            return self.moved_to.channel is channel and not self.closed
        return self.forwarded_response is not None and \
            self.forwarded_response.channel is channel and not self.forwarded_response.done

    def channel_lost(self, channel) -> None:
        if self.moved_to is not None and self.moved_to.channel is channel and not self.closed:
            self._abort_streams("downstream connection closed")
            self._closed()
        elif self.forwarded_response is not None and self.forwarded_response.channel is channel:
            self.forwarded_response.channel_lost()

    @classmethod
    def adopt(cls, worker, listener, fields: dict, fds: list[int], conn_id: int, channel=None,
              prepare=None):
        """Record "http1-idle": an idle HTTP/1.1 connection another worker exported (and the
        plain-TCP part of inflight.py's and h2move.py's records, which `prepare(conn)` before
        its transport exists)."""
        chain = listener.chains[fields.get("chain") or 0]
        client = ownership.socket_from(fds, 0, listener.family)
        conn = made_for_adoption(cls, worker, listener, chain, fields, conn_id, client, prepare)
        # Counted only once nothing here can fail: a refused record leaves no gauge raised
        # (accept_http counts it out if its transport cannot be made).
        worker.stats.gauges[listener.stat_cx_active] += 1
        worker.accept_http(conn, client)
        return conn


def made_for_adoption(cls, worker, listener, chain, fields: dict, conn_id: int, client, prepare):
    """The `cls` connection of an adopted record, `prepare(conn)` run on it. If either
    raises, `client` (the socket made of the record's descriptor, struck from the record:
    the refusal no longer closes it) is closed here rather than left to the collector."""
    try:
        peer = tuple(fields["peer"]) if fields.get("peer") else None
        original = tuple(fields["original"]) if fields.get("original") else None
        conn = cls(worker, listener, chain, peer, original, conn_id)
        if prepare is not None:
            prepare(conn)
        return conn
    except BaseException:
        client.close()
        raise


def no_http_chain(worker, listener, fields: dict) -> str | None:
    index = fields.get("chain") or 0
    if index >= len(listener.chains) or listener.chains[index].http_config is None:
        return "no http_connection_manager at that filter chain here"
    return None
