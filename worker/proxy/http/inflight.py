"""HTTP/1.1 connections that move with a response in flight (write migration).

(And upgraded connections and CONNECT tunnels, which move as L4 connections do with
`--l4-move client-only`: record tcp-split, the client to the new worker, the tunnel's upstream
staying here; the bytes each way cross the handoff channel. See `ForwardedTransport.tunnel`.)

An HTTP/1.1 connection whose request has fully arrived but whose response is still coming (a
slow upstream, a long poll, server-sent events) moves at once instead of waiting to be idle:
the client socket goes to the new worker, and the exchange stays where its upstream
connection, timers, filters and access log are. From then on the two processes share the
connection over the handoff channel, with the messages of forwarding.py plus two:

    old -> new   data {id, data}     response bytes, already framed by the old worker's codec
                 done {id}           the response is complete: the connection is yours now
                 eof {id}/close {id} the old worker closes the connection (no keep-alive):
                                     close it once the bytes are written (its delayed close)
                 reset {id}          the exchange failed mid-response: abort the connection
    new -> old   pause/resume {id}   the client's socket buffer crossed its limit / drained
                 reset {id}          the client went away: abort the exchange

A connection in the idle timeout's drain window (HTTP/1.1 after its idle timeout: each request
answered with connection: close until drain_timeout, close_policy.py `_drain_when_idle`)
carries what is left of the window (`idle_drain`, seconds; absent when not draining, and
ignored by a release that does not know it), and the new worker keeps the window's rules.

Only the new worker writes to the client and reads from it. What the client sends meanwhile
(a pipelined request) waits in the new worker's connection behind the forwarded response, as
pipelined requests always wait for the one being served. Over HTTPS the record layer's state
moves with the socket (as for an idle HTTPS connection) and the old worker forwards plaintext,
which the new one protects: sequence numbers are only ever advanced by one process.

`ForwardedTransport` is what the old connection writes through once its client has gone;
`ForwardedResponse` is the exchange as the new connection sees it, holding its place in line.
"""

from __future__ import annotations

import logging

from ...connection import register

log = logging.getLogger("baton.http")

RECORD = "http1-inflight"
FORWARDED_STREAM_ID = -1        # HTTP/1 codecs number requests from 1: never a real one


