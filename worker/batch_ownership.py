"""Who holds a batch of connections once it is sent: the sender or the receiver, never both.

The sending loop (worker/migration.py `_move`) exports connections and hands each batch to
`send`; `settle` then decides, from the receiver's answer, its claim token
(supervisor/handoff/claim.py) and, if its channel closed unanswered, whether the receiver
still runs, which connections moved (let go here) and which stay (resumed here).

A batch the receiver claimed and did not answer in CLAIMED_ANSWER_TIMEOUT, its channel open
(the receiver stopped or wedged), no longer holds the move: its connections with nothing
running here are let go, and one that serves an exchange here for the receiver (an HTTP/1.1
response in flight, a tunnel's upstream) goes on, its output held, until the late answer says
where it is (`_let_go_late`); so does an L4 connection moved client-only (tcp-split), whose
upstream half waits here paused, as export left it, to learn the id it forwards to (it
never touches the client's socket, so waiting makes no second writer either). One whose
channel closes unanswered cannot be served on: the channel was the exchange's only way to
its client, whose socket the receiver may hold, and without the answer nobody here can tell
whether the receiver adopted it (then it alone may write to the socket, and it ended its side
as the channel went: inflight.ForwardedResponse.channel_lost, forwarding.ForwardedSide's
peer_lost) or refused it; writing to the socket from here would make a second writer in the
first case (a tcp-split resumed here would run its pumps on that socket). So it ends
(`_end_forwarding`), unless the receiver died (then nothing else holds it and it serves on
here).
"""

from __future__ import annotations

import asyncio
import logging

from ..supervisor.handoff import claim, protocol, unix

log = logging.getLogger("baton.migration")


def send(worker, peer, records: list, fds: list, count: int):
    """Send one batch of `count` connections (their `records` and descriptors) to `peer`:
    ((the answer's future, the frame as queued), its claim token or None, the loop time by
    which the answer is due), what `settle` takes. From protocol version 3 the batch carries a
    claim token (supervisor/handoff/claim.py)."""
    msg = {"type": "connections", "conns": records}
    token, timeout = None, protocol.MIGRATE_TIMEOUT
    deadline = asyncio.get_running_loop().time() + protocol.MIGRATE_TIMEOUT
    try:
        if peer.version >= protocol.CLAIM_VERSION:
            # The request waits for the answer or the channel's end: one that comes after
            # CLAIMED_ANSWER_TIMEOUT still decides what stays undecided here (_let_go_late).
            token, timeout = claim.BatchToken(), None
            msg["claim"] = len(fds)
            fds.append(token.fd)
        # No duplicates needed: our descriptors stay open until the receiver answers,
        # and a batch given up while its frame is still queued is withdrawn (_answer).
        future, frame = peer.channel.request_frame(msg, fds, timeout=timeout, dup=False)
    except Exception as exc:  # noqa: BLE001 - the channel died (or no pipe): this batch stays here
        log.error("worker %d: sending %d connection(s) failed: %s", worker.id, count, exc)
        future = frame = None
    return (future, frame), token, deadline


def _died(pidfd: int | None, pid: int | None) -> bool | None:
    """Whether the receiver (`pidfd`, of process `pid`) has died, from what can be read at
    once: exited, or doomed to (unix.doomed: each of its threads exiting or killed); None if
    /proc cannot say (no pid, hidden) and its pidfd does not poll readable yet. A pidfd that
    cannot be read says nothing: the receiver is taken to run on (its batch let go rather
    than served twice)."""
    if pidfd is None:
        return True
    try:
        if unix.exited(pidfd):
            return True
        verdict = unix.doomed(pid) if pid is not None else None
        # Read again: had it exited meanwhile, `pid` could have been another process's.
        if unix.exited(pidfd):
            return True
    except OSError:
        log.exception("receiver's pidfd %d unreadable: taken to run on", pidfd)
        return False
    return verdict


async def _exits_within(pidfd: int | None, timeout: float, pid: int | None = None) -> bool:
    """Whether the receiver has died (`_died`). Its channel closes before its pidfd polls
    readable (a dying process closes its files first), so /proc is read at once; only if
    /proc cannot say is the pidfd given `timeout` to poll readable."""
    verdict = _died(pidfd, pid)
    if verdict is not None:
        return verdict
    loop = asyncio.get_running_loop()
    gone = loop.create_future()
    loop.add_reader(pidfd, lambda: gone.done() or gone.set_result(True))
    try:
        await asyncio.wait((gone,), timeout=timeout)
    finally:
        loop.remove_reader(pidfd)
    return gone.done()


async def _answer_within(future, deadline: float) -> bool:
    """Whether the answer came by `deadline` (loop time); the request runs on either way."""
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining > 0 and not future.done():
        await asyncio.wait((future,), timeout=remaining)
    return future.done()


def _retire(token, future) -> None:
    """A batch taken back: its token is kept until the receiver's refusal (or the channel's
    end), since the frame that carries it may still be queued in the channel."""
    token.close()
    if not future.cancelled():
        future.exception()


