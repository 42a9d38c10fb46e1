"""Counting this process's open descriptors without being fooled by the garbage collector.

A test that compares `/proc/self/fd` before and after must not let a collection in between
finalize objects an earlier test left behind (a uvloop loop alone holds several descriptors):
the count then drops, and an equality check fails for no fault of the code under test. So the
count is taken after a full collection and with automatic collection off until the test ends.
"""

import contextlib
import gc
import os


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def collector_paused():
    """Collect now, then keep the collector from running inside the block."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
