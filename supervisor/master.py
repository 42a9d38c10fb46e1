"""The master process: owns the listening sockets, forks and supervises the workers, answers the
admin API and the control socket. It never reads or writes a byte of proxied traffic.

Lifecycle: supervisor/lifecycle.py holds the phase (starting, taking over, serving, reloading,
handed over, draining, stopping, stopped) and the table of allowed moves; this file acts on a
move only when the lifecycle accepted it. The states reported by /ready and /server_info are
derived from the phase, named as Envoy names them:
    PRE_INITIALIZING  workers starting          /ready 503
    COMMITTING        (new generation) workers serve; waiting for the old one to hand over
    LIVE              every worker serves       /ready 200
    DRAINING          SIGTERM / `baton stop`    /ready 503; workers finish their connections
Signal handlers only dispatch on the loop to handle_<name>. Processes are started, signalled
and reaped through an OsSeam (supervisor/os_seam.py), which the unit tests replace.

Stopping: at the drain deadline, workers still running get SIGTERM (a draining worker closes
what it has left and exits), then SIGKILL DRAIN_KILL_GRACE seconds later, through the pidfds
the master holds. A fast stop (SIGINT) already told them to close everything: at its deadline
(FAST_STOP_GRACE) what is left is killed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import psutil

from ..worker.stats import merge
from ..worker.tls import tickets
from . import dns, keeper, sdnotify, stop_marker
from .admin import AdminServer
from .control import ControlServer
from .lifecycle import Event, Lifecycle, Phase
from .os_seam import REAL_OS, OsSeam
from .upgrade import Reload, ReloadFailed
from .version import VERSION
from .workers import WorkerTable

log = logging.getLogger("baton.master")

FAST_STOP_GRACE = 2.0
# Between the SIGTERM sent at the drain deadline and the SIGKILL for workers that ignored it.
DRAIN_KILL_GRACE = 5.0


def _off_loop(fn, *args):
    """Run `fn` in a short-lived thread and return its result (or raise its exception).
    pyroute2 runs its own asyncio loop and cannot share ours: uvloop has no AF_NETLINK."""
    import threading
    outcome = {}

    def target():
        try:
            outcome["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            outcome["error"] = exc
    thread = threading.Thread(target=target, name="baton-netlink")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _pid_running(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped by its parent) does not."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
WORKER_RPC_TIMEOUT = 2.0


class Master:
    def __init__(self, options, source_snapshot: dict, snapshot: dict, config_dump: dict,
                 listener_socks: dict, runtime_dir: str, generation: int = 1, takeover=None,
                 intercept=None, static_snapshot: dict | None = None, xds_applied=None,
                 os_seam: OsSeam = REAL_OS, keeper_pid: int | None = None):
        self.options = options
        self.source_snapshot = source_snapshot      # as configured (STRICT_DNS unresolved)
        self.snapshot = snapshot                    # what workers get (addresses resolved)
        self.config_dump = config_dump
        self.listener_socks = listener_socks
        self.runtime_dir = runtime_dir
        self.generation = generation
        self.takeover = takeover              # the conversation with the previous generation
        self.intercept = intercept            # tproxy.config.InterceptConfig, or None
        self.os = os_seam
        self.keeper_pid = keeper_pid          # supervisor/keeper.py; None under systemd
        self.lifecycle = Lifecycle(successor=takeover is not None)
        self.successor: Reload | None = None  # the next generation: starting, or handed over to
        self.pid = self.os.getpid()
        self.started_at = time.time()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.workers: WorkerTable | None = None
        self.admin: AdminServer | None = None
        self.control: ControlServer | None = None
        self.done: asyncio.Future | None = None
        self.previous_pid: int | None = None    # the generation we took over from
        self.successor_stopped = False          # ...and the one we handed over to stopped on purpose
        self.admin_sock = None
        self.control_sock = None
        self._exit_code = 0
        self._deadline = None
        self._tasks: list[asyncio.Task] = []
        self._watchdog: asyncio.Task | None = None
        self.retired_counters: dict[str, int] = {}
        self._procs: dict[int, psutil.Process] = {}
        # xDS (dynamic_resources): the agent process and what its config does here.
        self.xds = None
        self.xds_link = None
        self._xds_held = None          # an agent config that arrived during a reload
        if snapshot.get("xds"):
            from .xds_apply import XdsApplier
            self.xds = XdsApplier(self, static_snapshot or snapshot, xds_applied)

    @property
    def state(self) -> str:
        """The Envoy server state (/ready, /server_info, `baton status`)."""
        return self.lifecycle.envoy_state

    # -- running -------------------------------------------------------------------------

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()
        for sig, name in ((signal.SIGTERM, "term"), (signal.SIGINT, "int"), (signal.SIGHUP, "hup")):
            self.loop.add_signal_handler(sig, self._signal, name)
        if self.takeover is None:
            stop_marker.sweep(self.runtime_dir)     # no earlier generation is left to read them
            await self._serve_admin_and_control()
        self.workers = WorkerTable(self, self.options.concurrency, self.os,
                                   respawns=lambda: self.lifecycle.respawns_workers)
        for slot in self.workers.slots:
            self.workers.spawn(slot)
        self._start_dns_refresh()
        if self.xds is not None:
            self._start_xds()
        if getattr(self.options, "worker_rss_limit", None):
            self._tasks.append(self.loop.create_task(self._watch_worker_rss()))
        try:
            return await self.done
        finally:
            if self.xds_link is not None:
                self.xds_link.stop()
            for task in self._tasks:
                task.cancel()
            if self.admin:
                self.admin.close()
            if self.control:
                self.control.close(unlink=self.lifecycle.owns_service)
            for sock in self.listener_socks.values():
                sock.close()

    async def _serve_admin_and_control(self) -> None:
        self.admin = await AdminServer.start(self) if self.admin_sock is not None else None
        self.control = await ControlServer.start(self)

    def _signal(self, name: str) -> None:
        log.info("received SIG%s", name.upper())
        getattr(self, "handle_" + name)()

    def handle_term(self) -> None:
        self.drain()

    def handle_int(self) -> None:
        self.fast_stop()

    def handle_hup(self) -> None:
        refusal = self.reload_refusal()
        if refusal:
            log.warning("SIGHUP: %s", refusal)
            return

        async def reload():
            try:
                await self.reload()
            except Exception:  # noqa: BLE001 - logged by Reload; the old generation serves on
                pass
        self.loop.create_task(reload())

    # -- xDS -----------------------------------------------------------------------------

    def _start_xds(self) -> None:
        from .xds_link import AgentLink
        self.xds_link = AgentLink(self, self.options.config, self.runtime_dir,
                                  resume=self.xds.initialized)
        self.xds_link.start()
        xds = self.snapshot["xds"]
        # Envoy's init manager: the first fetch waits at most initial_fetch_timeout, then the
        # server goes live with what it has (0 means wait forever).
        limits = [xds[f"{k}_initial_fetch_timeout"] for k in ("cds", "lds") if xds[k]]
        if limits and all(limits):
            self.loop.call_later(max(limits) + 0.5, self.xds.give_up_waiting)

    def apply_xds(self, published: dict) -> None:
        if self.lifecycle.stopping:
            return
        if self.lifecycle.reloading:
            # The next generation starts from the config saved when the reload began and
            # takes the sockets of exactly those listeners: hold changes until it is over
            # (applied then if it rolled back; its own agent gets them otherwise).
            self._xds_held = published
            return
        self.xds.apply(published)

    def xds_initialized(self) -> None:
        self.worker_ready(None)

    # -- worker events -------------------------------------------------------------------

    def worker_ready(self, slot) -> None:
        if slot is not None:
            log.debug("worker %d ready", slot.id)
        if self.xds is not None and not self.xds.initialized:
            return
        if self.lifecycle.phase is Phase.STARTING and self.workers.all_ready():
            if self.takeover is not None:
                if self.lifecycle.move(Event.TAKE_OVER):
                    self.loop.create_task(self._commit())
            else:
                self._go_live(Event.WORKERS_READY)

    async def _commit(self) -> None:
        """Every worker of ours serves: the previous generation may stop and hand over."""
        try:
            await self.takeover.commit([s.handoff for s in self.workers.slots if s.handoff],
                                       self._become_main)
        except Exception as exc:  # noqa: BLE001 - whatever the cause, the old generation serves on
            log.error("the previous generation did not commit (%s); exiting", exc)
            self.fast_stop()
            return
        self.previous_pid = self.takeover.previous_pid
        self.takeover = None
        if self.lifecycle.stopping:
            # Told to stop while the commit was under way: the old generation must not take
            # our exit for a crash either.
            self._tell_previous("stop" if self.lifecycle.phase is Phase.STOPPING else "drain")
        await self._serve_admin_and_control()
        self._go_live(Event.COMMITTED)

    async def _become_main(self) -> None:
        """Tell systemd we are the service's main process now, and wait until it knows
        (BARRIER=1): the old master exits only after that. We are not the old master's child
        (OsSeam.spawn_detached), so systemd will not SIGKILL us as a stray at stop."""
        keeper.claim(self.keeper_pid)
        sdnotify.notify(mainpid=self.pid, ready=True, status=self._status_line())
        if not await sdnotify.async_barrier():
            log.warning("systemd did not confirm MAINPID=%d in time", self.pid)
        sdnotify.adopt_watchdog(self.pid)

    def _apply_intercept(self) -> bool:
        """Capture rules go in once our workers serve (never before: captured traffic would
        hit nothing) and are replaced whole, so a reload with new settings just re-applies."""
        if self.intercept is None:
            return True
        from ..tproxy import cli as intercept_cli
        try:
            log.info("%s", _off_loop(intercept_cli.apply_for_run, self.intercept))
            return True
        except Exception as exc:  # noqa: BLE001 - InterceptError, RoutingError: one line each
            log.critical("cannot install the capture rules: %s; stopping", exc)
            self.fast_stop()
            self._exit_code = 1
            return False

    def remove_intercept(self) -> None:
        """At stop, not at a hand-over: the next generation keeps the capture going (nor by a
        new generation that never took over: the rules are still the old one's)."""
        if self.intercept is None or not self.lifecycle.owns_service:
            return
        from ..tproxy import cli as intercept_cli
        try:
            log.info("%s", _off_loop(intercept_cli.remove_for_run))
        except Exception as exc:  # noqa: BLE001
            log.error("removing the capture rules failed: %s", exc)

    def _go_live(self, event: Event) -> None:
        if not self.lifecycle.allows(event):
            self.lifecycle.move(event)      # a stay (stopped meanwhile) or, logged, a bug
            return
        if not self._apply_intercept():
            return
        self.lifecycle.move(event)
        admin = self.snapshot.get("admin")
        where = f"; admin http://{admin['address']}:{admin['port']}" if admin else ""
        log.info("baton %s generation %d live: %d worker(s), %d listener(s)%s", VERSION,
                 self.generation, len(self.workers.slots), len(self.listener_socks), where)
        sdnotify.notify(ready=True, status=self._status_line())
        if self._watchdog is None:
            interval = sdnotify.watchdog_interval()
            if interval:
                self._watchdog = self.loop.create_task(self._ping_watchdog(interval))
                self._tasks.append(self._watchdog)

    def _status_line(self) -> str:
        return (f"generation {self.generation}: {len(self.workers.slots)} worker(s), "
                f"{len(self.listener_socks)} listener(s)")

    async def _ping_watchdog(self, interval: float) -> None:
        # From the event loop itself: a wedged loop stops the pings and systemd notices.
        while True:
            sdnotify.notify(watchdog=True)
            await asyncio.sleep(interval)

    def worker_exited(self, slot) -> None:
        if self.lifecycle.stopping:
            if not self.workers.alive():
                log.info("all workers exited; master exiting")
                if not self.lifecycle.owns_service and self.successor is not None:
                    self.loop.create_task(self._finish_after_successor_is_main())
                else:
                    self._finish(self._exit_code)
            return
        # A crash-looping slot is tried again later: only slots that failed to boot are
        # gone for good, and while any slot may come back the master waits for it.
        if all(s.gone_for_good for s in self.workers.slots):
            log.critical("no worker left to serve; exiting")
            self._finish(1)

    # -- stopping ------------------------------------------------------------------------

    def drain(self) -> None:
        """Stop accepting; let open connections finish up to the drain timeout; exit 0."""
        reloading = self.lifecycle.phase is Phase.RELOADING
        if not self.lifecycle.move(Event.DRAIN):
            return
        if reloading:
            self.successor.abort("this generation was told to drain")
        self._tell_previous("drain")
        if self.lifecycle.owns_service:
            # With NotifyAccess=all, STOPPING=1 from any process stops the whole unit: only
            # the generation that is systemd's main process may say it.
            sdnotify.notify(stopping=True, status=f"generation {self.generation}: draining")
        self.workers.cancel_respawns()
        timeout = self.options.drain_timeout
        log.info("draining: %d worker(s), deadline %.1fs", len(self.workers.alive()), timeout)
        self.workers.send_all({"type": "drain"})
        # Workers close their copies of the listening sockets when they drain; closing ours
        # too makes new connection attempts fail fast instead of waiting in a dead queue.
        for sock in self.listener_socks.values():
            sock.close()
        self._deadline = self.loop.call_later(timeout, self._drain_deadline)
        if not self.workers.alive():
            self._finish(0)

    def _tell_previous(self, kind: str) -> None:
        """We stop on purpose: the generation we took over from, if it still runs (draining
        what could not move), must not take our exit for a crash and serve again
        (stop_marker.py)."""
        previous = self.previous_pid
        if previous is None and self.takeover is not None:
            # Stopped while the commit is under way: the old master may commit all the same
            # (it knows nothing of our stop) and then see us exit before _commit goes on.
            previous = self.takeover.previous_pid
        if previous is not None and psutil.pid_exists(previous):
            stop_marker.leave(self.runtime_dir, self.generation, self.pid, kind)

    def _drain_deadline(self) -> None:
        """Escalate: SIGTERM (a draining worker closes what is left and exits), then SIGKILL."""
        left = self.workers.alive()
        if left:
            log.warning("drain timeout: %d worker(s) still have open connections: SIGTERM, "
                        "SIGKILL in %.0fs", len(left), DRAIN_KILL_GRACE)
            self.workers.signal_all(signal.SIGTERM)
            self._deadline = self.loop.call_later(DRAIN_KILL_GRACE, self._kill_the_rest)

    def _kill_the_rest(self) -> None:
        left = self.workers.alive()
        if left:
            log.warning("killing %d worker(s) still running", len(left))
            self.workers.signal_all(signal.SIGKILL)

    def fast_stop(self) -> None:
        reloading = self.lifecycle.phase is Phase.RELOADING
        if not self.lifecycle.move(Event.FAST_STOP):
            return
        if reloading:
            self.successor.abort("this generation was told to stop")
        self._tell_previous("stop")
        if self.lifecycle.owns_service:
            sdnotify.notify(stopping=True, status=f"generation {self.generation}: stopping")
        self.workers.cancel_respawns()
        self.workers.send_all({"type": "stop"})
        if self._deadline is not None:
            self._deadline.cancel()
        # The workers were told to close everything now: what is left at the deadline is stuck.
        self._deadline = self.loop.call_later(FAST_STOP_GRACE, self._kill_the_rest)
        if not self.workers.alive():
            self._finish(0)

    async def _finish_after_successor_is_main(self) -> None:
        """Exiting before systemd knows the new MAINPID would look like the service dying."""
        reload = self.successor
        try:
            confirmed = await asyncio.wait_for(asyncio.shield(reload.successor_main), 10.0)
        except asyncio.TimeoutError:
            log.warning("the new master did not confirm it is systemd's main PID; exiting anyway")
            confirmed = False
        if not confirmed:
            # Its handoff connection closed without "main": it is dying or dead. Wait for the
            # exit itself (pidfd), which calls successor_gone; a process being killed can
            # close its sockets a moment before it is gone.
            try:
                await asyncio.wait_for(asyncio.shield(reload.exited), 2.0)
            except asyncio.TimeoutError:
                pass
        if self.lifecycle.owns_service:
            return                      # we serve again (successor_gone)
        await self._bequeath_counters()
        self._finish(self._exit_code)

    async def _bequeath_counters(self) -> None:
        """Hand our counters (every worker has exited and reported) to the generation that
        now serves the control socket, so /stats counters carry on across reloads."""
        if self.successor_stopped:
            return                      # nobody serves the control socket any more
        from .handoff.channel import blocking_request
        from .runtime import control_path
        path = control_path(self.runtime_dir)
        msg = {"type": "inherit_counters", "counters": self.retired_counters}
        try:
            await self.loop.run_in_executor(None, blocking_request, path, msg, 5.0)
        except Exception as exc:  # noqa: BLE001 - losing counters must not block the exit
            log.warning("could not hand the counters to the new generation: %s", exc)

    def _finish(self, code: int) -> None:
        self.lifecycle.move(Event.FINISH)
        if not self.done.done():
            if self._deadline is not None:
                self._deadline.cancel()
            self.done.set_result(code)

    # -- reload (supervisor/upgrade.py) --------------------------------------------------

    def reload_refusal(self) -> str | None:
        """Why a reload cannot start now, or None."""
        if self.lifecycle.reloading and self.successor is not None:
            return f"a reload is already in progress (new master pid {self.successor.pid})"
        if not self.lifecycle.allows(Event.RELOAD):
            return f"this generation is {self.state.lower()}, not live"
        previous = self.previous_pid
        if previous and _pid_running(previous):
            return (f"the previous generation (pid {previous}) is still moving or draining its "
                    "connections; at most two generations run at once")
        return None

    async def reload(self) -> dict:
        refusal = self.reload_refusal()
        if refusal:
            raise ReloadFailed(refusal)
        if self.xds is not None:
            self.xds.save_now()        # the next generation starts from this dynamic config
        self.lifecycle.move(Event.RELOAD)
        self.successor = Reload(self)
        sdnotify.notify(reloading=True, status=f"generation {self.generation}: reloading")
        try:
            return await self.successor.run()
        except BaseException:
            if self.lifecycle.move(Event.ROLLED_BACK):
                # systemd waits for READY=1 after RELOADING=1; we serve on.
                sdnotify.notify(ready=True, status=self._status_line() + " (last reload failed)")
            raise
        finally:
            if self.lifecycle.owns_service:
                self.successor = None
                self._release_held_xds()

    def _release_held_xds(self) -> None:
        held, self._xds_held = self._xds_held, None
        if held is not None:
            self.apply_xds(held)

    def sockets_for_handoff(self) -> tuple[dict, list[int]]:
        """The `sockets` message for the next generation, and its descriptors."""
        fds, listeners = [], []
        for spec in self.snapshot["listeners"]:
            sock = self.listener_socks.get(spec["name"])
            if sock is not None and sock.fileno() >= 0:
                listeners.append({"name": spec["name"], "address": spec["address"],
                                  "port": spec["port"], "fd": len(fds)})
                fds.append(sock.fileno())
        msg = {"type": "sockets", "listeners": listeners, "admin": None, "control": None,
               "ticket_seed": tickets.seed()}     # TLS tickets resume after the reload
        admin = self.snapshot.get("admin")
        if admin and self.admin_sock is not None:
            msg["admin"] = {"address": admin["address"], "port": admin["port"], "fd": len(fds)}
            fds.append(self.admin_sock.fileno())
        if self.control_sock is not None:
            msg["control"] = len(fds)
            fds.append(self.control_sock.fileno())
        return msg, fds

    def hand_over(self, targets: list[str], reload) -> None:
        """Commit point, old side: the next generation serves. Stop accepting, move every
        connection to its workers, and exit when ours are done (or at the drain deadline)."""
        if not self.lifecycle.move(Event.HAND_OVER):
            raise ReloadFailed(f"this generation is {self.lifecycle.phase.value}: not handing over")
        if self._watchdog is not None:
            # The new master pings now; ours would only hide it if it got stuck.
            self._watchdog.cancel()
            self._watchdog = None
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        self.control.pause()
        self.workers.cancel_respawns()
        log.info("handing over to pid %d: moving connections to %d worker(s)", reload.pid, len(targets))
        self.workers.migration_targets.update(targets)
        for slot in self.workers.alive():
            if slot.channel is not None and not slot.channel.closed:
                self.loop.create_task(self._migrate(slot, targets))
        self._deadline = self.loop.call_later(self.options.drain_timeout, self._drain_deadline)
        if not self.workers.alive():
            self.loop.create_task(self._finish_after_successor_is_main())

    async def _migrate(self, slot, targets) -> None:
        try:
            reply = await slot.channel.request({"type": "migrate", "targets": targets,
                                                "keep_upstreams": self.keeps_upstreams},
                                               timeout=self.options.drain_timeout)
            log.info("worker %d moved %d connection(s); %d stay to drain", slot.id,
                     reply.get("moved", 0), reply.get("kept", 0))
        except Exception as exc:  # noqa: BLE001 - the worker died or hung; its exit is handled
            log.warning("worker %d: migration did not complete: %s", slot.id, exc)

    def successor_exited(self, pid: int) -> None:
        """The new master (`pid`) exited after the commit while we still run. Stopped on
        purpose (it left a mark, stop_marker.py), we end with it: a fast stop is ours too, a
        drain lets ours run to its end. Otherwise it died: we serve again."""
        kind = stop_marker.take(self.runtime_dir, self.generation + 1, pid)
        if kind is None:
            self.successor_gone("the new master exited")
            return
        self.successor_stopped = True
        log.info("the new generation (pid %d) stopped on purpose (%s); generation %d does not "
                 "serve again and ends %s", pid, kind, self.generation,
                 "now" if kind == "stop" else "when its own connections have")
        if kind == "stop":
            self.fast_stop()

    def successor_gone(self, reason: str) -> None:
        """The new master died after the commit while we still run: serve again. We kept every
        listening socket, so workers that already moved out and exited are simply forked anew;
        connections that had moved to the dead generation died with it."""
        if not self.lifecycle.move(Event.SUCCESSOR_GONE):
            return
        log.critical("the new generation died after taking over (%s); generation %d serves again",
                     reason, self.generation)
        keeper.claim(self.keeper_pid)
        self.successor = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.workers.send_all({"type": "resume"})
        for slot in self.workers.slots:
            if not slot.alive and not slot.gone_for_good:
                slot.given_up = False
                self.workers.spawn(slot)
        self.control.resume()
        self.loop.create_task(self._restart_admin())
        self._release_held_xds()
        if self.workers.all_ready():
            self._go_live(Event.WORKERS_READY)

    async def _restart_admin(self) -> None:
        if self.admin_sock is not None and self.admin is None:
            self.admin = await AdminServer.start(self)

    # -- recycling workers ---------------------------------------------------------------

    @property
    def keeps_upstreams(self) -> bool:
        """--l4-move client-only: moved L4 connections leave their upstream socket behind and
        are forwarded (write migration), as pooled HTTP upstreams will need."""
        return getattr(self.options, "l4_move", "sockets") == "client-only"

    async def recycle(self, worker_id: int) -> dict:
        """Replace one worker by a fresh process that adopts all its connections."""
        if not self.lifecycle.live:
            raise ValueError(f"this generation is {self.state.lower()}, not live")
        result = await self.workers.recycle(worker_id, self.options.reload_timeout, self.keeps_upstreams)
        log.info("worker %d recycled: pid %d -> %d, %d connection(s) moved, %d draining in place",
                 worker_id, result["old_pid"], result["new_pid"], result["moved"], result["kept"])
        return result

    async def _watch_worker_rss(self) -> None:
        """Recycle a worker whose RSS exceeds --worker-rss-limit (a leak, or fragmentation
        after a burst), one at a time, without touching its connections."""
        limit = self.options.worker_rss_limit
        while True:
            await asyncio.sleep(self.options.worker_rss_check_interval)
            if not self.lifecycle.live:
                continue
            for slot in list(self.workers.slots):
                if not slot.ready:
                    continue
                rss = self._usage(slot.pid)["rss_bytes"]
                if rss > limit:
                    log.warning("worker %d (pid %d) RSS %.1f MiB exceeds --worker-rss-limit %.1f MiB: recycling",
                                slot.id, slot.pid, rss / 1048576, limit / 1048576)
                    try:
                        await self.recycle(slot.id)
                    except Exception as exc:  # noqa: BLE001 - try again at the next check
                        log.error("recycling worker %d failed: %s", slot.id, exc)

    # -- STRICT_DNS ----------------------------------------------------------------------

    def _start_dns_refresh(self) -> None:
        for name, cluster in self.snapshot["clusters"].items():
            if cluster.get("type") == "STRICT_DNS":
                self._tasks.append(self.loop.create_task(self._refresh_dns(name)))

    async def _refresh_dns(self, name: str) -> None:
        source = self.source_snapshot["clusters"][name]
        while True:
            await asyncio.sleep(source.get("dns_refresh_rate") or 5.0)
            try:
                endpoints = await dns.resolve_cluster(self.loop, source)
            except dns.ResolveError as exc:
                log.warning("%s; keeping the last resolved endpoints", exc)
                continue
            current = self.snapshot["clusters"][name]
            if endpoints != current["endpoints"]:
                log.info("cluster '%s': DNS now gives %s", name,
                         ", ".join(f"{e['address']}:{e['port']}" for e in endpoints))
                clusters = {**self.snapshot["clusters"], name: {**current, "endpoints": endpoints}}
                self.snapshot = {**self.snapshot, "clusters": clusters}
                if self.xds is not None:
                    self.xds.set_static_cluster(name, clusters[name])
                # Only that cluster changes: no other cluster or listener is rebuilt.
                self.workers.send_all({"type": "update", "clusters": {name: clusters[name]}})

    # -- queries (admin API, control socket) ---------------------------------------------

    async def ask_workers(self, msg: dict) -> list[dict]:
        """Send `msg` to every live worker; the answers of those that answered in time."""
        futures = [s.channel.request(msg, timeout=WORKER_RPC_TIMEOUT)
                   for s in self.workers.alive() if s.channel is not None and not s.channel.closed]
        results = await asyncio.gather(*futures, return_exceptions=True)
        return [r for r in results if isinstance(r, dict) and r.get("type") != "error"]

    def retire_counters(self, counters: dict) -> None:
        """Counters of a worker that exited, or of the generation we took over from."""
        for name, value in counters.items():
            if isinstance(value, int):
                self.retired_counters[name] = self.retired_counters.get(name, 0) + value

    async def stats(self) -> dict:
        merged = merge([*await self.ask_workers({"type": "stats"}), {"counters": self.retired_counters}])
        gauges = merged["gauges"]
        if self.xds_link is not None:
            counters, agent_gauges = self.xds_link.stats()
            merged["counters"].update(counters)
            gauges.update(agent_gauges)
            merged["counters"].update(self.xds.counters)
            gauges["listener_manager.total_listeners_active"] = len(self.snapshot["listeners"])
        from ..worker.wasm.remote import stats as remote_stats
        for into, add in zip((merged["counters"], gauges), remote_stats()):    # the bootstrap's
            for name, value in add.items():                     # remote Wasm code, fetched here
                into[name] = into.get(name, 0) + value
        gauges["server.live"] = int(self.lifecycle.live)
        gauges["server.uptime"] = int(time.time() - self.started_at)
        gauges["server.concurrency"] = len(self.workers.slots)
        gauges["server.total_connections"] = sum(
            v for k, v in gauges.items() if k.startswith("listener.") and k.endswith(".downstream_cx_active"))
        return merged

    async def host_stats(self) -> dict:
        """Per-host counters summed over workers: {cluster: {host: {stat: value}}}."""
        total: dict = {}
        for reply in await self.ask_workers({"type": "hosts"}):
            for cluster, hosts in reply.get("hosts", {}).items():
                for host, values in hosts.items():
                    into = total.setdefault(cluster, {}).setdefault(host, {})
                    for key, value in values.items():
                        into[key] = into.get(key, 0) + value if key != "weight" else value
        return total

    def _process(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
            try:
                proc.cpu_percent(None)      # prime: the next call measures from here
            except psutil.Error:
                pass
        return proc

    def _usage(self, pid: int) -> dict:
        try:
            proc = self._process(pid)
            with proc.oneshot():
                return {"rss_bytes": proc.memory_info().rss, "cpu_percent": proc.cpu_percent(None)}
        except psutil.Error:
            return {"rss_bytes": 0, "cpu_percent": 0.0}

    async def status(self) -> dict:
        answers = {}
        for slot in self.workers.alive():
            if slot.channel is None or slot.channel.closed:
                continue
            try:
                answers[slot.id] = await slot.channel.request({"type": "status"}, timeout=WORKER_RPC_TIMEOUT)
            except Exception:
                answers[slot.id] = {}
        live_pids = {s.pid for s in self.workers.alive()} | {self.pid}
        for pid in list(self._procs):
            if pid not in live_pids:
                del self._procs[pid]
        workers = []
        for slot in self.workers.slots:
            entry = {"id": slot.id, "pid": slot.pid, "generation": self.generation,
                     "state": "ready" if slot.ready else ("given_up" if slot.given_up else
                                                          "starting" if slot.alive else "respawning"),
                     "uptime_s": round(self.os.monotonic() - slot.started_at, 3) if slot.alive else 0,
                     "connections": answers.get(slot.id, {}).get("connections", 0),
                     "rss_bytes": 0, "cpu_percent": 0.0, "restarts": len(slot.deaths),
                     "handoff": slot.handoff if slot.alive else None}
            if slot.retry_at is not None:       # a crash loop: when the slot is tried again
                entry["retry_in_s"] = round(max(0.0, slot.retry_at - self.os.monotonic()), 1)
            if slot.alive:
                entry.update(self._usage(slot.pid))
            workers.append(entry)
        return {"version": VERSION, "state": self.state, "runtime_dir": self.runtime_dir,
                "master": {"pid": self.pid, "generation": self.generation,
                           "uptime_s": round(time.time() - self.started_at, 3), **self._usage(self.pid)},
                "workers": workers,
                "keeper": {"pid": self.keeper_pid} if self.keeper_pid else None,
                "xds_agent": self.xds_link.status() if self.xds_link is not None else None}
