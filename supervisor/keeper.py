"""The keeper: the process a supervisor started stays Baton across every reload.

A reload starts the next master detached (fork, fork, exec; supervisor/upgrade.py) and the old
master exits once it handed over. Only systemd follows that change of pid (MAINPID=). A shell,
`make run`, a container's PID 1, supervisord, runit or s6 watch the pid they started: without
help they see Baton die at the first reload, and the new generation runs on orphaned.

Design, and why this one:

- `baton run` (unless it is itself a new generation, or under systemd) forks at once, before
  the config is read: the child goes on as the generation-1 master, the parent stays as this
  keeper. The keeper is PR_SET_CHILD_SUBREAPER, so every later master, double-forked by its
  predecessor, is re-parented to it; it reaps them and whatever else is orphaned under it
  (the job of a container's PID 1).
- Each master tells the keeper "I am the current generation" at its commit point (where it
  tells systemd MAINPID=) and again when it serves again after a successor died: SIGUSR1,
  whose sender pid the keeper reads from siginfo (sigwaitinfo). Nothing is parsed, so the
  keeper has no protocol to keep compatible; a master that never says it (a 0.1.0 generation)
  is still followed once the one before it exits, by its process name.
- SIGHUP and SIGTERM to the keeper go to the current master (a reload, a drain; a previous
  generation still handing over finishes that on its own); SIGINT goes to every master under
  it (a fast stop is for everything, as Ctrl-C in a terminal reaches the whole group). The
  keeper exits when no master is left, with the exit status of the last current master
  (128+N if a signal killed it), so a crash of the current master is a non-zero exit the
  supervisor acts on. Rollback is untouched: a new master that dies before or after the
  commit is handled by the old master exactly as without a keeper (it resumes and says so).
- Masters arm PR_SET_PDEATHSIG(SIGKILL) towards the keeper: if the supervisor kills the keeper
  (SIGKILL after its stop timeout), the generations die with it instead of holding the ports.
- Why not HAProxy's re-exec in place: the old master would have to become the new one, so a
  new generation that crashes could not leave the old one serving; here the old master is
  untouched by the upgrade. Why not Envoy's restarter script: it is a separate program the
  user must start; the keeper is `baton run` itself. Under systemd the MAINPID hand-over
  stays (sdnotify.py): systemd already follows the pid, and a keeper would only add a process.
- The keeper is small: it forks before the proxy code is imported, then re-execs a bare
  interpreter that imports only this module (`_shed_memory`); it runs no event loop and holds
  no socket; it is `baton: keeper` in `ps` and shown by `baton status`.

Signals are blocked before the fork (the child unblocks them), so a SIGTERM that arrives while
the keeper starts is queued, not fatal: blocked signals are never discarded, even for PID 1.
"""

from __future__ import annotations

import os
import signal
import sys
import time

ENV_KEEPER = "BATON_KEEPER"
MASTER_NAME = "baton: master"
KEEPER_NAME = "baton: keeper"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
CLAIM = signal.SIGUSR1
WATCHED = {*FORWARDED, CLAIM, signal.SIGCHLD}
# How long children that are not masters (a dead master's workers, which PDEATHSIG kills)
# may linger once no master is left before the keeper kills them and exits.
ORPHAN_GRACE = 5.0
PR_SET_CHILD_SUBREAPER = 36


def wanted(environ) -> bool:
    """A first start outside systemd: a new generation (started by a reload) never keeps, a
    keeper never starts another, and systemd follows the main pid itself."""
    return not any(environ.get(k) for k in ("BATON_HANDOFF", ENV_KEEPER, "NOTIFY_SOCKET"))


