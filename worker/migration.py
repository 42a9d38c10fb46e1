"""Moving established connections between workers (upgrade, recycling).

The receiving worker listens on its own handoff socket (an abstract address) from the moment
it starts; the master hands its path to whoever must move connections to it. The sending
worker pauses its connections, exports them (Connection.export, worker/connection.py: a record
and its descriptors), sends them in batches, and lets go of each one only once the receiver
says it adopted it. A connection the receiver refuses, or a batch whose receiver dies or times
out, resumes where it was paused: a failed move loses nothing.

This module never asks what class a connection is: it asks each one its readiness and
adopts each record through the kind's registered adopter. Messages and records are defined in
supervisor/handoff/protocol.py.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket

from ..supervisor.handoff import claim, protocol, unix
from ..supervisor.handoff.channel import Channel
from ..supervisor.handoff.framing import close_fds
from . import batch_ownership, connection, forwarding
from .proxy import udp_proxy
from .connection import Lifecycle, Move

log = logging.getLogger("baton.migration")


class MigrationServer:
    """This worker's handoff socket: adopts the connections other workers send."""

    def __init__(self, worker, path: str, masters: dict | None = None):
        """`path`: an abstract address (supervisor/handoff/unix.py says why), or a file.
        `masters`: the masters whose processes may move connections here, ours and the
        previous generation's (unix.trusted_masters: pid -> pidfd or None)."""
        self.worker = worker
        self.loop = worker.loop
        self.path = path
        self.masters = dict(masters or {})
        self.sock = unix.bind_abstract(path) if unix.is_abstract(path) else unix.bind_private(path)
        self.versions: dict[Channel, int | None] = {}     # channel -> negotiated version
        self.loop.add_reader(self.sock.fileno(), self._on_acceptable)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if not unix.is_abstract(self.path):
            unix.unlink_quietly(self.path)
        for channel in list(self.versions):
            channel.close("worker exiting")

    def _trusted(self, pid: int, uid: int) -> bool:
        """A peer proves it belongs to this Baton by its pid, not only its uid (any process
        of the worker user could connect to an abstract socket): it is one of our masters
        (which connects for its workers, supervisor/handoff/broker.py) or one of their
        children (an older release's workers connect themselves). Root passes: it could
        ptrace us anyway. A pid is checked while its connection is open, so it cannot have
        been reused by another process yet unless the peer exited at once; a master's own
        pid is trusted only while its pidfd says it runs."""
        if uid == 0:
            return True
        live = {m for m, pidfd in self.masters.items() if pidfd is None or _runs(pidfd)}
        return pid in live or unix.parent_pid(pid) in live

    def _on_acceptable(self) -> None:
        accepted = unix.accept_checked(self.sock, "handoff socket", self._trusted)
        if accepted is None:
            return
        conn, pid = accepted
        channel = Channel(conn, self._on_message, self._on_closed, name=f"handoff from pid {pid}")
        self.versions[channel] = None
        self.worker.handoff_channels.add(channel)

    def _on_closed(self, channel, reason) -> None:
        self.versions.pop(channel, None)
        _channel_lost(self.worker, channel)

    def _on_message(self, channel: Channel, msg: dict, fds) -> None:
        try:
            protocol.check(msg)
        except protocol.ProtocolError as exc:
            close_fds(fds)
            channel.reply(msg, protocol.error(str(exc)))
            return
        kind = msg["type"]
        if kind == "hello":
            close_fds(fds)
            try:
                version = self.versions[channel] = protocol.negotiate(msg)
            except protocol.ProtocolError as exc:
                channel.reply(msg, protocol.error(str(exc)))
                return
            channel.reply(msg, protocol.hello_reply(version, os.getpid(), self.worker.generation))
        elif self.versions.get(channel) is None:
            close_fds(fds)
            channel.reply(msg, protocol.error("hello first"))
        elif kind == "connections":
            self._adopt(channel, msg, fds)
        elif forwarding.dispatch(self.worker, msg):
            close_fds(fds)
        else:
            close_fds(fds)
            channel.reply(msg, protocol.error(f"unexpected message type {kind!r}"))


    def _adopt(self, channel: Channel, msg: dict, fds) -> None:
        """Adopt a batch and answer. The adopted connections start their I/O only once the
        answer has left (or the channel closed first, this worker running on: the sender
        finds it alive and lets go): a sender that finds this worker dead with its answer
        unsent sends the batch elsewhere, safe only if nothing here read or wrote it yet. No
        exception reaches the channel, whose handler-failure path would close the frame's
        descriptors: after the claim they are ours (adopted) or closed (refused) already."""
        try:
            adopted, refused, new_ids, conns = adopt_connections(
                self.worker, self.versions[channel], msg, fds, channel)
        except Exception:
            log.exception("%s: adopting a batch failed", channel.name)
            channel.reply(msg, protocol.error("internal error adopting the batch"))
            return
        channel.reply(msg, {"type": "adopted", "ids": adopted, "refused": refused, "new_ids": new_ids})
        if conns:
            channel.when_sent(lambda: _start(conns))


