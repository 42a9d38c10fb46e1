"""The master driven through a fake operating system (tests/unit/supervisor_fakes.py): its
real code, event loop, control channels and handoff conversation, with processes that are
bookkeeping and a clock the test moves. Crash loops, a successor that dies at each phase of a
reload, signals during a reload, worker deaths during a drain, and the drain deadline's
escalation (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import signal
import tempfile
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baton.supervisor import workers as workers_module
from baton.supervisor.handoff import protocol, unix
from baton.supervisor.lifecycle import Phase
from baton.supervisor.master import DRAIN_KILL_GRACE, FAST_STOP_GRACE, Master
from baton.supervisor.upgrade import ReloadFailed, Takeover
from baton.supervisor.workers import (BACKOFF_FIRST, CRASH_LOOP_DEATHS, CRASH_LOOP_PAUSE,
                                      CRASH_LOOP_PAUSE_MAX, EXIT_BOOT_FAILURE)

from .supervisor_fakes import FakeOs, ManualClockLoop, advance, exited_with, settle


@pytest.fixture(autouse=True)
def _quiet_systemd_and_preimport(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.setattr(workers_module, "preimport", lambda: None)


class Harness:
    def __init__(self, master: Master, fake: FakeOs, task: asyncio.Task):
        self.master, self.os, self.task = master, fake, task

    @property
    def phase(self) -> Phase:
        return self.master.lifecycle.phase

    async def ready_all(self) -> None:
        await settle()
        for proc in self.os.running_workers():
            if proc.worker.types().count("__ready__") == 0:
                proc.worker.received.append({"type": "__ready__"})
                proc.worker.ready()
        await settle()

    def slot_process(self, index: int):
        return self.os.processes[self.master.workers.slots[index].pid]

    async def exit_code(self) -> int:
        """Once the master has exited (within 5 s on its clock: steps that run in a thread,
        like handing counters over, need a few turns)."""
        for _ in range(50):
            if self.task.done():
                break
            await advance(0.1)
        assert self.task.done(), f"the master still runs ({self.phase})"
        return self.task.result()


def run(scenario, concurrency: int = 2, drain_timeout: float = 30.0, takeover=None):
    """Run `scenario(harness)` against a master with `concurrency` fake workers (a new
    generation when `takeover` stands for its conversation with the previous one)."""
    loop = ManualClockLoop()
    fake = FakeOs()
    runtime_dir = tempfile.mkdtemp(prefix="baton-sup-", dir="/tmp")

    async def main():
        options = types.SimpleNamespace(concurrency=concurrency, drain_timeout=drain_timeout,
                                        reload_timeout=20.0, config="/nonexistent.yaml",
                                        worker_rss_limit=None, l4_move="sockets")
        snapshot = {"listeners": [], "clusters": {}, "admin": None}
        master = Master(options, snapshot, snapshot, {}, {}, runtime_dir, os_seam=fake,
                        generation=2 if takeover else 1, takeover=takeover)
        # Not the runtime directory's control socket name: nobody must find it (counters
        # are bequeathed there after a hand-over; a connect must fail fast, not wait).
        master.control_sock = unix.bind_private(os.path.join(runtime_dir, "ctl-test.sock"))
        task = asyncio.get_running_loop().create_task(master.run())
        await settle()
        harness = Harness(master, fake, task)
        try:
            await scenario(harness)
        finally:
            if not task.done():
                master._finish(99)
            await asyncio.wait([task], timeout=5)
            assert master.lifecycle.refused == [], "a move outside the table was attempted"

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        fake.close_all()
        shutil.rmtree(runtime_dir, ignore_errors=True)


# -- starting and crash loops ----------------------------------------------------------------

def test_the_master_goes_live_when_every_worker_is_ready():
    async def scenario(h):
        assert len(h.os.running_workers()) == 2
        assert h.master.state == "PRE_INITIALIZING"
        h.os.running_workers()[0].worker.ready()
        await settle()
        assert h.master.state == "PRE_INITIALIZING"
        await h.ready_all()
        assert h.phase is Phase.SERVING and h.master.state == "LIVE"
    run(scenario)


def test_a_crashing_worker_is_respawned_with_a_doubling_backoff_then_paused():
    async def scenario(h):
        await h.ready_all()
        slot = h.master.workers.slots[0]
        delays = []
        for death in range(1, CRASH_LOOP_DEATHS + 1):
            h.slot_process(0).exit(exited_with(1))
            await settle()
            assert not slot.alive
            delay = slot.respawn_handle.when() - asyncio.get_running_loop().time()
            delays.append(round(delay, 3))
            if death == CRASH_LOOP_DEATHS:
                break
            await advance(delay)
            assert slot.alive, f"not respawned after its backoff ({death} deaths)"
        assert delays[:-1] == [BACKOFF_FIRST * 2 ** i for i in range(CRASH_LOOP_DEATHS - 1)]
        # The fifth death in the window is a crash loop: paused, reported, tried again.
        assert slot.given_up and not slot.gone_for_good
        assert delays[-1] == CRASH_LOOP_PAUSE
        assert h.phase is Phase.SERVING               # the other worker serves on
        await advance(CRASH_LOOP_PAUSE - 0.1)
        assert not slot.alive
        await advance(0.2)
        assert slot.alive and not slot.given_up
        # A second loop in a row pauses twice as long.
        for _ in range(CRASH_LOOP_DEATHS):
            h.slot_process(0).exit(exited_with(1))
            await settle()
            if slot.given_up:
                break
            await advance(slot.respawn_handle.when() - asyncio.get_running_loop().time())
        assert slot.given_up
        pause = slot.respawn_handle.when() - asyncio.get_running_loop().time()
        assert pause == 2 * CRASH_LOOP_PAUSE
    run(scenario)


def test_a_worker_that_cannot_boot_is_not_respawned_and_the_master_exits_without_workers(caplog):
    async def scenario(h):
        for proc in h.os.running_workers():
            proc.exit(exited_with(EXIT_BOOT_FAILURE))
        await settle()
        assert all(s.gone_for_good for s in h.master.workers.slots)
        assert await h.exit_code() == 1
        assert h.phase is Phase.STOPPED
    with caplog.at_level(logging.INFO, logger="baton.master"):
        run(scenario)
    assert "no worker left to serve; exiting" in caplog.text


def test_a_failed_fork_at_respawn_pauses_the_slot_then_tries_again():
    async def scenario(h):
        await h.ready_all()
        slot = h.master.workers.slots[1]
        h.os.fork_error = OSError(errno.EAGAIN, "Resource temporarily unavailable")
        h.slot_process(1).exit(signal.SIGSEGV)
        await advance(BACKOFF_FIRST + 0.01)
        assert not slot.alive and slot.given_up and slot.retry_at is not None
        h.os.fork_error = None
        await advance(CRASH_LOOP_PAUSE)
        assert slot.alive and not slot.given_up
    run(scenario)


class FakeTakeover:
    """A new generation's conversation with the old one (supervisor/upgrade.py Takeover)."""

    previous_pid = 99

    def __init__(self, fails: bool = False):
        self.fails = fails
        self.asked: list[list[str]] = []
        self.answer = asyncio.Event()

    async def commit(self, worker_paths, become_main) -> None:
        self.asked.append(worker_paths)
        await self.answer.wait()
        if self.fails:
            raise ReloadFailed("the old master did not commit")
        await become_main()


