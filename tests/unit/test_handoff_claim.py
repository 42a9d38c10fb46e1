"""Who holds a batch whose answer is late (supervisor/handoff/claim.py, worker/migration.py).

The decision as a state machine, one batch at a time: the receiver claims the token or the
sender revokes it, whichever comes first wins, and each side acts on what it got:

    sender                        receiver                    outcome
    answer by the deadline        claimed                     the answer decides (adopted)
    revoked at the deadline       reads it later: not claimed refused; the sender serves on
    revoke fails (claimed)        answers later               the answer decides
    revoke fails (claimed)        never answers               let go (the receiver's)
    claimed, channel closes       runs on (pid alive)         let go (the receiver's)
    claimed, channel closes       died (pid exited)           resumed: sent to another
    revoked as the channel closes never claimed               resumed: sent to another
    no token (peer of v1/v2)      adopts when it reads it     the deadline alone (as before)
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess

import pytest

from baton.supervisor.handoff import claim, protocol
from baton.supervisor.handoff.channel import ChannelClosed, recv_with_fds
from baton.worker import batch_ownership, connection, migration

from .test_handoff_records import (ALL_V2, Datagram, SentAtOnce, _Listener, _Worker,  # noqa: F401
                                   datagram_kind)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_receiver_that_claims_first_owns_the_batch():
    token = claim.BatchToken()
    assert claim.claim(os.dup(token.fd)) is True
    assert token.revoke() is False and token.revoke() is False
    token.close()


def test_the_sender_that_revokes_first_keeps_the_batch():
    token = claim.BatchToken()
    assert token.revoke() is True
    assert claim.claim(os.dup(token.fd)) is False       # read late: refused
    token.close()


def test_the_token_decides_across_processes_boundaries_as_sent():
    """Sent as the channel sends it (SCM_RIGHTS), the receiver's descriptor is the same
    pipe: one byte, one winner."""
    token = claim.BatchToken()
    a, b = socket.socketpair()
    socket.send_fds(a, [b"x"], [token.fd])
    _, [received] = recv_with_fds(b)
    assert claim.claim(received) is True and token.revoke() is False
    token.close()
    a.close()
    b.close()


def test_a_token_costs_no_descriptor_once_decided():
    before = open_fds()
    for revoke_first in (True, False):
        token = claim.BatchToken()
        theirs = os.dup(token.fd)
        if revoke_first:
            token.revoke()
        claim.claim(theirs)
        token.close()
        token.close()                   # twice: harmless
    assert open_fds() == before


# -- the receiver ---------------------------------------------------------------------------

def batch(version: int, token_fd: int | None, conn_fd: int):
    record = protocol.encode_record(version, {**ALL_V2, "datagram": [1]}, "datagram",
                                    {"id": 5, "listener": "l", "sessions": 1}, [conn_fd])
    msg = {"type": "connections", "conns": [record]}
    fds = [conn_fd]
    if token_fd is not None:
        msg["claim"] = len(fds)
        fds.append(token_fd)
    protocol.check(msg)
    return msg, fds


def test_a_receiver_adopts_a_batch_it_claimed(datagram_kind):
    token, conn_fd = claim.BatchToken(), os.open("/dev/null", os.O_RDONLY)
    msg, fds = batch(3, os.dup(token.fd), conn_fd)
    adopted, refused, new_ids, conns = migration.adopt_connections(_Worker(), 3, msg, fds)
    assert (adopted, refused, new_ids) == ([5], {}, {5: 100}) and conns[0].fds == [conn_fd]
    assert token.revoke() is False
    token.close()
    os.close(conn_fd)


@pytest.mark.parametrize("token", ["revoked", "missing"])
def test_a_receiver_refuses_a_batch_taken_back_or_without_a_token(datagram_kind, token):
    sender = claim.BatchToken()
    sender.revoke()
    conn_fd = os.open("/dev/null", os.O_RDONLY)
    msg, fds = batch(3, os.dup(sender.fd) if token == "revoked" else None, os.dup(conn_fd))
    before = open_fds()
    worker = _Worker()
    adopted, refused, new_ids, conns = migration.adopt_connections(worker, 3, msg, fds)
    why = ("the sender took this batch back at its deadline" if token == "revoked"
           else "the batch has no claim token")
    assert (adopted, refused, new_ids, conns, worker.connections) == ([], {5: why}, {}, [], {})
    assert open_fds() == before - len(fds)      # every descriptor of the batch closed
    sender.close()
    os.close(conn_fd)


def test_a_version_2_batch_is_adopted_without_a_token(datagram_kind):
    """What 0.2.x sends: no token, adopted when it arrives."""
    conn_fd = os.open("/dev/null", os.O_RDONLY)
    msg, fds = batch(2, None, conn_fd)
    adopted, refused, _, _ = migration.adopt_connections(_Worker(), 2, msg, fds)
    assert (adopted, refused) == ([5], {})
    os.close(conn_fd)


# -- the sender -----------------------------------------------------------------------------

class _Moving(Datagram):
    moved_to = None
    resumed = False
    lost = False                # told its channel is lost (a split one's forwarding ends)

    def buffered(self):
        return 0, 0

    def handoff_target(self, peers):
        return None

    def resume(self):
        self.resumed = True

    def migrated(self, channel, new_id):
        self.moved_to = new_id

    def channel_lost(self, channel):
        self.lost = True


class _ForwardedHalf:
    """What a split connection leaves here under its id once migrated (tcp_proxy's
    ForwardedSide): it forwards to the receiver's connection `peer_id` over the channel."""

    def __init__(self, peer_id):
        self.peer_id, self.lost = peer_id, False

    def channel_lost(self, channel):
        self.lost = True


