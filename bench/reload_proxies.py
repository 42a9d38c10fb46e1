"""The three proxies of the reload benchmark, each behind the same small interface:

    ctl.start()            start it and return once its readiness URL answers 200
    ctl.reload() -> ReloadResult
                           one reload by the proxy's own mechanism; returns once the new
                           generation serves AND the old one has exited (or a deadline passed)
    ctl.stop()             stop every process of every generation, by pid

- Baton: `baton reload --runtime-dir DIR` (the CLI returns 0 once the new generation serves),
  then the old master's pid (read from <DIR>/baton.pid before the reload) is watched with a
  pidfd until it exits. Figures also come from Baton's log: "took over in Xs" and each old
  worker's "moved X of Y connection(s) in Ts".
- HAProxy 2.6, master-worker mode (`haproxy -W -S master.sock`), listeners passed to the new
  worker through the stats socket's `expose-fd listeners`; reload = the master CLI's `reload`
  command; served = a new worker pid in `show proc`; the old worker exits once its connections
  have closed or at `hard-stop-after`.
- Envoy hot restart: epoch N+1 is a new process with the same `--base-id`, started while
  epoch N runs; it takes the listening sockets from its parent, then the parent drains for
  `--drain-time-s` and is shut down at `--parent-shutdown-time-s`. Served = the new epoch's
  admin /ready answers 200 (each epoch gets its own admin port); done = the parent exited.

Every wait has a deadline; every process is stopped by its own pid.
"""

from __future__ import annotations

import os
import random
import re
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from procs import HOST, BenchError, Proc, free_port, require_tool, start, stop, wait_http_ok
from loads import APT_HINT
import proxies

DEFAULT_MAX_CONNECTIONS = 100_000    # circuit breaker: Envoy's (and Baton's) default is 1024


# ---- process helpers ---------------------------------------------------------------------------

def wait_pid_exit(pid: int, timeout: float) -> bool:
    """True once `pid` has exited (a zombie counts: a pidfd is readable at exit, before any
    reaping), False if it still runs after `timeout` seconds. Works for non-children."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout) * 1000))
    finally:
        os.close(fd)


def pid_running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def children(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's), from /proc; [] if it is gone."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def runs_in(pid: int, directory: Path) -> bool:
    """True if `pid` runs (not a zombie) with `directory` as its working directory. Every
    process we start gets its own directory as cwd, and forked workers and re-executed masters
    keep it, so this tells our processes from a later process that reused the pid (pids wrap
    within minutes on a busy machine: pid_max is 32768)."""
    try:
        return pid_running(pid) and os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(directory)
    except OSError:
        return False


def signal_and_wait(pid: int, sig: int, timeout: float) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    if not wait_pid_exit(pid, timeout):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_pid_exit(pid, 5)


@dataclass
class ReloadResult:
    ok: bool
    started: float                  # CLOCK_MONOTONIC at reload start
    serving_s: float = float("nan")  # start -> the new generation serves
    gone_s: float = float("nan")     # start -> every process of the old generation exited
    error: str = ""
    took_over_s: float = float("nan")   # Baton's own "took over in Xs"
    moves: list = field(default_factory=list)   # Baton: [worker, moved, of, seconds, kept]
    problems: list = field(default_factory=list)  # warning/error lines logged during the reload

    @property
    def ended(self) -> float:
        end = self.gone_s if self.gone_s == self.gone_s else self.serving_s
        return self.started + (end if end == end else 0.0)


def result_dict(r: ReloadResult) -> dict:
    return {"ok": r.ok, "started": r.started, "serving_s": r.serving_s, "gone_s": r.gone_s,
            "took_over_s": r.took_over_s, "moves": r.moves, "error": r.error, "problems": r.problems}


def describe(r: ReloadResult) -> str:
    if not r.ok:
        return f"FAILED: {r.error.splitlines()[0] if r.error else '?'}"
    parts = [f"serving {r.serving_s * 1000:.0f} ms", f"old gone {r.gone_s * 1000:.0f} ms"]
    if r.took_over_s == r.took_over_s:
        parts.append(f"took over {r.took_over_s * 1000:.0f} ms")
    if r.moves:
        parts.append(f"moved {sum(m[1] for m in r.moves)}/{sum(m[2] for m in r.moves)} "
                     f"in {max(m[3] for m in r.moves) * 1000:.0f} ms")
    if r.problems:
        parts.append(f"{len(r.problems)} log problem(s)")
    return ", ".join(parts)


class LogTail:
    """New text of a log file since the last read (the file only grows)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read(self) -> str:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return ""
        # Only whole lines; a line being written stays for the next read.
        cut = data.rfind(b"\n") + 1
        self.offset += cut
        return data[:cut].decode(errors="replace")


