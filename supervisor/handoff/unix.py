"""Unix stream sockets for Baton's local protocols (control, master and worker handoff): bound
private in the 0700 runtime directory, and every peer checked with SO_PEERCRED before it is
heard: only root or our own uid."""

from __future__ import annotations

import logging
import os
import socket

from .channel import peer_credentials

log = logging.getLogger("baton.unix")


def peer_allowed(uid: int) -> bool:
    return uid in (0, os.geteuid())


def bind_private(path: str, backlog: int = 64) -> socket.socket:
    """Listen on `path` (replacing a stale socket file), mode 0600, non-blocking."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def accept_checked(listener: socket.socket, what: str):
    """Accept one peer: (socket, pid), or None when there was none or it was refused."""
    try:
        conn, _ = listener.accept()
    except (BlockingIOError, InterruptedError):
        return None
    pid, uid, _ = peer_credentials(conn)
    if not peer_allowed(uid):
        log.warning("%s: refused pid %d uid %d", what, pid, uid)
        conn.close()
        return None
    return conn, pid


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