class ForwardedTransport:
    """The old worker's transport for a connection whose client is moving or moved: what the
    connection writes goes to the new worker, which writes it to the client. It never reads.

    It takes over at export, before the new worker has answered: until `attach` (the move
    succeeded) what is written is kept, in order, and a failed move gives it back to the
    client's own transport (`give_back`), so the exchange never writes to a socket whose
    ownership is being decided.

    What is held is bounded as a client socket's buffer is: past `limit` (an HTTP
    connection's per_connection_buffer_limit_bytes) the upstream is paused
    (`conn.pause_writing`, as asyncio does for a full transport) until the held bytes are
    forwarded or given back. Without one (an RPC connection, rpc/connection.py: what it holds
    is the answers to the requests in flight at its move, and its pause_writing stops reading
    the client, not an upstream) nothing pauses. The new worker's pause/resume may arrive
    before the answer that ends the hold, so each has its own flag, and the upstream is read
    again only once both are released.

    Once attached, what is forwarded waits in the handoff channel's queue until the new worker
    reads it; one that stops reading (stopped, wedged) says no pause, so the bytes of this
    connection still queued there (`unsent`) are bounded by the same limit: past it the
    upstream pauses (a third flag, `channel_full`), and reads again once they are down to
    half of it, as Envoy's watermarks do."""

    __slots__ = ("conn", "channel", "peer_id", "closing", "ended", "held", "tunnel",
                 "limit", "held_bytes", "held_full", "receiver_full", "unsent", "channel_full")

    def __init__(self, conn, tunnel: bool = False, limit: int | None = None):
        self.conn = conn
        self.channel = None
        self.peer_id = 0                # the connection's id in the new worker
        self.closing = False
        self.ended = False              # done, eof, close or reset was said
        self.held: list = []            # messages written before the move was answered
        self.limit = limit
        self.held_bytes = 0             # of the data messages in `held`
        self.held_full = False          # held_bytes went past limit: the upstream is paused
        self.receiver_full = False      # the new worker said pause (its client's buffer)
        self.unsent = 0                 # data forwarded, still in the channel's queue
        self.channel_full = False       # unsent went past limit: the upstream is paused
        # An upgraded connection or CONNECT tunnel (record tcp-split): the new worker runs a
        # forwarding.ForwardedSide on the client, which also sends the client's bytes here
        # and knows only data/eof/close/pause/resume.
        self.tunnel = tunnel

    def attach(self, channel, peer_id: int) -> None:
        self.channel, self.peer_id = channel, peer_id
        held, self.held = self.held, []
        for msg in held:
            self._send(*msg)
        self.held_bytes = 0
        self._full("held_full", False)      # forwarded: the new worker's pause rules now

    def give_back(self, client) -> None:
        """The move failed: what was written goes to the client's own transport, in order."""
        held, self.held = self.held, []
        for kind, fields in held:
            if kind == "data":
                client.write(fields["data"])
            elif kind in ("eof", "close"):
                client.close()              # after the bytes written above
            elif kind == "reset":
                client.abort()
        self.held_bytes = 0
        if self.held_full or self.receiver_full:
            self.held_full = self.receiver_full = False
            # Past the client transport's high-water mark, it paused the connection as it took
            # the bytes (conn.pause_writing) and resumes it once drained: leave that to it.
            if self.limit is None or client.get_write_buffer_size() <= self.limit:
                self._resume_conn()

    def receiver_paused(self, on: bool) -> None:
        """The new worker's pause/resume (its client's buffer crossed its limit / drained)."""
        self._full("receiver_full", on)

    def _full(self, flag: str, on: bool) -> None:
        was = self.held_full or self.receiver_full or self.channel_full
        setattr(self, flag, on)
        if on and not was:
            self.conn.pause_writing()
        elif was and not (self.held_full or self.receiver_full or self.channel_full):
            self._resume_conn()

    def _left_channel(self, size: int) -> None:
        self.unsent -= size
        if self.channel_full and self.unsent <= self.limit // 2:
            self._full("channel_full", False)

    def _resume_conn(self) -> None:
        if self.ended:
            # No exchange left to resume (nor to close the connection for): only the flag the
            # next request, served here after a refused move, starts its upstream by.
            self.conn.write_paused = False
        else:
            self.conn.resume_writing()

    def _send(self, kind: str, fields=None) -> None:
        if self.channel is None:
            self.held.append((kind, fields or {}))
            if kind == "data":
                self.held_bytes += len(fields["data"])
                if self.limit is not None and self.held_bytes > self.limit and \
                        not self.held_full:
                    self._full("held_full", True)
        elif self.channel.closed:
            return
        elif kind == "data" and self.limit is not None:
            size = len(fields["data"])
            self.unsent += size
            self.channel.send_counted({"type": kind, "id": self.peer_id, **fields}, size,
                                      self._left_channel)
            if self.unsent > self.limit and not self.channel_full:
                self._full("channel_full", True)
        else:
            self.channel.send({"type": kind, "id": self.peer_id, **(fields or {})})

    def _end(self, kind: str) -> None:
        if not self.ended:
            self.ended = self.closing = True
            self._send(kind)

    def write(self, data) -> None:
        if data and not self.ended:
            self._send("data", {"data": bytes(data)})

    def response_done(self) -> None:
        """The exchange ended and the connection stays open: the new worker owns it now."""
        self._end("close" if self.tunnel else "done")

    def write_eof(self) -> None:
        self._end("eof")

    def close(self) -> None:
        self._end("close")

    def abort(self) -> None:
        self._end("close" if self.tunnel else "reset")

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0            # the new worker's buffer: it says pause when it is full

    def pause_reading(self) -> None:
        """A tunnel's upstream is full: the new worker stops reading the client."""
        if self.tunnel and not self.ended:
            self._send("pause")

    def resume_reading(self) -> None:
        if self.tunnel and not self.ended:
            self._send("resume")

    def get_extra_info(self, name, default=None):
        return default


class _Detached:
    """The protocol of the client transport the old worker lets go of: its last callbacks
    (connection_lost after abort) must not reach the connection, which lives on."""

    def connection_lost(self, exc) -> None:
        pass


def detach(transport) -> None:
    """Close this process's copy of the client socket without ending the connection (the
    new worker holds the same socket) or telling the connection about it."""
    transport.set_protocol(_Detached())
    transport.abort()


