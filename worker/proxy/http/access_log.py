"""Access logs: one formatted line per request, written in batches.

    files = AccessLogFiles(loop)                 # one per worker
    logs = [AccessLog(config, files) for config in http_config["access_log"]]
    for log in logs: log.log(stream.info)        # when a stream completes
    await asyncio.gather(*files.reopen())        # after logrotate: the new files are open
    files.close()                                # flush and close at worker exit

`config` is one entry of xds/http_filters.py translate_access_logs(). Several access logs
naming the same path share one AccessLogFile, so the file is opened once per worker.

Lines are kept in memory and written when the buffer reaches FLUSH_BYTES or FLUSH_INTERVAL
after the first unwritten line, whichever comes first: one write() per batch, not per
request (Envoy: 64 KiB or file_flush_interval_msec, 1 s). Lines are kept as text and
encoded once per batch, and the buffer is measured in characters (a line's UTF-8 is at least
as long), so a line costs an append and an addition. Files are opened O_APPEND, so
several workers appending to one file do not overwrite each other; each batch ends on a line
boundary, and a write of a regular file is not split by another process's write.
/dev/stdout and /dev/stderr use the process's own fds 1 and 2 (opening /dev/stdout fails
when stdout is a socket, as under systemd's journal).

A worker that runs as an unprivileged user may not create files where operators keep logs
(/var/log is root's). Given an `opener` (the worker's handoff broker: the master opens the
file, supervisor/handoff/broker.py), a file is opened that way, asynchronously: lines logged
before the descriptor arrives wait in the buffer, and if the master cannot open it the worker
says so once and counts the lines as dropped, as for any output that fails.
"""

from __future__ import annotations

import codecs
import errno
import logging
import os

from .formatter import compile_format, compile_json_format

log = logging.getLogger("baton.http.access_log")

FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL = 1.0
# Beyond this, an output that does not keep up (a full pipe) loses lines rather than
# growing the worker's memory without bound; the count is in `dropped`.
MAX_PENDING_BYTES = 16 * FLUSH_BYTES
_STD_FDS = {"/dev/stdout": 1, "/dev/stderr": 2}


def _surrogates_as_bytes(error: UnicodeEncodeError) -> tuple[bytes, int]:
    """UTF-8's only unencodable characters are surrogates. A line carries two kinds: U+DC80-
    U+DCFF for a raw byte a header held (surrogateescape: the byte again) and a lone surrogate
    an RPC codec kept from its peer's CESU-8 (hessian2.py: the three bytes the peer sent). Both
    go to the file as bytes, so one such line never stops a batch (and the file) from being
    written."""
    out = bytearray()
    for char in error.object[error.start:error.end]:
        code = ord(char)
        out += bytes((code - 0xDC00,)) if 0xDC80 <= code <= 0xDCFF else \
            char.encode("utf-8", "surrogatepass")
    return bytes(out), error.end


_LINE_BYTES = "baton-access-log"
codecs.register_error(_LINE_BYTES, _surrogates_as_bytes)


