"""Kernel pipes used as the L4 proxy's per-direction buffers, and a pool to reuse them.

Bytes move socket -> pipe -> socket with splice(2), so Python never copies them; the pipe is
the direction's whole buffer, which is why its capacity is set to the listener's
`per_connection_buffer_limit_bytes`: that bounds what Baton holds per direction by
construction. Creating a pipe and resizing it costs three syscalls, so empty pipes are kept
for the next connection.

A pipe's capacity is counted in page-sized slots, not bytes: a splice of small socket segments
can fill every slot while holding far fewer bytes than the capacity. Callers must treat EAGAIN
on a write into a non-empty pipe as "full".
"""

from __future__ import annotations

import fcntl
import os

DEFAULT_CAPACITY = 64 * 1024


def _max_pipe_size() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


MAX_PIPE_SIZE = _max_pipe_size()


def pipe_capacity_for(limit: int) -> int:
    """The pipe size to ask for a buffer limit: at least one page, at most what we may set
    without privileges (root could go further, but an unprivileged worker could not)."""
    return max(4096, min(limit, MAX_PIPE_SIZE))


class PipePool:
    __slots__ = ("_idle", "max_idle")

    def __init__(self, max_idle: int = 256) -> None:
        self._idle: dict[int, list[tuple[int, int, int]]] = {}
        self.max_idle = max_idle

    def get(self, capacity: int) -> tuple[int, int, int]:
        """(read_fd, write_fd, actual_capacity) of an empty pipe."""
        idle = self._idle.get(capacity)
        if idle:
            return idle.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        actual = DEFAULT_CAPACITY
        if capacity != DEFAULT_CAPACITY:
            try:
                actual = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, capacity)
            except OSError:
                # Over the per-user pipe budget (fs.pipe-user-pages-soft): keep the default
                # size; the connection still works, with a smaller buffer.
                actual = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        return r, w, actual

    def put(self, pipe: tuple[int, int, int], capacity: int, empty: bool) -> None:
        idle = self._idle.setdefault(capacity, [])
        if empty and len(idle) < self.max_idle:
            idle.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        for idle in self._idle.values():
            for r, w, _ in idle:
                os.close(r)
                os.close(w)
        self._idle.clear()
