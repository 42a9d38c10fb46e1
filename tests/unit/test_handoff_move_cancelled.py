"""A move cancelled while it waits for a batch's answer (worker/migration.py _settle, the loop's
teardown cancelling handle_migrate's task) decides that batch at once: taken back and resumed
if the receiver has not claimed it, let go if it has; its claim token's pipe closed, its
request's future not left with an exception nobody reads (found by review R1, F2). One
cancelled while it waits for busy connections to become idle cancels their holds, and a
connection whose hold fired (reading paused for the move) and was not sent reads again.

The receiver is the real MigrationServer on an abstract address, in this process's loop,
its adoption replaced by one that keeps the batch and does not answer.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import socket

import pytest

from baton.supervisor.handoff import claim, unix
from baton.worker import migration
from baton.worker.connection import Move

from .test_handoff_claim import _Moving
from .test_handoff_move_raises import _link, _Receiving, _Sending, pidfds
from .test_handoff_records import _Listener, datagram_kind  # noqa: F401
from .test_http_express import Rig, loop  # noqa: F401 - a fixture


def _cancelled_while_unanswered(monkeypatch, claims: bool):
    """Move one connection, cancel the move once the receiver holds its batch unanswered
    (having claimed it if `claims`): (the connection, pidfds left, descriptors left open,
    the loop's unhandled exceptions)."""
    async def run():
        loop = asyncio.get_running_loop()
        unhandled = []
        loop.set_exception_handler(lambda _, context: unhandled.append(context["message"]))
        got = loop.create_future()
        held = []

        def unanswering_adopt(self, channel, msg, fds):
            if claims:
                claim.claim(fds.pop(msg["claim"]))
            held.extend(fds)
            got.done() or got.set_result(None)
        monkeypatch.setattr(migration.MigrationServer, "_adopt", unanswering_adopt)
        address = unix.abstract_name(f"test-move-cancelled-{claims}")
        receiver = migration.MigrationServer(_Receiving(loop), address, {os.getpid(): None})
        moving = _Moving(5, _Listener(), {}, [os.open("/dev/null", os.O_RDONLY)])
        sender = _Sending(loop, [moving])
        pidfds_before, fds_before = pidfds(), set(os.listdir("/proc/self/fd"))
        move = asyncio.ensure_future(migration.migrate_connections(sender, [address]))
        await asyncio.wait_for(got, 5)
        move.cancel()
        with pytest.raises(asyncio.CancelledError):
            await move
        receiver.close()
        for fd in held:
            os.close(fd)
        for _ in range(3):          # the cancelled request's task runs to its end
            await asyncio.sleep(0)
        gc.collect()                # an unread exception is reported as its task is freed
        left = [_link(fd) for fd in set(os.listdir("/proc/self/fd")) - fds_before]
        os.close(moving.fds[0])
        return moving, pidfds() - pidfds_before, [link for link in left if link], unhandled
    return asyncio.run(asyncio.wait_for(run(), 10))


def test_an_unclaimed_batch_is_taken_back_and_resumed(datagram_kind, monkeypatch):
    moving, pidfds_left, left, unhandled = _cancelled_while_unanswered(monkeypatch, claims=False)
    assert moving.resumed and moving.moved_to is None, "the batch it waited for was left paused"
    assert pidfds_left == 0
    assert left == [], "the claim token's pipe (or another descriptor) was left open"
    assert unhandled == []


def test_a_claimed_batch_is_let_go(datagram_kind, monkeypatch):
    moving, pidfds_left, left, unhandled = _cancelled_while_unanswered(monkeypatch, claims=True)
    assert moving.moved_to == 0 and not moving.resumed, "the receiver's batch was served here"
    assert pidfds_left == 0
    assert left == [], "the claim token's pipe (or another descriptor) was left open"
    assert unhandled == []


def test_a_claimed_batch_is_let_go_without_a_pidfd(datagram_kind, monkeypatch):
    """No pidfd_open (an old kernel, seccomp: migration._pidfd gives None): nothing says the
    receiver died while its channel is open, so what it claimed is its (review R1, F1).
    Before, no pidfd read as dead, and the live receiver's batch was resumed here too."""
    def no_pidfd_open(pid):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    monkeypatch.setattr(os, "pidfd_open", no_pidfd_open)
    moving, pidfds_left, left, unhandled = _cancelled_while_unanswered(monkeypatch, claims=True)
    assert moving.moved_to == 0 and not moving.resumed, "the receiver's batch was served here"
    assert left == [], "the claim token's pipe (or another descriptor) was left open"
    assert unhandled == []


class _Busy(_Moving):
    """A connection busy with an exchange: the move waits for it to become idle."""
    held = cancelled = False

    def readiness(self):
        return Move.WHEN_IDLE

    def hold_when_idle(self, on_idle):
        self.held = True
        self.worker.holding.set_result(None)

    def cancel_hold(self):
        self.cancelled = True


def test_a_move_cancelled_while_it_waits_for_idle_connections_cancels_their_holds(
        datagram_kind):
    async def run():
        loop = asyncio.get_running_loop()
        address = unix.abstract_name("test-move-cancelled-idle")
        receiver = migration.MigrationServer(_Receiving(loop), address, {os.getpid(): None})
        busy = _Busy(5, _Listener(), {}, [os.open("/dev/null", os.O_RDONLY)])
        sender = _Sending(loop, [busy])
        sender.holding = loop.create_future()
        move = asyncio.ensure_future(migration.migrate_connections(sender, [address]))
        await asyncio.wait_for(sender.holding, 5)
        move.cancel()
        with pytest.raises(asyncio.CancelledError):
            await move
        receiver.close()
        os.close(busy.fds[0])
        return busy
    busy = asyncio.run(asyncio.wait_for(run(), 10))
    assert busy.held and busy.cancelled, "left to pause after its exchange for a move that is gone"


# -- a real HTTP connection (test_http_express's Rig) whose hold fired ---------------------

def _held_http_connection(tmp_path, loop):
    rig = Rig(tmp_path, loop)
    rig.conn.listener.spec = {}
    rig.worker.handoff_accepts = {}
    fired = []
    rig.conn.hold_when_idle(fired.append)     # idle: it pauses reading and says so at once
    assert fired == [rig.conn] and not rig.down.reading
    return rig


def test_a_cancelled_hold_that_fired_reads_again(tmp_path, loop):
    """Its hold fired (idle: reading paused for the move) and the move was cancelled before
    it sent this connection: it serves on, reading. Before, it stayed paused until the drain
    closed it."""
    rig = _held_http_connection(tmp_path, loop)
    rig.conn.cancel_hold()
    assert rig.down.reading, "left paused by a move that is gone"


def test_a_hold_taken_over_by_export_is_not_released_by_its_cancel(tmp_path, loop):
    rig = _held_http_connection(tmp_path, loop)
    ours, theirs = socket.socketpair()
    extra = rig.down.get_extra_info
    rig.down.get_extra_info = lambda key, default=None: ours if key == "socket" else \
        extra(key, default)
    try:
        rig.conn.export()
        rig.conn.cancel_hold()
        assert not rig.down.reading, "read on while its move is being answered"
        rig.conn.resume()                   # refused: it reads again
        assert rig.down.reading
    finally:
        ours.close()
        theirs.close()


def test_a_cancelled_rpc_hold_that_fired_reads_again(loop):
    """The same for an RPC connection (rpc/connection.py: reading paused for the move)."""
    from .test_rpc_move import old_half
    worker, conn, socks = old_half(loop)
    try:
        conn.exchanges.clear()                  # nothing in flight: movable at once
        fired = []
        conn.hold_when_idle(fired.append)
        assert fired == [conn] and not conn.transport.reading
        conn.cancel_hold()
        assert conn.transport.reading, "left paused by a move that is gone"
    finally:
        for sock in socks:
            sock.close()