def test_a_new_generation_asks_for_the_commit_once_its_workers_serve_then_goes_live():
    takeover = FakeTakeover()

    async def scenario(h):
        assert h.master.state == "PRE_INITIALIZING" and not h.master.lifecycle.owns_service
        await h.ready_all()
        assert h.phase is Phase.TAKING_OVER and h.master.state == "COMMITTING"
        assert takeover.asked == [[f"@fake-handoff-{p.pid}" for p in h.os.running_workers()]]
        takeover.answer.set()
        await settle()
        assert h.phase is Phase.SERVING and h.master.state == "LIVE"
        assert h.master.lifecycle.owns_service and h.master.previous_pid == 99
    run(scenario, takeover=takeover)


def test_a_new_generation_whose_commit_fails_stops_its_workers_and_exits():
    takeover = FakeTakeover(fails=True)

    async def scenario(h):
        await h.ready_all()
        takeover.answer.set()
        await settle()
        assert h.phase in (Phase.STOPPING, Phase.STOPPED)
        assert all("stop" in p.worker.types() for p in h.os.workers())
        assert await h.exit_code() == 0
        assert not h.master.lifecycle.owns_service     # the old generation serves on
    run(scenario, takeover=takeover)


def test_a_new_generation_told_to_drain_before_the_commit_stays_draining():
    takeover = FakeTakeover()

    async def scenario(h):
        await h.ready_all()
        h.master._signal("term")
        assert h.phase is Phase.DRAINING
        takeover.answer.set()
        await settle()
        assert h.phase is Phase.DRAINING and h.master.lifecycle.owns_service
    run(scenario, takeover=takeover)


