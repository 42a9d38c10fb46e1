"""Privilege separation (issue 13 point 3), run as root with a second uid in the test.

Workers run as the `baton` user without capabilities; the runtime directory and everything in
it stay root's; another process of the workers' uid (or of `nobody`) can neither move a
connection into a worker through its handoff socket nor replace control.sock or baton.pid;
`baton status` refuses a control socket served by anyone but root, and reports a malformed
answer in one line.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from baton.supervisor.handoff.framing import encode

from .clients import recv_exact, roundtrip
from .conftest import BATON, Baton, free_port, tcp_bootstrap, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")

NOBODY = 65534


def _baton_uid() -> tuple[int, int]:
    entry = pwd.getpwnam("baton")      # created by scripts/install.sh (make test)
    return entry.pw_uid, entry.pw_gid


def _proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.split()
    return out


def _as_user(uid: int, gid: int, fn) -> dict:
    """Run `fn()` in a child process switched to uid:gid; its JSON result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = {"error": repr(exc)}
        try:
            os.write(w, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


def _try(action) -> str:
    try:
        action()
    except OSError as exc:
        return type(exc).__name__
    return "done"


def _intrude(handoff: str, runtime_dir: str):
    """What another process can do to Baton: as much as it likes, reported."""
    def attempt() -> dict:
        out = {"pid": os.getpid()}
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        try:
            s.connect(handoff)
            s.sendall(encode({"type": "hello", "versions": [1], "pid": os.getpid(), "generation": 1, "id": 1}))
            out["handoff"] = "closed" if s.recv(100) == b"" else "answered"
        except (BrokenPipeError, ConnectionResetError):
            out["handoff"] = "closed"
        finally:
            s.close()
        control = os.path.join(runtime_dir, "control.sock")
        out["unlink control.sock"] = _try(lambda: os.unlink(control))
        out["write baton.pid"] = _try(lambda: open(os.path.join(runtime_dir, "baton.pid"), "w").close())
        out["create a file"] = _try(lambda: open(os.path.join(runtime_dir, "x"), "x").close())
        c = socket.socket(socket.AF_UNIX)
        out["connect control.sock"] = _try(lambda: c.connect(control))
        c.close()
        return out
    return attempt


def test_workers_run_as_baton_without_capabilities_and_the_runtime_dir_stays_root(baton, upstreams):
    uid, gid = _baton_uid()
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=2)
    for pid in b.worker_pids():
        status = _proc_status(pid)
        assert status["Uid"] == [str(uid)] * 4 and status["Gid"] == [str(gid)] * 4
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[caps][0], 16) == 0, (caps, status[caps])
        assert status["NoNewPrivs"] == ["1"]
    assert _proc_status(b.master_pid())["Uid"][0] == "0"
    st = os.stat(b.runtime_dir)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
    for entry in os.scandir(b.runtime_dir):
        assert entry.stat(follow_symlinks=False).st_uid == 0, entry.name
    # Unprivileged workers still move their connections: through a reload and a recycle.
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    held.sendall(b"a")
    assert recv_exact(held, 1) == b"a"
    result = b.reload()
    assert result.returncode == 0, result.stderr
    result = b.cli("recycle", "--worker", "0")
    assert result.returncode == 0, result.stderr
    held.sendall(b"b")
    assert recv_exact(held, 1) == b"b"
    held.close()
    assert roundtrip(port, b"as baton") == b"as baton"