# ---- configs ------------------------------------------------------------------------------------

def bootstrap(admin_port: int, listen_port: int, upstream_port: int,
              max_connections: int = DEFAULT_MAX_CONNECTIONS) -> str:
    """The Envoy v3 bootstrap Baton and Envoy both read: one tcp_proxy listener in front of
    the echo upstream. The circuit breaker is raised above the idle-connection counts."""
    return f"""admin:
  address:
    socket_address: {{address: {HOST}, port_value: {admin_port}}}
static_resources:
  listeners:
  - name: echo
    address:
      socket_address: {{address: {HOST}, port_value: {listen_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: echo
          cluster: echo
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 5s
    circuit_breakers:
      thresholds:
      - priority: DEFAULT
        max_connections: {max_connections}
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: {HOST}, port_value: {upstream_port}}}
"""


def haproxy_head(workdir: Path, ready_port: int, hard_stop_s: int, mode: str = "tcp") -> str:
    """HAProxy's global and defaults sections and its readiness frontend, shared by every
    phase of the benchmark (the L4 one here, the HTTP ones in reload_l7.py)."""
    # nbthread 1 like the L4 benchmark. maxconn 4000: HAProxy derives its descriptor need
    # from maxconn and refuses to start above the hard RLIMIT_NOFILE (20000 here).
    # `expose-fd listeners` lets the new worker take the listening sockets (no refused
    # connections); `hard-stop-after` is the old worker's drain: at its end, connections
    # still open in the old worker are closed.
    return f"""global
    nbthread 1
    maxconn 4000
    stats socket {workdir}/haproxy-stats.sock mode 600 level admin expose-fd listeners
    hard-stop-after {hard_stop_s}s

defaults
    mode {mode}
    timeout connect 5s
    timeout client 120s
    timeout server 120s

frontend ready
    mode http
    bind {HOST}:{ready_port}
    monitor-uri /ready
"""


def haproxy_cfg(workdir: Path, ready_port: int, listen_port: int, upstream_port: int,
                hard_stop_s: int) -> str:
    return haproxy_head(workdir, ready_port, hard_stop_s) + f"""
frontend echo
    bind {HOST}:{listen_port}
    default_backend echo

backend echo
    server echo {HOST}:{upstream_port}
"""


# ---- Baton --------------------------------------------------------------------------------------

_TOOK_OVER = re.compile(r"reload: generation (\d+) \(pid (\d+)\) took over in ([\d.]+)s")
_MOVED = re.compile(r"worker (\d+): moved (\d+) of (\d+) connection\(s\) in ([\d.]+)s; (\d+) stay to drain")
_STARTED_MASTER = re.compile(r"reload: started new master pid (\d+)")
_LEVEL = re.compile(r"^\[[^\]]*\]\[\d+\]\[(\w+)\]")


