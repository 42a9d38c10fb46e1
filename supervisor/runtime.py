"""The runtime directory: control socket, pid file, the reload handoff socket, xDS state.

Default, as systemd and the XDG spec expect: $RUNTIME_DIRECTORY (set by systemd's
RuntimeDirectory=), else /run/baton as root, else $XDG_RUNTIME_DIR/baton.

The directory and everything in it belong to the master's user, mode 0700: only that user
(and root) may create, replace or connect to anything in it. Workers never need it (their
handoff sockets are abstract, supervisor/handoff/unix.py), so unprivileged workers get no
access at all: a process of the worker user cannot stand in for control.sock or baton.pid.
"""

from __future__ import annotations

import logging
import os
import stat

CONTROL_SOCKET = "control.sock"
PID_FILE = "baton.pid"

log = logging.getLogger("baton.runtime")


class RuntimeDirError(Exception):
    pass


def default_runtime_dir() -> str:
    if os.environ.get("RUNTIME_DIRECTORY"):
        # systemd may pass several, separated by ':'; the first is ours.
        return os.environ["RUNTIME_DIRECTORY"].split(":")[0]
    if os.geteuid() == 0:
        return "/run/baton"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "baton")
    raise RuntimeDirError("no runtime directory: set --runtime-dir, $RUNTIME_DIRECTORY or $XDG_RUNTIME_DIR")


def resolve(runtime_dir: str | None) -> str:
    return os.path.abspath(runtime_dir or default_runtime_dir())


def prepare(path: str, worker_uid: int | None = None) -> str:
    """Create the directory 0700 for us, or check that an existing one is ours, and private.

    Earlier releases gave the directory to the `--worker-user` uid; such a directory
    (`worker_uid`) is taken back, with every entry of that uid in it removed: a process of
    that uid may have left anything there. Any other owner is refused."""
    me = os.geteuid()
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        # Followed if a link: with DynamicUser= systemd makes /run/baton a link into
        # /run/private. The owner check below holds for wherever it leads.
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise RuntimeDirError(f"runtime directory {path} is not a directory")
        if st.st_uid != me:
            if worker_uid is None or st.st_uid != worker_uid or me != 0:
                raise RuntimeDirError(f"runtime directory {path} belongs to uid {st.st_uid}, not {me}")
            os.chown(path, me, -1)
            os.chmod(path, 0o700)
            _remove_entries_of(path, worker_uid)
            log.warning("runtime directory %s belonged to the worker user (uid %d); taken back",
                        path, worker_uid)
        elif stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)
    except OSError as exc:
        raise RuntimeDirError(f"runtime directory {path}: {exc.strerror}") from None
    return path


def _remove_entries_of(path: str, uid: int) -> None:
    for entry in os.scandir(path):
        if entry.stat(follow_symlinks=False).st_uid == uid:
            os.unlink(entry.path)


def control_path(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, CONTROL_SOCKET)


def write_pid_file(runtime_dir: str, pid: int) -> str | None:
    """Write baton.pid atomically (a temporary file renamed over it, never following a link).
    A full file system only costs the pid file: the path, or None when it could not be
    written (logged)."""
    path = os.path.join(runtime_dir, PID_FILE)
    tmp = f"{path}.{pid}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, f"{pid}\n".encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return path
    except OSError as exc:
        log.warning("cannot write the pid file %s: %s", path, exc.strerror)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return None