LATE = "late"       # claimed, unanswered in CLAIMED_ANSWER_TIMEOUT, its channel open


async def _answer(worker, count: int, request, peer, token,
                  deadline: float) -> tuple[dict, bool | str]:
    """The receiver's answer to one batch ({} if none), and whether the batch is the
    receiver's all the same: it claimed the batch (supervisor/handoff/claim.py) and did not
    answer even in CLAIMED_ANSWER_TIMEOUT (LATE: the answer may still come), or its channel
    closed unanswered while it runs on
    (it adopted and closed the channel before its answer left: a worker that exits right
    after). A receiver whose channel closed because it died holds nothing now: its batch is
    ours to send elsewhere. Without a token (a receiver of protocol version 2 or 1) the
    deadline alone decides, as those releases did. `request`: (the answer's
    future, the frame as queued). A batch given up unanswered is withdrawn from the channel
    if its frame is still queued there: it carries our own descriptor numbers (no copies),
    and once its connections resume here one may close and its number go to a new socket,
    which the frame would then send (Channel.withdraw)."""
    future, frame = request
    channel = peer.channel
    if future is None:
        if token is not None:
            token.close()
        return {}, False
    if token is not None and not await _answer_within(future, deadline):
        if token.revoke():          # the receiver will refuse it when it reads it
            log.error("worker %d: %d connection(s) taken back: no answer in %.1fs", worker.id,
                      count, protocol.MIGRATE_TIMEOUT)
            if channel.withdraw(frame):     # never sent: nothing to wait for
                future.cancel()
                token.close()
            else:
                future.add_done_callback(lambda done: _retire(token, done))
            return {}, False
        log.warning("worker %d: %d connection(s) claimed by the receiver, not answered in "
                    "%.1fs: waiting for its answer", worker.id, count, protocol.MIGRATE_TIMEOUT)
        claimed_deadline = deadline - protocol.MIGRATE_TIMEOUT + protocol.CLAIMED_ANSWER_TIMEOUT
        remaining = claimed_deadline - asyncio.get_running_loop().time()
        if remaining > 0 and not future.done():
            await asyncio.wait((future,), timeout=remaining)
        if not future.done():
            token.close()
            return {}, LATE
    try:
        return await future, False
    except Exception as exc:  # noqa: BLE001 - timeout or receiver gone
        log.error("worker %d: %d connection(s) not adopted: %s", worker.id, count, exc)
        channel.withdraw(frame)     # a version-2 receiver that never read it: it never will
        if token is None:
            return {}, False
        if isinstance(exc, asyncio.TimeoutError):
            return {}, True
        return {}, await _claimed_by_a_live_receiver(worker, count, peer, token)
    finally:
        if token is not None:
            token.close()


async def _claimed_by_a_live_receiver(worker, count: int, peer, token) -> bool:
    """A batch whose channel closed unanswered: the receiver's if it claimed it and runs
    on, ours (to resume, or send to another receiver) if it never claimed it or died."""
    if token.revoke():
        return False                # never claimed: nobody adopted it
    if await _exits_within(peer.pidfd, protocol.CLAIMED_EXIT_WAIT, peer.pid):
        return False                # died: what it had adopted died with it
    log.error("worker %d: %d connection(s) claimed by a receiver that closed its channel "
              "unanswered and runs on: they are its", worker.id, count)
    return True


def _end_forwarding(worker, conn, channel) -> None:
    """A connection let go unanswered: its new id there is unknown, so a half it keeps here
    (a split connection's upstream, forwarded: tcp_proxy's ForwardedSide, which takes its
    place under its id; an in-flight response) could only address connection 0, which the
    receiver drops. It ends, as if the channel closed just after (it may have already)."""
    conn.channel_lost(channel)
    kept_half = getattr(worker, "connections", {}).get(conn.id)
    if kept_half is not None and kept_half is not conn:
        kept_half.channel_lost(channel)


def _let_go(worker, conns, peer) -> None:
    """Connections of a batch the receiver claimed and did not answer: its, not ours."""
    if conns:
        log.error("worker %d: %d connection(s) let go unanswered: the receiver claimed them",
                  worker.id, len(conns))
    for conn in conns:
        conn.migrated(peer.channel, 0)
        _end_forwarding(worker, conn, peer.channel)


def _let_go_late(worker, sent, future, peer) -> None:
    """A claimed batch unanswered in CLAIMED_ANSWER_TIMEOUT, its channel open (the receiver
    stopped or wedged): the move stops waiting for it. A connection serving an exchange here
    for the receiver (an HTTP/1.1 response in flight, a tunnel's upstream: its output held;
    an L4 tcp-split's upstream half, paused) stays undecided (Connection.keeps_exchange_here)
    until the answer comes (then it moves, or serves on here) or the channel closes (then the
    receiver's life decides); the others, nothing of which runs here, are let go."""
    waiting = [conn for conn in sent if conn.keeps_exchange_here()]
    _let_go(worker, [conn for conn in sent if conn not in waiting], peer)
    if waiting:
        log.warning("worker %d: %d exchange(s) go on here until the receiver's late answer",
                    worker.id, len(waiting))
        peer.late.update(waiting)
        asyncio.ensure_future(_late_answer(worker, waiting, future, peer))


