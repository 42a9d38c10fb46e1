"""A batch the receiver claimed and did not answer in CLAIMED_ANSWER_TIMEOUT, its channel open
(worker/batch_ownership.py _let_go_late): the move stops waiting for it, but an exchange that
goes on here for the receiver (an HTTP/1.1 response in flight, a tunnel's upstream) is not
ended: it waits for the late answer, and moves under the id that answer gives (before, it was
attached to connection 0, which the receiver drops, and ended), or serves on here if the
answer refuses it. A connection with nothing running here is let go at the deadline, as
before. If the channel closes first, the receiver's life decides, as for any batch."""

from __future__ import annotations

import asyncio
import os

import pytest

from baton.supervisor.handoff import protocol
from baton.supervisor.handoff.channel import ChannelClosed
from baton.worker import batch_ownership, migration

from .test_handoff_claim import _LateChannel, _Moving
from .test_handoff_records import ALL_V2, _Listener, _Worker, datagram_kind  # noqa: F401


class _InFlight(_Moving):
    """A connection exported with its response still coming here, held until the answer."""

    drained = False

    def keeps_exchange_here(self):
        return self.moved_to is None and not self.resumed

    def drain(self):
        self.drained = True


def _answers(adopted: bool):
    async def late(channel):
        channel.answer(adopted)
    return late


async def _closes(channel):
    channel.closed = True
    _, _, future, _ = channel.sent[-1]
    future.set_exception(ChannelClosed("handoff to the receiver: peer closed"))


def late_move(later, monkeypatch, pid=None):
    """In-flight connection 5 and idle connection 6 in one batch, claimed and not answered by
    CLAIMED_ANSWER_TIMEOUT; then `later(channel)` happens, after the move returned."""
    channel = _LateChannel()
    worker = _Worker()
    worker.draining = True
    conns = [_InFlight(5, _Listener(), {}, [os.open("/dev/null", os.O_RDONLY)]),
             _Moving(6, _Listener(), {}, [os.open("/dev/null", os.O_RDONLY)])]
    for conn in conns:
        conn.worker = worker

    async def claims_and_stops(future, deadline):
        assert channel.claim_now()
        return future.done()
    monkeypatch.setattr(batch_ownership, "_answer_within", claims_and_stops)
    monkeypatch.setattr(protocol, "CLAIMED_ANSWER_TIMEOUT", 0.05)
    peer = migration.Peer(channel, 3, {**ALL_V2, "datagram": [1]}, pid)

    async def run():
        moved, kept = await migration._move(worker, conns, [peer], False)
        decided_then = (conns[0].moved_to, conns[0].lost, conns[1].moved_to, set(peer.late))
        await later(channel)
        for _ in range(20):             # the late answer's task runs
            if not peer.late:
                break
            await asyncio.sleep(0.01)
        peer.forget_process()
        return moved, kept, decided_then
    moved, kept, decided_then = asyncio.run(asyncio.wait_for(run(), 10))
    for conn in conns:
        os.close(conn.fds[0])
    assert (moved, kept) == (2, set())
    assert decided_then == (None, False, 0, {conns[0]}), \
        "at the deadline, the exchange was ended or the idle one kept"
    return conns[0]


def test_an_exchange_claimed_and_answered_late_moves_under_its_new_id(datagram_kind, monkeypatch):
    conn = late_move(_answers(adopted=True), monkeypatch)
    assert (conn.moved_to, conn.lost, conn.resumed) == (1005, False, False)


def test_an_exchange_refused_late_serves_on_here_and_drains(datagram_kind, monkeypatch):
    conn = late_move(_answers(adopted=False), monkeypatch)
    assert (conn.moved_to, conn.resumed, conn.drained) == (None, True, True)


def test_an_exchange_whose_channel_closes_before_the_answer_goes_by_the_receivers_life(
        datagram_kind, monkeypatch):
    """It runs on (our own pid): the receiver holds the client; the exchange ends here."""
    conn = late_move(_closes, monkeypatch, pid=os.getpid())
    assert (conn.moved_to, conn.lost, conn.resumed) == (0, True, False)


@pytest.fixture
def dead_pid():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)      # a zombie: exited, not reaped
    yield pid
    os.waitpid(pid, 0)


def test_an_exchange_whose_receiver_died_before_the_answer_serves_on_here(
        datagram_kind, monkeypatch, dead_pid):
    conn = late_move(_closes, monkeypatch, pid=dead_pid)
    assert (conn.moved_to, conn.resumed, conn.drained) == (None, True, True)
