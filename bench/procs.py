"""Process plumbing for the benchmark: free ports, pinned launches, readiness, stop, CPU meter.

Every wait here has a deadline and every process started here is stopped by its own pid:
the benchmark shares the machine with other work, so it never signals anything by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

HOST = "127.0.0.1"


class BenchError(RuntimeError):
    """A failure that the benchmark reports in one line instead of a traceback."""


class ToolMissing(BenchError):
    pass


def require_tool(name: str, hint: str) -> str:
    """Absolute path of `name`, or a ToolMissing error that says how to get it."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(f"{name} not found on PATH; {hint}")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct free ports. The sockets stay bound until all are picked so none repeats."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Proc:
    """A process we started, pinned to one CPU, with its output in a log file."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    # Descendants seen while it ran (Baton's workers); stopped by pid if the parent leaves them.
    seen_children: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def tree(self) -> list[psutil.Process]:
        """The process and all its live descendants (remembered for stop())."""
        try:
            root = psutil.Process(self.pid)
            kids = root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.seen_children.update(k.pid for k in kids)
        return [root, *kids]


def start(name: str, argv: list[str], cpu: int, workdir: Path) -> Proc:
    """Start argv under `taskset -c cpu` (taskset execs, so the pid is the program's own)."""
    taskset = require_tool("taskset", "install util-linux")
    log_path = workdir / f"{name}.log"
    log = open(log_path, "ab")
    try:
        # A new session keeps a terminal's Ctrl-C away from the children: the finally blocks
        # in run.py stop them in order instead.
        popen = subprocess.Popen(
            [taskset, "-c", str(cpu), *argv],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=workdir, start_new_session=True,
        )
    finally:
        log.close()
    return Proc(name, popen, log_path)


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop(proc: Proc, timeout: float = 10.0) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL; the same for any descendant left behind."""
    proc.tree()  # remember the current children before the parent goes
    if proc.alive():
        _signal_pid(proc.pid, signal.SIGTERM)
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_pid(proc.pid, signal.SIGKILL)
            proc.popen.wait(timeout)
    for pid in proc.seen_children:
        _stop_orphan(pid, timeout)


def _stop_orphan(pid: int, timeout: float) -> None:
    """Stop a descendant that outlived its parent (a worker the master did not take down)."""
    try:
        child = psutil.Process(pid)
        child.terminate()
        try:
            child.wait(timeout)
        except psutil.TimeoutExpired:
            child.kill()
    except psutil.NoSuchProcess:
        pass


def _check_alive(proc: Proc) -> None:
    if not proc.alive():
        raise BenchError(
            f"{proc.name} exited with status {proc.popen.returncode} before it was ready; "
            f"its log ({proc.log_path}) ends with:\n{proc.log_tail()}"
        )


def wait_http_ok(proc: Proc, url: str, deadline_s: float) -> None:
    """Poll `url` until it answers 200, the process dies, or the deadline passes."""
    end = time.monotonic() + deadline_s
    last = "no answer yet"
    while time.monotonic() < end:
        _check_alive(proc)
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.05)  # poll interval, not synchronisation: the loop checks readiness
    raise BenchError(f"{proc.name} not ready at {url} after {deadline_s:.0f}s ({last})")


def wait_listening(proc: Proc, port: int, deadline_s: float) -> None:
    """Poll the kernel's socket table until the process tree listens on HOST:port.

    Used for servers such as `iperf3 -s`, which log an error for a probe connection that does
    not speak their protocol; reading the socket table does not disturb them.
    """
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        _check_alive(proc)
        for p in proc.tree():
            try:
                conns = p.net_connections(kind="tcp")
            except psutil.NoSuchProcess:
                continue
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns):
                return
        time.sleep(0.05)
    raise BenchError(f"{proc.name} not listening on {HOST}:{port} after {deadline_s:.0f}s")


def _cpu_seconds(p: psutil.Process) -> float:
    # children_* holds reaped children (a worker that exited mid-run); counting them too keeps
    # the sum right if that ever happens.
    t = p.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _cpu_busy_seconds(cpu: int) -> float:
    """Seconds CPU `cpu` has spent not idle since boot (all processes, kernel included)."""
    t = psutil.cpu_times(percpu=True)[cpu]
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class CpuMeter:
    """CPU seconds used by a process tree (all threads, all descendants) over a window, and how
    busy whole CPUs were meanwhile: the proxy's CPU shows softirq work and any other process
    that ran there; the load CPU shows whether clients and upstreams, not the proxy, were the
    limit.
    """

    def __init__(self, proc: Proc, cpus: tuple[int, ...]):
        self.proc = proc
        self.cpus = cpus
        self.start_times: dict[int, float] = {}
        self.t0 = 0.0

    def _sample(self) -> dict[int, float]:
        out = {}
        for p in self.proc.tree():
            try:
                out[p.pid] = _cpu_seconds(p)
            except psutil.NoSuchProcess:
                pass
        return out

    def __enter__(self) -> "CpuMeter":
        self.start_times = self._sample()
        self.busy0 = {c: _cpu_busy_seconds(c) for c in self.cpus}
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.monotonic() - self.t0
        # Fraction of the window each watched CPU was busy (1.0 = saturated).
        self.busy = {c: (_cpu_busy_seconds(c) - self.busy0[c]) / self.wall for c in self.cpus}
        end = self._sample()
        # A process born inside the window counts from zero; one that died inside it is lost,
        # except through its parent's children_* times (see _cpu_seconds).
        self.cpu = sum(v - self.start_times.get(pid, 0.0) for pid, v in end.items())


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, for the results' machine line."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