class _Split(_Moving):
    """A tcp-split connection: its upstream half stays here, forwarded."""

    def migrated(self, channel, new_id):
        super().migrated(channel, new_id)
        self.half = self.worker.connections[self.id] = _ForwardedHalf(new_id)


class _LateChannel(SentAtOnce):
    """A receiver that reads each batch when the test says: `claim_now` takes the token as a
    receiver does before adopting; `answer` sends the answer (or refusal) it would send."""

    def __init__(self):
        self.closed = False
        self.sent = []              # (msg, fds, future)

    def request(self, msg, fds, timeout=None, dup=True):
        future = asyncio.get_running_loop().create_future()
        self.sent.append((msg, list(fds), future, timeout))
        return future

    def claim_now(self):
        msg, fds, _, _ = self.sent[-1]
        return claim.claim(os.dup(fds[msg["claim"]]))

    def answer(self, adopted: bool):
        msg, _, future, _ = self.sent[-1]
        ids = [record["id"] for record in msg["conns"]]
        future.set_result({"type": "adopted", "ids": ids if adopted else [],
                           "new_ids": {i: i + 1000 for i in ids} if adopted else {},
                           "refused": {} if adopted else {i: "taken back" for i in ids}})

    def close(self, reason="closed"):
        self.closed = True


def move(channel, version: int, receiver, monkeypatch, claimed_timeout: float = 60.0,
         pid: int | None = None, kind=_Moving):
    """Moves one connection to `channel`; the deadline passes when `receiver` (a coroutine
    function of the channel) returns, not in real time."""
    conn = kind(5, _Listener(), {}, [os.open("/dev/null", os.O_RDONLY)])
    conn.worker = worker = _Worker()

    async def the_deadline_passes_now(future, deadline):
        await receiver(channel)
        return future.done()
    monkeypatch.setattr(batch_ownership, "_answer_within", the_deadline_passes_now)
    monkeypatch.setattr(protocol, "CLAIMED_ANSWER_TIMEOUT", claimed_timeout)
    peer = migration.Peer(channel, version, {**ALL_V2, "datagram": [1]}, pid)

    async def run():
        result = await migration._move(worker, [conn], [peer], False)
        peer.forget_process()
        await asyncio.sleep(0)          # callbacks of answers that came after the deadline
        return result
    moved, kept = asyncio.run(run())
    os.close(conn.fds[0])
    return conn, moved, kept


async def _answers_in_time(channel):
    assert channel.claim_now()
    channel.answer(adopted=True)


async def _stopped_until_after_the_deadline(channel):
    asyncio.get_running_loop().call_soon(_reads_late, channel)


def _reads_late(channel):
    """After the sender took the batch back: the receiver claims nothing and refuses it."""
    assert not channel.claim_now()
    channel.answer(adopted=False)


async def _claims_then_stops(channel):
    assert channel.claim_now()
    asyncio.get_running_loop().call_soon(channel.answer, True)


async def _claims_and_never_answers(channel):
    assert channel.claim_now()


def test_a_batch_answered_by_its_deadline_moves(datagram_kind, monkeypatch):
    channel = _LateChannel()
    before = open_fds()
    conn, moved, kept = move(channel, 3, _answers_in_time, monkeypatch)
    assert (moved, kept, conn.moved_to, conn.resumed) == (1, set(), 1005, False)
    msg, fds, _, timeout = channel.sent[0]
    # No channel timeout: the request waits for the answer or the channel's end, however
    # late (batch_ownership._let_go_late); CLAIMED_ANSWER_TIMEOUT bounds only the move's wait.
    assert msg["claim"] == 1 and len(fds) == 2 and timeout is None
    assert open_fds() == before             # the token is closed once answered


def test_a_batch_taken_back_at_its_deadline_serves_on_here(datagram_kind, monkeypatch):
    channel = _LateChannel()
    before = open_fds()
    conn, moved, kept = move(channel, 3, _stopped_until_after_the_deadline, monkeypatch)
    assert (moved, kept, conn.moved_to, conn.resumed) == (0, {conn}, None, True)
    assert open_fds() == before             # closed when the late refusal came


def test_a_batch_claimed_before_its_deadline_waits_for_the_answer(datagram_kind, monkeypatch):
    conn, moved, kept = move(_LateChannel(), 3, _claims_then_stops, monkeypatch)
    assert (moved, kept, conn.moved_to, conn.resumed) == (1, set(), 1005, False)


