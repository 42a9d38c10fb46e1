"""Moving established connections between workers (upgrade, recycling).

The receiving worker listens on its own handoff socket (<runtime dir>/worker-G-N.sock) from the
moment it starts; the master hands its path to whoever must move connections to it. The sending
worker pauses its connections, exports them (TcpProxyConnection.export: state plus 1-2
descriptors each), sends them in batches, and lets go of each one only once the receiver says
it adopted it. A connection the receiver refuses, or a batch whose receiver dies or times out,
resumes where it was paused: a failed move loses nothing.

Message types are in supervisor/handoff/protocol.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from ..supervisor.handoff import protocol, unix
from ..supervisor.handoff.channel import Channel
from ..supervisor.handoff.framing import close_fds
from . import forwarding
from .forwarding import ForwardedSide
from .proxy.tcp_proxy import CLOSED, CONNECTING, OPEN, TcpProxyConnection

log = logging.getLogger("baton.migration")


class MigrationServer:
    """This worker's handoff socket: adopts the connections other workers send."""

    def __init__(self, worker, path: str):
        self.worker = worker
        self.loop = worker.loop
        self.path = path
        self.sock = unix.bind_private(path)
        self.versions: dict[Channel, int | None] = {}     # channel -> negotiated version
        self.loop.add_reader(self.sock.fileno(), self._on_acceptable)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        unix.unlink_quietly(self.path)
        for channel in list(self.versions):
            channel.close("worker exiting")

    def _on_acceptable(self) -> None:
        accepted = unix.accept_checked(self.sock, "handoff socket")
        if accepted is None:
            return
        conn, pid = accepted
        channel = Channel(conn, self._on_message, self._on_closed, name=f"handoff from pid {pid}")
        self.versions[channel] = None

    def _on_closed(self, channel, reason) -> None:
        self.versions.pop(channel, None)
        _channel_lost(self.worker, channel)

    def _on_message(self, channel: Channel, msg: dict, fds) -> None:
        kind = msg["type"]
        if kind == "hello":
            try:
                version = self.versions[channel] = protocol.negotiate(msg)
            except protocol.ProtocolError as exc:
                channel.reply(msg, protocol.error(str(exc)))
                return
            channel.reply(msg, {"type": "hello", "version": version, "pid": os.getpid(),
                                "generation": self.worker.generation})
        elif self.versions.get(channel) is None:
            close_fds(fds)
            channel.reply(msg, protocol.error("hello first"))
        elif kind == "connections":
            adopted, refused, new_ids, forwarded = adopt_connections(self.worker, msg, fds, channel)
            channel.reply(msg, {"type": "adopted", "ids": adopted, "refused": refused, "new_ids": new_ids})
            for side in forwarded:       # after the answer: the sender must know the new ids first
                side.start()
        elif forwarding.dispatch(self.worker, msg):
            close_fds(fds)
        else:
            close_fds(fds)
            channel.reply(msg, protocol.error(f"unknown message type {kind!r}"))


def adopt_connections(worker, msg: dict, fds: list[int], channel=None):
    """Take over the connections of one `connections` frame.

    Returns (adopted old ids, refused old id -> why, old id -> new id, forwarded sides to
    start once the answer is sent)."""
    adopted, refused, new_ids, forwarded = [], {}, {}, []
    index = 0
    for state in msg.get("conns", ()):
        nfds = 2 if state.get("state") == "open" else 1
        conn_fds, index = fds[index:index + nfds], index + nfds
        reason = _refusal(worker, state, len(conn_fds) == nfds)
        if reason:
            close_fds(conn_fds)
            refused[state.get("id")] = reason
            continue
        listener = worker.listeners[state["listener"]]
        new_id = worker.next_connection_id()
        if state["state"] == "http":
            chain = listener.chains[state.get("chain") or 0]
            client = socket.socket(listener.family, socket.SOCK_STREAM, 0, conn_fds[0])
            worker.stats.gauges[listener.stat_cx_active] += 1
            worker.start_connection(listener, chain, client,
                                    tuple(state["peer"]) if state.get("peer") else None,
                                    tuple(state["original"]) if state.get("original") else None,
                                    conn_id=new_id)
        elif state["state"] == "split":
            side = _adopt_split(worker, listener, state, conn_fds[0], new_id, channel)
            worker.connections[new_id] = side
            forwarded.append(side)
        else:
            conn = TcpProxyConnection.adopt(worker, listener, state, conn_fds, new_id)
            if conn.state is not CLOSED:      # it may have failed at once (no healthy host)
                worker.connections[conn.id] = conn
        adopted.append(state["id"])
        new_ids[state["id"]] = new_id
    close_fds(fds[index:])
    return adopted, refused, new_ids, forwarded