@pytest.mark.parametrize("who", ["baton", "nobody"])
def test_another_process_of_that_uid_cannot_inject_or_replace_anything(baton, upstreams, who):
    uid, gid = _baton_uid() if who == "baton" else (NOBODY, NOBODY)
    echo = upstreams("echo")
    port = free_port()
    # Under /tmp with a searchable parent: only the runtime directory's own mode protects it.
    parent = Path(tempfile.mkdtemp(prefix="baton-priv-"))
    os.chmod(parent, 0o755)
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=1, runtime_dir=parent / "run")
    [handoff] = [w["handoff"] for w in b.status()["workers"]]
    before = {p.name: p.stat().st_ino for p in b.runtime_dir.iterdir()}
    out = _as_user(uid, gid, _intrude(handoff, str(b.runtime_dir)))
    assert out.get("handoff") == "closed", out              # not heard: no hello, no adoption
    wait_until(lambda: f"refused pid {out['pid']} uid {uid}" in b.log, 10, "the refusal in the log")
    for action in ("unlink control.sock", "write baton.pid", "create a file", "connect control.sock"):
        assert out[action] == "PermissionError", (action, out)
    assert {p.name: p.stat().st_ino for p in b.runtime_dir.iterdir()} == before
    assert roundtrip(port, b"unharmed") == b"unharmed"
    status = b.status()
    assert status["workers"][0]["restarts"] == 0 and status["keeper"] == {"pid": b.proc.pid}
    assert _proc_status(status["master"]["pid"])["PPid"] == [str(b.proc.pid)]   # still generation 1
    b.stop()
    shutil.rmtree(parent)


class _FakeMaster:
    """A control socket that answers the first request with `reply` (bytes, or a message)."""

    def __init__(self, path: str, reply):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(1)
        self.reply = reply
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(15)
        try:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(5)
                conn.recv(65536)
                conn.sendall(self.reply if isinstance(self.reply, bytes) else encode({**self.reply, "reply_to": 1}))
                conn.recv(1)            # until the client hangs up
        except OSError:
            pass

    def close(self) -> None:
        self.thread.join(10)
        self.sock.close()


def _status_cli(runtime_dir: str):
    import subprocess
    return subprocess.run([BATON, "status", "--runtime-dir", runtime_dir], capture_output=True,
                          text=True, timeout=15)


def test_status_refuses_a_control_socket_served_by_another_uid():
    runtime_dir = tempfile.mkdtemp(prefix="baton-fake-")
    os.chmod(runtime_dir, 0o777)
    path = os.path.join(runtime_dir, "control.sock")
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:            # the impostor, as nobody: answers what crashed `baton status` once
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fake = _FakeMaster(path, {"type": "status", "status": {}})
            os.write(ready_w, b"x")
            fake.thread.join(15)
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"
    os.close(ready_r)
    try:
        result = _status_cli(runtime_dir)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert result.returncode == 1
    assert "uid 65534" in result.stderr and "not a baton master we trust" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    os.unlink(path)
    os.rmdir(runtime_dir)


@pytest.mark.parametrize("answer,expected", [
    ({"type": "status", "status": {}}, "malformed status (status.version is missing"),
    ({"type": "status", "status": {"version": "1", "state": "LIVE", "runtime_dir": "/x",
                                   "master": {"pid": 1}, "workers": []}}, "master.generation is missing"),
    ({"type": "status", "status": {"version": "1", "state": "LIVE", "runtime_dir": "/x",
                                   "master": {"pid": 1, "generation": 1, "uptime_s": 1, "rss_bytes": 1,
                                              "cpu_percent": 0.0},
                                   "workers": [{"id": 0}]}}, "workers[0].generation is missing"),
    ({"type": "ok"}, "unexpected reply"),
    (b"\x00\x00\x00\x05garbage", "control socket"),
])
def test_status_reports_a_malformed_answer_in_one_line(tmp_path, answer, expected):
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir(mode=0o700)
    fake = _FakeMaster(str(runtime_dir / "control.sock"), answer)
    try:
        result = _status_cli(str(runtime_dir))
    finally:
        fake.close()
    assert result.returncode == 1, result.stdout
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_xds_agent_runs_as_baton_without_capabilities(tmp_path):
    from ..xds_support.resources import ADS, bootstrap
    uid, gid = _baton_uid()
    boot = bootstrap(free_port(), free_port(), "GRPC")      # nobody listens there: no matter
    for key in ("lds_config", "cds_config"):
        boot["dynamic_resources"][key] = {**ADS, "initial_fetch_timeout": "1s"}
    b = Baton(tmp_path / "baton", boot).start(30)
    try:
        agent = wait_until(lambda: (b.status()["xds_agent"] or {}).get("pid"), 10, "the agent")
        status = _proc_status(agent)
        assert status["Uid"] == [str(uid)] * 4 and status["Gid"] == [str(gid)] * 4
        for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[caps][0], 16) == 0, (caps, status[caps])
        assert status["NoNewPrivs"] == ["1"]
    finally:
        b.stop()