def start() -> int | None:
    """Fork. In the child (the master to be): None, with ENV_KEEPER set. In the parent: keep
    until no master is left and return the exit status (never returns None)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    _set_subreaper()
    pid = os.fork()
    if pid == 0:
        os.environ[ENV_KEEPER] = str(os.getppid())
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return None
    _shed_memory(pid)
    return Keeper(pid).run()            # only if the exec failed: keep as we are


def _shed_memory(first_master: int) -> None:
    """Exec a bare interpreter that imports only this module: the keeper lives as long as the
    service, so it should not keep the CLI's imports (about 17 MB RSS before, 12 after). The
    pid, the subreaper bit, the blocked signals (and any pending) and the children survive the
    exec."""
    try:
        os.execv(sys.executable, [sys.executable, "-c", "import sys; from baton.supervisor.keeper "
                                  "import main; sys.exit(main(int(sys.argv[1])))", str(first_master)])
    except OSError:
        pass


def main(first_master: int) -> int:
    """The keeper after `_shed_memory`'s exec."""
    return Keeper(first_master).run()


def arm(keeper_pid: int | None) -> None:
    """In a master: die with the keeper. Only once the keeper is our parent: a new master is
    first the child of a short-lived intermediate process, whose exit must not kill it."""
    if not keeper_pid or os.getppid() != keeper_pid:
        return
    import prctl
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != keeper_pid:      # the keeper died before PDEATHSIG was armed
        os._exit(1)


def claim(keeper_pid: int | None) -> None:
    """In a master: tell the keeper we are the generation that serves now."""
    if keeper_pid and os.getppid() == keeper_pid:
        try:
            os.kill(keeper_pid, CLAIM)
        except OSError:
            pass


class Keeper:
    def __init__(self, first_master: int):
        self.me = os.getpid()
        self.current: int | None = first_master
        self.status = 0                 # of the last current master that exited
        self.orphans_since: float | None = None

    def run(self) -> int:
        _set_name()
        while True:
            info = signal.sigtimedwait(WATCHED, 1.0)
            if info is not None:
                self._on_signal(info)
            self._reap()
            if self.current is None:
                self.current = self._newest_master()
            if self.current is None and self._no_children_left():
                return self.status

    def _on_signal(self, info) -> None:
        signo = info.si_signo
        if signo == CLAIM:
            if info.si_pid in self._masters():
                self.current = info.si_pid
        elif signo == signal.SIGINT:
            # The current one too while it starts (not yet named a master).
            for pid in {*self._masters(), self.current} - {None}:
                self._send(pid, signo)
        elif signo in FORWARDED:
            self._send(self.current, signo)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.current:
                code = os.waitstatus_to_exitcode(status)
                self.status = 128 - code if code < 0 else code
                self.current = None

    def _no_children_left(self) -> bool:
        """True once nothing is left to reap; children that are not masters get ORPHAN_GRACE
        seconds (PDEATHSIG is on its way), then SIGKILL."""
        children = self._children()
        if not children:
            return True
        now = time.monotonic()
        if self.orphans_since is None:
            self.orphans_since = now
        elif now - self.orphans_since > ORPHAN_GRACE:
            for pid in children:
                self._send(pid, signal.SIGKILL)
        return False

    def _send(self, pid: int | None, signo: int) -> None:
        if pid is None:
            return
        try:
            os.kill(pid, signo)         # our child: its pid cannot be reused before we reap it
        except ProcessLookupError:
            pass

    # -- our children, from /proc --------------------------------------------------------

    def _children(self) -> list[int]:
        try:
            with open(f"/proc/{self.me}/task/{self.me}/children") as f:
                return [int(p) for p in f.read().split()]
        except FileNotFoundError:       # a kernel without CONFIG_PROC_CHILDREN
            return [pid for pid in _all_pids() if _parent_of(pid) == self.me]
        except OSError:
            return []

    def _masters(self) -> list[int]:
        return [pid for pid in self._children() if _comm(pid) == MASTER_NAME]

    def _newest_master(self) -> int | None:
        """The master to follow once the current one exited without a successor claiming:
        a generation that does not claim (0.1.0), or the old one resuming. The newest."""
        masters = self._masters()
        if not masters:
            return None
        self.orphans_since = None
        return max(masters, key=_start_time)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(") ", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _start_time(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(") ", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def _set_subreaper() -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _set_name() -> None:
    try:
        import prctl
        prctl.set_name(KEEPER_NAME)
        prctl.set_proctitle(KEEPER_NAME)
    except (ImportError, OSError):
        pass
