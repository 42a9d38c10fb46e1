"""The master connects to handoff sockets, and opens access-log files, on its workers' behalf.

An unprivileged worker cannot reach a handoff socket that is a file in the master's 0700
runtime directory (an older release's workers listen there), and such a worker only admits
root or its own uid. So a worker moving connections out asks its master to connect, and
gets the connected socket back: the receiver sees the master's credentials, which every
release accepts. The master only connects to addresses it handed out itself as migration
targets (its own workers, or the workers the next generation announced in its `ready`), so a
worker cannot use it to reach any other socket with the master's privileges.

An unprivileged worker also cannot create or append to a log file in a directory only root
may write (/var/log/..., where operators put access logs and where Envoy, running as one user,
writes them). So it asks the master to open the file, and the master does, but only for a path
that the config it serves names as an access log: a worker cannot use it to open anything else.

One socketpair per worker, separate from the control channel; frames as framing.py:

    worker -> master   connect    {ref, address}
                       open       {ref, path}
    master -> worker   connected  {ref} + the connected socket
                       opened     {ref} + the file, open for appending
                       error      {ref, error}
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket

from .channel import Channel
from .framing import close_fds

log = logging.getLogger("baton.broker")

CONNECT_TIMEOUT = 5.0
LOG_FILE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
LOG_FILE_MODE = 0o644


def access_log_paths(config) -> set[str]:
    """Every file path the config names in an `access_log` list, wherever it sits (HTTP
    connection managers, listeners, tcp_proxy: the translated shape is the same)."""
    paths: set[str] = set()
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            logs = node.get("access_log")
            if isinstance(logs, list):
                paths.update(entry["path"] for entry in logs
                             if isinstance(entry, dict) and isinstance(entry.get("path"), str))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return paths


def access_log_problems(config) -> list[str]:
    """A line for each configured access log that the master could not open, without
    creating anything (`baton check` must not): Envoy refuses such a config at load, and so
    does `baton run`, rather than serving with a log that silently drops every line."""
    problems = []
    for path in sorted(access_log_paths(config)):
        if path in ("/dev/stdout", "/dev/stderr"):
            continue
        if os.path.isdir(path):
            problems.append(f"access log {path}: is a directory")
        elif os.path.exists(path):
            if not os.access(path, os.W_OK):
                problems.append(f"access log {path}: cannot be opened: permission denied")
        else:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                problems.append(f"access log {path}: cannot be opened: "
                                f"no such directory {parent}")
            elif not os.access(parent, os.W_OK | os.X_OK):
                problems.append(f"access log {path}: cannot be created in {parent}: "
                                "permission denied")
    return problems


class BrokerClient:
    """The worker's side."""

    def __init__(self, sock: socket.socket):
        self.channel = Channel(sock, self._on_message, self._on_closed, name="handoff broker")
        self._refs = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}

    async def connect(self, address: str, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
        fd = await self._request({"type": "connect", "address": address}, "connected", timeout,
                                 ConnectionError, "the master could not connect")
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)

    async def open_log(self, path: str, timeout: float = CONNECT_TIMEOUT) -> int:
        """A descriptor of the access-log file `path`, opened for appending by the master."""
        try:
            return await self._request({"type": "open", "path": path}, "opened", timeout,
                                       OSError, "the master could not open it")
        except (ConnectionError, asyncio.TimeoutError) as exc:
            raise OSError(f"the master did not answer: {exc or 'timed out'}") from None

    async def _request(self, msg: dict, success: str, timeout: float, error, default: str) -> int:
        ref = next(self._refs)
        future = self.channel.loop.create_future()
        self._pending[ref] = future
        try:
            self.channel.send({**msg, "ref": ref})
            reply, fds = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(ref, None)
        if reply.get("type") != success or len(fds) != 1:
            close_fds(fds)
            raise error(reply.get("error") or default)
        return fds[0]

    def _on_message(self, channel, msg, fds) -> None:
        future = self._pending.get(msg.get("ref"))
        if future is None or future.done():
            close_fds(fds)
            return
        future.set_result((msg, list(fds)))

    def _on_closed(self, channel, reason) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"handoff broker: {reason}"))


class BrokerServer:
    """The master's side, one per worker. `allowed(address)` says which addresses it may
    connect to for this worker, `may_open(path)` which files it may open for it."""

    def __init__(self, sock: socket.socket, allowed, name: str, may_open=lambda path: False):
        self.allowed = allowed
        self.may_open = may_open
        self.channel = Channel(sock, self._on_message, name=name)

    def close(self) -> None:
        self.channel.close("worker gone")

    def _on_message(self, channel, msg, fds) -> None:
        close_fds(fds)
        if msg.get("type") == "open":
            self._open(channel, msg.get("ref"), msg.get("path"))
            return
        ref, address = msg.get("ref"), msg.get("address")
        if msg.get("type") != "connect" or not isinstance(address, str):
            channel.send({"type": "error", "ref": ref, "error": "bad request"})
        elif not self.allowed(address):
            log.warning("%s: refused to connect to %r (not a migration target)", channel.name, address)
            channel.send({"type": "error", "ref": ref, "error": "not a migration target"})
        else:
            channel.loop.create_task(self._connect(ref, address))

    def _open(self, channel, ref, path) -> None:
        if not isinstance(path, str) or not self.may_open(path):
            log.warning("%s: refused to open %r (not an access log of the config)", channel.name, path)
            channel.send({"type": "error", "ref": ref, "error": "not an access log of the config"})
            return
        try:
            fd = os.open(path, LOG_FILE_FLAGS, LOG_FILE_MODE)
        except OSError as exc:
            channel.send({"type": "error", "ref": ref, "error": f"{path}: {exc.strerror}"})
            return
        try:
            channel.send({"type": "opened", "ref": ref}, [fd])
        finally:
            os.close(fd)       # the channel sent its own duplicate

    async def _connect(self, ref, address: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(self.channel.loop.sock_connect(sock, address), CONNECT_TIMEOUT)
            if not self.channel.closed:
                self.channel.send({"type": "connected", "ref": ref}, [sock.fileno()])
        except (OSError, asyncio.TimeoutError) as exc:
            if not self.channel.closed:
                self.channel.send({"type": "error", "ref": ref, "error": str(exc) or "timed out"})
        finally:
            sock.close()       # the channel sent its own duplicate