async def _late_answer(worker, conns, future, peer) -> None:
    try:
        try:
            reply = await future
        except Exception:  # noqa: BLE001 - the channel closed unanswered
            if not await _exits_within(peer.pidfd, protocol.CLAIMED_EXIT_WAIT, peer.pid):
                _let_go(worker, conns, peer)        # it runs on, holding them
                return
            reply = {}                  # it died: what it had adopted died with it
        adopted = set(reply.get("ids") or ()) if reply.get("type") == "adopted" else set()
        new_ids = reply.get("new_ids") or {}
        for conn in conns:
            if conn.id in adopted:
                conn.migrated(peer.channel, new_ids.get(conn.id, 0))
            else:
                log.warning("worker %d: connection %d stays here: refused late", worker.id,
                            conn.id)
                conn.resume()
                if getattr(worker, "draining", False):
                    conn.drain()
    finally:
        peer.late.difference_update(conns)
        if not peer.late and not peer.moving:
            release(worker, peer)


def release(worker, peer) -> None:
    """The move is done with `peer`: its pidfd is closed, and its channel unless something
    still forwards over it (it lives as long as they do)."""
    if not any(c.uses_channel(peer.channel) for c in worker.connections.values()):
        peer.channel.close("done")
    peer.forget_process()


async def settle(worker, sent, request, peer, token, deadline: float, kept: set,
                  orphaned: set | None = None) -> int:
    """The receiver's answer to one batch: adopted connections let go here, the others
    resume (into `kept`; into `orphaned` too if the receiver died unanswering: its channel
    closed, so it adopts none of them later). A batch the receiver claimed is let go even
    unanswered: resuming it would serve it twice. Returns how many moved. Cancelled while it
    waits, it decides at once (`give_up`) and raises."""
    try:
        reply, claimed = await _answer(worker, len(sent), request, peer, token, deadline)
    except asyncio.CancelledError:
        give_up(worker, sent, request, peer, token, kept)
        raise
    if claimed is LATE:
        _let_go_late(worker, sent, request[0], peer)
        return len(sent)
    if claimed:
        _let_go(worker, sent, peer)
        return len(sent)
    if not reply and orphaned is not None and peer.channel.closed:
        orphaned.update(sent)          # unsent (the channel had died) or never answered
    return _decide(worker, sent, reply, peer, kept)


def give_up(worker, sent, request, peer, token, kept: set) -> None:
    """A batch whose move was cancelled (the loop's teardown) before its answer was read:
    decided now, without waiting, which would hold the teardown up or be cancelled in turn.
    An answer already here decides as in `settle`. Otherwise a batch the receiver has not
    claimed is taken back (it refuses it when it reads it): withdrawn if still queued, and
    resumed, as is one without a token (a version-2 receiver: as its deadline does); one it
    claimed is let go (`_let_go`) unless the receiver has died (`_died`, read at once: what
    it had adopted died with it, and the batch serves on here, as `settle` decides a channel
    closed by a death). Without a pidfd (no pidfd_open here) nothing says it died while its
    channel is open: let go rather than served twice; once its channel closed, taken for dead
    as `settle` takes it. The token is closed and the request's future cancelled or read:
    nothing waits for it any more."""
    future, frame = request
    if future is not None and future.done() and not future.cancelled() \
            and future.exception() is None:
        if token is not None:
            token.close()
        _decide(worker, sent, future.result(), peer, kept)
        return
    claimed = token is not None and not token.revoke()
    if future is not None:
        if not claimed:
            peer.channel.withdraw(frame)    # before a resumed connection may close its fd
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()
    if token is not None:
        token.close()
    died = peer.channel.closed if peer.pidfd is None else _died(peer.pidfd, peer.pid)
    if claimed and not died:
        _let_go(worker, sent, peer)
        return
    for conn in sent:
        conn.resume()
        kept.add(conn)


def _decide(worker, sent, reply: dict, peer, kept: set) -> int:
    """The receiver's answer applied: adopted connections let go, the others resumed."""
    if reply.get("type") not in ("adopted", None):
        log.error("worker %d: %d connection(s) not adopted: %s", worker.id, len(sent),
                  reply.get("error", reply.get("type")))
        reply = {}
    adopted = set(reply.get("ids") or ())
    new_ids = reply.get("new_ids") or {}
    moved = 0
    for conn in sent:
        if conn.id in adopted:
            conn.migrated(peer.channel, new_ids.get(conn.id, 0))
            moved += 1
        else:
            conn.resume()
            kept.add(conn)
    for conn_id, why in (reply.get("refused") or {}).items():
        log.warning("worker %d: connection %s stays here: %s", worker.id, conn_id, why)
    return moved
