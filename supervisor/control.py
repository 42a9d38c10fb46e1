"""The control socket (<runtime dir>/control.sock) that `baton status` and `baton stop` use.

Framed msgpack request/reply (handoff/framing.py). Every peer is checked with SO_PEERCRED: only
root or the master's own uid may talk to it, on top of the directory's 0700 mode.

    {"type": "status"}  -> {"type": "status", "status": {...}}   (the `baton status --json` object)
    {"type": "stop"}    -> {"type": "ok"} then a graceful drain, as SIGTERM
    {"type": "stop", "fast": true} -> {"type": "ok"} then a fast stop, as SIGINT
    {"type": "reload"}  -> {"type": "ok", "generation", "pid"} once the new generation serves,
                           or {"type": "error", "error": reason} when it rolled back
    {"type": "recycle", "worker": N} -> {"type": "ok", "old_pid", "new_pid", "moved", "kept"}
    {"type": "inherit_counters", "counters": {...}} -> {"type": "ok"}   (an exiting generation's
                           counters, added to ours so /stats carries on across reloads)
    anything else       -> {"type": "error", "error": "..."}
"""

from __future__ import annotations

import logging
import os
import socket

from .handoff.channel import Channel
from .handoff.unix import accept_checked, bind_private, unlink_quietly

log = logging.getLogger("baton.control")


class ControlInUse(Exception):
    pass


def bind_control_socket(path: str) -> socket.socket:
    """Bind the control socket; refuse if a live master already answers on it."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)             # stale, from a master that died
        else:
            raise ControlInUse(f"another baton master is running with control socket {path}")
        finally:
            probe.close()
    return bind_private(path)


class ControlServer:
    def __init__(self, master, sock: socket.socket):
        self.master = master
        self.sock = sock
        self.loop = master.loop
        self.path = sock.getsockname()
        self.channels: set[Channel] = set()

    @classmethod
    async def start(cls, master) -> "ControlServer":
        self = cls(master, master.control_sock)
        self.accepting = False
        self.resume()
        return self

    def pause(self) -> None:
        """Stop accepting (a successor serves the socket now); open channels stay."""
        if self.accepting:
            self.accepting = False
            self.loop.remove_reader(self.sock.fileno())

    def resume(self) -> None:
        if not self.accepting:
            self.accepting = True
            self.loop.add_reader(self.sock.fileno(), self._on_acceptable)

    def close(self, unlink: bool = True) -> None:
        """`unlink=False` when a successor owns the path now."""
        self.pause()
        self.sock.close()
        for channel in list(self.channels):
            channel.close("master exiting")
        if unlink:
            unlink_quietly(self.path)

    def _on_acceptable(self) -> None:
        accepted = accept_checked(self.sock, "control")
        if accepted is None:
            return
        conn, pid = accepted
        channel = Channel(conn, self._on_message, self._on_closed, name=f"control peer {pid}")
        self.channels.add(channel)

    def _on_closed(self, channel, reason) -> None:
        self.channels.discard(channel)

    def _on_message(self, channel: Channel, msg: dict, fds) -> None:
        handler = getattr(self, "handle_" + msg["type"], None)
        if handler is None:
            channel.reply(msg, {"type": "error", "error": f"unknown request {msg['type']!r}"})
            return
        handler(channel, msg)

    def handle_status(self, channel, msg) -> None:
        async def answer():
            status = await self.master.status()
            channel.reply(msg, {"type": "status", "status": status})
        self.loop.create_task(answer())

    def handle_reload(self, channel, msg) -> None:
        refusal = self.master.reload_refusal()
        if refusal:
            channel.reply(msg, {"type": "error", "error": refusal})
            return

        async def answer():
            try:
                outcome = await self.master.reload()
            except Exception as exc:  # noqa: BLE001 - ReloadFailed, or anything unexpected
                channel.reply(msg, {"type": "error", "error": str(exc)})
                return
            channel.reply(msg, {"type": "ok", **outcome})
        self.loop.create_task(answer())

    def handle_recycle(self, channel, msg) -> None:
        async def answer():
            try:
                outcome = await self.master.recycle(int(msg.get("worker", -1)))
            except Exception as exc:  # noqa: BLE001 - reported to the caller
                channel.reply(msg, {"type": "error", "error": str(exc) or exc.__class__.__name__})
                return
            channel.reply(msg, {"type": "ok", **outcome})
        self.loop.create_task(answer())

    def handle_inherit_counters(self, channel, msg) -> None:
        counters = msg.get("counters")
        if not isinstance(counters, dict):
            channel.reply(msg, {"type": "error", "error": "counters must be a map"})
            return
        self.master.retire_counters(counters)
        channel.reply(msg, {"type": "ok"})

    def handle_stop(self, channel, msg) -> None:
        channel.reply(msg, {"type": "ok"})
        self.loop.call_soon(self.master.fast_stop if msg.get("fast") else self.master.drain)