def _start(conns) -> None:
    for conn in conns:
        try:
            conn.after_adoption()
        except Exception:
            log.exception("connection %d: could not start after its adoption; closing it", conn.id)
            try:
                conn.close()
            except Exception:
                log.exception("connection %d: close failed", conn.id)


def adopt_connections(worker, version: int, msg: dict, fds: list[int], channel=None):
    """Take over the connections of one `connections` frame (protocol `version`).

    Returns (adopted old ids, refused old id -> why, old id -> new id, the adopted
    connections, to be told `after_adoption()` once the answer is sent). A record this worker
    cannot take is refused with its reason and its descriptors closed; the sender keeps it;
    so is one whose adopter raised (a bug in one kind must not cost the others: the answer
    says exactly which are held here). From protocol version 3 the batch is ours only once we take its claim token: a batch the
    sender took back at its deadline is refused whole (supervisor/handoff/claim.py)."""
    adopted, refused, new_ids, conns = [], {}, {}, []
    fds, taken_back = _claim_batch(version, msg, fds)
    if taken_back:
        close_fds(fds)
        ids = [raw.get("id") for raw in msg.get("conns") or () if isinstance(raw, dict)]
        return [], {i: taken_back for i in ids if isinstance(i, int)}, {}, []
    records, leftover = protocol.decode_records(version, msg, fds)
    close_fds(leftover)
    for record in records:
        reason = record.error or _refusal(worker, record)
        new_id = None if reason else worker.next_connection_id()
        if not reason:
            try:
                conn = connection.adopter(record.kind)(
                    worker, worker.listeners[record.fields["listener"]], record.fields,
                    record.fds, new_id, channel)
            except Exception:
                log.exception("connection %s: its %s adopter failed", record.old_id, record.kind)
                reason = f"its {record.kind} adopter failed"
        if reason:
            close_fds(record.fds)
            if isinstance(record.old_id, int):     # the sender's id; garbage has none
                refused[record.old_id] = reason
            continue
        if conn is not None and conn.state is not Lifecycle.CLOSED:   # it may fail at once
            worker.connections[new_id] = conn
            conns.append(conn)
        adopted.append(record.old_id)
        new_ids[record.old_id] = new_id
    return adopted, refused, new_ids, conns


def _claim_batch(version: int, msg: dict, fds: list[int]) -> tuple[list[int], str | None]:
    """The batch's descriptors without its claim token, and why it is not ours (None: it is,
    adopt it). Before version 3 there is no token: a batch is ours when it arrives."""
    if version < protocol.CLAIM_VERSION:
        return fds, None
    index = msg.get("claim")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(fds):
        return fds, "the batch has no claim token"
    fds = list(fds)
    token = fds.pop(index)
    if claim.claim(token):
        return fds, None
    return fds, "the sender took this batch back at its deadline"


