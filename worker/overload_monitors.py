"""The resource monitors a worker reads on each overload refresh: each returns a pressure
(1.0 = its limit), or raises when it cannot measure (the manager counts a failed update and
logs why).
"""

from __future__ import annotations

import os

_PAGE = os.sysconf("SC_PAGE_SIZE")


def anonymous_resident_bytes(statm: str = "/proc/self/statm") -> int:
    """The worker's resident anonymous memory: resident minus file-backed pages.

    Why this and not the Python heap: Envoy's fixed_heap reads tcmalloc's bytes in use, i.e.
    everything Envoy allocated. A Python worker allocates through pymalloc (small objects),
    malloc (every bytes/bytearray over 512 B: the request and response buffers that grow
    under load) and libuv; sys.getallocatedblocks() sees only the first, in blocks, and
    tracemalloc would tax every allocation. Anonymous resident pages hold all three, and
    leave out the interpreter's and libraries' code, which is no load. One read of
    /proc/self/statm (resident and shared, in pages) per refresh."""
    with open(statm, "rb") as f:
        fields = f.read().split()
    return (int(fields[1]) - int(fields[2])) * _PAGE


class FixedHeap:
    __slots__ = ("limit",)

    def __init__(self, spec: dict):
        self.limit = spec["limit"]

    def pressure(self, worker) -> float:
        return anonymous_resident_bytes() / self.limit


class InjectedResource:
    """Envoy's injected_resource: the pressure is the number written in a file (for tests
    and operators forcing the overload state). Envoy reads it when the file changes; Baton
    reads it each refresh (one small file)."""

    __slots__ = ("filename",)

    def __init__(self, spec: dict):
        self.filename = spec["filename"]

    def pressure(self, worker) -> float:
        with open(self.filename, "rb") as f:
            text = f.read(64).strip()
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{self.filename}: not a number: {text[:20]!r}") from None
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{self.filename}: pressure {value:g} out of range [0, 1]")
        return value


class DownstreamConnections:
    """global_downstream_max_connections: every worker's connections (connection_table.py)
    against the limit. Also consulted at each accept, through admits()."""

    __slots__ = ("limit", "table")

    def __init__(self, spec: dict, table):
        self.limit = spec["limit"]
        self.table = table

    def pressure(self, worker) -> float:
        mine = len(worker.connections)
        self.table.refresh_peers()
        self.table.publish(mine)
        return (mine + self.table.others_total()) / self.limit

    def admits(self, worker) -> bool:
        """Whether one more connection fits; if so it is counted at once, so the other
        workers see it before their next accept."""
        mine = len(worker.connections)
        if mine + self.table.others_total() >= self.limit:
            return False
        self.table.publish(mine + 1)
        return True


def make_monitor(spec: dict, table_factory):
    kind = spec["kind"]
    if kind == "fixed_heap":
        return FixedHeap(spec)
    if kind == "injected_resource":
        return InjectedResource(spec)
    return DownstreamConnections(spec, table_factory())
