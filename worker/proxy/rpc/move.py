"""RPC connections that move at a reload with their requests in flight (write migration).

A Dubbo or Bolt connection moves as soon as nothing is unsent to its client: the client
socket and the bytes of a frame not complete yet go to the new worker (record "rpc"), which
reads the next requests and routes them itself. The requests already sent upstream stay
where their upstream connections, timers and counters are; their responses (and any local
reply, a timeout...) are written by the old worker through a `ForwardedTransport`
(http/inflight.py) and cross the handoff channel, one message per whole frame:

    old -> new   data {id, data}     one response frame, its request id already the client's
                 done {id}           the last request the old worker served is answered
                 close {id}          the old worker closes the connection (it is stopping)
                 reset {id}          the same, abruptly
    new -> old   reset {id}          the client went away: forget its requests

Only the new worker writes to the client, each frame in one write, so a forwarded response
and the new worker's own responses interleave frame by frame, never inside one. Both
protocols match responses to requests by id, not by order, so that is all a client needs.

A connection still waiting for forwarded responses is not movable again (a second reload
before they all came): it stays WHEN_IDLE, serving on, and moves once the last one is in.
An older generation that does not know the record never sees it: the sender encodes only
the records the receiver lists, so the connection stays and drains where it is.
"""

from __future__ import annotations

import logging

from ....supervisor.handoff import ownership
from ...connection import register

log = logging.getLogger("baton.rpc")

RECORD = "rpc"
# How long a moved connection's old half waits for its forwarded frames to leave once it is
# done (the new worker reads them as fast as it writes to clients).
FLUSH_TIMEOUT = 10.0


class ForwardedReplies:
    """The new worker's side of the requests the old worker still serves: writes the
    response frames it forwards until it says done."""

    __slots__ = ("conn", "channel", "peer_id", "early")

    def __init__(self, conn, channel, peer_id: int):
        self.conn = conn
        self.channel = channel
        self.peer_id = peer_id              # the connection's id in the old worker
        self.early: list = []               # messages that came before the client's transport

    def transport_ready(self) -> None:
        early, self.early = self.early, []
        for msg in early:
            self.on_message(msg)

    def on_message(self, msg: dict) -> None:
        conn = self.conn
        if conn.transport is None:
            self.early.append(msg)
            return
        kind = msg["type"]
        if kind == "data":
            if not conn.closed:
                conn.transport.write(msg["data"])
        elif kind == "done":
            conn.forwarded_done()
        elif kind in ("eof", "close"):
            conn.forwarded_done()
            conn.close()                    # after the frames written above
        elif kind == "reset":
            conn.forwarded_done()
            conn.abort()

    def client_gone(self) -> None:
        if not self.channel.closed:
            self.channel.send({"type": "reset", "id": self.peer_id})

    def channel_lost(self) -> None:
        """The old worker is gone: the responses it owed can never come. Closing tells the
        client at once (its calls fail now rather than at their timeouts)."""
        log.warning("rpc connection %d: the worker serving its earlier requests is gone",
                    self.conn.id)
        self.conn.forwarded_done()
        self.conn.abort()


def adopt(worker, listener, fields: dict, fds: list[int], conn_id: int, channel=None):
    """Record "rpc": a Dubbo or Bolt client another worker exported."""
    from .connection import RpcConnection, run
    chain = listener.chains[fields.get("chain") or 0]
    client = ownership.socket_from(fds, 0, listener.family)
    worker.stats.gauges[listener.stat_cx_active] += 1
    peer = tuple(fields["peer"]) if fields.get("peer") else None
    conn = RpcConnection(worker, listener, chain, peer, conn_id, fields["input"] or None)
    conn.original = tuple(fields["original"]) if fields.get("original") else None
    if fields["inflight"]:
        conn.forwarded = ForwardedReplies(conn, channel, fields["id"])
    run(worker, conn, client)
    return conn


def refusal(worker, listener, fields: dict) -> str | None:
    index = fields.get("chain") or 0
    if index >= len(listener.chains) or listener.chains[index].rpc is None:
        return "no RPC proxy at that filter chain here"
    speaks = listener.chains[index].rpc.protocol.name
    if speaks != fields["protocol"]:
        return f"that filter chain speaks {speaks}, not {fields['protocol']}"
    return None


register(RECORD, adopt, refusal)
