"""A fake operating system for the supervisor's unit tests (supervisor/os_seam.py).

Processes are bookkeeping: a pid, a wait status, and for each pidfd a pipe whose read end the
master watches as it watches a real pidfd; a process "exits" when the test says so (or when a
signal it does not survive reaches it), by writing into those pipes. A forked worker is played
by a `FakeWorker` on the worker's end of its real control socketpair, so what the master sends
and what it is answered go through the real framing. The clock is the event loop's, which
`ManualClockLoop` lets a test move: backoffs, crash-loop pauses and drain deadlines pass
without waiting.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

from baton.supervisor.handoff.channel import Channel
from baton.supervisor.os_seam import OsSeam
from baton.supervisor.workers import WorkerChild

EXIT_OK = 0


def exited_with(code: int) -> int:
    """The wait status of a process that called exit(code)."""
    return code << 8


class ManualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose time moves only when the test calls `advance`."""

    def __init__(self):
        super().__init__()
        self.now = 1000.0

    def time(self) -> float:
        return self.now


async def advance(seconds: float, step: float = 0.05) -> None:
    """Let `seconds` pass on the loop's clock, running what falls due on the way."""
    loop = asyncio.get_running_loop()
    await settle()                  # what is already on its way happens at the current time
    end = loop.now + seconds
    while loop.now < end:
        loop.now = min(end, loop.now + step)
        await settle()


async def settle(turns: int = 20) -> None:
    """Let the loop run what is ready (messages on sockets, callbacks) without moving time."""
    for _ in range(turns):
        await asyncio.sleep(0)      # each turn of the loop also polls the sockets


class FakeProcess:
    def __init__(self, fake_os: "FakeOs", pid: int, kind: str):
        self.os = fake_os
        self.pid = pid
        self.kind = kind                      # "worker" or "master"
        self.status: int | None = None        # wait status once exited
        self.signals: list[int] = []
        self.pipes: list[tuple[int, int]] = []
        self.worker: FakeWorker | None = None
        self.survives_term = False            # a stuck worker: only SIGKILL ends it

    @property
    def alive(self) -> bool:
        return self.status is None

    def exit(self, status: int = EXIT_OK) -> None:
        if self.status is not None:
            return
        self.status = status
        for _, w in self.pipes:
            os.write(w, b"x")
        if self.worker is not None:
            self.worker.channel.close("process exited")

    def receive(self, sig: int) -> None:
        self.signals.append(sig)
        if sig == signal.SIGKILL:
            self.exit(signal.SIGKILL)
        elif sig == signal.SIGTERM and not self.survives_term:
            if self.worker is not None:
                self.worker.on_sigterm()
            else:
                self.exit(signal.SIGTERM)


class FakeWorker:
    """The worker side of a forked worker's control channel, behaving as worker/main.py does
    in outline: ready when told, drains (exits once idle), moves out on `migrate`, closes
    everything on `stop` or on a SIGTERM while draining."""

    def __init__(self, process: FakeProcess, sock: socket.socket):
        self.process = process
        self.received: list[dict] = []
        self.connections = 1          # busy by default: a drain does not end at once
        self.draining = False
        self.channel = Channel(sock, self._on_message, name=f"fake worker {process.pid}")

    def ready(self) -> None:
        self.channel.send({"type": "ready", "worker": 0, "pid": self.process.pid,
                           "handoff": f"@fake-handoff-{self.process.pid}"})

    def _on_message(self, channel, msg, fds) -> None:
        for fd in fds:
            os.close(fd)
        self.received.append(msg)
        kind = msg["type"]
        if kind == "drain":
            self.draining = True
            self._exit_if_idle()
        elif kind == "stop":
            self.process.exit(EXIT_OK)
        elif kind == "migrate":
            self.draining = True
            moved, self.connections = self.connections, 0
            channel.reply(msg, {"type": "migrated", "moved": moved, "kept": 0})
            self._exit_if_idle()
        elif kind == "resume":
            self.draining = False
        elif "id" in msg:
            channel.reply(msg, {"type": kind})

    def on_sigterm(self) -> None:
        if self.draining:
            self.process.exit(EXIT_OK)
        else:
            self.draining = True
            self._exit_if_idle()

    def _exit_if_idle(self) -> None:
        if not self.connections:
            self.process.exit(EXIT_OK)

    def types(self) -> list[str]:
        return [m["type"] for m in self.received]


class FakeOs(OsSeam):
    def __init__(self, successor_pid: int | None = None):
        self.processes: dict[int, FakeProcess] = {}
        self.by_pidfd: dict[int, FakeProcess] = {}
        self.next_pid = 4000
        self.fork_error: OSError | None = None
        self.spawn_error: OSError | None = None
        self.spawned: list[tuple[list[str], dict]] = []
        # The new master of a reload is played by the test process itself: the handoff
        # socket admits only the pid it started (SO_PEERCRED).
        self.successor_pid = successor_pid if successor_pid is not None else os.getpid()

    # -- the seam ------------------------------------------------------------------------

    def fork(self, child) -> int:
        if self.fork_error is not None:
            raise self.fork_error
        proc = self._new(self._pid(), "worker")
        if isinstance(child, WorkerChild):
            proc.worker = FakeWorker(proc, child.channel_sock.dup())
        return proc.pid

    def spawn_detached(self, argv, env) -> int:
        if self.spawn_error is not None:
            raise self.spawn_error
        self.spawned.append((argv, env))
        self.processes.pop(self.successor_pid, None)
        return self._new(self.successor_pid, "master").pid

    def pidfd_open(self, pid: int) -> int:
        proc = self.processes[pid]
        r, w = os.pipe()
        proc.pipes.append((r, w))
        self.by_pidfd[r] = proc
        if not proc.alive:
            os.write(w, b"x")
        return r

    def pidfd_send_signal(self, pidfd: int, sig: int) -> None:
        proc = self.by_pidfd[pidfd]
        if not proc.alive:
            raise ProcessLookupError(f"pid {proc.pid} has exited")
        proc.receive(sig)

    def close(self, fd: int) -> None:
        proc = self.by_pidfd.pop(fd, None)
        if proc is not None:
            for r, w in list(proc.pipes):
                if r == fd:
                    proc.pipes.remove((r, w))
                    os.close(w)
        os.close(fd)

    def waitpid(self, pid: int) -> int:
        proc = self.processes[pid]
        assert not proc.alive, f"waitpid({pid}) on a process that runs would block the master"
        return proc.status

    def getpid(self) -> int:
        return 100

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    # -- for the tests -------------------------------------------------------------------

    def _pid(self) -> int:
        self.next_pid += 1
        return self.next_pid

    def _new(self, pid: int, kind: str) -> FakeProcess:
        proc = self.processes[pid] = FakeProcess(self, pid, kind)
        return proc

    def workers(self) -> list[FakeProcess]:
        return [p for p in self.processes.values() if p.kind == "worker"]

    def running_workers(self) -> list[FakeProcess]:
        return [p for p in self.workers() if p.alive]

    def close_all(self) -> None:
        for proc in self.processes.values():
            for r, w in proc.pipes:
                for fd in (r, w):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            proc.pipes.clear()
            if proc.worker is not None:
                proc.worker.channel.close("test over")
