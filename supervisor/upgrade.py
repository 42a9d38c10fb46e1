"""Reload: one generation hands its sockets and connections to the next.

Both sides of supervisor/handoff/protocol.py's master conversation live here:

- `Reload` runs in the OLD master. It listens on <runtime dir>/handoff.sock, starts the new
  master (fork, fork again, exec the `baton` on disk with the same arguments: the new master is
  not our child, which systemd needs for MAINPID=; OsSeam.spawn_detached), answers it, and at
  `ready` commits: stops accepting and tells its workers to move their connections to the new
  workers. Until that moment it never stopped serving, so every failure before it is a clean
  rollback; a drain or fast stop of the old master before it aborts the reload (`abort`).
- `Takeover` runs in the NEW master. It says hello, reports a bad config as `failed`, takes the
  listening sockets, and, once its workers serve, asks for the commit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time

from .handoff import protocol, unix
from .handoff.channel import BlockingChannel, Channel
from .handoff.framing import close_fds, encode

log = logging.getLogger("baton.upgrade")

ENV_HANDOFF = "BATON_HANDOFF"
ENV_GENERATION = "BATON_GENERATION"
ENV_PREVIOUS_PID = "BATON_PREVIOUS_PID"


class ReloadFailed(Exception):
    """The new generation did not take over; the old one serves on. str() is the reason."""


def new_master_argv() -> list[str]:
    """The command that started us, run again from disk (so new code on disk really runs)."""
    script = sys.argv[0]
    if script.endswith(".py") or not os.path.exists(script):
        return [sys.executable, "-m", "baton.supervisor.cli", *sys.argv[1:]]
    return [sys.executable, script, *sys.argv[1:]]


class Reload:
    """One reload, seen from the old master."""

    def __init__(self, master):
        self.master = master
        self.loop = master.loop
        self.path = os.path.join(master.runtime_dir, protocol.HANDOFF_SOCKET)
        self.pid: int | None = None
        self.sock: socket.socket | None = None
        self.channel: Channel | None = None
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.exited = self.loop.create_future()
        self.aborted = self.loop.create_future()          # the old master is stopping
        self.os = master.os
        self.pidfd: int | None = None
        self.committed = False
        self.successor_main = self.loop.create_future()   # the new master is systemd's main PID

    async def run(self) -> dict:
        """{"generation", "pid"} of the new generation, or ReloadFailed with the reason."""
        started = time.monotonic()
        self._listen()
        try:
            env = {**os.environ, ENV_HANDOFF: self.path,
                   ENV_GENERATION: str(self.master.generation + 1),
                   ENV_PREVIOUS_PID: str(self.os.getpid())}
            try:
                self.pid = self.os.spawn_detached(new_master_argv(), env)
            except OSError as exc:
                raise ReloadFailed(f"could not start the new master ({exc})") from None
            log.info("reload: started new master pid %d (generation %d)", self.pid, self.master.generation + 1)
            self.pidfd = self.os.pidfd_open(self.pid)
            self.loop.add_reader(self.pidfd, self._on_exit)
            await self._converse()
        except ReloadFailed as exc:
            self._kill_new()
            log.error("reload failed, generation %d serves on: %s", self.master.generation, exc)
            raise
        finally:
            self._stop_listening()
        log.info("reload: generation %d (pid %d) took over in %.3fs", self.master.generation + 1,
                 self.pid, time.monotonic() - started)
        return {"generation": self.master.generation + 1, "pid": self.pid}

    # -- the conversation ----------------------------------------------------------------

    async def _converse(self) -> None:
        msg, fds = await self._next(protocol.HELLO_TIMEOUT, "say hello")
        close_fds(fds)
        try:
            version = protocol.negotiate(msg)
        except protocol.ProtocolError as exc:
            self.channel.reply(msg, protocol.error(str(exc)))
            raise ReloadFailed(f"handshake with the new master failed: {exc}") from None
        self.channel.reply(msg, protocol.hello_reply(version, self.os.getpid(),
                                                     self.master.generation))
        deadline = time.monotonic() + self.master.options.reload_timeout
        while True:
            msg, fds = await self._next(deadline - time.monotonic(), "become ready")
            try:
                protocol.check(msg)
            except protocol.ProtocolError as exc:
                close_fds(fds)
                self.channel.reply(msg, protocol.error(str(exc)))
                continue
            kind = msg["type"]
            if kind == "failed":
                close_fds(fds)
                raise ReloadFailed(f"the new master refused to start: {msg.get('reason', '?')}")
            if kind == "take":
                close_fds(fds)
                reply, out_fds = self.master.sockets_for_handoff()
                reply, out_fds = udp_apart(reply, out_fds, self.master.snapshot, bool(msg.get("udp")))
                self.channel.reply(msg, reply, out_fds)
            elif kind == "ready":
                close_fds(fds)
                targets = [t for t in msg.get("workers", ()) if isinstance(t, str)]
                self.committed = True
                self.master.hand_over(targets, self)
                self.channel.reply(msg, {"type": "committed"})
                return
            else:
                close_fds(fds)
                self.channel.reply(msg, protocol.error(f"unexpected message {kind!r}"))

    def abort(self, reason: str) -> None:
        """Give up before the commit point (the old master was told to stop): the new master
        is killed as at any rollback."""
        if not self.aborted.done():
            self.aborted.set_result(reason)

    async def _next(self, timeout: float, what: str):
        if self.aborted.done():
            raise ReloadFailed(f"reload aborted: {self.aborted.result()}")
        getter = asyncio.ensure_future(self.inbox.get())
        done, _ = await asyncio.wait({getter, self.exited, self.aborted}, timeout=max(0.0, timeout),
                                     return_when=asyncio.FIRST_COMPLETED)
        if self.aborted in done:
            getter.cancel()
            if getter.done() and not getter.cancelled() and getter.result() is not None:
                close_fds(getter.result()[1])
            raise ReloadFailed(f"reload aborted: {self.aborted.result()}")
        if getter in done:
            item = getter.result()
            if item is None:
                raise ReloadFailed(f"the new master (pid {self.pid}) closed the handoff connection "
                                   "before the commit point")
            return item
        getter.cancel()
        if self.exited in done:
            raise ReloadFailed(f"the new master (pid {self.pid}) exited before the commit point")
        raise ReloadFailed(f"the new master (pid {self.pid}) did not {what} within {timeout:.0f}s")

    # -- sockets and processes -----------------------------------------------------------

    def _listen(self) -> None:
        self.sock = unix.bind_private(self.path, backlog=8)
        self.loop.add_reader(self.sock.fileno(), self._on_acceptable)

    def _on_acceptable(self) -> None:
        accepted = unix.accept_checked(self.sock, "handoff socket")
        if accepted is None:
            return
        conn, pid = accepted
        if pid != self.pid or self.channel is not None:
            # Only the process we started may take over, and only once.
            log.warning("handoff socket: refused pid %d (expected the new master, pid %d)", pid, self.pid)
            try:
                conn.setblocking(False)
                conn.send(encode(protocol.error("not the expected new master")))
            except OSError:
                pass
            conn.close()
            return
        self.channel = Channel(conn, self._on_message, self._on_closed, name=f"handoff to pid {pid}")

    def _on_message(self, channel, msg, fds) -> None:
        if msg.get("type") == "main":          # after the commit: systemd knows the new main PID
            close_fds(fds)
            if not self.successor_main.done():
                self.successor_main.set_result(True)
            return
        self.inbox.put_nowait((msg, fds))

    def _on_closed(self, channel, reason) -> None:
        # After the commit the new master closes this connection as a matter of course;
        # only its exit (pidfd) means it is gone.
        self.inbox.put_nowait(None)
        if not self.successor_main.done():
            self.successor_main.set_result(False)

    def _on_exit(self) -> None:
        self.loop.remove_reader(self.pidfd)
        self.os.close(self.pidfd)
        self.pidfd = None
        if not self.exited.done():
            self.exited.set_result(True)
        if self.committed:
            self.master.successor_exited(self.pid)

    def _stop_listening(self) -> None:
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
            unix.unlink_quietly(self.path)

    def _kill_new(self) -> None:
        if self.channel is not None:
            self.channel.close("rolled back")
        if self.pid is not None and self.pidfd is not None:
            try:
                self.os.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass


def udp_apart(msg: dict, fds: list[int], snapshot: dict, peer_takes_udp: bool):
    """The `sockets` message with the UDP listeners out of `listeners`: in `udp_listeners`
    for a new master that asked for them (`take {udp: true}`), left out otherwise. A release
    without UDP (0.1.0) knows only stream sockets by address: given a datagram socket in
    `listeners` it would take it for a TCP listener on the same port. Descriptors are
    renumbered so that none is sent that the message does not name."""
    udp = {spec["name"] for spec in snapshot.get("listeners", ()) if spec.get("protocol") == "udp"}
    out_fds: list[int] = []

    def keep(index):
        out_fds.append(fds[index])
        return len(out_fds) - 1
    tcp_entries, udp_entries = [], []
    for entry in msg["listeners"]:
        if entry.get("name") not in udp:
            tcp_entries.append({**entry, "fd": keep(entry["fd"])})
        elif peer_takes_udp:
            udp_entries.append({**entry, "fd": keep(entry["fd"])})
    out = {**msg, "listeners": tcp_entries}
    if udp_entries:
        out["udp_listeners"] = udp_entries
    if msg.get("admin") is not None:
        out["admin"] = {**msg["admin"], "fd": keep(msg["admin"]["fd"])}
    if msg.get("control") is not None:
        out["control"] = keep(msg["control"])
    return out, out_fds


class Takeover:
    """The new master's side, before its event loop runs and (at commit) inside it."""

    def __init__(self, path: str, generation: int, timeout: float = protocol.COMMIT_TIMEOUT):
        self.path = path
        self.generation = generation
        self.timeout = timeout
        self.previous_pid: int | None = None
        self.channel = BlockingChannel.connect(path, protocol.HELLO_TIMEOUT)
        reply, fds = self.channel.request(protocol.hello(os.getpid(), generation))
        close_fds(fds)
        if reply.get("type") != "hello":
            raise ReloadFailed(reply.get("error", "the old master refused the handshake"))
        self.previous_pid = reply.get("pid")

    def fail(self, reason: str) -> None:
        """Tell the old master why we cannot take over (it then rolls back)."""
        try:
            self.channel.send({"type": "failed", "reason": reason})
        except OSError:
            pass
        self.channel.close()

    def take_sockets(self) -> dict:
        """The old generation's sockets: {"listeners": {listeners.listener_key(): socket},
        "admin": ((address, port), socket) or None, "control": socket or None}."""
        self.channel.sock.settimeout(self.timeout)
        reply, fds = self.channel.request({"type": "take", "udp": True})
        try:
            protocol.check(reply)
        except protocol.ProtocolError as exc:
            close_fds(fds)
            raise ReloadFailed(f"malformed answer to take: {exc}") from None
        if reply.get("type") != "sockets":
            close_fds(fds)
            raise ReloadFailed(reply.get("error", "no sockets in the answer"))
        result = {"listeners": {}, "admin": None, "control": None,
                  "ticket_seed": reply.get("ticket_seed")}
        try:
            for entry in reply.get("listeners", ()):
                family = socket.AF_INET6 if ":" in entry["address"] else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM, 0, fds[entry["fd"]])
                result["listeners"][(entry["address"], entry["port"])] = sock
            for entry in reply.get("udp_listeners") or ():
                family = socket.AF_INET6 if ":" in entry["address"] else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_DGRAM, 0, fds[entry["fd"]])
                result["listeners"][(entry["address"], entry["port"], "udp")] = sock
            admin = reply.get("admin")
            if admin is not None:
                family = socket.AF_INET6 if ":" in admin["address"] else socket.AF_INET
                result["admin"] = ((admin["address"], admin["port"]),
                                   socket.socket(family, socket.SOCK_STREAM, 0, fds[admin["fd"]]))
            if reply.get("control") is not None:
                result["control"] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fds[reply["control"]])
        except (KeyError, IndexError, TypeError) as exc:
            close_fds(fds)
            raise ReloadFailed(f"malformed sockets message: {exc!r}") from None
        return result

    async def commit(self, worker_paths: list[str], become_main) -> None:
        """Every worker serves: ask the old generation to stop and move its connections.

        After `committed`, `become_main()` runs (tell systemd MAINPID= and wait for its
        barrier) and only then is the old master told `main`: it must not exit before systemd
        knows the new main PID, or systemd would consider the service stopped."""
        def on_message(channel, msg, fds):
            close_fds(fds)
        sock = self.channel.detach()
        channel = Channel(sock, on_message, name="handoff to the old master")
        try:
            reply = await channel.request({"type": "ready", "workers": worker_paths},
                                          timeout=self.timeout)
            if reply.get("type") != "committed":
                raise ReloadFailed(reply.get("error", "the old master did not commit"))
            await become_main()
            channel.send({"type": "main", "pid": os.getpid()})
            await channel.drained(timeout=2.0)
        finally:
            channel.close("committed")
