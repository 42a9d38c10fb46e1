"""The master connects to handoff sockets on its workers' behalf.

An unprivileged worker cannot reach a handoff socket that is a file in the master's 0700
runtime directory (an older release's workers listen there), and such a worker only admits
root or its own uid. So a worker moving connections out asks its master to connect, and
gets the connected socket back: the receiver sees the master's credentials, which every
release accepts. The master only connects to addresses it handed out itself as migration
targets (its own workers, or the workers the next generation announced in its `ready`), so a
worker cannot use it to reach any other socket with the master's privileges.

One socketpair per worker, separate from the control channel; frames as framing.py:

    worker -> master   connect    {ref, address}
    master -> worker   connected  {ref} + the connected socket
                       error      {ref, error}
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket

from .channel import Channel
from .framing import close_fds

log = logging.getLogger("baton.broker")

CONNECT_TIMEOUT = 5.0


class BrokerClient:
    """The worker's side."""

    def __init__(self, sock: socket.socket):
        self.channel = Channel(sock, self._on_message, self._on_closed, name="handoff broker")
        self._refs = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}

    async def connect(self, address: str, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
        ref = next(self._refs)
        future = self.channel.loop.create_future()
        self._pending[ref] = future
        try:
            self.channel.send({"type": "connect", "ref": ref, "address": address})
            msg, fds = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(ref, None)
        if msg.get("type") != "connected" or len(fds) != 1:
            close_fds(fds)
            raise ConnectionError(msg.get("error") or "the master could not connect")
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fds[0])

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
    connect to for this worker."""

    def __init__(self, sock: socket.socket, allowed, name: str):
        self.allowed = allowed
        self.channel = Channel(sock, self._on_message, name=name)

    def close(self) -> None:
        self.channel.close("worker gone")

    def _on_message(self, channel, msg, fds) -> None:
        close_fds(fds)
        ref, address = msg.get("ref"), msg.get("address")
        if msg.get("type") != "connect" or not isinstance(address, str):
            channel.send({"type": "error", "ref": ref, "error": "bad request"})
        elif not self.allowed(address):
            log.warning("%s: refused to connect to %r (not a migration target)", channel.name, address)
            channel.send({"type": "error", "ref": ref, "error": "not a migration target"})
        else:
            channel.loop.create_task(self._connect(ref, address))

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
