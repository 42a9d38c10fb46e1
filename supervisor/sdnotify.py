"""A dependency-free sd_notify(3) client: tell systemd (or any service manager speaking the same
protocol) about the master's state.

The protocol is one AF_UNIX datagram of newline-separated KEY=VALUE lines, sent to the socket
named in $NOTIFY_SOCKET (an absolute path, or '@name' for the abstract namespace). Without
$NOTIFY_SOCKET every call here is a silent no-op, so `baton run` from a shell behaves the same.
Nothing here ever raises into the caller: a failed send is logged at debug level and reported by
the return value, because losing a status line must never take the proxy down.

    sdnotify.notify(ready=True, status="serving")             # READY=1
    sdnotify.notify(reloading=True)                           # RELOADING=1 + MONOTONIC_USEC=
    sdnotify.notify(mainpid=os.getpid(), ready=True)          # a new master takes over
    sdnotify.barrier()                                        # ... and waits until systemd has it
    sdnotify.notify(stopping=True)                            # STOPPING=1
    sdnotify.notify(watchdog=True)                            # WATCHDOG=1, every watchdog_interval()

Facts this module is built around (proven under systemd 252 and 257, see
../shared/recipes/systemd/REPORT.md): MONOTONIC_USEC= must go with RELOADING=1 for
Type=notify-reload (253+) and is ignored by 252; BARRIER=1 makes "systemd has processed my
MAINPID=" observable before the old master exits; a new master inherits WATCHDOG_PID naming the
old master and must claim the watchdog (adopt_watchdog) before pinging.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import time

log = logging.getLogger("baton.sdnotify")

# A send blocks only if systemd's receive queue is full (systemd gives it several MB); never let
# that stall the master's loop for long.
SEND_TIMEOUT = 1.0
BARRIER_TIMEOUT = 5.0       # sd_notify_barrier()'s usual default


def _address() -> str | None:
    """$NOTIFY_SOCKET as a socket address, or None when there is no usable one."""
    name = os.environ.get("NOTIFY_SOCKET")
    if not name:
        return None
    if name.startswith("@"):
        return "\0" + name[1:]          # abstract namespace
    if name.startswith("/"):
        return name
    log.debug("NOTIFY_SOCKET=%r is not a path or abstract name; not notifying", name)
    return None


def enabled() -> bool:
    """True when a service manager listens for our notifications."""
    return _address() is not None


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd expects in MONOTONIC_USEC=."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def message(*lines: str, ready: bool = False, reloading: bool = False, stopping: bool = False,
            status: str | None = None, mainpid: int | None = None, watchdog: bool = False) -> str:
    """The datagram's text. MAINPID= comes first so that a reader, like systemd, applies it
    before READY=1 (systemd itself handles MAINPID first within one datagram anyway)."""
    out = []
    if mainpid is not None:
        out.append(f"MAINPID={int(mainpid)}")
    if reloading:
        out += ["RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}"]
    if ready:
        out.append("READY=1")
    if stopping:
        out.append("STOPPING=1")
    if status is not None:
        out.append("STATUS=" + " ".join(str(status).splitlines()))     # one line per field
    if watchdog:
        out.append("WATCHDOG=1")
    out.extend(lines)
    return "\n".join(out)


def notify(*lines: str, fds=(), **fields) -> bool:
    """Send one notification: raw "KEY=VALUE" `lines` and/or the keyword fields of message().
    Returns True when the datagram was sent, False when there is no NOTIFY_SOCKET or the send
    failed (logged at debug). `fds` are attached with SCM_RIGHTS (the caller keeps them)."""
    address = _address()
    if address is None:
        return False
    text = message(*lines, **fields)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            # connect() rather than an address per send: socket.send_fds() ignores its
            # `address` argument (CPython 3.11), which would fail with ENOTCONN.
            sock.connect(address)
            socket.send_fds(sock, [text.encode()], list(fds))
    except OSError as exc:
        log.debug("sd_notify %r to %s failed: %s", text, os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    log.debug("sd_notify %r", text)
    return True


# -- BARRIER=1 -------------------------------------------------------------------------------
#
# sd_notify_barrier(3): send BARRIER=1 with the write end of a fresh pipe, close our copy, and
# wait for POLLHUP on the read end. systemd closes the fd it received only after it has
# processed every earlier datagram from us, so the hang-up means "it has taken MAINPID=".

def _send_barrier() -> int | None:
    """Send BARRIER=1; the read end to wait on, or None if it could not be sent."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        sent = notify("BARRIER=1", fds=[write_end])
    finally:
        os.close(write_end)
    if not sent:
        os.close(read_end)
        return None
    return read_end


def barrier(timeout: float = BARRIER_TIMEOUT) -> bool:
    """Block until the service manager has processed every notification sent before, at most
    `timeout` seconds. True when it has (or when there is no manager: nothing to wait for),
    False on timeout or when BARRIER=1 could not be sent. For a running event loop, prefer
    async_barrier()."""
    if not enabled():
        return True
    read_end = _send_barrier()
    if read_end is None:
        return False
    try:
        poller = select.poll()
        poller.register(read_end, select.POLLHUP)    # POLLHUP is reported even if not asked
        if poller.poll(max(0, int(timeout * 1000))):  # PEP 475: retried on EINTR
            return True
        log.debug("sd_notify barrier: no answer within %.1fs", timeout)
        return False
    finally:
        os.close(read_end)


async def async_barrier(timeout: float = BARRIER_TIMEOUT) -> bool:
    """barrier() without blocking the event loop: a hang-up makes the read end readable (EOF),
    which is what the loop's reader callback sees."""
    if not enabled():
        return True
    read_end = _send_barrier()
    if read_end is None:
        return False
    loop = asyncio.get_running_loop()
    hung_up = loop.create_future()
    loop.add_reader(read_end, lambda: hung_up.done() or hung_up.set_result(True))
    try:
        await asyncio.wait_for(hung_up, timeout)
        return True
    except asyncio.TimeoutError:
        log.debug("sd_notify barrier: no answer within %.1fs", timeout)
        return False
    finally:
        loop.remove_reader(read_end)
        os.close(read_end)


# -- watchdog --------------------------------------------------------------------------------

def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC, as systemd recommends), or None
    when the watchdog is off or is not ours (WATCHDOG_PID names another process)."""
    raw = os.environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.debug("ignoring WATCHDOG_USEC=%r", raw)
        return None
    if usec <= 0:
        return None
    owner = os.environ.get("WATCHDOG_PID")
    if owner and owner != str(os.getpid()):
        return None
    return usec / 2 / 1_000_000


def adopt_watchdog(pid: int | None = None) -> float | None:
    """Claim the watchdog for `pid` (default: this process) by rewriting WATCHDOG_PID in our
    environment, and return watchdog_interval(). A new master, exec'd by the old one, inherits
    WATCHDOG_PID=<old pid>: it calls this once it has become the main PID (after MAINPID=),
    so that it, not the exiting old master, pings from then on. No-op without WATCHDOG_USEC."""
    if os.environ.get("WATCHDOG_USEC"):
        os.environ["WATCHDOG_PID"] = str(pid if pid is not None else os.getpid())
    return watchdog_interval()