class ForwardedResponse:
    """The new worker's stand-in for the exchange the old worker still serves: it holds the
    connection's place in line (`HttpConnection.active`), so requests the client pipelines
    wait behind it, and writes what the old worker sends."""

    __slots__ = ("conn", "channel", "peer_id", "done", "paused", "early", "idle_drain")

    id = FORWARDED_STREAM_ID
    router = None               # no route deadline here: the old worker keeps the exchange's
    request_complete = True     # the request had fully arrived before the move
    info = None                 # its StreamInfo is the previous generation's (downstream_end)
    response_started = True     # as far as local replies go: the old worker answers it
    upgrade = None
    idle_timeout = 0
    window_held = False

    def __init__(self, conn, channel, peer_id: int, idle_drain: float | None = None):
        self.conn = conn
        self.channel = channel
        self.peer_id = peer_id          # the connection's id in the old worker
        self.done = False
        self.paused = False
        self.early: list | None = []    # messages that came before the client's transport
        self.idle_drain = idle_drain    # s left of the idle timeout's drain window, or None

    def transport_ready(self) -> None:
        if self.idle_drain is not None:
            # Armed only once the connection runs (an adoption that fails leaves no timer).
            conn = self.conn
            conn.idle_draining = True
            conn.drain_timer = conn.loop.call_later(self.idle_drain, conn._idle_drained)
        early, self.early = self.early, None
        for msg in early or ():
            self.on_message(msg)

    def _send(self, kind: str) -> None:
        if not self.channel.closed:
            self.channel.send({"type": kind, "id": self.peer_id})

    def on_message(self, msg: dict) -> None:
        if self.early is not None:
            self.early.append(msg)
            return
        kind = msg["type"]
        conn = self.conn
        if self.done or conn.closed:
            return
        if kind == "data":
            conn.codec.send_raw(msg["data"])
            conn.flush()
        elif kind == "done":
            self.done = True
            conn.stream_done(self)
        elif kind in ("eof", "close"):
            self.done = True
            conn.streams.pop(self.id, None)
            conn.active = None
            conn.close()            # after the bytes: the connection manager's delayed close
        elif kind == "reset":
            self.done = True
            conn.shutdown_now()
        # pause/resume go the other way only

    def downstream_paused(self, on: bool) -> None:
        if on != self.paused and not self.done:
            self.paused = on
            self._send("pause" if on else "resume")

    def reset(self, reason: str, notify: bool = True) -> None:
        """The client went away (or the connection ended here): the old worker ends the
        exchange too."""
        if not self.done:
            self.done = True
            self._send("reset")
            if notify:
                self.conn.stream_done(self)

    def reset_by_overload(self) -> None:
        self.reset("overload manager reset")

    def channel_lost(self) -> None:
        """The old worker is gone: the rest of the response can never come."""
        if not self.done:
            self.done = True
            log.warning("connection %d: the worker serving its response is gone", self.conn.id)
            self.conn.shutdown_now()


def adopt(worker, listener, fields: dict, fds: list[int], conn_id: int, channel=None):
    """Record "http1-inflight": the client of an exchange another worker still serves."""
    from .connection_manager import HttpConnection

    def prepare(conn):
        conn.adopt_forwarded_response(ForwardedResponse(conn, channel, fields["id"],
                                                        fields.get("idle_drain")))
    if fields.get("tls") is not None:
        from ..https import adopt_idle
        return adopt_idle(worker, listener, fields, fds, conn_id, channel, prepare=prepare)
    return HttpConnection.adopt(worker, listener, fields, fds, conn_id, channel, prepare=prepare)


def refusal_unless(codec: str):
    """The check of a record that continues an HTTP connection speaking `codec` ("HTTP1" or
    "HTTP2"), over TLS when it carries `tls`: why this worker cannot, or None."""
    refused = {"HTTP1": "HTTP2", "HTTP2": "HTTP1"}[codec]

    def refusal(worker, listener, fields: dict) -> str | None:
        index = fields.get("chain") or 0
        if index >= len(listener.chains) or listener.chains[index].http_config is None:
            return "no http_connection_manager at that filter chain here"
        if listener.chains[index].http_config.codec_type == refused:
            return f"that filter chain speaks only {refused} here"
        if fields.get("tls") is not None:
            from ..https import _refusal as https_refusal
            return https_refusal(worker, listener, fields)
        return None
    return refusal


register(RECORD, adopt, refusal_unless("HTTP1"))