# -- stopping ----------------------------------------------------------------------------------

def test_a_worker_dying_during_a_drain_is_not_respawned_and_the_drain_completes():
    async def scenario(h):
        await h.ready_all()
        h.master._signal("term")
        await settle()
        assert h.phase is Phase.DRAINING and h.master.state == "DRAINING"
        assert all("drain" in p.worker.types() for p in h.os.running_workers())
        forks = len(h.os.workers())
        h.slot_process(0).exit(signal.SIGSEGV)         # crashes while draining
        await advance(BACKOFF_FIRST * 4)
        assert len(h.os.workers()) == forks, "a worker was respawned during a drain"
        assert not h.task.done()
        h.slot_process(1).worker.connections = 0       # its last connection finished
        h.slot_process(1).exit(0)
        assert await h.exit_code() == 0
    run(scenario)


def test_the_drain_deadline_sends_sigterm_then_sigkill_after_the_grace_period():
    async def scenario(h):
        await h.ready_all()
        polite, stuck = h.slot_process(0), h.slot_process(1)
        stuck.survives_term = True
        h.master._signal("term")
        await advance(3.0 - 0.1)
        assert polite.signals == [] and stuck.signals == []
        await advance(0.2)                              # the drain deadline
        assert polite.signals == [signal.SIGTERM] and not polite.alive
        assert stuck.signals == [signal.SIGTERM] and stuck.alive
        await advance(DRAIN_KILL_GRACE - 0.2)
        assert stuck.signals == [signal.SIGTERM] and stuck.alive
        await advance(0.3)
        assert stuck.signals == [signal.SIGTERM, signal.SIGKILL] and not stuck.alive
        assert await h.exit_code() == 0
    run(scenario, drain_timeout=3.0)


def test_a_fast_stop_kills_what_is_left_at_its_short_bound_without_a_sigterm():
    async def scenario(h):
        await h.ready_all()
        stuck, other = h.slot_process(0), h.slot_process(1)
        stuck.worker.channel._on_message = lambda *a: None      # never acts on `stop`
        h.master._signal("int")
        assert h.phase is Phase.STOPPING and h.master.state == "DRAINING"
        await settle()
        assert not other.alive and other.signals == []
        await advance(FAST_STOP_GRACE + 0.1)
        assert stuck.signals == [signal.SIGKILL]
        assert await h.exit_code() == 0
    run(scenario, drain_timeout=600)


# -- reloads -----------------------------------------------------------------------------------

class Successor:
    """The test process plays the new master (the handoff socket admits only its pid)."""

    def __init__(self, h: Harness):
        self.h = h
        self.path = os.path.join(h.master.runtime_dir, protocol.HANDOFF_SOCKET)
        self.takeover: Takeover | None = None

    @property
    def process(self):
        return self.h.os.processes[self.h.os.successor_pid]

    async def hello(self) -> None:
        loop = asyncio.get_running_loop()
        self.takeover = await loop.run_in_executor(None, Takeover, self.path,
                                                   self.h.master.generation + 1)

    async def take(self) -> dict:
        taken = await asyncio.get_running_loop().run_in_executor(None, self.takeover.take_sockets)
        if taken["control"] is not None:
            taken["control"].close()
        return taken

    async def commit(self, become_main) -> None:
        await self.takeover.commit(["@fake-successor-worker"], become_main)

    def dies(self) -> None:
        if self.takeover is not None and self.takeover.channel.sock is not None:
            self.takeover.channel.close()
        self.process.exit(signal.SIGKILL)