def _with_access_log(path) -> dict:
    from .test_http_connect import bootstrap
    boot = bootstrap(free_port(), free_port(), free_port())
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": str(path)}}]
    return boot


# The master answers a worker's request to open a log file 0.3 s late: a worker reopening
# after logrotate then takes that long to have the new file (the window where a request right
# after the admin's answer was logged to the rotated file: it was a round trip).
SLOW_LOG_OPEN = """
import baton.supervisor.handoff.broker as broker
_open = broker.BrokerServer._open
def _open_late(self, channel, ref, path):
    channel.loop.call_later(0.3, _open, self, channel, ref, path)
broker.BrokerServer._open = _open_late
"""


def test_an_access_log_only_root_may_write_is_opened_by_the_master(tmp_path):
    """Operators keep logs where only root writes (/var/log); the unprivileged worker gets
    the file from its master (supervisor/handoff/broker.py) and logs there. POST
    /reopen_logs answers once the worker has the new file, however late the master opens it:
    the request sent right after the answer is in the new file, none in the rotated one."""
    private = tmp_path / "private"            # root's, 0700: the baton user may not enter
    private.mkdir(mode=0o700)
    log_file = private / "access.log"
    boot = _with_access_log(log_file)
    port = boot["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    b = Baton(tmp_path / "baton", boot, concurrency=1)
    b.hook.write_text(SLOW_LOG_OPEN)
    b.start(30)
    try:
        worker = b.status()["workers"][0]["pid"]
        uid, _ = _baton_uid()
        assert _proc_status(worker)["Uid"] == [str(uid)] * 4
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /logged-by-an-unprivileged-worker HTTP/1.1\r\nHost: x\r\n"
                      b"Connection: close\r\n\r\n")
            assert recv_exact(s, 12) == b"HTTP/1.1 404"
        wait_until(lambda: log_file.exists()
                   and b'"GET /logged-by-an-unprivileged-worker HTTP/1.1" 404' in log_file.read_bytes(),
                   10, "the access log line")
        assert log_file.stat().st_uid == 0
        # logrotate moves the file; POST /reopen_logs (Envoy's admin path) starts a new one,
        # opened by the master again.
        rotated = private / "access.log.1"
        log_file.rename(rotated)
        assert b.admin("/reopen_logs", method="POST") == (200, "OK\n")
        assert b.admin("/reopen_logs")[0] == 405
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /after-the-rotation HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert recv_exact(s, 12) == b"HTTP/1.1 404"
        wait_until(lambda: log_file.exists() and b"/after-the-rotation" in log_file.read_bytes(),
                   10, "the line in the new file")
        assert b"/after-the-rotation" not in rotated.read_bytes()
        assert "cannot be opened" not in b.log and "Traceback" not in b.log
    finally:
        b.stop()


def test_an_access_log_that_cannot_be_opened_is_refused_at_start(tmp_path):
    import subprocess
    import yaml
    missing = tmp_path / "no-such-dir" / "access.log"
    config = tmp_path / "bootstrap.yaml"
    config.write_text(yaml.safe_dump(_with_access_log(missing)))
    expected = f"access log {missing}: cannot be opened: no such directory {missing.parent}"
    check = subprocess.run([BATON, "check", "-c", str(config)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 1 and expected in check.stderr, check
    result = subprocess.run([BATON, "run", "-c", str(config), "--concurrency", "1",
                             "--runtime-dir", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=30)
    out = result.stdout + result.stderr
    assert result.returncode == 1 and expected in out, out
    assert "Traceback" not in out
