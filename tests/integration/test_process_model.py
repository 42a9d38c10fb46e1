"""Master and workers as processes: respawn, shared accept queue, signals, names, status."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import threading
import time

import psutil

from .clients import echo_transfer, recv_exact, roundtrip
from .conftest import free_port, pid_alive, tcp_bootstrap, wait_until


def _owner_of(conns: list[socket.socket], worker_pids: list[int], listen_port: int) -> dict[int, list]:
    """Which worker holds each client connection: worker pid -> [client sockets]."""
    by_peer_port = {}
    for pid in worker_pids:
        for c in psutil.Process(pid).net_connections(kind="tcp"):
            if c.laddr and c.laddr.port == listen_port and c.raddr:
                by_peer_port[c.raddr.port] = pid
    owners: dict[int, list] = {pid: [] for pid in worker_pids}
    for s in conns:
        owners[by_peer_port[s.getsockname()[1]]].append(s)
    return owners


def _echo_ok(s: socket.socket, tag: bytes) -> bool:
    s.sendall(tag)
    return recv_exact(s, len(tag)) == tag


def _slot_replaced(b, slot: int, old_pid: int):
    def check():
        w = b.status()["workers"][slot]
        return w["pid"] not in (None, old_pid) and w["state"] == "ready" and w
    return check


def test_kill_9_worker_under_load(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=2)
    pids = b.worker_pids()
    conns = []
    owners = {}
    # Open connections until both workers hold some (the kernel picks the acceptor).
    for _ in range(200):
        conns.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        assert _echo_ok(conns[-1], b"hello")
        owners = _owner_of(conns, pids, port)
        if len(conns) >= 10 and all(owners.values()):
            break
    assert all(owners.values()), "the kernel never spread connections over both workers"
    victim, survivor = pids
    stop = threading.Event()
    outcomes = {"ok": 0, "refused": 0, "other": []}

    def load():      # new connections all through the kill and the respawn
        i = 0
        while not stop.is_set() and i < 5000:
            i += 1
            try:
                assert roundtrip(port, b"load %d" % i, timeout=10) == b"load %d" % i
                outcomes["ok"] += 1
            except ConnectionRefusedError:
                outcomes["refused"] += 1
            except Exception as exc:  # noqa: BLE001 - classified below
                outcomes["other"].append(repr(exc))

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_until(lambda: outcomes["ok"] >= 20, 20, "load to flow")
        os.kill(victim, signal.SIGKILL)
        slot = pids.index(victim)
        wait_until(_slot_replaced(b, slot, victim), 20, "the worker to be replaced")
        before = outcomes["ok"]
        wait_until(lambda: outcomes["ok"] >= before + 20, 20, "load after the respawn")
    finally:
        stop.set()
        thread.join(30)
    assert outcomes["refused"] == 0
    # A connection the victim had accepted but not yet proxied dies with it; the load is one
    # connection at a time, so at most one can be caught that way.
    assert len(outcomes["other"]) <= 1, outcomes["other"]
    for i, s in enumerate(owners[survivor]):
        assert _echo_ok(s, b"survivor %d" % i)
    for s in owners[victim]:
        s.settimeout(5)
        try:
            s.sendall(b"x")
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
    for s in conns:
        s.close()
    assert "worker %d (pid %d) died: killed by SIGKILL" % (slot, victim) in b.log


def test_backlog_survives_a_dying_worker(baton, upstreams):
    """Connections waiting in the accept queue when a worker dies are served by another."""
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=2)
    a, other = b.worker_pids()
    os.kill(a, signal.SIGSTOP)
    os.kill(other, signal.SIGSTOP)
    try:
        # Nobody accepts now: the handshakes complete in the kernel and wait in the queue.
        waiting = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(30)]
        for i, s in enumerate(waiting):
            s.sendall(b"queued %02d" % i)
        os.kill(a, signal.SIGKILL)
    finally:
        os.kill(other, signal.SIGCONT)
    for i, s in enumerate(waiting):
        assert recv_exact(s, 9) == b"queued %02d" % i
        s.close()


def test_sigterm_lets_transfers_finish_and_exits_0(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=2, drain_timeout=60)
    size = 300 << 20
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        transfers = [pool.submit(echo_transfer, port, size, i) for i in range(4)]
        wait_until(lambda: b.stats()["cluster.backend.upstream_cx_active"] == 4, 20, "transfers to start")
        b.signal(signal.SIGTERM)

        def refused():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                return False
            except ConnectionRefusedError:
                return True
            except ConnectionResetError:
                # A probe that raced the listener's close was reset from the accept queue:
                # not served either; keep probing until connects are refused outright.
                return False
        wait_until(refused, 10, "new connections to be refused while draining")
        assert not any(t.done() for t in transfers), "transfers finished before the drain started"
        for t in transfers:
            sent, received = t.result(timeout=120)
            assert sent == received
    assert b.wait(30) == 0


def test_drain_timeout_cuts_what_is_left(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=1, drain_timeout=1)
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert _echo_ok(held, b"idle")
    start = time.monotonic()
    b.signal(signal.SIGTERM)
    assert b.wait(15) == 0
    assert 0.8 < time.monotonic() - start < 10
    held.settimeout(5)
    assert held.recv(1) == b""


def test_sigint_is_a_fast_stop(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=2, drain_timeout=600)
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert _echo_ok(held, b"busy")
    start = time.monotonic()
    b.signal(signal.SIGINT)
    assert b.wait(10) == 0
    assert time.monotonic() - start < 5
    held.settimeout(5)
    assert held.recv(1) == b""


def test_baton_stop_command_drains(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=1)
    result = b.cli("stop")
    assert result.returncode == 0, result.stderr
    assert b.wait(15) == 0
    gone = b.cli("status")
    assert gone.returncode == 1 and "no baton running" in gone.stderr


def test_workers_do_not_outlive_the_master(baton, upstreams):
    echo = upstreams("echo")
    b = baton(tcp_bootstrap(free_port(), free_port(), [echo.port]), concurrency=2)
    workers = b.worker_pids()
    b.proc.kill()
    b.proc.wait(10)
    wait_until(lambda: not any(pid_alive(p) for p in workers), 10, "workers to die with the master")


def test_crash_loop_stops_respawning(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=2)
    for death in range(5):
        pid = b.status()["workers"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        if death < 4:
            wait_until(_slot_replaced(b, 0, pid), 20, "respawn %d" % death)
    wait_until(lambda: b.status()["workers"][0]["state"] == "given_up", 10, "the slot to give up")
    assert "worker 0 is crash-looping" in b.log
    assert b.status()["workers"][1]["state"] == "ready"
    assert roundtrip(port, b"still serving") == b"still serving"
    status, body = b.admin("/ready")
    assert status == 200     # the master lives on with the workers it has


def test_process_names_and_status_json(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=2)
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert _echo_ok(held, b"x")
    status = b.status()
    # The pid started is the keeper (supervisor/keeper.py); the master is its child.
    assert status["keeper"] == {"pid": b.proc.pid}
    assert psutil.Process(status["master"]["pid"]).ppid() == b.proc.pid
    assert status["master"]["generation"] == 1
    assert status["master"]["uptime_s"] >= 0
    assert isinstance(status["version"], str)
    assert [w["id"] for w in status["workers"]] == [0, 1]
    for w in status["workers"]:
        for key in ("pid", "generation", "connections", "rss_bytes", "cpu_percent"):
            assert key in w
        assert w["rss_bytes"] > 0
    assert sum(w["connections"] for w in status["workers"]) == 1
    names = subprocess.run(["ps", "-o", "comm=", "-p", ",".join(str(p) for p in [b.proc.pid, status["master"]["pid"],
                                                                             *b.worker_pids()])],
                           capture_output=True, text=True).stdout.split("\n")
    assert names[0] == "baton: keeper"
    assert names[1] == "baton: master"
    names = names[1:]
    assert sorted(n for n in names[1:] if n) == ["baton: worker 0", "baton: worker 1"]
    human = b.cli("status")
    assert human.returncode == 0 and "master" in human.stdout
    held.close()


def _proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.split()
    return out


def test_workers_run_unprivileged_keeping_two_capabilities(baton, upstreams, tmp_path):
    import pathlib
    import shutil
    import tempfile
    if os.geteuid() != 0:
        import pytest
        pytest.skip("needs root to switch users")
    echo = upstreams("echo")
    port = free_port()
    runtime_dir = pathlib.Path(tempfile.mkdtemp(prefix="baton-uid-"))
    try:
        b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=2, runtime_dir=runtime_dir,
                  extra_args=("--worker-user", "65534:65534", "--upstream-mark", "0x539"))
        for pid in b.worker_pids():
            status = _proc_status(pid)
            assert status["Uid"] == ["65534"] * 4 and status["Gid"] == ["65534"] * 4
            # CAP_NET_BIND_SERVICE (10) and CAP_NET_ADMIN (12): 0x1400, nothing else.
            assert int(status["CapEff"][0], 16) == 0x1400
            assert int(status["CapBnd"][0], 16) == 0x1400
        assert _proc_status(b.master_pid())["Uid"][0] == "0"    # the master stays root
        assert roundtrip(port, b"as nobody") == b"as nobody"    # SO_MARK (CAP_NET_ADMIN) worked
        held = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert _echo_ok(held, b"before")
        result = b.reload()                                     # unprivileged workers hand over
        assert result.returncode == 0, result.stderr
        assert _echo_ok(held, b"after")
        held.close()
        b.stop()
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