async def start_reload(h: Harness) -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(h.master.reload())
    await settle()
    assert h.phase is Phase.RELOADING and h.master.state == "LIVE"
    assert len(h.os.spawned) == 1
    return task


async def rolled_back(h: Harness, task: asyncio.Task) -> str:
    await asyncio.wait([task], timeout=5)
    with pytest.raises(ReloadFailed) as failure:
        task.result()
    await settle()
    return str(failure.value)


@pytest.mark.parametrize("dies_before", ["hello", "take", "ready"])
def test_a_successor_that_dies_before_the_commit_point_rolls_back(dies_before):
    async def scenario(h):
        await h.ready_all()
        task = await start_reload(h)
        successor = Successor(h)
        if dies_before != "hello":
            await successor.hello()
        if dies_before == "ready":
            await successor.take()
        successor.dies()
        reason = await rolled_back(h, task)
        assert "before the commit point" in reason
        assert h.phase is Phase.SERVING and h.master.state == "LIVE"
        assert h.master.successor is None
        assert all(p.worker.types() == ["__ready__"] for p in h.os.running_workers()), \
            "the workers were disturbed by a reload that did not commit"
        assert not os.path.exists(successor.path)
        # And a later reload may start.
        assert h.master.reload_refusal() is None
    run(scenario)


def test_a_successor_that_cannot_be_started_rolls_back():
    async def scenario(h):
        await h.ready_all()
        h.os.spawn_error = OSError(errno.ENOMEM, "Cannot allocate memory")
        with pytest.raises(ReloadFailed, match="could not start the new master"):
            await h.master.reload()
        assert h.phase is Phase.SERVING
    run(scenario)


def test_a_reload_hands_over_moves_every_connection_and_exits_once_the_successor_is_main():
    async def scenario(h):
        await h.ready_all()
        task = await start_reload(h)
        successor = Successor(h)
        await successor.hello()
        await successor.take()

        async def become_main():
            assert h.phase is Phase.HANDED_OVER and h.master.state == "DRAINING"
        await successor.commit(become_main)
        assert (await asyncio.wait_for(task, 5))["generation"] == 2
        await settle()
        for proc in h.os.workers():
            assert "migrate" in proc.worker.types()
        assert h.os.running_workers() == []
        assert await h.exit_code() == 0
        assert not h.master.lifecycle.owns_service
    run(scenario)


def test_a_successor_that_dies_after_the_commit_gives_the_service_back():
    async def scenario(h):
        await h.ready_all()
        task = await start_reload(h)
        successor = Successor(h)
        await successor.hello()
        await successor.take()
        main_told = asyncio.Event()

        async def become_main():       # the successor dies before telling systemd
            await main_told.wait()
        commit = asyncio.get_running_loop().create_task(successor.commit(become_main))
        await asyncio.wait_for(task, 5)
        await settle()
        assert h.phase is Phase.HANDED_OVER
        assert h.os.running_workers() == []           # they moved out and exited
        commit.cancel()
        await asyncio.wait([commit])
        successor.dies()
        await advance(2.5)
        assert h.phase is Phase.STARTING and h.master.state == "PRE_INITIALIZING"
        assert h.master.lifecycle.owns_service and not h.task.done()
        assert len(h.os.running_workers()) == 2       # forked anew
        await h.ready_all()
        assert h.phase is Phase.SERVING and h.master.state == "LIVE"
        assert h.master.reload_refusal() is None
    run(scenario)


def test_sighup_during_a_reload_is_refused():
    async def scenario(h):
        await h.ready_all()
        task = await start_reload(h)
        h.master._signal("hup")
        await settle()
        assert len(h.os.spawned) == 1 and h.phase is Phase.RELOADING
        assert "a reload is already in progress" in h.master.reload_refusal()
        Successor(h).dies()
        await rolled_back(h, task)
    run(scenario)


