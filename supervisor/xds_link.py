"""The master's side of the xDS agent: starting it by exec, restarting it, hearing its config.

The master never imports grpc (it forks workers, and grpc does not survive fork()), so the
agent (xds/agent.py) is a program of its own, started with subprocess (fork+exec in C) and
given one end of a socketpair. If it dies it is started again with backoff (0.5 s doubling
to 30 s; back to 0.5 s after a minute of life) and `--resume`, so it starts from the config
it had accepted; the master serves that config all along.

    link = AgentLink(master, bootstrap_path, runtime_dir, resume)
    link.start()
    await link.dump()       # the dynamic parts of /config_dump, or None if the agent is down
    link.stop()

The agent drops to the workers' user without capabilities; the master writes its state file
(STATE_FILE) for it, since the runtime directory is the master's alone.

The master keeps the last applied dynamic config in the runtime directory (APPLIED_FILE);
the next generation starts from it (cli.py), so its listeners are known before it takes the
sockets over, and `baton reload` never waits for the control plane.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys

import msgpack

from .handoff.channel import Channel, socketpair

log = logging.getLogger("baton.xds")

STATE_FILE = "xds-state.msgpack"       # the agent's: accepted resources and versions
APPLIED_FILE = "xds-applied.msgpack"   # the master's: the dynamic config it serves
RESTART_BASE = 0.5
RESTART_MAX = 30.0
STABLE_AFTER = 60.0


def load_applied(runtime_dir: str) -> dict | None:
    """The dynamic config a previous generation served, or None."""
    try:
        with open(os.path.join(runtime_dir, APPLIED_FILE), "rb") as f:
            data = msgpack.unpackb(f.read(), raw=False)
    except (OSError, ValueError, msgpack.UnpackException):
        return None
    return data if isinstance(data, dict) else None


def save_applied(runtime_dir: str, published: dict) -> None:
    path = os.path.join(runtime_dir, APPLIED_FILE)
    try:
        tmp = f"{path}.{os.getpid()}.tmp"          # two generations may overlap in a reload
        _write_private(tmp, msgpack.packb(published, use_bin_type=True))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot save the dynamic config to %s: %s", path, exc)


def save_state(path: str, data: bytes) -> None:
    """The agent's state, written for it: it runs unprivileged and may not write here."""
    tmp = f"{path}.{os.getpid()}.tmp"          # two generations' masters may overlap
    try:
        _write_private(tmp, data)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot save the xds agent's state to %s: %s", path, exc)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _write_private(path: str, data: bytes) -> None:
    from ..xds.secrets import write_private     # the dynamic config holds private keys
    write_private(path, data)


def forget_state(runtime_dir: str) -> None:
    """A fresh start asks the control plane from scratch, as Envoy does."""
    for name in (STATE_FILE, APPLIED_FILE):
        try:
            os.unlink(os.path.join(runtime_dir, name))
        except FileNotFoundError:
            pass


class AgentLink:
    def __init__(self, master, bootstrap_path: str, runtime_dir: str, resume: bool):
        self.master = master
        self.loop = master.loop
        self.bootstrap_path = os.path.abspath(bootstrap_path)
        self.state_path = os.path.join(runtime_dir, STATE_FILE)
        self.resume = resume
        self.process: subprocess.Popen | None = None
        self.channel: Channel | None = None
        self.pidfd: int | None = None
        self.started_at = 0.0
        self.failures = 0
        self.stopping = False
        self.restarts = 0
        self.counters: dict[str, int] = {}       # the running agent's
        self.retired: dict[str, int] = {}        # earlier agents' totals
        self.gauges: dict[str, int] = {"control_plane.connected_state": 0}

    def start(self) -> None:
        parent, child = socketpair()
        argv = [sys.executable, "-m", "baton.xds.agent", "--bootstrap", self.bootstrap_path,
                "--fd", str(child.fileno()), "--state", self.state_path,
                "--log-level", getattr(self.master.options, "log_level", "info")]
        if self.resume:
            argv.append("--resume")
        runtime = self.master.snapshot.get("runtime") or {}
        if runtime.get("worker_caps") is not None:
            # It drops to the workers' user and keeps no capability (xds/agent.py).
            argv.append("--unprivileged")
            if runtime.get("worker_user"):
                argv += ["--user", "%d:%d" % tuple(runtime["worker_user"])]
        try:
            self.process = subprocess.Popen(argv, pass_fds=(child.fileno(),), close_fds=True,
                                            stdin=subprocess.DEVNULL)
        except OSError as exc:
            log.error("cannot start the xDS agent: %s", exc)
            parent.close()
            child.close()
            self._schedule_restart()
            return
        finally:
            if not child._closed:
                child.close()
        self.resume = True          # every later start resumes from what was accepted
        self.started_at = self.loop.time()
        self.channel = Channel(parent, self._on_message, name="master<-xds agent")
        self.pidfd = os.pidfd_open(self.process.pid)
        self.loop.add_reader(self.pidfd, self._on_exit)
        log.info("xds agent started (pid %d)", self.process.pid)

    def _on_message(self, channel, msg, fds) -> None:
        if msg["type"] == "config":
            stats = msg.get("stats") or {}
            self.counters = stats.get("counters") or {}
            self.gauges = stats.get("gauges") or self.gauges
            self.master.apply_xds(msg["config"])
        elif msg["type"] == "state" and isinstance(msg.get("data"), bytes):
            save_state(self.state_path, msg["data"])
        else:
            log.warning("xds agent sent unexpected %r", msg["type"])

    def _on_exit(self) -> None:
        self.loop.remove_reader(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = None
        code = self.process.wait()
        if self.channel is not None:
            self.channel.close("agent exited")
            self.channel = None
        for name, value in self.counters.items():
            self.retired[name] = self.retired.get(name, 0) + value
        self.counters = {}
        self.gauges = {"control_plane.connected_state": 0}
        if self.stopping:
            return
        from .workers import describe_exit
        log.error("xds agent (pid %d) %s; the last accepted config keeps serving",
                  self.process.pid, describe_exit(code if code >= 0 else (-code) & 0x7F))
        self._schedule_restart()

    def _schedule_restart(self) -> None:
        lived = self.loop.time() - self.started_at
        self.failures = 1 if lived > STABLE_AFTER else self.failures + 1
        delay = min(RESTART_MAX, RESTART_BASE * 2 ** (self.failures - 1))
        self.restarts += 1
        self.loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        if not self.stopping:
            self.start()

    def stats(self) -> tuple[dict, dict]:
        counters = dict(self.retired)
        for name, value in self.counters.items():
            counters[name] = counters.get(name, 0) + value
        return counters, dict(self.gauges)

    def status(self) -> dict:
        alive = self.process is not None and self.process.poll() is None
        return {"pid": self.process.pid if alive else None, "restarts": self.restarts,
                "connected": bool(self.gauges.get("control_plane.connected_state")),
                "initialized": self.master.xds.initialized, "missing": self.master.xds.missing}

    async def dump(self) -> dict | None:
        if self.channel is None or self.channel.closed:
            return None
        try:
            reply = await self.channel.request({"type": "dump"}, timeout=10.0)
        except Exception:  # noqa: BLE001 - timeout or agent gone: the dump says so
            return None
        return reply.get("dump")

    def stop(self) -> None:
        self.stopping = True
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
