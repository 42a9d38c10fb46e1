"""The drain deadline escalates (supervisor/master.py): a worker still draining gets SIGTERM,
which makes it close what is left and exit on its own; one that cannot act on it (stopped
here with SIGSTOP) is killed DRAIN_KILL_GRACE seconds later."""

from __future__ import annotations

import os
import signal
import socket
import time

from baton.supervisor.master import DRAIN_KILL_GRACE

from .clients import recv_exact
from .conftest import free_port, pid_alive, tcp_bootstrap, wait_until


def _held_connection(port: int) -> socket.socket:
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    held.sendall(b"held")
    assert recv_exact(held, 4) == b"held"
    return held


def test_a_draining_worker_past_the_deadline_closes_on_sigterm_and_exits_0(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=1, drain_timeout=1)
    held = _held_connection(port)
    start = time.monotonic()
    b.signal(signal.SIGTERM)
    assert b.wait(15) == 0
    assert time.monotonic() - start < DRAIN_KILL_GRACE, "the worker waited for its SIGKILL"
    held.settimeout(5)
    assert held.recv(1) == b""
    log = b.log
    assert "drain timeout: 1 worker(s) still have open connections: SIGTERM" in log
    assert "SIGTERM while draining: closing 1 connection(s) now" in log
    assert "exited: exit code 0" in log and "killing" not in log


def test_a_worker_that_cannot_act_on_sigterm_is_killed_after_the_grace_period(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=1, drain_timeout=1)
    held = _held_connection(port)
    [worker] = b.worker_pids()
    try:
        # A stopped process keeps SIGTERM pending; SIGKILL ends it all the same.
        os.kill(worker, signal.SIGSTOP)
        start = time.monotonic()
        b.signal(signal.SIGTERM)
        assert b.wait(30) == 0
        elapsed = time.monotonic() - start
    finally:
        if pid_alive(worker):
            os.kill(worker, signal.SIGCONT)
    assert 1 + DRAIN_KILL_GRACE - 0.5 < elapsed < 1 + DRAIN_KILL_GRACE + 10
    wait_until(lambda: not pid_alive(worker), 5, "the stopped worker to be gone")
    log = b.log
    assert "killing 1 worker(s) still running" in log
    assert "killed by SIGKILL" in log
    held.close()
