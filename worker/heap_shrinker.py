"""Envoy's shrink_heap action: give the allocator's free memory back to the system.

Envoy calls tcmalloc's ReleaseFreeMemory every 10 s while the action is saturated
(source/common/memory/heap_shrinker.cc). A Python worker's freed memory sits in glibc's
malloc arenas (pymalloc returns its own empty arenas by itself), and malloc_trim(0) is what
hands those pages back. Without glibc (musl), there is nothing to call and a shrink only
counts.
"""

from __future__ import annotations

import ctypes
import ctypes.util

SHRINK_INTERVAL = 10.0          # Envoy's kTimerInterval

_libc = None


def release_free_memory() -> bool:
    """malloc_trim(0): True if memory was returned to the system."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    return bool(_libc.malloc_trim(0))
