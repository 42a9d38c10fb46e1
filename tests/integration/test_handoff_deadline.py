"""A batch of connections whose receiver answers late is held by one worker, never two.

Real processes and sockets, no baton: this process sends with worker/migration.py, and
tests/handoff_receiver.py receives with the real MigrationServer. The receiver is stopped
(SIGSTOP) while the batch waits for it, so who decides first is fixed, not timed:

- stopped before it read the batch: the sender takes the batch back at its deadline and
  serves it on; the receiver, continued, must refuse it (before the claim token it adopted it,
  and two processes read and wrote one socket);
- stopped after it claimed the batch: the sender must not take it back at the deadline but
  wait for the answer, and let go;
- its channel closed after it claimed the batch, no answer sent: the sender lets go if the
  receiver runs on (it holds the socket), and serves on if it exited (it holds nothing).
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from baton.supervisor.handoff import protocol
from baton.worker import batch_ownership, connection, migration
from baton.worker.connection import Connection, Export, Lifecycle, Move

from ..handoff_receiver import PROBE, Probe
from ..waiting import wait_until

RECEIVER = str(Path(__file__).resolve().parents[1] / "handoff_receiver.py")


def read_line(proc, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"the receiver said nothing in {timeout}s"
    return proc.stdout.readline().strip()


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def stops_after_its_claim(proc, monkeypatch) -> None:
    """The move's wait for the answer (batch_ownership._answer_within) ends, its deadline
    passed, once the receiver (--stop-after-claim) claimed the batch and stopped."""
    async def the_receiver_stops_after_its_claim(future, deadline):
        line = await asyncio.get_running_loop().run_in_executor(None, read_line, proc, 10)
        assert line == "claimed"
        wait_until(lambda: stopped(proc.pid), 5, "the receiver to stop")
        return future.done()
    monkeypatch.setattr(batch_ownership, "_answer_within", the_receiver_stops_after_its_claim)


@pytest.fixture
def probe_kind(monkeypatch):
    monkeypatch.setitem(protocol.RECORDS, "probe", PROBE)
    monkeypatch.setitem(connection._ADOPTERS, "probe", Probe.adopt)


@pytest.fixture
def receiver(request, tmp_path):
    address = str(tmp_path / "handoff")
    flags = getattr(request, "param", [])
    proc = subprocess.Popen([sys.executable, RECEIVER, address, *flags],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert read_line(proc, 10) == "ready"
        yield proc, address
    finally:
        if proc.poll() is None:         # one test lets it exit (and reaps it)
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            proc.wait(5)
        proc.stdout.close()


class Outgoing(Connection):
    """One socket, moved as a probe; records what the move did to it."""

    kind = "probe"

    def __init__(self, conn_id, sock):
        self.id, self.listener, self.chain, self.sock = conn_id, None, None, sock
        self.state = Lifecycle.OPEN
        self.resumed = False
        self.moved_to = None

    def readiness(self):
        return Move.NOW

    def buffered(self):
        return 0, 0

    def handoff_target(self, peers):
        return None

    def export(self, client_only=False):
        return Export("probe", {"id": self.id, "listener": "l"}, [self.sock.fileno()])

    def resume(self):
        self.resumed = True

    def migrated(self, channel, new_id):
        self.moved_to = new_id
        self.sock.close()


class Sender:
    id = 0


def test_a_batch_taken_back_at_its_deadline_is_refused_by_a_late_receiver(probe_kind, receiver,
                                                                          monkeypatch):
    proc, address = receiver
    client, ours = socket.socketpair()
    conn = Outgoing(7, ours)
    monkeypatch.setattr(protocol, "MIGRATE_TIMEOUT", 0.3)

    async def move():
        peer = await migration.open_handoff(address, 1)
        os.kill(proc.pid, signal.SIGSTOP)
        wait_until(lambda: stopped(proc.pid), 5, "the receiver to stop")
        moved, kept = await migration._move(Sender(), [conn], [peer], False)
        os.kill(proc.pid, signal.SIGCONT)
        line = await asyncio.get_running_loop().run_in_executor(None, read_line, proc, 10)
        peer.channel.close("done")
        return moved, kept, line

    moved, kept, line = asyncio.run(move())
    assert (moved, kept, conn.resumed) == (0, {conn}, True)
    assert line.startswith("refused {7: ") and "took this batch back" in line, line
    client.setblocking(False)
    with pytest.raises(BlockingIOError):        # nothing from the receiver: it holds nothing
        client.recv(100)
    client.close()
    ours.close()


@pytest.mark.parametrize("receiver", [["--stop-after-claim"]], indirect=True)
def test_a_batch_claimed_before_its_deadline_is_let_go_once_answered(probe_kind, receiver,
                                                                     monkeypatch):
    proc, address = receiver
    client, ours = socket.socketpair()
    conn = Outgoing(7, ours)

    async def deadline_passes_while_the_receiver_is_stopped(future, deadline):
        line = await asyncio.get_running_loop().run_in_executor(None, read_line, proc, 10)
        assert line == "claimed"
        wait_until(lambda: stopped(proc.pid), 5, "the receiver to stop")
        os.kill(proc.pid, signal.SIGCONT)
        return future.done()
    monkeypatch.setattr(batch_ownership, "_answer_within", deadline_passes_while_the_receiver_is_stopped)

    async def move():
        peer = await migration.open_handoff(address, 1)
        moved, kept = await migration._move(Sender(), [conn], [peer], False)
        line = await asyncio.get_running_loop().run_in_executor(None, read_line, proc, 10)
        peer.channel.close("done")
        return moved, kept, line

    moved, kept, line = asyncio.run(move())
    assert (moved, kept, conn.resumed, conn.moved_to) == (1, set(), False, 1000)
    assert line == "adopted [7]"
    client.settimeout(5)
    assert client.recv(100) == f"new {proc.pid}\n".encode()
    client.close()


@pytest.mark.parametrize("receiver", [["--close-after-claim"], ["--exit-after-claim"]],
                         indirect=True, ids=["runs-on", "exited"])
def test_a_claimed_batch_whose_channel_closes_unanswered_goes_by_the_receivers_life(
        probe_kind, receiver, monkeypatch):
    proc, address = receiver
    runs_on = proc.args[-1] == "--close-after-claim"
    client, ours = socket.socketpair()
    conn = Outgoing(7, ours)
    # Whether it runs is read from /proc at once (unix.doomed), never waited for: a receiver
    # whose exit the pidfd shows late must not pass for alive, nor a live one cost a wait.
    monkeypatch.setattr(protocol, "CLAIMED_EXIT_WAIT", 30.0)

    async def move():
        peer = await migration.open_handoff(address, 1)
        moved, kept = await migration._move(Sender(), [conn], [peer], False)
        peer.forget_process()
        return moved, kept

    moved, kept = asyncio.run(asyncio.wait_for(move(), 10))
    client.settimeout(5)
    if runs_on:
        assert (moved, kept, conn.resumed, conn.moved_to) == (1, set(), False, 0)
        assert client.recv(100) == f"new {proc.pid}\n".encode()   # the receiver serves it
        assert proc.poll() is None
    else:
        assert (moved, kept, conn.resumed, conn.moved_to) == (0, {conn}, True, None)
        assert proc.wait(5) == 0
        client.setblocking(False)
        with pytest.raises(BlockingIOError):    # ours alone now: nobody else wrote to it
            client.recv(100)
        ours.close()
    client.close()
