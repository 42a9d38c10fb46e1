"""Write migration: a moved connection whose upstream side stayed behind in the old worker.

When a connection moves but its upstream cannot (HTTP/2 multiplexing or a pooled upstream
connection shared with other clients; for L4, `--l4-move client-only` exercises the same path),
the client socket goes to the new worker and the upstream socket stays in the old one. Each
side then runs a `ForwardedSide` over its one socket, and the two talk over the handoff channel
they already share:

    old -> new   data {id, data}     bytes the upstream sent; the new worker writes them to the
                                     client (only the new worker ever writes to the client)
    new -> old   data {id, data}     bytes the client sent, for the upstream
    either       eof {id}            our socket sent FIN: forward it once the buffer is written
    either       close {id}          our socket failed or closed: close yours
    either       pause {id}/resume   my buffer toward my socket is over the limit / drained

Each side also bounds what it forwarded and the channel has not yet sent (the peer reads the
channel, or has stopped: stopped, wedged, and then says no pause): past the limit it stops
reading its socket, until half of it has left (Channel.send_counted).

`id` is always the *recipient's* connection id: messages from the old worker are tagged with
the new connection id that the adopter returned, and the other way round.
"""

from __future__ import annotations

import logging
import socket

from ..supervisor.handoff import ownership
from .connection import Connection, Lifecycle, register

log = logging.getLogger("baton.forwarding")

RECV_SIZE = 64 * 1024