@pytest.mark.parametrize(("sig", "phase"), [("term", Phase.DRAINING), ("int", Phase.STOPPING)])
def test_a_stop_during_a_reload_aborts_it_and_kills_the_successor(sig, phase):
    async def scenario(h):
        await h.ready_all()
        task = await start_reload(h)
        successor = Successor(h)
        await successor.hello()
        h.master._signal(sig)
        assert h.phase is phase and h.master.state == "DRAINING"
        reason = await rolled_back(h, task)
        assert "aborted" in reason
        assert successor.process.signals == [signal.SIGKILL]
        if sig == "term":
            assert all("drain" in p.worker.types() for p in h.os.workers())
            for proc in h.os.running_workers():
                proc.worker.connections = 0
                proc.exit(0)
        assert await h.exit_code() == 0
    run(scenario)


def test_sigterm_after_the_commit_changes_nothing_the_connections_keep_moving():
    async def scenario(h):
        await h.ready_all()
        task = await start_reload(h)
        successor = Successor(h)
        await successor.hello()
        await successor.take()

        async def become_main():        # after the commit, before the old master may exit
            h.master._signal("term")
            await settle()
            assert h.phase is Phase.HANDED_OVER
        await successor.commit(become_main)
        await asyncio.wait_for(task, 5)
        assert await h.exit_code() == 0
        assert all("drain" not in p.worker.types() for p in h.os.workers())
    run(scenario)


# -- random stimuli ----------------------------------------------------------------------------

STIMULI = ["ready", "crash", "term", "int", "hup", "tick", "successor_step", "successor_dies"]


class RandomSuccessor(Successor):
    """A successor that goes one step further each time it is asked: hello, take, commit."""

    def __init__(self, h: Harness):
        super().__init__(h)
        self.steps = 0
        self.commit_task: asyncio.Task | None = None
        self.dead = False

    async def step(self) -> None:
        if self.dead or self.steps >= 3:
            return
        self.steps += 1
        try:
            if self.steps == 1:
                await self.hello()
            elif self.steps == 2:
                await self.take()
            else:
                async def become_main():
                    pass
                self.commit_task = asyncio.get_running_loop().create_task(self.commit(become_main))
        except (ReloadFailed, OSError):
            self.dies()         # the old master gave up on us meanwhile: as a new master would
        await settle()

    def dies(self) -> None:
        if not self.dead:
            self.dead = True
            if self.commit_task is not None:
                self.commit_task.cancel()
            super().dies()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(STIMULI), max_size=12))
def test_random_stimuli_never_leave_the_table_and_end_serving_or_stopped(stimuli):
    async def scenario(h):
        successor = None
        for stimulus in stimuli:
            reload = h.master.successor
            if reload is not None and (successor is None or successor.reload is not reload):
                successor = RandomSuccessor(h)
                successor.reload = reload
            if stimulus == "ready":
                await h.ready_all()
            elif stimulus == "crash":
                running = h.os.running_workers()
                if running:
                    running[0].exit(exited_with(1))
            elif stimulus in ("term", "int", "hup"):
                h.master._signal(stimulus)
            elif stimulus == "tick":
                await advance(0.5)
            elif successor is not None and stimulus == "successor_step":
                await successor.step()
            elif successor is not None and stimulus == "successor_dies":
                successor.dies()
            await settle()
        # Wind down: a successor that did not commit dies, time passes, workers boot.
        if successor is not None and successor.steps < 3:
            successor.dies()
        for _ in range(4):
            await advance(CRASH_LOOP_PAUSE_MAX / 2)
            await h.ready_all()
            if successor is not None and successor.commit_task is not None:
                await asyncio.wait([successor.commit_task], timeout=0)
        assert h.phase in (Phase.SERVING, Phase.STOPPED), h.phase
        assert (h.phase is Phase.STOPPED) == h.task.done()
    run(scenario)
