"""Tests for supervisor/sdnotify.py against a real AF_UNIX datagram socket standing in for
systemd's notify socket (a temp path, or a name in the abstract namespace).

Nothing sleeps: a "systemd" that answers a barrier is a thread that receives the datagram and
closes the fd it got; one that never answers keeps the fd, and the barrier's own timeout ends
the test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid

import pytest
import uvloop

from baton.supervisor import sdnotify
from tests.fd_accounting import collector_paused


class FakeSystemd:
    """A bound SOCK_DGRAM socket that records what arrives, with any SCM_RIGHTS fds."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def receive(self) -> tuple[list[str], list[int]]:
        data, fds, _flags, _addr = socket.recv_fds(self.sock, 4096, 4)
        return data.decode().split("\n"), fds

    def answer_barrier_in_thread(self) -> threading.Thread:
        """Like systemd: take the BARRIER=1 datagram, then close the fd that came with it."""
        def run():
            lines, fds = self.receive()
            assert lines == ["BARRIER=1"] and len(fds) == 1
            os.close(fds[0])
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self):
        self.sock.close()


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    fake = FakeSystemd(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield fake
    fake.close()


@pytest.fixture
def abstract_systemd(monkeypatch):
    name = f"baton-test-notify-{uuid.uuid4().hex}"
    fake = FakeSystemd("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield fake
    fake.close()


@pytest.fixture
def descriptors_held_steady():
    """For the tests that compare /proc/self/fd before and after (marked steady_fds): no
    finalizer may run in between. Not for every test: its full collection takes seconds once a
    whole run's objects are in the heap (2-2.6 s a test at load 15 in `make test`)."""
    with collector_paused():
        yield


steady_fds = pytest.mark.usefixtures("descriptors_held_steady")


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# -- messages --------------------------------------------------------------------------------

def test_ready_with_status(systemd):
    assert sdnotify.notify(ready=True, status="serving 2 workers")
    assert systemd.receive() == (["READY=1", "STATUS=serving 2 workers"], [])


def test_mainpid_comes_before_ready(systemd):
    assert sdnotify.notify(ready=True, mainpid=4242, status="generation 2")
    lines, _ = systemd.receive()
    assert lines == ["MAINPID=4242", "READY=1", "STATUS=generation 2"]


def test_reloading_carries_monotonic_usec(systemd):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.notify(reloading=True)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines, _ = systemd.receive()
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


def test_stopping_watchdog_and_raw_lines(systemd):
    assert sdnotify.notify(stopping=True)
    assert systemd.receive()[0] == ["STOPPING=1"]
    assert sdnotify.notify(watchdog=True)
    assert systemd.receive()[0] == ["WATCHDOG=1"]
    assert sdnotify.notify("ERRNO=98", "EXTEND_TIMEOUT_USEC=5000000")
    assert systemd.receive()[0] == ["ERRNO=98", "EXTEND_TIMEOUT_USEC=5000000"]


def test_status_is_kept_on_one_line(systemd):
    sdnotify.notify(status="reload failed:\nbad yaml")
    assert systemd.receive()[0] == ["STATUS=reload failed: bad yaml"]


def test_abstract_namespace(abstract_systemd):
    assert sdnotify.enabled()
    assert sdnotify.notify(ready=True)
    assert abstract_systemd.receive() == (["READY=1"], [])


# -- no manager, broken manager --------------------------------------------------------------

@steady_fds
def test_no_op_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    fds = open_fds()
    assert not sdnotify.enabled()
    assert sdnotify.notify(ready=True) is False
    assert sdnotify.barrier() is True            # nothing to wait for
    assert asyncio.run(sdnotify.async_barrier()) is True
    assert open_fds() == fds


def test_relative_notify_socket_is_ignored(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/notify")
    assert not sdnotify.enabled()
    assert sdnotify.notify(ready=True) is False


@steady_fds
def test_send_error_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    fds = open_fds()
    with caplog.at_level(logging.DEBUG, logger="baton.sdnotify"):
        assert sdnotify.notify(ready=True) is False
        assert sdnotify.barrier(timeout=0.1) is False
    assert any("failed" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    assert open_fds() == fds


# -- BARRIER=1 -------------------------------------------------------------------------------

@steady_fds
def test_barrier_returns_when_the_manager_closes_the_fd(systemd):
    fds = open_fds()
    answered = systemd.answer_barrier_in_thread()
    started = time.monotonic()
    assert sdnotify.barrier(timeout=5) is True
    assert time.monotonic() - started < 5
    answered.join(5)
    assert open_fds() == fds                     # both pipe ends closed on our side


@steady_fds
def test_barrier_times_out_when_the_fd_is_kept(systemd):
    fds = open_fds()
    started = time.monotonic()
    assert sdnotify.barrier(timeout=0.2) is False
    assert 0.2 <= time.monotonic() - started < 2
    lines, kept = systemd.receive()              # the datagram did arrive, with its fd
    assert lines == ["BARRIER=1"] and len(kept) == 1
    os.close(kept[0])
    assert open_fds() == fds


@steady_fds
@pytest.mark.parametrize("loop_factory", [None, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_async_barrier(systemd, loop_factory):
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(asyncio.sleep(0))
        fds = open_fds()        # after the loop exists: uvloop keeps a few process-wide fds
        answered = systemd.answer_barrier_in_thread()
        assert runner.run(sdnotify.async_barrier(timeout=5)) is True
        answered.join(5)
        assert runner.run(sdnotify.async_barrier(timeout=0.2)) is False
        os.close(systemd.receive()[1][0])        # the unanswered barrier's fd
        assert open_fds() == fds


# -- watchdog --------------------------------------------------------------------------------

@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "6000000"}, 3.0),
    ({"WATCHDOG_USEC": "6000000", "WATCHDOG_PID": "self"}, 3.0),
    ({"WATCHDOG_USEC": "6000000", "WATCHDOG_PID": "1"}, None),     # another process's watchdog
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "junk"}, None),
])
def test_watchdog_interval(monkeypatch, env, expected):
    for key in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, str(os.getpid()) if value == "self" else value)
    assert sdnotify.watchdog_interval() == expected


def test_new_master_adopts_the_watchdog(monkeypatch):
    # As exec'd by the old master: the environment still names the old master's pid.
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert sdnotify.watchdog_interval() is None
    assert sdnotify.adopt_watchdog() == 2.0
    assert os.environ["WATCHDOG_PID"] == str(os.getpid())


def test_adopt_watchdog_without_watchdog_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.adopt_watchdog() is None
    assert "WATCHDOG_PID" not in os.environ
