"""The master's table of workers: spawning by fork, watching by pidfd, respawning with backoff.

Respawn policy (gunicorn's, with Envoy's names for the outcome):
- a worker that exits with EXIT_BOOT_FAILURE could not start and would fail again: not respawned;
- otherwise it is respawned after a backoff that doubles with each death in the crash window;
- CRASH_LOOP_DEATHS deaths within CRASH_WINDOW seconds is a crash loop: reported (state
  `given_up` in `baton status`), and the slot pauses instead of spinning; its cause may be
  transient (memory, descriptors, a full disk), so it is tried again after CRASH_LOOP_PAUSE
  seconds, doubling with each crash loop up to CRASH_LOOP_PAUSE_MAX.

Each worker also gets a broker socketpair: the master connects to migration targets for it
(supervisor/handoff/broker.py).

Processes are forked, watched (pidfd), signalled and reaped through an OsSeam
(supervisor/os_seam.py), and whether a worker that exits is respawned is the master's
lifecycle's answer (supervisor/lifecycle.py), passed in as `respawns`.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
from typing import Callable

from ..worker.main import EXIT_BOOT_FAILURE, worker_process_main
from ..worker.privileges import preimport
from ..worker.wasm.vm import preload as preload_wasm
from .handoff.broker import BrokerServer, access_log_paths
from .handoff.channel import Channel, socketpair
from .os_seam import REAL_OS, OsSeam

log = logging.getLogger("baton.master")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
CRASH_WINDOW = 60.0
CRASH_LOOP_DEATHS = 5
CRASH_LOOP_PAUSE = 5.0
CRASH_LOOP_PAUSE_MAX = 60.0


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.WEXITSTATUS(status)}"


class WorkerSlot:
    """Worker number `id`: the current process in that slot and its history."""

    def __init__(self, worker_id: int):
        self.id = worker_id
        self.pid: int | None = None
        self.channel: Channel | None = None
        self.pidfd: int | None = None
        self.ready = False
        self.handoff: str | None = None      # this worker's handoff socket (connections move in)
        self.started_at = 0.0
        self.deaths: collections.deque[float] = collections.deque()
        self.respawn_handle = None
        self.given_up = False
        self.boot_failed = False
        self.crash_loops = 0                  # consecutive crash loops: the pause doubles
        self.retry_at: float | None = None    # monotonic time of the next try after a crash loop
        self.broker = None
        self.exit_status: int | None = None
        self.role = "worker"              # or "replacement" / "recycled" while recycling
        self.ready_future = None

    @property
    def alive(self) -> bool:
        return self.pid is not None

    def backoff(self) -> float:
        return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, len(self.deaths) - 1))

    def crash_loop_pause(self) -> float:
        return min(CRASH_LOOP_PAUSE_MAX, CRASH_LOOP_PAUSE * 2 ** max(0, self.crash_loops - 1))

    @property
    def gone_for_good(self) -> bool:
        """Given up and never tried again: it failed to boot."""
        return self.given_up and self.boot_failed


class WorkerChild:
    """What runs in a forked worker: the ends of its sockets it keeps (a fake OsSeam plays the
    worker on `channel_sock`), and the call into worker/main.py."""

    def __init__(self, slot_id: int, master, channel_sock, broker_sock, close_in_child):
        self.slot_id = slot_id
        self.master = master
        self.channel_sock = channel_sock
        self.broker_sock = broker_sock
        self.close_in_child = close_in_child

    def __call__(self) -> int:
        for sock in self.close_in_child:
            sock.close()
        master = self.master
        return worker_process_main(self.slot_id, master.generation, master.pid, self.channel_sock,
                                   master.snapshot, master.listener_socks, master.runtime_dir,
                                   broker_sock=self.broker_sock)


class WorkerTable:
    def __init__(self, master, count: int, os_seam: OsSeam = REAL_OS,
                 respawns: Callable[[], bool] = lambda: True):
        self.master = master
        self.loop = master.loop
        self.os = os_seam
        self.respawns = respawns          # the master's lifecycle: is a dead worker replaced?
        self.slots = [WorkerSlot(i) for i in range(count)]
        self.extra: list[WorkerSlot] = []     # processes outside the slots: being recycled
        # Handoff addresses the master may connect to for a worker (broker.py): our own
        # workers' and those of the generation we hand over to.
        self.migration_targets: set[str] = set()

    def _configured_access_log(self, path: str) -> bool:
        # The snapshot is the one the workers are being given: an xDS update is stored
        # before it is sent (supervisor/xds_apply.py), a fork inherits it.
        return path in access_log_paths(self.master.snapshot)

    # -- spawning ------------------------------------------------------------------------

    def spawn(self, slot: WorkerSlot) -> None:
        master = self.master
        preimport()         # once, before the first fork: shared by every worker
        preload_wasm(master.snapshot)       # wasmtime, if a Wasm filter may come over xDS
        parent_end, child_end = socketpair()
        try:
            broker_parent, broker_child = socketpair()
        except OSError:
            parent_end.close()
            child_end.close()
            raise
        child = WorkerChild(slot.id, master, child_end, broker_child, (parent_end, broker_parent))
        try:
            pid = self.os.fork(child)
        except OSError:
            for sock in (parent_end, child_end, broker_parent, broker_child):
                sock.close()
            raise
        child_end.close()
        broker_child.close()
        slot.broker = BrokerServer(broker_parent, self.migration_targets.__contains__,
                                   name=f"broker for worker {slot.id}",
                                   may_open=self._configured_access_log)
        slot.pid = pid
        slot.ready = False
        slot.started_at = self.os.monotonic()
        slot.channel = Channel(parent_end, self._on_message, name=f"master<-worker {slot.id}")
        slot.pidfd = self.os.pidfd_open(pid)
        self.loop.add_reader(slot.pidfd, self._on_exit, slot)
        log.info("worker %d started (pid %d)", slot.id, pid)

    def _on_message(self, channel: Channel, msg: dict, fds) -> None:
        slot = next((s for s in (*self.slots, *self.extra) if s.channel is channel), None)
        if slot is None:
            return
        if msg["type"] == "ready":
            slot.ready = True
            slot.handoff = msg.get("handoff")
            if slot.ready_future is not None and not slot.ready_future.done():
                slot.ready_future.set_result(True)
            self.master.worker_ready(slot)
        elif msg["type"] == "final_stats":
            self.master.retire_counters(msg.get("counters") or {})
        else:
            log.warning("worker %d sent unexpected %r", slot.id, msg["type"])

    # -- exits ---------------------------------------------------------------------------

    def _on_exit(self, slot: WorkerSlot) -> None:
        self.loop.remove_reader(slot.pidfd)
        self.os.close(slot.pidfd)
        slot.pidfd = None
        try:
            status = self.os.waitpid(slot.pid)
        except ChildProcessError:
            status = 0
        pid, slot.pid, slot.ready, slot.exit_status = slot.pid, None, False, status
        if slot.channel is not None:
            slot.channel.close("worker exited")
            slot.channel = None
        if slot.broker is not None:
            slot.broker.close()
            slot.broker = None
        if slot.ready_future is not None and not slot.ready_future.done():
            slot.ready_future.set_exception(RuntimeError(f"the new worker exited: {describe_exit(status)}"))
        if slot in self.extra:      # a recycled worker that moved out, or a replacement that failed
            self.extra.remove(slot)
            log.info("worker %d (pid %d, %s) exited: %s", slot.id, pid, slot.role, describe_exit(status))
            self.master.worker_exited(slot)
            return
        if self.stopping:
            log.info("worker %d (pid %d) exited: %s", slot.id, pid, describe_exit(status))
            self.master.worker_exited(slot)
            return
        log.error("worker %d (pid %d) died: %s", slot.id, pid, describe_exit(status))
        now = self.os.monotonic()
        slot.deaths.append(now)
        while slot.deaths and now - slot.deaths[0] > CRASH_WINDOW:
            slot.deaths.popleft()
        if now - slot.started_at > CRASH_WINDOW:
            slot.crash_loops = 0        # it had served a while: a later loop pauses short again
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_BOOT_FAILURE:
            slot.given_up = slot.boot_failed = True
            log.error("worker %d failed to boot; not respawning it", slot.id)
        elif len(slot.deaths) >= CRASH_LOOP_DEATHS:
            slot.given_up = True
            slot.crash_loops += 1
            pause = slot.crash_loop_pause()
            slot.retry_at = now + pause
            log.error("worker %d is crash-looping (%d deaths in %.0fs); trying again in %.0fs",
                      slot.id, CRASH_LOOP_DEATHS, CRASH_WINDOW, pause)
            slot.respawn_handle = self.loop.call_later(pause, self._respawn, slot)
        else:
            delay = slot.backoff()
            log.info("respawning worker %d in %.1fs", slot.id, delay)
            slot.respawn_handle = self.loop.call_later(delay, self._respawn, slot)
        self.master.worker_exited(slot)

    # -- recycling -----------------------------------------------------------------------

    async def recycle(self, worker_id: int, timeout: float, keep_upstreams: bool = False) -> dict:
        """Replace worker `worker_id` by a fresh process and move its connections to it."""
        import asyncio
        if not 0 <= worker_id < len(self.slots):
            raise ValueError(f"no worker {worker_id} (there are {len(self.slots)})")
        old = self.slots[worker_id]
        if not old.ready or old.channel is None:
            raise ValueError(f"worker {worker_id} is not serving (state: {'starting' if old.alive else 'down'})")
        if any(s.id == worker_id for s in self.extra):
            raise ValueError(f"worker {worker_id} is already being recycled")
        fresh = WorkerSlot(worker_id)
        fresh.role = "replacement"
        fresh.ready_future = self.loop.create_future()
        fresh.deaths = old.deaths
        self.extra.append(fresh)
        self.spawn(fresh)
        try:
            await asyncio.wait_for(fresh.ready_future, timeout)
        except BaseException:
            if fresh.alive:
                self.signal(fresh, signal.SIGKILL)
            raise
        if fresh.handoff:
            self.migration_targets.add(fresh.handoff)
        # Swap: the fresh process owns the slot from now on; the old one only moves out.
        self.extra.remove(fresh)
        fresh.role = "worker"
        old.role = "recycled"
        self.slots[worker_id] = fresh
        self.extra.append(old)
        # Read before the move: a worker left with nothing exits as it answers, and its slot's
        # pid is cleared when it is reaped, which can be before the reply is read here.
        old_pid, new_pid = old.pid, fresh.pid
        reply = await old.channel.request({"type": "migrate", "targets": [fresh.handoff],
                                           "keep_upstreams": keep_upstreams}, timeout=timeout)
        return {"worker": worker_id, "old_pid": old_pid, "new_pid": new_pid,
                "moved": reply.get("moved", 0), "kept": reply.get("kept", 0)}

    def _respawn(self, slot: WorkerSlot) -> None:
        slot.respawn_handle = None
        if self.stopping:
            return
        slot.given_up = False
        slot.retry_at = None
        try:
            self.spawn(slot)
        except OSError as exc:
            # fork() or a socketpair failed: memory, descriptors or processes are short,
            # which passes. Paused as a crash loop is, and tried again.
            slot.given_up = True
            slot.crash_loops += 1
            pause = slot.crash_loop_pause()
            slot.retry_at = self.os.monotonic() + pause
            log.error("cannot start worker %d: %s; trying again in %.0fs", slot.id, exc, pause)
            slot.respawn_handle = self.loop.call_later(pause, self._respawn, slot)

    # -- queries and commands ------------------------------------------------------------

    def alive(self) -> list[WorkerSlot]:
        return [s for s in (*self.slots, *self.extra) if s.alive]

    def all_ready(self) -> bool:
        return all(s.ready for s in self.slots)

    @property
    def stopping(self) -> bool:
        """On the way out (the master's lifecycle says so): an exit is expected, not a crash."""
        return not self.respawns()

    def cancel_respawns(self) -> None:
        """The lifecycle stopped respawning: drop the respawns already scheduled."""
        for slot in self.slots:
            if slot.respawn_handle is not None:
                slot.respawn_handle.cancel()
                slot.respawn_handle = None

    def send_all(self, msg: dict) -> None:
        for slot in self.alive():
            if slot.channel is not None and not slot.channel.closed:
                slot.channel.send(msg)

    def signal(self, slot: WorkerSlot, sig: int) -> None:
        """Through the pidfd we hold: never a process that reused an exited worker's pid."""
        if slot.pidfd is None:
            return
        try:
            self.os.pidfd_send_signal(slot.pidfd, sig)
        except ProcessLookupError:
            pass            # exited; its pidfd's reader reaps it

    def signal_all(self, sig: int) -> None:
        for slot in self.alive():
            self.signal(slot, sig)
