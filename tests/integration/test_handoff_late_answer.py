"""An exchange whose batch the receiver claimed and answered only after CLAIMED_ANSWER_TIMEOUT
is not ended (worker/batch_ownership.py _let_go_late): it waits here for the late answer and
moves under the id it gives. Real processes: this process sends with worker/migration.py,
tests/handoff_receiver.py receives with the real MigrationServer and stops itself (SIGSTOP)
once it claimed the batch, until the move has given up waiting; continued, it answers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import pytest

from baton.supervisor.handoff import protocol
from baton.worker import migration

from .test_handoff_deadline import (  # noqa: F401 - fixtures
    Outgoing, Sender, probe_kind, read_line, receiver, stops_after_its_claim)


class ExchangeHere(Outgoing):
    """A probe that, exported, still serves an exchange here for the receiver."""

    def keeps_exchange_here(self):
        return self.moved_to is None and not self.resumed


@pytest.mark.parametrize("receiver", [["--stop-after-claim"]], indirect=True)
def test_an_exchange_answered_after_the_claimed_deadline_moves_under_its_new_id(
        probe_kind, receiver, monkeypatch):
    proc, address = receiver
    client, ours = socket.socketpair()
    conn = ExchangeHere(7, ours)
    monkeypatch.setattr(protocol, "CLAIMED_ANSWER_TIMEOUT", 0.3)
    stops_after_its_claim(proc, monkeypatch)

    async def move():
        peer = await migration.open_handoff(address, 1)
        moved, kept = await migration._move(Sender(), [conn], [peer], False)
        at_the_deadline = (conn.moved_to, set(peer.late))
        os.kill(proc.pid, signal.SIGCONT)
        line = await asyncio.get_running_loop().run_in_executor(None, read_line, proc, 10)
        for _ in range(500):            # bounded: the late answer is on its way
            if not peer.late:
                break
            await asyncio.sleep(0.01)
        peer.forget_process()
        peer.channel.close("done")
        return moved, kept, at_the_deadline, line

    moved, kept, at_the_deadline, line = asyncio.run(asyncio.wait_for(move(), 20))
    assert (moved, kept, at_the_deadline) == (1, set(), (None, {conn}))
    assert line == "adopted [7]"
    assert (conn.moved_to, conn.resumed) == (1000, False), "ended instead of moved"
    client.settimeout(5)
    assert client.recv(100) == f"new {proc.pid}\n".encode()
    client.close()