def _refusal(worker, record) -> str | None:
    listener = worker.listeners.get(record.fields["listener"])
    if listener is None:
        return f"no listener {record.fields['listener']!r} here"
    if connection.adopter(record.kind) is None:
        return f"cannot adopt a {record.kind} connection"
    return connection.refusal(record.kind, worker, listener, record.fields)


def _channel_lost(worker, channel) -> None:
    for conn in list(worker.connections.values()):
        conn.channel_lost(channel)


class Peer:
    """A receiving worker's handoff channel, with what it said in hello: the protocol version,
    the connection records (kind -> versions) it adopts, and its pid, held as a pidfd opened
    while the channel is up (so the number cannot be another process's yet): whether the
    receiver still runs decides a claimed batch whose channel closed unanswered (batch_ownership.py)."""

    __slots__ = ("channel", "version", "accepts", "pidfd", "pid", "late", "moving")

    def __init__(self, channel: Channel, version: int, accepts: dict, pid: int | None = None):
        self.channel = channel
        self.version = version
        self.accepts = accepts
        self.late: set = set()          # connections waiting for a late answer (batch_ownership)
        self.moving = True              # until migrate_connections is done with it
        self.pidfd = _pidfd(pid)
        self.pid = pid if self.pidfd is not None else None     # /proc/<pid>, while pidfd runs

    def forget_process(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = self.pid = None


def _runs(pidfd: int) -> bool:
    """Whether a master's pidfd says it runs; a pidfd that cannot be read trusts nobody."""
    try:
        return not unix.exited(pidfd)
    except OSError:
        return False


def _pidfd(pid) -> int | None:
    """A pidfd of `pid`, or None: no pid, or one out of range (a peer's hello says what it
    likes), or it has exited already (ESRCH), or the kernel has no pidfd_open (then a
    claimed batch whose channel closes is taken for dead)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError, OverflowError, ValueError):
        return None


async def open_handoff(path: str, generation: int, worker=None) -> "Peer":
    """Connect to another worker's handoff socket and say hello."""
    broker = getattr(worker, "handoff_broker", None)
    if broker is not None:
        # Through the master: an unprivileged worker may not reach (or be admitted by) an
        # older release's handoff socket file (supervisor/handoff/broker.py).
        sock = await broker.connect(path, protocol.MIGRATE_TIMEOUT)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, path),
                                   protocol.MIGRATE_TIMEOUT)
        except BaseException:
            sock.close()
            raise
    def on_message(channel, msg, fds):
        # Old side: forwarding messages for a split connection, possibly ahead of the
        # adoption reply (the connection keeps those until it processed the reply).
        close_fds(fds)
        if worker is None or not forwarding.dispatch(worker, msg):
            log.warning("%s: unexpected %r", channel.name, msg.get("type"))

    def on_closed(channel, reason):
        if worker is not None:
            _channel_lost(worker, channel)
    channel = Channel(sock, on_message, on_closed, name=f"handoff to {os.path.basename(path)}")
    if worker is not None:
        worker.handoff_channels.add(channel)
    try:
        reply = await channel.request(protocol.hello(os.getpid(), generation),
                                      timeout=protocol.MIGRATE_TIMEOUT)
        protocol.check(reply)
        if reply["type"] != "hello":
            raise protocol.ProtocolError(reply.get("error", "handshake refused"))
        version = reply.get("version")
        if version not in protocol.VERSIONS:
            raise protocol.ProtocolError(f"the receiver chose protocol version {version!r}, "
                                         f"which we do not speak")
    except BaseException as exc:       # refused, timed out, or the move was cancelled
        channel.close(f"handshake failed: {exc!r}")
        raise
    return Peer(channel, version, protocol.accepted_records(version, reply), reply.get("pid"))


