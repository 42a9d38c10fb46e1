"""How many downstream connections all the workers hold: one shared table, a slot per worker.

Envoy's global_downstream_max_connections counts the whole process's connections in one
atomic. Baton's workers are processes, so the count lives in shared memory instead, and is
shared rather than split: a limit split into per-worker shares would refuse connections
while other workers have room, and with every worker accepting from the same queue the
kernel does not spread connections evenly. Python has no atomic add on shared memory, so
each worker only ever writes its own slot (single writer, no lock) and sums the others'.

Layout: MAX_WORKERS x SLOTS_PER_WORKER slots of two native int64, (pid, connections).
Worker w owns slot 2w or 2w+1: the second one is for its replacement while `baton recycle`
runs both; a slot whose pid is dead (a crashed worker) is taken over by the respawned one.

    slot i:  | pid (int64) | connections (int64) |

The table is an anonymous shared mapping created when this module is imported: the master
imports it (through worker.main) before it forks any worker, so every worker of a generation
maps the same pages. A new generation (baton reload) has its own table; the connections it
adopts count there from its next refresh.

After the slots, one more int64, the roster: each worker that takes a slot writes its pid
there once its slot holds it. A reader that finds the roster changed since it last looked for
peers looks again before it counts, so a worker started (or respawned, or recycled in) after
this one counts from its first connection, not from this one's next refresh.

Staleness: a worker writes its count when it accepts and on each overload refresh, so
another worker sees a new connection at once but a closed one only at the owner's next
refresh (refresh_interval). Two workers accepting at the same instant may each admit the
last free place: the limit can be exceeded by at most (workers - 1).
"""

from __future__ import annotations

import mmap
import os
from itertools import compress

MAX_WORKERS = 1024
SLOTS_PER_WORKER = 2
_SLOT_INTS = 2                      # pid, connections

ROSTER = MAX_WORKERS * SLOTS_PER_WORKER * _SLOT_INTS       # index of the roster int64
_TABLE = mmap.mmap(-1, (ROSTER + 1) * 8)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # exists, owned by another user (--worker-user)
        return True
    return True


class ConnectionTable:
    """This worker's view of the shared table."""

    __slots__ = ("ints", "mine", "others", "roster")

    def __init__(self, worker_id: int, pid: int | None = None, table=None):
        self.ints = memoryview(table if table is not None else _TABLE).cast("q")
        pid = pid if pid is not None else os.getpid()
        self.mine = None
        if 0 <= worker_id < MAX_WORKERS:
            first = worker_id * SLOTS_PER_WORKER
            slots = range(first, first + SLOTS_PER_WORKER)
            free = [s for s in slots if not _alive(self.ints[s * _SLOT_INTS])]
            # Both slots held by live pids only if a pid was reused: take the first.
            self.mine = (free or [first])[0]
            self.ints[self.mine * _SLOT_INTS + 1] = 0
            self.ints[self.mine * _SLOT_INTS] = pid
            self.ints[ROSTER] = pid         # after the slot: whoever sees it sees the slot
        self.others: list[int] = []
        self.roster = 0
        self.refresh_peers()

    def refresh_peers(self) -> None:
        """Which other slots belong to live workers (a dead worker's count no longer holds).
        Checked on the refresh timer, not per accept: one kill(0) per slot in use."""
        self.roster = self.ints[ROSTER]     # before the scan: a later change is seen next time
        pids = self.ints[:ROSTER:_SLOT_INTS].tolist()
        used = compress(range(len(pids)), pids)      # in C: almost every slot is empty
        self.others = [i * _SLOT_INTS + 1 for i in used if i != self.mine and _alive(pids[i])]

    def publish(self, connections: int) -> None:
        if self.mine is not None:
            self.ints[self.mine * _SLOT_INTS + 1] = connections

    def others_total(self) -> int:
        ints = self.ints
        if ints[ROSTER] != self.roster:     # a worker took a slot since we last looked
            self.refresh_peers()
        return sum(ints[i] for i in self.others)

    def release(self) -> None:
        """This worker exits: its slot is free and counts nothing."""
        if self.mine is not None:
            self.ints[self.mine * _SLOT_INTS + 1] = 0
            self.ints[self.mine * _SLOT_INTS] = 0