def _adopt_split(worker, listener, state: dict, fd: int, new_id: int, channel):
    """Write migration, new side: we own the client; its upstream stays in the sender."""
    down, up = state["down"], state["up"]
    worker.stats.gauges[listener.stat_cx_active] += 1

    def client_done(side):
        worker.stats.gauges[listener.stat_cx_active] -= 1
    return ForwardedSide(worker, socket.socket(listener.family, socket.SOCK_STREAM, 0, fd), channel, new_id, state["id"],
                         int(state.get("limit") or listener.spec.get("buffer_limit", 1 << 20)),
                         initial=down["data"], read_eof=up["eof"], peer_eof=down["eof"],
                         shut=down["done"], on_close=client_done)


def _refusal(worker, state: dict, fds_ok: bool) -> str | None:
    if not fds_ok:
        return "descriptors missing"
    if state.get("listener") not in worker.listeners:
        return f"no listener {state.get('listener')!r} here"
    if state.get("state") == "open" and worker.clusters.get(state.get("cluster")) is None:
        return f"no cluster {state.get('cluster')!r} here"
    if state.get("state") == "http":
        index = state.get("chain") or 0
        chains = worker.listeners[state["listener"]].chains
        if index >= len(chains) or chains[index].http_config is None:
            return "no http_connection_manager at that filter chain here"
    if state.get("state") not in ("open", "connecting", "split", "http"):
        return f"cannot adopt a connection in state {state.get('state')!r}"
    return None


def _channel_lost(worker, channel) -> None:
    for side in [c for c in worker.connections.values()
                 if isinstance(c, ForwardedSide) and c.channel is channel]:
        side.peer_lost()