def problem_lines(text: str) -> list[str]:
    """Baton log lines at WARNING or above, and any line not in Baton's log layout
    (tracebacks, `baton:` one-liners)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _LEVEL.match(line)
        if m is None or m.group(1) not in ("DEBUG", "INFO"):
            out.append(line)
    return out


class BatonCtl:
    name = "baton"
    log_level = "info"      # "debug" to look into a failure (the benchmark's figures use info)

    def __init__(self, workdir: Path, listen_port: int, upstream_port: int, concurrency: int,
                 cpu: str, binary: Path = proxies.BATON, cli_cpu: str | None = None,
                 log_name: str = "baton", config: Callable[[int, int, int], str] = bootstrap):
        self.workdir = workdir
        self.make_config = config       # (admin port, listen port, upstream port) -> bootstrap
        self.binary = proxies.baton_binary(binary)
        self.admin_port = free_port()
        self.listen_port = listen_port
        self.upstream_port = upstream_port
        self.concurrency = concurrency
        self.cpu = cpu
        self.cli_cpu = cli_cpu
        self.runtime = workdir / f"{log_name}-run"
        self.config = workdir / f"{log_name}.yaml"
        self.log_name = log_name
        self.proc: Proc | None = None
        self.masters: set[int] = set()     # every master pid seen, for stop()

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.log_name}.log"

    def start(self) -> None:
        self.config.write_text(self.make_config(self.admin_port, self.listen_port, self.upstream_port))
        argv = [str(self.binary), "run", "-c", str(self.config), "--concurrency", str(self.concurrency),
                "--runtime-dir", str(self.runtime), "--drain-timeout", "10", "--log-level", self.log_level]
        self.proc = start(self.log_name, argv, self.cpu, self.workdir)
        self.masters.add(self.proc.pid)
        try:
            wait_http_ok(self.proc, f"http://{HOST}:{self.admin_port}/ready", proxies.READY_DEADLINE_S["baton"])
        except BaseException:
            self.stop()
            raise

    def master_pid(self, timeout: float = 10.0) -> int:
        end = time.monotonic() + timeout
        while True:
            try:
                pid = int((self.runtime / "baton.pid").read_text().strip())
                self.masters.add(pid)
                return pid
            except (OSError, ValueError):
                if time.monotonic() > end:
                    raise BenchError(f"no pid file in {self.runtime}")
                time.sleep(0.01)

    def process_tree(self) -> list[int]:
        """Every live process of every generation (masters and their workers)."""
        out = []
        for m in list(self.masters):
            if runs_in(m, self.workdir):
                out.append(m)
                out += [c for c in children(m) if runs_in(c, self.workdir)]
        return out

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        argv = [str(self.binary), *args, "--runtime-dir", str(self.runtime)]
        if self.cli_cpu is not None:
            argv = [require_tool("taskset", "install util-linux"), "-c", self.cli_cpu, *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def reload(self, gone_timeout: float = 60.0) -> ReloadResult:
        old = self.master_pid()
        tail = LogTail(self.log_path)
        res = ReloadResult(ok=False, started=time.monotonic())
        try:
            done = self.cli("reload")
        except subprocess.TimeoutExpired:
            res.error = "`baton reload` did not exit within 120 s"
            return res
        res.serving_s = time.monotonic() - res.started
        if done.returncode != 0:
            res.error = (done.stderr or done.stdout).strip()
            res.problems = problem_lines(tail.read())
            return res
        m = re.search(r"\(pid (\d+)\)", done.stdout)
        if m:
            self.masters.add(int(m.group(1)))
        if wait_pid_exit(old, gone_timeout):
            res.gone_s = time.monotonic() - res.started
            res.ok = True
        else:
            res.error = f"the old master {old} still runs {gone_timeout:.0f} s after the reload started"
        # The old generation wrote its last lines before it exited.
        text = tail.read()
        took = _TOOK_OVER.search(text)
        if took:
            res.took_over_s = float(took.group(3))
        res.moves = [[int(a), int(b), int(c), float(d), int(e)] for a, b, c, d, e in _MOVED.findall(text)]
        res.problems = problem_lines(text)
        return res

    def stop(self) -> None:
        # The current master first (graceful-fast: SIGINT closes everything within ~2 s), then
        # any older generation still around; workers die with their master (PDEATHSIG) and
        # are killed by pid if not.
        try:
            current = self.master_pid(timeout=0.5)
        except BenchError:
            current = None
        order = ([current] if current else []) + [m for m in self.masters if m != current]
        order = [m for m in order if runs_in(m, self.workdir)]
        workers = {m: children(m) for m in order}
        for m in order:
            if runs_in(m, self.workdir):
                signal_and_wait(m, signal.SIGINT, 10)
        for kids in workers.values():
            for k in kids:
                if runs_in(k, self.workdir):
                    signal_and_wait(k, signal.SIGKILL, 5)
        if self.proc is not None:
            stop(self.proc)     # reaps the first master, our child


# ---- HAProxy ------------------------------------------------------------------------------------

class HaproxyCtl:
    name = "haproxy"

    def __init__(self, workdir: Path, listen_port: int, upstream_port: int, cpu: str, hard_stop_s: int,
                 config: Callable[[Path, int, int, int, int], str] = haproxy_cfg):
        self.workdir = workdir
        self.make_config = config       # haproxy_cfg's signature
        self.ready_port = free_port()
        self.listen_port = listen_port
        self.upstream_port = upstream_port
        self.cpu = cpu
        self.hard_stop_s = hard_stop_s
        self.master_sock = workdir / "haproxy-master.sock"
        self.proc: Proc | None = None
        self.workers_seen: set[int] = set()

    @property
    def log_path(self) -> Path:
        return self.workdir / "haproxy.log"

    def start(self) -> None:
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(self.make_config(self.workdir, self.ready_port, self.listen_port, self.upstream_port,
                                        self.hard_stop_s))
        haproxy = require_tool("haproxy", APT_HINT)
        # -W: master-worker; -S: the master CLI socket (its `reload` command). Foreground.
        argv = [haproxy, "-W", "-S", str(self.master_sock), "-f", str(cfg)]
        self.proc = start("haproxy", argv, self.cpu, self.workdir)
        try:
            wait_http_ok(self.proc, f"http://{HOST}:{self.ready_port}/ready", proxies.READY_DEADLINE_S["haproxy"])
            # The worker may serve before the master listens on its CLI socket: ask until it answers.
            end = time.monotonic() + proxies.READY_DEADLINE_S["haproxy"]
            while True:
                try:
                    self.workers()
                    break
                except OSError as exc:
                    if time.monotonic() > end or not self.proc.alive():
                        raise BenchError(f"HAProxy's master CLI does not answer: {exc}") from exc
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def master_cli(self, command: str, timeout: float = 5.0) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.master_sock))
            s.sendall(command.encode() + b"\n")
            s.shutdown(socket.SHUT_WR)      # non-interactive: the master answers and closes
            out = b""
            while True:
                data = s.recv(65536)
                if not data:
                    return out.decode(errors="replace")
                out += data

    def workers(self) -> tuple[set[int], set[int]]:
        """(current worker pids, old worker pids still running) from `show proc`."""
        current, old, section = set(), set(), None
        for line in self.master_cli("show proc").splitlines():
            if line.startswith("# workers"):
                section = current
            elif line.startswith("# old workers"):
                section = old
            elif line.startswith("#"):
                section = None
            elif section is not None and line.split() and line.split()[0].isdigit():
                section.add(int(line.split()[0]))
        self.workers_seen |= current | old
        return current, old

    def process_tree(self) -> list[int]:
        """The master (it re-executes itself in place at a reload) and its workers, old and new."""
        if self.proc is None or not runs_in(self.proc.pid, self.workdir):
            return []
        return [self.proc.pid] + [c for c in children(self.proc.pid) if runs_in(c, self.workdir)]

    def reload(self, gone_timeout: float | None = None) -> ReloadResult:
        gone_timeout = gone_timeout if gone_timeout is not None else self.hard_stop_s + 30
        before, _ = self.workers()
        tail = LogTail(self.log_path)
        res = ReloadResult(ok=False, started=time.monotonic())
        try:
            self.master_cli("reload")
            end = res.started + 30
            last = ""
            while True:
                # The master re-executes itself on reload: its CLI socket refuses connections
                # for a moment; keep asking until the deadline.
                try:
                    current, _ = self.workers()
                except OSError as exc:
                    current, last = set(), str(exc)
                if current - before:
                    res.serving_s = time.monotonic() - res.started
                    break
                if time.monotonic() > end or not self.proc.alive():
                    res.error = f"no new worker within 30 s ({last or 'show proc lists none'})"
                    return res
                time.sleep(0.01)
        except OSError as exc:
            res.error = f"master CLI: {exc}"
            return res
        finally:
            res.problems = [l for l in tail.read().splitlines() if "[ALERT]" in l]
        left = res.started + gone_timeout
        if all(wait_pid_exit(pid, left - time.monotonic()) for pid in before):
            res.gone_s = time.monotonic() - res.started
            res.ok = True
        else:
            res.error = f"an old worker of {sorted(before)} still runs after {gone_timeout:.0f} s"
        return res

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)     # SIGTERM to the master: it stops its workers
        for pid in self.workers_seen:
            if runs_in(pid, self.workdir):
                signal_and_wait(pid, signal.SIGKILL, 5)


# ---- Envoy ---------------------------------------------------------------------------------------

class EnvoyCtl:
    name = "envoy"

    def __init__(self, workdir: Path, listen_port: int, upstream_port: int, cpu: str,
                 parent_shutdown_s: int, config: Callable[[int, int, int], str] = bootstrap):
        self.workdir = workdir
        self.make_config = config       # (admin port, listen port, upstream port) -> bootstrap
        self.listen_port = listen_port
        self.upstream_port = upstream_port
        self.cpu = cpu
        self.parent_shutdown_s = parent_shutdown_s
        self.drain_s = max(1, parent_shutdown_s - 1)   # must end before the parent is shut down
        # Hot restart's shared memory and domain sockets are named after the base id: one of
        # our own, so another Envoy on the machine cannot clash.
        self.base_id = random.randrange(10_000, 400_000)
        self.epoch = 0
        self.current: Proc | None = None
        self.all: list[Proc] = []
        self.binary = proxies.envoy_binary()

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    def _spawn(self, epoch: int) -> Proc:
        admin = free_port()
        cfg = self.workdir / f"envoy-epoch{epoch}.yaml"
        cfg.write_text(self.make_config(admin, self.listen_port, self.upstream_port))
        argv = [str(self.binary), "-c", str(cfg), "--concurrency", "1",
                "--restart-epoch", str(epoch), "--base-id", str(self.base_id),
                "--drain-time-s", str(self.drain_s), "--parent-shutdown-time-s", str(self.parent_shutdown_s),
                "--log-level", "warning"]
        proc = start("envoy", argv, self.cpu, self.workdir)      # one log for all epochs
        self.all.append(proc)
        try:
            wait_http_ok(proc, f"http://{HOST}:{admin}/ready", proxies.READY_DEADLINE_S["envoy"])
        except BaseException:
            stop(proc)
            raise
        return proc

    def start(self) -> None:
        self.current = self._spawn(0)

    def process_tree(self) -> list[int]:
        """Every epoch still running (each is one process)."""
        return [p.pid for p in self.all if p.alive()]

    def reload(self, gone_timeout: float | None = None) -> ReloadResult:
        gone_timeout = gone_timeout if gone_timeout is not None else self.parent_shutdown_s + 30
        tail = LogTail(self.log_path)
        res = ReloadResult(ok=False, started=time.monotonic())
        old = self.current
        try:
            new = self._spawn(self.epoch + 1)
        except BenchError as exc:
            res.error = str(exc).splitlines()[0]
            res.problems = [l for l in tail.read().splitlines() if "[error]" in l or "[critical]" in l]
            return res
        res.serving_s = time.monotonic() - res.started
        self.epoch += 1
        self.current = new
        try:
            old.popen.wait(max(0.0, res.started + gone_timeout - time.monotonic()))
            res.gone_s = time.monotonic() - res.started
            res.ok = True
        except subprocess.TimeoutExpired:
            res.error = f"epoch {self.epoch - 1} still runs after {gone_timeout:.0f} s"
        res.problems = [l for l in tail.read().splitlines() if "[error]" in l or "[critical]" in l]
        return res

    def stop(self) -> None:
        for proc in reversed(self.all):
            stop(proc)