class ForwardedSide(Connection):
    """One half of a split connection (the client in the adopter, the upstream in the
    sender). It never moves again: a reload while it runs leaves it to drain."""

    kind = "forwarded"
    __slots__ = ("worker", "loop", "sock", "fd", "channel", "peer_id", "id", "limit", "out",
                 "reading", "writing", "read_eof", "peer_eof", "shut", "paused_peer", "closed",
                 "on_close", "peer", "state", "listener", "chain", "peer_full", "unsent",
                 "channel_full", "__weakref__")

    def __init__(self, worker, sock: socket.socket, channel, local_id: int, peer_id: int,
                 limit: int, initial: bytes = b"", read_eof: bool = False, peer_eof: bool = False,
                 shut: bool = False, on_close=None, listener=None):
        self.worker = worker
        self.loop = worker.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.channel = channel
        self.id = local_id
        self.peer_id = peer_id
        self.limit = limit
        self.out = bytearray(initial)     # for our socket, not yet written
        self.reading = self.writing = False
        self.read_eof = read_eof          # our socket sent FIN (already forwarded)
        self.peer_eof = peer_eof          # the peer's socket sent FIN: shut ours once `out` is written
        self.shut = shut                  # that shutdown is done
        self.paused_peer = False
        self.peer_full = False            # the peer said pause: its socket's buffer is full
        self.unsent = 0                   # bytes read here still in the channel's queue
        self.channel_full = False         # unsent went past the limit
        self.closed = False
        self.on_close = on_close
        self.peer = None
        self.state = Lifecycle.OPEN
        self.listener = listener      # the client half's listener; None for an upstream half
        self.chain = None

    def start(self) -> None:
        self._read_if_free()
        self.flush()

    def _read_if_free(self) -> None:
        if not (self.read_eof or self.peer_full or self.channel_full):
            self._set_reading(True)

    # -- our socket ----------------------------------------------------------------------

    def _set_reading(self, on: bool) -> None:
        if on != self.reading and not self.closed:
            self.reading = on
            (self.loop.add_reader(self.fd, self._on_readable) if on else self.loop.remove_reader(self.fd))

    def _set_writing(self, on: bool) -> None:
        if on != self.writing and not self.closed:
            self.writing = on
            (self.loop.add_writer(self.fd, self.flush) if on else self.loop.remove_writer(self.fd))

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.fail(f"read: {exc.strerror}")
            return
        if not data:
            self.read_eof = True
            self._set_reading(False)
            self._send({"type": "eof", "id": self.peer_id})
            self._maybe_done()
            return
        if self.channel.closed:
            self.close(notify=False)
            return
        self.unsent += len(data)
        self.channel.send_counted({"type": "data", "id": self.peer_id, "data": data}, len(data),
                                  self._left_channel)
        if self.unsent > self.limit and not self.channel_full:
            self.channel_full = True
            self._set_reading(False)

    def _left_channel(self, size: int) -> None:
        self.unsent -= size
        if self.channel_full and self.unsent <= self.limit // 2:
            self.channel_full = False
            self._read_if_free()

    def flush(self) -> None:
        if self.closed:
            return
        if self.out:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self.fail(f"write: {exc.strerror}")
                return
            del self.out[:n]
        self._set_writing(bool(self.out))
        if self.paused_peer and len(self.out) <= self.limit // 2:
            self.paused_peer = False
            self._send({"type": "resume", "id": self.peer_id})
        if not self.out and self.peer_eof and not self.shut:
            self.shut = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._maybe_done()

    def _maybe_done(self) -> None:
        if self.read_eof and self.shut:
            self.close(notify=False)

    # -- the Connection interface -----------------------------------------------------------

    def after_adoption(self) -> None:
        self.start()

    def on_forwarded(self, msg: dict) -> bool:
        self.on_message(msg)
        return True

    def uses_channel(self, channel) -> bool:
        return self.channel is channel

    def channel_lost(self, channel) -> None:
        if self.channel is channel:
            self.peer_lost()

    @classmethod
    def adopt_client(cls, worker, listener, fields: dict, fds: list[int], conn_id: int, channel):
        """Record "tcp-split", new side: we own the client; its upstream stays in the sender."""
        down, up = fields["down"], fields["up"]
        worker.stats.gauges[listener.stat_cx_active] += 1

        def client_done(side):
            worker.stats.gauges[listener.stat_cx_active] -= 1
        sock = ownership.socket_from(fds, 0, listener.family)
        return cls(worker, sock, channel, conn_id, fields["id"],
                   int(fields.get("limit") or listener.spec.get("buffer_limit", 1 << 20)),
                   initial=down["data"], read_eof=up["eof"], peer_eof=down["eof"],
                   shut=down["done"], on_close=client_done, listener=listener)

    # -- the peer's messages -------------------------------------------------------------

    def on_message(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == "data":
            self.out += msg.get("data", b"")
            self.flush()
            if len(self.out) > self.limit and not self.paused_peer and not self.closed:
                self.paused_peer = True
                self._send({"type": "pause", "id": self.peer_id})
        elif kind == "eof":
            self.peer_eof = True
            self.flush()
        elif kind == "close":
            self.close(notify=False)
        elif kind == "pause":
            self.peer_full = True
            self._set_reading(False)
        elif kind == "resume":
            self.peer_full = False
            self._read_if_free()

    def peer_lost(self) -> None:
        """The handoff channel died: the other half of this connection is gone."""
        self.close(notify=False)

    # -- ending --------------------------------------------------------------------------

    def _send(self, msg: dict) -> None:
        if self.channel.closed:
            self.close(notify=False)
            return
        self.channel.send(msg)

    def fail(self, reason: str) -> None:
        log.debug("forwarded connection %d: %s", self.id, reason)
        self.close(notify=True)

    def close(self, notify: bool = True) -> None:
        if self.closed:
            return
        if notify and not self.channel.closed:
            self.channel.send({"type": "close", "id": self.peer_id})
        self._set_reading(False)
        self._set_writing(False)
        self.closed = True
        self.state = Lifecycle.CLOSED
        self.sock.close()
        if self.on_close is not None:
            self.on_close(self)
        self.worker.connection_closed(self)


# done and reset: an HTTP/1.1 response forwarded after its connection moved
# (worker/proxy/http/inflight.py).
MESSAGES = frozenset(("data", "eof", "close", "pause", "resume", "done", "reset"))


def dispatch(worker, msg: dict) -> bool:
    """Route a forwarding message to its connection; False if it is not one. A message for a
    connection that is gone, or takes none, is dropped: its other half is closing too."""
    if msg.get("type") not in MESSAGES:
        return False
    conn = worker.connections.get(msg.get("id"))
    if conn is not None:
        conn.on_forwarded(msg)
    return True


register("tcp-split", ForwardedSide.adopt_client)
