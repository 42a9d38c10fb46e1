"""The runtime directory: control socket and pid file live here (mode 0700).

Default, as systemd and the XDG spec expect: $RUNTIME_DIRECTORY (set by systemd's
RuntimeDirectory=), else /run/baton as root, else $XDG_RUNTIME_DIR/baton.
"""

from __future__ import annotations

import os
import stat

CONTROL_SOCKET = "control.sock"
PID_FILE = "baton.pid"


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
    """Create the directory 0700 (or check an existing one is ours and private).

    With unprivileged workers (`--worker-user`) the directory belongs to their uid, so that
    they can bind their handoff sockets in it; the master, root, still has every access."""
    owner = os.geteuid() if worker_uid is None else worker_uid
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
        if st.st_uid not in (os.geteuid(), owner):
            raise RuntimeDirError(f"runtime directory {path} belongs to uid {st.st_uid}, not {owner}")
        if st.st_uid != owner:
            os.chown(path, owner, -1)
    except OSError as exc:
        raise RuntimeDirError(f"runtime directory {path}: {exc.strerror}") from None
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def control_path(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, CONTROL_SOCKET)
