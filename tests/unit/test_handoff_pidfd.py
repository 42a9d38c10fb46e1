"""Whether a receiver (or a previous master) still runs, read from its pidfd
(supervisor/handoff/unix.exited, worker/migration.py): at any descriptor number, an error
never read as "exited", and a hello's pid out of range no pidfd at all."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from baton.supervisor.handoff import unix
from baton.worker import batch_ownership, migration


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


def high_copy(fd: int) -> int:
    """`fd` again at a number past select's FD_SETSIZE (1024), as an old worker holding
    1,000+ connections opens its receiver's pidfd."""
    return os.dup2(fd, 1500)


def test_a_live_process_on_a_pidfd_past_1024_runs(sleeper):
    low = os.pidfd_open(sleeper.pid)
    high = high_copy(low)
    try:
        assert unix.exited(low) is False
        assert unix.exited(high) is False
        sleeper.kill()
        sleeper.wait()
        assert unix.exited(high) is True
    finally:
        os.close(low)
        os.close(high)


def test_a_closed_pidfd_is_an_error_not_an_exit(sleeper):
    fd = os.pidfd_open(sleeper.pid)
    os.close(fd)
    with pytest.raises(OSError):
        unix.exited(fd)


def test_a_claimed_batch_with_a_high_pidfd_of_a_live_receiver_is_its(sleeper):
    low = os.pidfd_open(sleeper.pid)
    high = high_copy(low)
    os.close(low)
    try:
        assert asyncio.run(batch_ownership._exits_within(high, 0.05)) is False
        sleeper.kill()
        sleeper.wait()
        assert asyncio.run(batch_ownership._exits_within(high, 0.05)) is True
    finally:
        os.close(high)


def test_an_unreadable_pidfd_leaves_the_batch_with_the_receiver(sleeper):
    low = os.pidfd_open(sleeper.pid)
    fd = high_copy(low)
    os.close(low)
    os.close(fd)            # a number nothing reuses here (the loop's own take the lowest)
    assert asyncio.run(batch_ownership._exits_within(fd, 0.05)) is False


def test_a_previous_master_on_a_high_pidfd_is_trusted_while_it_runs(sleeper):
    low = os.pidfd_open(sleeper.pid)
    high = high_copy(low)
    os.close(low)
    server = migration.MigrationServer.__new__(migration.MigrationServer)
    server.masters = {sleeper.pid: high}
    try:
        assert server._trusted(sleeper.pid, os.geteuid() + 1) is True
        sleeper.kill()
        sleeper.wait()
        assert server._trusted(sleeper.pid, os.geteuid() + 1) is False
    finally:
        os.close(high)
    server.masters = {sleeper.pid: high}       # closed: not known to run, not trusted
    assert server._trusted(sleeper.pid, os.geteuid() + 1) is False


@pytest.mark.parametrize("pid", [2 ** 31, 2 ** 63, 2 ** 80])
def test_a_hello_pid_out_of_range_has_no_pidfd(pid):
    assert migration._pidfd(pid) is None