def _adopted_by_all(peers) -> dict:
    """Record kind -> the versions every peer adopts (connections are spread over all)."""
    kinds = set.intersection(*(set(peer.accepts) for peer in peers))
    return {kind: sorted(set.intersection(*(set(peer.accepts[kind]) for peer in peers)))
            for kind in kinds}


def _batches(conns):
    batch, size = [], 0
    for conn in conns:
        batch.append(conn)
        size += sum(conn.buffered())
        if len(batch) >= protocol.CONNS_PER_FRAME or size >= protocol.BYTES_PER_FRAME:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _targeted_batches(conns, peers: int):
    """(batch, peer index or None): connections that must reach one particular receiver
    (a UDP session goes to the worker that will read its listener: `handoff_target`) in
    batches of their own; the rest spread round-robin (None)."""
    spread, targeted = [], {}
    for conn in conns:
        target = conn.handoff_target(peers)
        if target is None:
            spread.append(conn)
        else:
            targeted.setdefault(target, []).append(conn)
    for target, group in targeted.items():
        for batch in _batches(group):
            yield batch, target
    for batch in _batches(spread):
        yield batch, None


async def migrate_connections(worker, targets: list[str], keep_upstreams: bool = False,
                              idle_wait: float = 30.0) -> tuple[int, int, int]:
    """Move every connection of `worker` to the workers listening on `targets`, spread
    round-robin. With `keep_upstreams`, open L4 connections leave their upstream socket here
    and are forwarded (write migration). Connections ready to move (Move.NOW) go at once;
    those busy with an exchange (Move.WHEN_IDLE: HTTP/1.1 serving a request) move once it
    ends, waiting at most `idle_wait` seconds; the rest (Move.NEVER: HTTP/2, inspections,
    forwarded halves) stay to drain. Returns (moved, kept here, connections there were when
    the move began; those that ended meanwhile are in neither count)."""
    peers: list[Peer] = []
    try:
        return await _migrate(worker, targets, peers, keep_upstreams, idle_wait)
    finally:
        # Even if the move raised part-way (a bug in one kind, or cancelled): each receiver's
        # pidfd is ours to close, and a channel nothing forwards over is done; once its late
        # answers came, for one that has batches waiting for them.
        for peer in peers:
            peer.moving = False
            if not peer.late:
                batch_ownership.release(worker, peer)


async def _migrate(worker, targets, peers: list, keep_upstreams: bool, idle_wait: float):
    """migrate_connections, opening its receivers into `peers`."""
    for path in targets:
        try:
            peers.append(await open_handoff(path, worker.generation, worker))
        except (OSError, asyncio.TimeoutError, protocol.ProtocolError, Exception) as exc:
            log.error("worker %d: cannot reach %s: %s", worker.id, path, exc)
    if not peers:
        udp_proxy.handed_over(worker)   # our UDP sessions stay; new ones go to the new reader
        return 0, len(worker.connections), len(worker.connections)
    worker.handoff_accepts = _adopted_by_all(peers)
    before = list(worker.connections.values())
    now = [c for c in before if c.readiness() is Move.NOW]
    try:
        moved, kept, live = await _move_past_dead_receivers(worker, now, peers, keep_upstreams)
    finally:
        # UDP sessions are with their new readers (or stay here, if this failed): let the
        # new reader read in any case, or the listener would go deaf until we exit.
        udp_proxy.handed_over(worker)
    if live:
        moved_later, kept_later = await _move_when_idle(worker, live, idle_wait, kept)
        moved += moved_later
        kept |= kept_later
    here = set(map(id, worker.connections.values()))
    # A connection that moved but still serves its exchange here for the new worker (write
    # migration: inflight.py) moved; it does not stay to drain.
    stayed = sum(1 for c in before if id(c) in here and c not in kept
                 and not any(c in peer.late or c.uses_channel(peer.channel) for peer in peers))
    return moved, len(kept) + stayed, len(before)


