"""Watching directories for files that change, with inotify, on an asyncio loop.

    watcher = DirectoryWatcher(loop, on_change)     # on_change(keys): after the burst settles
    watcher.set_watches([(directory, names or None, key), ...])   # the whole set, each time
    watcher.close()

What Envoy watches for SDS (and so Baton): a `watched_directory`, where any file moved in
means a change (Kubernetes and cert-manager swap a `..data` symlink with one rename, so
certificate and key change together), or else the directories of the files themselves,
where only those names count (a file rewritten, or a new one renamed over it).

No polling: the kernel says when something happened. A rotation is a burst of events (a
certificate written, then its key; several renames), so on_change runs once, SETTLE seconds
after the last event of a burst, with every key touched; reading in between would see a new
certificate with the old key.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct

log = logging.getLogger("baton.xds")

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
# A file written in place, created, or renamed into the directory.
FILE_EVENTS = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
SETTLE = 0.05
_EVENT = struct.Struct("iIII")

_libc = None


def _inotify():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.inotify_init1.argtypes = [ctypes.c_int]
        _libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        _libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return _libc


class DirectoryWatcher:
    def __init__(self, loop, on_change) -> None:
        self.loop = loop
        self.on_change = on_change
        self.fd = None
        self.by_wd: dict[int, str] = {}                 # watch descriptor -> directory
        self.wanted: dict[str, list] = {}               # directory -> [(names | None, key)]
        self.pending: set = set()
        self.timer = None

    def set_watches(self, watches) -> None:
        """watches: [(directory, names or None, key)]; replaces what was watched."""
        wanted: dict[str, list] = {}
        for directory, names, key in watches:
            wanted.setdefault(os.path.abspath(directory), []).append(
                (frozenset(names) if names is not None else None, key))
        if wanted and self.fd is None:
            fd = _inotify().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                log.error("xds: cannot watch files (inotify_init1: %s)",
                          os.strerror(ctypes.get_errno()))
                return
            self.fd = fd
            self.loop.add_reader(fd, self._on_readable)
        for wd, directory in list(self.by_wd.items()):
            if directory not in wanted:
                _inotify().inotify_rm_watch(self.fd, wd)
                del self.by_wd[wd]
        watched = set(self.by_wd.values())
        for directory in wanted:
            if directory not in watched:
                self._add(directory)
        self.wanted = wanted

    def _add(self, directory: str) -> None:
        wd = _inotify().inotify_add_watch(self.fd, directory.encode(),
                                          FILE_EVENTS | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
        if wd < 0:
            log.warning("xds: cannot watch %s for secret rotation: %s", directory,
                        os.strerror(ctypes.get_errno()))
            return
        self.by_wd[wd] = directory

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("xds: reading inotify events failed: %s", exc)
            return
        pos = 0
        while pos + _EVENT.size <= len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, pos)
            name = data[pos + _EVENT.size:pos + _EVENT.size + length].rstrip(b"\0")
            pos += _EVENT.size + length
            directory = self.by_wd.get(wd)
            if directory is None:
                continue
            if mask & IN_IGNORED:
                del self.by_wd[wd]
                continue
            text = os.fsdecode(name)
            for names, key in self.wanted.get(directory, ()):
                if names is None or text in names or mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                    self.pending.add(key)
        if self.pending:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_later(SETTLE, self._settled)

    def _settled(self) -> None:
        self.timer = None
        keys, self.pending = self.pending, set()
        watched = set(self.by_wd.values())
        for directory in self.wanted:
            if directory not in watched:       # the directory itself was replaced
                self._add(directory)
        self.on_change(keys)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.fd is not None:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = None
        self.by_wd.clear()
