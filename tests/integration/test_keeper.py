"""The keeper (supervisor/keeper.py): the pid a test process starts, as a shell or a supervisor
would, stays Baton across reloads; signals sent to it act on the current generation; its exit
status is the service's; as PID 1 of a pid namespace it reaps orphans. Real processes and
sockets on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import threading

import psutil

from .clients import recv_exact, roundtrip
from .conftest import Baton, free_port, gate_after_commit, pid_alive, tcp_bootstrap, wait_until


def _parent(pid: int) -> int:
    return psutil.Process(pid).ppid()


def _everything_under(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _reload_ok(b: Baton) -> int:
    """Reload; once the previous master is gone, the new one's pid (a child of the keeper)."""
    old = b.master_pid()
    result = b.reload()
    assert result.returncode == 0, result.stderr
    b.wait_previous_gone(old)
    new = b.master_pid()
    assert new != old
    assert _parent(new) == b.proc.pid
    return new


def _echoes(sock: socket.socket, text: bytes) -> bool:
    sock.sendall(text)
    return recv_exact(sock, len(text)) == text


def test_the_pid_started_stays_through_five_reloads(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=1)
    keeper = b.proc.pid
    status = b.status()
    assert status["keeper"] == {"pid": keeper}
    assert _parent(status["master"]["pid"]) == keeper
    assert psutil.Process(keeper).name() == "baton: keeper"
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert _echoes(held, b"before")
    seen = _everything_under(keeper)
    for i in range(5):
        _reload_ok(b)
        assert b.proc.poll() is None, b.log
        assert b.status()["keeper"] == {"pid": keeper}
        assert _echoes(held, b"after reload %d" % i)          # it moved, it was not cut
        seen |= _everything_under(keeper)
    assert "keeper  pid %d" % keeper in b.cli("status").stdout
    held.close()
    b.signal(signal.SIGTERM)
    assert b.wait(30) == 0
    assert not any(pid_alive(p) for p in seen)


def test_sighup_to_the_keeper_reloads(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=1)
    old = b.master_pid()
    b.signal(signal.SIGHUP)
    wait_until(lambda: b.status()["master"]["generation"] == 2, 30, "generation 2 to serve")
    b.wait_previous_gone(old)
    assert _parent(b.master_pid()) == b.proc.pid
    assert roundtrip(port, b"hup") == b"hup"


def test_sigterm_to_the_keeper_drains_the_current_generation(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=1, drain_timeout=60)
    _reload_ok(b)
    current = b.master_pid()
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert _echoes(held, b"open")
    b.signal(signal.SIGTERM)
    wait_until(lambda: b.status()["state"] == "DRAINING", 10, "the current generation to drain")
    assert _echoes(held, b"still served while draining")
    assert b.proc.poll() is None and pid_alive(current)
    held.close()
    assert b.wait(30) == 0
    assert not pid_alive(current)


def test_sigint_to_the_keeper_stops_fast(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=2, drain_timeout=600)
    _reload_ok(b)
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert _echoes(held, b"busy")
    under = _everything_under(b.proc.pid)
    b.signal(signal.SIGINT)
    assert b.wait(10) == 0
    held.settimeout(5)
    assert held.recv(1) == b""
    assert not any(pid_alive(p) for p in under)


def test_a_crash_of_the_current_master_is_the_keepers_exit_status(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=2)
    current = _reload_ok(b)
    under = _everything_under(b.proc.pid)
    assert len(under) >= 3                          # the master and its two workers at least
    os.kill(current, signal.SIGKILL)
    assert b.wait(20) == 128 + signal.SIGKILL       # a supervisor sees Baton die, and restarts it
    wait_until(lambda: not any(pid_alive(p) for p in under), 10, "no orphaned worker")


def test_new_master_killed_after_the_commit_the_keeper_follows_the_old_one(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=1)
    fifo = gate_after_commit(b)
    old = b.master_pid()
    outcome = {}
    reload = threading.Thread(target=lambda: outcome.setdefault("r", b.reload()))
    reload.start()
    wait_until(lambda: "handing over to pid" in b.log, 30, "the commit")
    new = int(b.log.split("handing over to pid ")[1].split(":")[0])
    assert _parent(new) == b.proc.pid
    os.kill(new, signal.SIGKILL)
    reload.join(60)
    b.hook.unlink()
    fifo.unlink()
    assert outcome["r"].returncode == 0
    wait_until(lambda: "generation 1 serves again" in b.log, 20, "the old generation to resume")
    b.wait_ready(20)
    assert b.master_pid() == old and b.proc.poll() is None
    assert roundtrip(port, b"back") == b"back"
    # The keeper follows the old generation: its signals and its exit status.
    b.signal(signal.SIGTERM)
    assert b.wait(30) == 0
    assert not pid_alive(old)


def test_as_pid_1_of_a_pid_namespace(tmp_path, upstreams):
    """`unshare --pid --fork --mount-proc baton run`: the keeper is PID 1, reaps what is
    orphaned under it, reloads, and stops on SIGTERM."""
    echo = upstreams("echo")
    port = free_port()
    b = Baton(tmp_path / "ns", tcp_bootstrap(free_port(), port, [echo.port]), concurrency=1)
    orphan_made = b.workdir / "orphan-made"
    # Every new master orphans a process: its child forks a grandchild that exits at once,
    # then exits itself; the grandchild (a zombie, or soon one) goes to PID 1.
    b.hook.write_text(f"""
import os
if os.environ.get("BATON_HANDOFF"):
    middle = os.fork()
    if middle == 0:
        if os.fork() == 0:
            os._exit(0)
        os._exit(0)
    os.waitpid(middle, 0)
    open({str(orphan_made)!r}, "w").close()
""")
    b.args = ["unshare", "--pid", "--fork", "--mount-proc", *b.args]
    b.start()
    try:
        unshare = b.proc.pid
        wait_until(lambda: psutil.Process(unshare).children(), 10, "PID 1 of the namespace")
        keeper = psutil.Process(unshare).children()[0].pid
        with open(f"/proc/{keeper}/status") as f:
            nspid = next(line for line in f if line.startswith("NSpid:")).split()
        assert nspid[-1] == "1"
        assert b.status()["keeper"] == {"pid": 1}       # as the namespace sees it
        result = b.reload()
        assert result.returncode == 0, result.stderr
        wait_until(orphan_made.exists, 20, "the new master to orphan a process")

        def zombies():
            return [c for c in psutil.Process(keeper).children()
                    if c.status() == psutil.STATUS_ZOMBIE]
        wait_until(lambda: not zombies(), 10, "PID 1 to reap the orphans")
        assert roundtrip(port, b"in a namespace") == b"in a namespace"
        os.kill(keeper, signal.SIGTERM)
        assert b.wait(30) == 0
    finally:
        # Not b.stop(): the pid file holds a pid of the namespace, not of ours.
        if b.proc.poll() is None:
            for child in psutil.Process(b.proc.pid).children():
                child.send_signal(signal.SIGINT)
            b.proc.wait(15)
        b._log.close()
