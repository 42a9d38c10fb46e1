"""A receiving worker for tests/integration/test_handoff_deadline.py: the real MigrationServer
(worker/migration.py) in a process of its own, adopting connections of a test kind, "probe"
(one socket, no state), so that a batch's deadline can be raced with SIGSTOP / SIGCONT.

    handoff_receiver.py ADDRESS [--stop-after-claim | --close-after-claim | --exit-after-claim]

Prints "ready" once its handoff socket listens, then one line per batch it decides:
"adopted <ids>" or "refused <reasons>". An adopted probe writes "new <pid>\\n" to its socket
at once, so a client sees who serves it. It adopts record "tcp-split" too, as the real client
half (forwarding.ForwardedSide) a worker runs. With --stop-after-claim it prints "claimed" and stops
itself (SIGSTOP) when it adopts its first connection: it owns the batch then, and has not answered.
With --close-after-claim it closes its handoff channels there instead (its answer is never
sent) and runs on, holding the probe; with --exit-after-claim it exits there, holding nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from baton.supervisor.handoff import protocol  # noqa: E402
from baton.worker import connection, migration  # noqa: E402
from baton.worker.connection import Connection, Lifecycle  # noqa: E402
from baton.worker.forwarding import ForwardedSide  # noqa: E402

PROBE = protocol.Record("probe", (1,), 1, ("socket",), {"id": int, "listener": str})


def register_probe() -> None:
    """The probe kind, on both sides (the test registers it in its own process too)."""
    protocol.RECORDS["probe"] = PROBE
    connection.register("probe", Probe.adopt)


class Probe(Connection):
    kind = "probe"
    stop_after_claim = False
    after_claim = None          # "close" or "exit": what it does on its first probe

    def __init__(self, conn_id, fd):
        self.id, self.listener, self.chain, self.fd = conn_id, None, None, fd
        self.state = Lifecycle.OPEN

    @classmethod
    def claimed(cls, worker) -> None:
        """What the receiver does as it adopts its first connection (it owns the batch)."""
        if cls.stop_after_claim:
            cls.stop_after_claim = False
            print("claimed", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        if cls.after_claim == "exit":
            os._exit(0)
        if cls.after_claim == "close":
            cls.after_claim = None
            for channel in list(worker.handoff_channels):
                channel.close("closed after the claim")

    @classmethod
    def adopt(cls, worker, listener, fields, fds, conn_id, channel):
        cls.claimed(worker)
        os.write(fds[0], f"new {os.getpid()}\n".encode())
        return cls(conn_id, fds[0])


def adopt_split_client(worker, listener, fields, fds, conn_id, channel):
    """Record "tcp-split": the real client half (forwarding.ForwardedSide), after the claim's
    stop, close or exit as for a probe."""
    Probe.claimed(worker)
    return ForwardedSide.adopt_client(worker, listener, fields, fds, conn_id, channel)


class Worker:
    """What MigrationServer and adopt_connections use of a worker."""

    id = 1
    generation = 2

    def __init__(self, loop):
        self.loop = loop
        # A tcp-split client half counts itself on its listener (its client: a socket pair).
        self.listeners = {"l": SimpleNamespace(family=socket.AF_UNIX, stat_cx_active="l.active",
                                               spec={})}
        self.stats = SimpleNamespace(gauges=defaultdict(int), counters=defaultdict(int))
        self.connections = {}
        self.handoff_channels = set()
        self._ids = iter(range(1000, 10**6))

    def next_connection_id(self):
        return next(self._ids)

    def connection_closed(self, conn):
        self.connections.pop(conn.id, None)


def report(adopt):
    def adopt_and_report(*args, **kwargs):
        adopted, refused, new_ids, conns = adopt(*args, **kwargs)
        print(f"adopted {adopted}" if adopted else f"refused {refused}", flush=True)
        return adopted, refused, new_ids, conns
    return adopt_and_report


async def main(address: str) -> None:
    register_probe()
    connection.register("tcp-split", adopt_split_client)
    migration.adopt_connections = report(migration.adopt_connections)
    loop = asyncio.get_running_loop()
    server = migration.MigrationServer(Worker(loop), address, {os.getppid(): None})
    print("ready", flush=True)
    try:
        await loop.create_future()
    finally:
        server.close()


if __name__ == "__main__":
    Probe.stop_after_claim = "--stop-after-claim" in sys.argv[2:]
    Probe.after_claim = ("close" if "--close-after-claim" in sys.argv[2:]
                         else "exit" if "--exit-after-claim" in sys.argv[2:] else None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(main(sys.argv[1]))
