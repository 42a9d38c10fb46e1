"""A move cancelled (the loop's teardown) while it waits for the answer to a batch the receiver
claimed decides that batch by the receiver's life (worker/batch_ownership.py give_up): let go
if it runs on (tests/unit/test_handoff_move_cancelled.py), served on here if it has died, for
what it had adopted died with it. Before, it was let go either way: a connection of a dead
receiver's batch was lost.

Real processes: tests/handoff_receiver.py claims the batch and stops itself; this test kills
it, and cancels the move before its loop has seen the channel close."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import pytest

from baton.worker import migration

from .test_handoff_deadline import (  # noqa: F401 - fixtures
    Outgoing, Sender, probe_kind, read_line, receiver, stopped)
from .conftest import wait_until


@pytest.mark.parametrize("receiver", [["--stop-after-claim"]], indirect=True)
def test_a_claimed_batch_of_a_dead_receiver_is_served_on_here_when_the_move_is_cancelled(
        probe_kind, receiver):
    proc, address = receiver
    client, ours = socket.socketpair()
    conn = Outgoing(7, ours)

    async def move():
        loop = asyncio.get_running_loop()
        peer = await migration.open_handoff(address, 1)
        moving = asyncio.ensure_future(migration._move(Sender(), [conn], [peer], False))
        assert await loop.run_in_executor(None, read_line, proc, 10) == "claimed"
        wait_until(lambda: stopped(proc.pid), 5, "the receiver to stop")
        # Killed and reaped with no turn of this loop between: the move, cancelled next,
        # has not seen its channel close.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        moving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await moving
        peer.forget_process()
        peer.channel.close("done")

    try:
        asyncio.run(asyncio.wait_for(move(), 20))
        assert conn.resumed and conn.moved_to is None, "let go to a receiver that died"
    finally:
        client.close()
        ours.close()