async def _move_past_dead_receivers(worker, conns, peers, client_only: bool) -> tuple[int, set, list]:
    """_move, then once more for the connections whose receiver died before it answered (a
    new worker killed mid-move): to the receivers still there, instead of draining here
    until the drain deadline cuts them. What the dead one had adopted died with it. Those
    bound to one receiver (a UDP session and its listener's reader) stay. Returns (moved,
    kept, the receivers still there)."""
    moved, kept = 0, set()
    while conns:
        orphaned: set = set()
        m, k = await _move(worker, conns, peers, client_only, orphaned)
        moved += m
        kept |= k
        live = [peer for peer in peers if not peer.channel.closed]
        conns = [c for c in orphaned if c.state is not Lifecycle.CLOSED
                 and c.readiness() is Move.NOW and c.handoff_target(len(peers)) is None]
        peers = live
        if not conns or not live:
            break
        log.warning("worker %d: a receiver died mid-move; %d connection(s) go to the %d left",
                    worker.id, len(conns), len(live))
        kept.difference_update(conns)
    return moved, kept, [peer for peer in peers if not peer.channel.closed]


async def _move_when_idle(worker, peers, wait: float, refused: set) -> tuple[int, set]:
    """The connections left after the first batch (but those `refused` already): the busy
    ones pause after their exchange and are moved then, the ones that became ready meanwhile
    at once, in small batches, until none is left or `wait` runs out. Those that cannot move
    start draining."""
    busy = []
    for conn in list(worker.connections.values()):
        if conn in refused:
            continue
        if conn.readiness() is Move.NEVER:
            conn.drain()        # HTTP/2: two-phase GOAWAY; its client reconnects to the new one
        else:
            busy.append(conn)
    if not busy:
        return 0, set()
    loop = worker.loop
    ready: list = []
    wake = asyncio.Event()

    def on_idle(conn):
        ready.append(conn)
        wake.set()
    for conn in busy:
        conn.hold_when_idle(on_idle)
    deadline = loop.time() + wait
    moved, kept = 0, set()
    waiting = set(busy)
    fired: list = []
    try:
        while waiting and loop.time() < deadline:
            try:
                await asyncio.wait_for(wake.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                break
            wake.clear()
            fired, ready[:] = list(ready), []
            waiting.difference_update(fired)
            waiting = {c for c in waiting if c.state is not Lifecycle.CLOSED}
            batch = [c for c in fired if c.readiness() is Move.NOW]
            _hold_again([c for c in fired if c not in batch], waiting, on_idle, bool(peers))
            if batch and peers:
                m, k, peers = await _move_past_dead_receivers(worker, batch, peers, False)
                moved += m
                kept |= k
            else:                   # every receiver died: these serve on and drain here
                for conn in batch:
                    conn.cancel_hold()
                kept.update(batch)
            fired = []
    finally:
        # Also when cancelled: none is left waiting to pause for a move that is gone, nor
        # paused for one that never came: idle since the last wake-up, or idle and not yet
        # sent when the move was cancelled (cancel_hold reads again; one sent was decided by
        # batch_ownership.give_up, and its hold is export's: cancel_hold leaves it).
        for conn in waiting.union(ready, fired):
            conn.cancel_hold()
    return moved, kept


def _hold_again(busy_again, waiting: set, on_idle, peers_left: bool) -> None:
    """Connections whose hold fired (reading paused for the move) but that are no longer
    movable when the move looks at them: an in-flight response's next bytes reached a slow
    client's buffer before the loop woke, say. Each reads again (cancel_hold) and, while a
    receiver is left, waits for its next idle moment like the others; before, it was neither
    sent nor waited for, and stayed paused until the drain closed it. One that fired to say
    it stays (an HTTP/2 hold that expired: it drains, GOAWAY sent) is not held again."""
    for conn in busy_again:
        if conn.state is Lifecycle.CLOSED:
            continue
        conn.cancel_hold()
        if peers_left and conn.readiness() is Move.WHEN_IDLE and \
                not getattr(conn, "draining", False):
            waiting.add(conn)
            conn.hold_when_idle(on_idle)


def _keep(conn) -> None:
    """A connection whose export failed serves on here; one that cannot even be given back
    is closed rather than left paused for ever."""
    try:
        conn.resume()
    except Exception:
        log.exception("connection %d: could not be given back after a failed export; closing it",
                      conn.id)
        try:
            conn.close()
        except Exception:
            log.exception("connection %d: close failed", conn.id)


# Batches sent and not yet answered. An exported connection may hold a second descriptor of
# its socket until the answer (HTTP connections dup theirs off the transport): 10,000 exported
# at once needed 20,000 descriptors, past a container's hard limit, and the move died on EMFILE.
MAX_BATCHES_IN_FLIGHT = 8


async def _move(worker, conns, peers, client_only: bool, orphaned: set | None = None) -> tuple[int, set]:
    """Send `conns` in batches to `peers`, at most MAX_BATCHES_IN_FLIGHT unanswered at a
    time; (moved, the connections kept here) once every receiver answered. Kept connections
    whose receiver died before it answered are added to `orphaned` too."""
    pending: collections.deque = collections.deque()
    kept: set = set()
    moved = 0
    try:
        for i, (batch, target) in enumerate(_targeted_batches(conns, len(peers))):
            peer = peers[target if target is not None else i % len(peers)]
            records, fds, sent = [], [], []
            for conn in batch:
                try:
                    export = conn.export(client_only=client_only)
                    record = protocol.encode_record(peer.version, peer.accepts, export.kind,
                                                    export.fields, export.fds)
                except OSError as exc:      # EMFILE and the like: it stays, and drains here
                    log.warning("worker %d: connection %d stays here: %s", worker.id, conn.id, exc)
                    _keep(conn)
                    kept.add(conn)
                    continue
                except Exception:
                    # A bug in one kind's export must not stop the move of every other
                    # connection: this one stays (or, if it cannot be given back, closes).
                    log.exception("worker %d: connection %d stays here: its export failed",
                                  worker.id, conn.id)
                    _keep(conn)
                    kept.add(conn)
                    continue
                if record is None:       # the receiver is a version that cannot adopt this kind
                    log.warning("worker %d: connection %d stays here: the receiver does not "
                                "adopt %s connections", worker.id, conn.id, export.kind)
                    _keep(conn)
                    kept.add(conn)
                    continue
                records.append(record)
                fds.extend(export.fds)
                sent.append(conn)
            if not sent:
                continue
            request, token, deadline = batch_ownership.send(worker, peer, records, fds, len(sent))
            pending.append((sent, request, peer, token, deadline))
            moved += await _settle(worker, pending, kept, orphaned, MAX_BATCHES_IN_FLIGHT - 1)
    finally:
        # Also when the loop raised part-way: a batch sent is settled, or its connections
        # would stay paused for ever and its token open.
        moved += await _settle(worker, pending, kept, orphaned)
    return moved, kept


async def _settle(worker, pending: collections.deque, kept: set, orphaned: set | None,
                  leave: int = 0) -> int:
    """Settle the oldest batches of `pending` until `leave` are left; how many moved. If
    cancelled, it waits for no answer: the batch being settled and every other pending one
    are decided at once (batch_ownership.give_up), none left paused nor its token open."""
    moved = 0
    try:
        while len(pending) > leave:
            moved += await batch_ownership.settle(worker, *pending.popleft(), kept, orphaned)
    except asyncio.CancelledError:
        while pending:
            sent, request, peer, token, _ = pending.popleft()
            batch_ownership.give_up(worker, sent, request, peer, token, kept)
        raise
    return moved