class AccessLogFile:
    """A buffered, append-only output. `loop` schedules the interval flush; without a loop
    (tests, tools) lines are written when the buffer fills or on flush()."""

    __slots__ = ("path", "loop", "fd", "pending", "pending_size", "unwritten", "timer",
                 "dropped", "flush_bytes", "flush_interval", "failed", "closed", "opener", "room")

    def __init__(self, path: str, loop=None, flush_bytes: int = FLUSH_BYTES,
                 flush_interval: float = FLUSH_INTERVAL, opener=None):
        self.path = path
        self.loop = loop
        self.flush_bytes = flush_bytes
        self.flush_interval = flush_interval
        self.pending: list[str] = []      # lines not yet encoded
        self.pending_size = 0               # their characters, and the unwritten bytes
        self.unwritten = b""                # what a full pipe did not take, written first
        self.timer = None
        # While the interval timer is armed and lines are kept: a line that leaves
        # pending_size below this needs only appending (AccessLog.log does it in place, the
        # rest of write() has nothing to do); 0 otherwise.
        self.room = 0
        self.dropped = 0
        self.failed = False          # the file could not be opened: lines are dropped
        self.closed = False
        self.opener = opener
        std = _STD_FDS.get(path)
        if opener is None or std is not None or loop is None:
            self.fd = self._open()
        else:
            self.fd = -1             # until the master's descriptor arrives
            loop.create_task(self._open_through(opener))

    def _open(self) -> int:
        std = _STD_FDS.get(self.path)
        if std is not None:
            return os.dup(std)
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    async def _open_through(self, opener) -> None:
        try:
            fd = await opener(self.path)
        except OSError as exc:
            log.error("access log %s: cannot be opened, its lines are dropped: %s", self.path, exc)
            self.failed = True
            self.room = 0
            self.dropped += len(self.pending)
            self.pending.clear()
            self.pending_size = 0
            return
        if self.closed:
            os.close(fd)
            return
        self.fd = fd
        if self.pending and self.timer is None:
            self.flush()

    def write(self, line: str) -> None:
        size = self.pending_size + len(line)
        if size > MAX_PENDING_BYTES or self.failed:
            self.dropped += 1
            return
        self.pending.append(line)
        self.pending_size = size
        if size >= self.flush_bytes:
            self.flush()
        elif self.timer is None and self.loop is not None:
            self._arm()

    def _arm(self) -> None:
        self.timer = self.loop.call_later(self.flush_interval, self._on_timer)
        if not self.failed:
            self.room = min(self.flush_bytes, MAX_PENDING_BYTES + 1)

    def _on_timer(self) -> None:
        self.timer = None
        self.room = 0
        self.flush()

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.room = 0
        if not (self.pending or self.unwritten) or self.fd < 0:
            return
        data = "".join(self.pending).encode("utf-8", _LINE_BYTES)
        if self.unwritten:
            data, self.unwritten = self.unwritten + data, b""
        self.pending.clear()
        self.pending_size = 0
        view, offset = memoryview(data), 0
        while offset < len(data):
            try:
                offset += os.write(self.fd, view[offset:])
            except InterruptedError:
                continue
            except BlockingIOError:
                # A non-blocking pipe that is full: keep the rest for the next flush.
                rest = self.unwritten = bytes(view[offset:])
                self.pending_size = len(rest)
                if self.loop is not None:
                    self._arm()
                return
            except OSError as exc:
                # A full disk or a closed reader must not take the worker down.
                log.warning("access log %s: write failed: %s", self.path,
                            errno.errorcode.get(exc.errno, exc))
                return

    def reopen(self):
        """Flush to the old file, then open the path again (after logrotate moved it);
        through the opener (the master) when there is one, in the background: the task that
        does it, which /reopen_logs waits for (None when the file is open again already)."""
        self.flush()
        if self.opener is not None and self.loop is not None and self.path not in _STD_FDS:
            return self.loop.create_task(self._reopen_through(self.opener))
        self._swap(self._open())
        return None

    async def _reopen_through(self, opener) -> None:
        try:
            fd = await opener(self.path)
        except OSError as exc:
            log.warning("access log %s: reopen failed, still writing the old file: %s",
                        self.path, exc)
            return
        if self.closed:
            os.close(fd)
            return
        self.flush()
        self._swap(fd)
        self.failed = False

    def _swap(self, new_fd: int) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = new_fd

    def close(self) -> None:
        self.flush()
        self.closed = True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class AccessLogFiles:
    """The worker's open access log files, by path."""

    __slots__ = ("loop", "files", "opener")

    def __init__(self, loop=None, opener=None):
        self.loop = loop
        self.opener = opener          # async path -> fd, or None to open here
        self.files: dict[str, AccessLogFile] = {}

    def get(self, path: str) -> AccessLogFile:
        f = self.files.get(path)
        if f is None:
            f = self.files[path] = AccessLogFile(path, self.loop, opener=self.opener)
        return f

    def flush(self) -> None:
        for f in self.files.values():
            f.flush()

    def reopen(self) -> list:
        """Reopen every file; the tasks still opening one through the master. Answering
        /reopen_logs once they are done means a request sent after the answer is logged to
        the new file, as in Envoy 1.40 (its flush thread reopens before it writes again)."""
        pending = []
        for f in self.files.values():
            try:
                task = f.reopen()
            except OSError as exc:
                log.warning("access log %s: reopen failed, still writing the old file: %s",
                            f.path, exc)
                continue
            if task is not None:
                pending.append(task)
        return pending

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


class AccessLog:
    """One configured access log: a compiled format and its file."""

    __slots__ = ("format", "file", "flags")

    def __init__(self, config: dict, files: AccessLogFiles):
        if config.get("json_format") is not None:
            self.format = compile_json_format(config["json_format"],
                                              config.get("omit_empty_values", False))
        else:
            self.format = compile_format(config.get("format"),
                                         config.get("omit_empty_values", False))
        self.file = files.get(config["path"])
        # response_flag_filter: a line only when one of these flags is set (empty: any flag).
        flags = config.get("flags")
        self.flags = frozenset(flags) if flags is not None else None

    def log(self, info) -> None:
        if self.flags is not None and not (
                self.flags.intersection(info.response_flags) if self.flags else info.response_flags):
            return
        line = self.format(info)
        file = self.file
        size = file.pending_size + len(line)
        if size < file.room:        # AccessLogFile.write's common case, without its call
            file.pending.append(line)
            file.pending_size = size
        else:
            file.write(line)

    def reopen(self) -> None:
        self.file.reopen()
