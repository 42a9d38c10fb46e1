"""A move that raises part-way (worker/migration.py migrate_connections) still gives back what
it holds for each receiver: the receiver's pidfd, and its channel if nothing forwards over it.

The receiver is the real MigrationServer on an abstract address, in this process's loop; the
sender's first connection moves to it, then a bug in another kind's hold raises.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from baton.supervisor.handoff import unix
from baton.worker import migration
from baton.worker.connection import Move

from .test_handoff_claim import _Moving
from .test_handoff_records import _Listener, _Worker, datagram_kind  # noqa: F401


def pidfds() -> int:
    return sum(1 for fd in os.listdir("/proc/self/fd")
               if _link(fd) == "anon_inode:[pidfd]")


def _link(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class _Receiving(_Worker):
    generation = 2

    def __init__(self, loop):
        super().__init__()
        self.loop = loop
        self.handoff_channels = set()


class _Sending(_Worker):
    generation = 1

    def __init__(self, loop, conns):
        super().__init__()
        self.loop = loop
        self.handoff_channels = set()
        self.connections = {conn.id: conn for conn in conns}
        for conn in conns:
            conn.worker = self


class _BuggyHold(_Moving):
    """A connection busy with an exchange whose kind's hold has a bug."""

    def readiness(self):
        return Move.WHEN_IDLE

    def hold_when_idle(self, on_idle):
        raise RuntimeError("a bug in this kind's hold")


def test_a_move_that_raises_part_way_closes_its_receivers_pidfds(datagram_kind):
    async def run():
        loop = asyncio.get_running_loop()
        address = unix.abstract_name("test-move-raises")
        receiver = migration.MigrationServer(_Receiving(loop), address, {os.getpid(): None})
        moving = _Moving(5, _Listener(), {}, [os.open("/dev/null", os.O_RDONLY)])
        buggy = _BuggyHold(6, _Listener(), {}, [os.open("/dev/null", os.O_RDONLY)])
        sender = _Sending(loop, [moving, buggy])
        before = pidfds()
        with pytest.raises(RuntimeError, match="a bug in this kind's hold"):
            await migration.migrate_connections(sender, [address])
        after = pidfds()
        channels_open = [c for c in sender.handoff_channels if not c.closed]
        adopted = list(receiver.worker.connections.values())
        receiver.close()
        for conn in (moving, buggy, *adopted):
            os.close(conn.fds[0])
        return before, after, channels_open, moving.moved_to
    before, after, channels_open, moved_to = asyncio.run(asyncio.wait_for(run(), 10))
    assert moved_to == 100, "the first connection did not move before the bug"
    assert after == before, "the receiver's pidfd was left open"
    assert channels_open == [], "the receiver's channel was left open"