async def open_handoff(path: str, generation: int, worker=None) -> Channel:
    """Connect to another worker's handoff socket and say hello."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, path), protocol.MIGRATE_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    def on_message(channel, msg, fds):
        close_fds(fds)
        if worker is None or not _route_forwarding(worker, msg):
            log.warning("%s: unexpected %r", channel.name, msg.get("type"))

    def on_closed(channel, reason):
        if worker is not None:
            _channel_lost(worker, channel)
    channel = Channel(sock, on_message, on_closed, name=f"handoff to {os.path.basename(path)}")
    reply = await channel.request(protocol.hello(os.getpid(), generation), timeout=protocol.MIGRATE_TIMEOUT)
    if reply.get("type") != "hello":
        channel.close("handshake refused")
        raise protocol.ProtocolError(reply.get("error", "handshake refused"))
    return channel


def _route_forwarding(worker, msg: dict) -> bool:
    """Old side: forwarding messages for a connection whose adoption reply we have not
    processed yet are kept for it, in order."""
    conn = worker.connections.get(msg.get("id"))
    if isinstance(conn, TcpProxyConnection) and conn.early is not None:
        conn.early.append(msg)
        return True
    return forwarding.dispatch(worker, msg)


def _batches(conns):
    batch, size = [], 0
    for conn in conns:
        batch.append(conn)
        if getattr(conn, "pumps", None) is not None:
            size += sum(p.pending for p in conn.pumps)
        if len(batch) >= protocol.CONNS_PER_FRAME or size >= protocol.BYTES_PER_FRAME:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


async def migrate_connections(worker, targets: list[str], keep_upstreams: bool = False,
                              http_wait: float = 30.0) -> tuple[int, int, int]:
    """Move every connection of `worker` to the workers listening on `targets`, spread
    round-robin. With `keep_upstreams`, open connections leave their upstream socket here and
    are forwarded (write migration). HTTP/1.1 connections move when idle: those serving a
    request move once its response is written (waiting at most `http_wait` seconds); HTTP/2
    ones stay to drain with GOAWAY. Returns (moved, kept here, connections there were when
    the move began; those that ended meanwhile are in neither count)."""
    channels = []
    for path in targets:
        try:
            channels.append(await open_handoff(path, worker.generation, worker))
        except (OSError, asyncio.TimeoutError, protocol.ProtocolError, Exception) as exc:
            log.error("worker %d: cannot reach %s: %s", worker.id, path, exc)
    if not channels:
        return 0, len(worker.connections), len(worker.connections)
    total = len(worker.connections)
    conns = [c for c in worker.connections.values()
             if c.state in (OPEN, CONNECTING) or (c.state == "http" and c.movable)]
    moved, kept = await _move(worker, conns, channels, keep_upstreams)
    moved_http, kept_http = await _move_http_when_idle(worker, channels, http_wait)
    moved += moved_http
    kept += kept_http
    for channel in channels:
        # A channel that carries forwarded connections lives as long as they do.
        if not any(isinstance(c, ForwardedSide) and c.channel is channel for c in worker.connections.values()):
            channel.close("done")
    stayed = sum(1 for c in worker.connections.values() if c.state not in (OPEN, CONNECTING))
    return moved, kept + stayed, total


async def _move_http_when_idle(worker, channels, wait: float) -> tuple[int, int]:
    """HTTP/1.1 connections busy with a request: each stops reading after its response and
    is moved then, in small batches, until none is left or `wait` runs out."""
    http = [c for c in worker.connections.values() if c.state == "http" and not c.closed]
    for conn in http:
        if not conn.can_move:
            conn.drain()        # HTTP/2: two-phase GOAWAY; its client reconnects to the new one
    busy = [c for c in http if c.can_move and not c.closed]
    if not busy:
        return 0, 0
    loop = worker.loop
    ready: list = []
    wake = asyncio.Event()

    def on_idle(conn):
        ready.append(conn)
        wake.set()
    for conn in busy:
        conn.hold_when_idle(on_idle)
    deadline = loop.time() + wait
    moved = kept = 0
    waiting = set(busy)
    while waiting and loop.time() < deadline:
        try:
            await asyncio.wait_for(wake.wait(), deadline - loop.time())
        except asyncio.TimeoutError:
            break
        wake.clear()
        batch, ready[:] = [c for c in ready if not c.closed and c.movable], []
        waiting = {c for c in waiting if not c.closed and c not in batch and c.on_idle is not None}
        if batch:
            m, k = await _move(worker, batch, channels, False)
            moved += m
            kept += k
    for conn in waiting:
        conn.on_idle = None
    return moved, kept


async def _move(worker, conns, channels, keep_upstreams: bool) -> tuple[int, int]:
    """Send `conns` in batches over `channels`; (moved, kept) once every receiver answered."""
    pending = []
    future_channels = {}
    for i, batch in enumerate(_batches(conns)):
        channel = channels[i % len(channels)]
        states, fds = [], []
        for conn in batch:
            if conn.state == "http":
                state, conn_fds = conn.export()
            else:
                state, conn_fds = conn.export(keep_upstream=keep_upstreams)
            states.append(state)
            fds.extend(conn_fds)
        try:
            # No duplicates needed: our descriptors stay open until the receiver answers.
            future = channel.request({"type": "connections", "conns": states}, fds,
                                     timeout=protocol.MIGRATE_TIMEOUT, dup=False)
        except Exception as exc:  # noqa: BLE001 - the channel died: this batch stays here
            log.error("worker %d: sending %d connection(s) failed: %s", worker.id, len(batch), exc)
            future = None
        pending.append((batch, future))
        future_channels[id(future)] = channel
    moved = kept = 0
    for batch, future in pending:
        by_id = {conn.id: conn for conn in batch}
        try:
            reply = await future if future is not None else {}
        except Exception as exc:  # noqa: BLE001 - timeout or receiver gone: resume all
            log.error("worker %d: %d connection(s) not adopted: %s", worker.id, len(batch), exc)
            reply = {}
        adopted = set(reply.get("ids", ()))
        new_ids = reply.get("new_ids") or {}
        for conn_id, conn in by_id.items():
            if conn_id in adopted and getattr(conn, "early", None) is not None and conn_id in new_ids:
                conn.forward_upstream(future_channels[id(future)], new_ids[conn_id])
                moved += 1
            elif conn_id in adopted:
                conn.migrated()
                moved += 1
            else:
                conn.resume()
                kept += 1
        for conn_id, why in (reply.get("refused") or {}).items():
            log.warning("worker %d: connection %s stays here: %s", worker.id, conn_id, why)
    return moved, kept