def test_a_claimed_batch_never_answered_is_let_go_not_resumed(datagram_kind, monkeypatch):
    channel = _LateChannel()

    def request(msg, fds, timeout=None, dup=True):      # the channel's own answer timeout
        future = _LateChannel.request(channel, msg, fds, timeout, dup)
        return asyncio.ensure_future(asyncio.wait_for(future, timeout))
    channel.request = request
    conn, moved, kept = move(channel, 3, _claims_and_never_answers, monkeypatch,
                             claimed_timeout=0.05)
    assert (moved, kept, conn.moved_to, conn.resumed) == (1, set(), 0, False)


def test_a_split_connection_let_go_unanswered_keeps_no_half_forwarding_to_id_0(
        datagram_kind, monkeypatch):
    """Its new id there is unknown: a half kept here forwarding to connection 0 would send
    the upstream's bytes to nobody (the receiver drops them) while the client waits."""
    channel = _LateChannel()

    def request(msg, fds, timeout=None, dup=True):
        future = _LateChannel.request(channel, msg, fds, timeout, dup)
        return asyncio.ensure_future(asyncio.wait_for(future, timeout))
    channel.request = request
    conn, moved, kept = move(channel, 3, _claims_and_never_answers, monkeypatch,
                             claimed_timeout=0.05, kind=_Split)
    assert (moved, conn.half.peer_id, channel.closed) == (1, 0, False)
    assert conn.half.lost, "the upstream half forwards on, to connection 0"


def test_a_version_2_peer_gets_no_token_and_the_deadline_alone_decides(datagram_kind, monkeypatch):
    """What 0.2.x receives at a rollback: the batch as it always was, the usual timeout."""
    async def silent(channel):
        pass
    channel = _LateChannel()

    def request(msg, fds, timeout=None, dup=True):
        future = _LateChannel.request(channel, msg, fds, timeout, dup)
        future.set_exception(asyncio.TimeoutError())
        return future
    channel.request = request
    conn, moved, kept = move(channel, 2, silent, monkeypatch)
    msg, fds, _, timeout = channel.sent[0]
    assert "claim" not in msg and len(fds) == 1 and timeout == protocol.MIGRATE_TIMEOUT
    assert (moved, kept, conn.resumed) == (0, {conn}, True)


# -- a channel that closes unanswered -------------------------------------------------------

def _closes_unanswered(claims: bool):
    """The receiver claims the batch (or not), then its channel closes before any answer
    left: a worker exiting right after it adopted, or one that died."""
    async def receiver(channel):
        if claims:
            assert channel.claim_now()
        channel.closed = True
        _, _, future, _ = channel.sent[-1]
        future.set_exception(ChannelClosed("handoff to the receiver: peer closed"))
    return receiver


@pytest.fixture
def ended_process():
    """A process of ours, and a function that ends it and reaps it (deterministic)."""
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE)

    def end():
        child.stdin.close()
        child.wait(timeout=10)
    yield child.pid, end
    if child.poll() is None:
        end()


def test_a_claimed_batch_whose_channel_closes_while_its_receiver_runs_is_let_go(
        datagram_kind, monkeypatch):
    monkeypatch.setattr(protocol, "CLAIMED_EXIT_WAIT", 0.05)
    before = open_fds()
    conn, moved, kept = move(_LateChannel(), 3, _closes_unanswered(claims=True), monkeypatch,
                             pid=os.getpid())               # a receiver that runs on
    assert (moved, kept, conn.moved_to, conn.resumed, conn.lost) == (1, set(), 0, False, True)
    assert open_fds() == before             # token and pidfd closed


def test_a_claimed_batch_whose_receiver_died_is_ours_again(datagram_kind, monkeypatch,
                                                           ended_process):
    pid, end = ended_process
    dead_by_then = _closes_unanswered(claims=True)

    async def receiver(channel):
        await dead_by_then(channel)
        end()                               # the pidfd was opened while it ran
    conn, moved, kept = move(_LateChannel(), 3, receiver, monkeypatch, pid=pid)
    assert (moved, kept, conn.moved_to, conn.resumed) == (0, {conn}, None, True)


def test_an_unclaimed_batch_whose_channel_closes_is_ours_again(datagram_kind, monkeypatch):
    """Taken back whatever the receiver's state: it never claimed, so it never adopts."""
    conn, moved, kept = move(_LateChannel(), 3, _closes_unanswered(claims=False), monkeypatch,
                             pid=os.getpid())
    assert (moved, kept, conn.moved_to, conn.resumed) == (0, {conn}, None, True)


def test_a_version_2_batch_whose_channel_closes_is_ours_again(datagram_kind, monkeypatch):
    """No token to tell: as 0.2.x did, the batch is resumed (and sent to another receiver)."""
    channel = _LateChannel()

    def request(msg, fds, timeout=None, dup=True):
        future = _LateChannel.request(channel, msg, fds, timeout, dup)
        channel.closed = True
        future.set_exception(ChannelClosed("handoff to the receiver: peer closed"))
        return future
    channel.request = request

    async def silent(channel):
        pass
    conn, moved, kept = move(channel, 2, silent, monkeypatch, pid=os.getpid())
    assert (moved, kept, conn.resumed) == (0, {conn}, True)
