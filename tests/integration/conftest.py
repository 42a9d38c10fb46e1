"""Fixtures that run the real `baton` and real upstream servers as processes on 127.0.0.1.

Nothing here sleeps to synchronise: every wait polls a readiness signal (a line on stdout,
/ready, a process exit) against a deadline.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from ..waiting import wait_until  # noqa: F401 - the tests import it from here

HERE = Path(__file__).resolve().parent
BATON = str(Path(sys.executable).parent / "baton")


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports for tests to listen on come from below the kernel's ephemeral range: a port the
# kernel handed out as free from inside it (bind to port 0) can be taken by any outgoing
# connection before the test's process binds it ("cannot bind 127.0.0.1:38783: Address
# already in use", a CI failure). Below 12000 stay the quickstart's and admin's fixed ports.
_PORT_LOW, _PORT_HIGH = 12000, max(_ephemeral_low(), 13000)
_next_port = itertools.count(random.randrange(_PORT_LOW, _PORT_HIGH))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses now and no outgoing connection will take."""
    span = _PORT_HIGH - _PORT_LOW
    for _ in range(span):
        port = _PORT_LOW + (next(_next_port) - _PORT_LOW) % span
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def start_ready_process(argv: list) -> tuple[subprocess.Popen, int]:
    """Start a helper process that prints "ready PORT" once it listens: (process, port)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()                   # blocks until "ready PORT" or exit
    if not line.startswith("ready "):
        proc.kill()
        proc.wait(10)
        raise RuntimeError(f"{argv[1:]} did not start: {line!r}")
    return proc, int(line.split()[1])


class Upstream:
    def __init__(self, mode: str, *args: str):
        self.proc, self.port = start_ready_process(
            [sys.executable, str(HERE / "upstreams.py"), mode, "0", *args])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def tcp_bootstrap(admin_port: int, listener_port: int, endpoints, *, cluster="backend",
                  lb_policy="ROUND_ROBIN", connect_timeout="1s", idle_timeout=None,
                  max_connect_attempts=None, max_connections=None, buffer_limit=None,
                  extra_tcp=None) -> dict:
    tcp = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
           "stat_prefix": "ingress", "cluster": cluster}
    if idle_timeout is not None:
        tcp["idle_timeout"] = idle_timeout
    if max_connect_attempts is not None:
        tcp["max_connect_attempts"] = max_connect_attempts
    tcp.update(extra_tcp or {})
    listener = {"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}]}]}
    if buffer_limit is not None:
        listener["per_connection_buffer_limit_bytes"] = buffer_limit
    cluster_cfg = {"name": cluster, "type": "STATIC", "connect_timeout": connect_timeout, "lb_policy": lb_policy,
                   "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [
                       {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                       for p in endpoints]}]}}
    if buffer_limit is not None:
        cluster_cfg["per_connection_buffer_limit_bytes"] = buffer_limit
    if max_connections is not None:
        cluster_cfg["circuit_breakers"] = {"thresholds": [{"max_connections": max_connections}]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
            "static_resources": {"listeners": [listener], "clusters": [cluster_cfg]}}


RECORDER = HERE / "differential" / "recorder.py"


def static_cluster(name: str, port: int) -> dict:
    return {"name": name, "connect_timeout": "1s", "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def http_bootstrap(admin: int, port: int, upstream: int | None = None, *, routes=None,
                   clusters: dict | None = None, **hcm_fields) -> dict:
    """One HTTP listener: by default every request to cluster "app" at `upstream`; `routes`
    and `clusters` ({name: port}) replace those, `hcm_fields` are added to the HCM."""
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                    ".HttpConnectionManager",
           "stat_prefix": "ingress_http",
           "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes":
               routes or [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
           **hcm_fields}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [{"name": "http", "address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                    "typed_config": hcm}]}]}],
                "clusters": [static_cluster(name, p) for name, p in (clusters or {"app": upstream}).items()]}}


@pytest.fixture
def recorder():
    """The recording HTTP upstream (differential/recorder.py): its port."""
    proc, port = start_ready_process([sys.executable, str(RECORDER), "app"])
    yield port
    proc.kill()
    proc.wait(10)


ENTRY_SCRIPT = """#!{python}
import os, sys
if os.path.exists({hook!r}):
    exec(open({hook!r}).read())
