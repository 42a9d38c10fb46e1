"""The supervisor's calls into the operating system, in one object that tests replace.

master.py, workers.py and upgrade.py start, watch, signal and reap processes only through an
`OsSeam`; the unit tests drive them with a fake one (tests/unit/supervisor_fakes.py) whose
processes are pipes that a test closes when it wants a process to exit. What goes through the
seam: creating processes (fork, the detached new master), the pidfds that watch them (open,
send a signal, close), reaping (waitpid), and the clock the crash-loop policy reads.
Everything else (sockets, the event loop) is real in the unit tests too.

Methods look `os` up when called, not at import, so a test that monkeypatches `os.fork`
(tests/unit/test_privilege_separation.py) still reaches the default seam.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable


class OsSeam:
    def fork(self, child: Callable[[], int]) -> int:
        """Run `child()` in a new process that exits with its return value (it never returns
        into the caller's code); in the parent, the child's pid. OSError when fork fails."""
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = child()
            finally:
                os._exit(code)
        return pid

    def spawn_detached(self, argv: list[str], env: dict) -> int:
        """fork, fork, exec: the new process's parent exits at once, so it is not our child
        (it is reparented to init or to systemd, the subreaper). Its pid; OSError when it
        could not be started."""
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            code = 0
            try:
                os.close(r)
                grandchild = os.fork()
                if grandchild == 0:
                    try:
                        os.close(w)
                        signal.set_wakeup_fd(-1)
                        os.execve(argv[0], argv, env)
                    finally:
                        os._exit(127)
                os.write(w, str(grandchild).encode())
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        try:
            data = os.read(r, 32)
        finally:
            os.close(r)
            os.waitpid(child, 0)
        if not data:
            raise OSError("fork failed")
        return int(data)

    def pidfd_open(self, pid: int) -> int:
        """A descriptor that polls readable once `pid` has exited (Linux 5.3)."""
        return os.pidfd_open(pid)

    def pidfd_send_signal(self, pidfd: int, sig: int) -> None:
        """Signal the process behind `pidfd`: never another process that reused its pid.
        ProcessLookupError once it has exited."""
        signal.pidfd_send_signal(pidfd, sig)

    def close(self, fd: int) -> None:
        os.close(fd)

    def waitpid(self, pid: int) -> int:
        """Reap our exited child `pid`: its wait status. ChildProcessError if it is not ours."""
        return os.waitpid(pid, 0)[1]

    def getpid(self) -> int:
        return os.getpid()

    def monotonic(self) -> float:
        return time.monotonic()


REAL_OS = OsSeam()
