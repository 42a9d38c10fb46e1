"""Unix stream sockets for Baton's local protocols (control, master and worker handoff).

Control and master handoff sockets are files, bound private in the 0700 runtime directory
that belongs to the master's user. Worker handoff sockets live in the abstract namespace
(`bind_abstract`): no file that another process could replace, nothing written to disk (a
full runtime filesystem cannot stop a worker from being respawned), and no directory
permission an unprivileged worker would need. An abstract name can be reached by any process
of the network namespace, so who may talk is decided by the peer's credentials alone: every
peer is checked with SO_PEERCRED before it is heard.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import select
import socket

from .channel import peer_credentials

log = logging.getLogger("baton.unix")


def peer_allowed(uid: int) -> bool:
    return uid in (0, os.geteuid())


def is_abstract(address: str) -> bool:
    return address.startswith("\0")


def abstract_name(what: str) -> str:
    """A fresh abstract address. The random part means nobody can bind the name first to
    stand in for us, and two Batons (or pid namespaces sharing a network namespace) never
    collide."""
    return f"\0baton-{what}-{os.getpid()}-{secrets.token_hex(6)}"


def bind_abstract(address: str, backlog: int = 64) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


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


def accept_checked(listener: socket.socket, what: str, trusted=None):
    """Accept one peer: (socket, pid), or None when there was none or it was refused.

    Every peer must be root or our own uid; `trusted(pid, uid)`, when given, must also
    accept it (a worker's handoff socket admits only processes of this Baton)."""
    try:
        conn, _ = listener.accept()
    except (BlockingIOError, InterruptedError):
        return None
    pid, uid, _ = peer_credentials(conn)
    if not peer_allowed(uid) or (trusted is not None and not trusted(pid, uid)):
        log.warning("%s: refused pid %d uid %d", what, pid, uid)
        conn.close()
        return None
    return conn, pid


def trusted_masters(runtime: dict | None) -> dict[int, int | None]:
    """The masters whose processes a worker's handoff socket admits: pid -> a pidfd that says
    when that process has exited (None: our own master, which we never outlive). The previous
    generation's master is known by its pid and a pidfd opened while it talked to us, so once
    it has exited its pid, reused by some other process, is trusted no more."""
    runtime = runtime or {}
    masters = {os.getppid(): None}
    if runtime.get("previous_master") and runtime.get("previous_master_pidfd") is not None:
        masters[runtime["previous_master"]] = runtime["previous_master_pidfd"]
    return masters


def exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited. poll, not select: select refuses
    a descriptor >= 1024 (FD_SETSIZE), and an old worker moving 1,000+ connections holds
    more. An error (a descriptor that is no pidfd) raises OSError: it says nothing of the
    process, and each caller decides what not knowing means for it."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    events = poller.poll(0)
    if events and events[0][1] & select.POLLNVAL:
        raise OSError(errno.EBADF, f"descriptor {pidfd} is not open")
    return bool(events)


PF_EXITING = 0x4                                # include/linux/sched.h: in do_exit()
_SIGKILL = 1 << (9 - 1)                         # SIGKILL's bit in /proc's pending masks


def doomed(pid: int) -> bool | None:
    """Whether the process `pid` can no longer run any code of its own: each of its threads
    is exiting (the kernel sets PF_EXITING as it enters do_exit, before it closes the
    process's files), a zombie, or has SIGKILL pending. None when /proc does not say (gone,
    or hidden from us). A dying process's sockets close before its pidfd polls readable
    (do_exit closes the files, then notifies), sometimes long before on a loaded machine, and
    what a pidfd cannot tell yet /proc does: it is read at once, never waited for."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/status", "rb") as f:
                status = f.read()
        except FileNotFoundError:
            continue                    # a thread that has gone: it runs nothing
        except OSError:
            return None
        if not thread_doomed(stat, status):
            return False
    return True if tids else None


def thread_doomed(stat: bytes, status: bytes) -> bool:
    """From a thread's /proc stat and status: exiting, a zombie, or SIGKILL pending for it
    or its process."""
    fields = stat[stat.rfind(b")") + 2:].split()      # comm may hold spaces and parentheses
    if fields[0] in (b"Z", b"X") or int(fields[6]) & PF_EXITING:
        return True
    for line in status.splitlines():
        if line.startswith((b"SigPnd:", b"ShdPnd:")) and int(line.split()[1], 16) & _SIGKILL:
            return True
    return False


def parent_pid(pid: int) -> int | None:
    """The parent of `pid` (from /proc), or None when it is gone or hidden from us."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