from baton.supervisor.cli import main
sys.exit(main())
"""


class Baton:
    def __init__(self, workdir: Path, bootstrap: dict, concurrency: int = 2, drain_timeout: float = 30.0,
                 extra_args=(), runtime_dir: Path | None = None, python: str = sys.executable):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "bootstrap.yaml"
        self.config.write_text(yaml.safe_dump(bootstrap))
        self.runtime_dir = runtime_dir or workdir / "run"
        self.admin_port = bootstrap["admin"]["address"]["socket_address"]["port_value"]
        self.log_path = workdir / "baton.log"
        # The executable that runs is a small entry script in the work dir, so a test can
        # change "the code on disk" between reloads (hook.py runs before Baton's main).
        self.entry = workdir / "baton-entry"
        self.hook = workdir / "hook.py"
        # `python`: the interpreter (and so the installed Baton) that runs it; the upgrade
        # tests pass a venv holding another release (tests/releases.py).
        self.python = python
        self.entry.write_text(ENTRY_SCRIPT.format(python=python, hook=str(self.hook)))
        self.entry.chmod(0o755)
        self.args = [str(self.entry), "run", "-c", str(self.config), "--concurrency", str(concurrency),
                     "--runtime-dir", str(self.runtime_dir), "--drain-timeout", str(drain_timeout),
                     "--log-level", "info", *extra_args]
        self.proc: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 30.0) -> "Baton":
        self.launch()
        self.wait_ready(ready_timeout)
        return self

    def launch(self) -> "Baton":
        """Start the process without waiting for /ready (to watch it initialize)."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def admin(self, path: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"baton exited with {self.proc.returncode}:\n{self.log}")
            try:
                return self.admin("/ready", timeout=1.0)[0] == 200
            except OSError:
                return False
        wait_until(ready, timeout, "baton /ready")

    def stats(self) -> dict[str, int]:
        status, body = self.admin("/stats")
        assert status == 200, body
        out = {}
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            out[name] = int(value)
        return out

    def cli(self, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
        return subprocess.run([BATON, *args, "--runtime-dir", str(self.runtime_dir)],
                              capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict:
        """What `baton status --json` prints. For a Baton of this tree, the command's own
        control request and checks made in this process: reload loops ask it every reload and
        wait_until polls it, and a Python start per call cost 0.2-0.8 s each. A Baton run by
        another interpreter (a release's venv) is asked through its `cli`, as before."""
        if self.python != sys.executable:
            result = self.cli("status", "--json")
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)
        from baton.supervisor.cli import _status_problem, _trusted_request
        from baton.supervisor.runtime import control_path, resolve
        reply = _trusted_request(control_path(resolve(str(self.runtime_dir))), {"type": "status"}, 10.0)
        assert reply.get("type") == "status", reply
        problem = _status_problem(reply.get("status"))
        assert problem is None, f"the master sent a malformed status ({problem})"
        return reply["status"]

    def reload(self, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """`baton reload`: its exit code, stdout and stderr. From the test's own thread, for a
        Baton of this tree, the command's main() runs in this process with its output captured
        (a Python start and the CLI's imports less per reload; 20-reload tests make 20); from
        another thread (the capture is process-wide) or for another interpreter's Baton, the
        command runs as a process, as before. `timeout` bounds the wait either way."""
        if self.python != sys.executable or threading.current_thread() is not threading.main_thread():
            return self.cli("reload", timeout=timeout)
        return self._command_here("reload", "--timeout", str(timeout))

    def _command_here(self, *args: str) -> subprocess.CompletedProcess:
        from baton.supervisor.cli import main
        argv = [*args, "--runtime-dir", str(self.runtime_dir)]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:       # as the interpreter turns it into an exit code
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
        return subprocess.CompletedProcess([BATON, *argv], code, out.getvalue(), err.getvalue())

    def master_pid(self) -> int:
        return self.status()["master"]["pid"]

    def wait_previous_gone(self, old_pid: int, timeout: float = 30.0) -> None:
        wait_until(lambda: not pid_alive(old_pid), timeout, f"the old master {old_pid} to exit")

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.status()["workers"] if w["pid"]]

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        # After reloads the running master is not our child: stop it through its pid file.
        pid_file = self.runtime_dir / "baton.pid"
        current = None
        try:
            current = int(pid_file.read_text())
        except (OSError, ValueError):
            pass
        if current and current != getattr(self.proc, "pid", None) and pid_alive(current):
            os.kill(current, signal.SIGINT)
            wait_until(lambda: not pid_alive(current), 15, "the current master to stop")
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            self._log.close()


GATED_AFTER_COMMIT = """
import baton.supervisor.master as m
_original = m.Master._become_main
async def _gated(self):
    open({fifo!r}).close()          # blocks the new master right after the commit
    await _original(self)
m.Master._become_main = _gated
"""


def gate_after_commit(b: Baton) -> Path:
    """Make the next new master of `b` stop right after the commit (the old one has handed
    over) until the returned fifo is opened for writing, or the new master is killed."""
    fifo = b.workdir / "gate"
    os.mkfifo(fifo)
    b.hook.write_text(GATED_AFTER_COMMIT.format(fifo=str(fifo)))
    return fifo


@pytest.fixture(scope="session")
def release_wheel(tmp_path_factory):
    """`release_wheel(commit)`: a wheel of Baton at `commit` (None: the working tree), built
    once for the run (tests/releases.py): the upgrade and keeper release modules both need
    each release's, and a build is a copy of the tree and a `pip wheel`."""
    from .. import releases
    workdir = tmp_path_factory.mktemp("wheels")
    built = {}

    def wheel(commit: str | None):
        if commit not in built:
            built[commit] = releases.build_wheel(commit, workdir)
        return built[commit]
    return wheel


@pytest.fixture
def upstreams():
    started: list[Upstream] = []

    def start(mode: str, *args: str) -> Upstream:
        up = Upstream(mode, *args)
        started.append(up)
        return up
    yield start
    for up in started:
        up.stop()


@pytest.fixture
def baton(tmp_path):
    started: list[Baton] = []

    def start(bootstrap: dict, **kwargs) -> Baton:
        b = Baton(tmp_path / f"b{len(started)}", bootstrap, **kwargs)
        started.append(b)
        return b.start()
    yield start
    for b in started:
        b.stop()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
