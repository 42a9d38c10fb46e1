"""Whether a receiver whose channel closed unanswered has died, read from /proc at once
(supervisor/handoff/unix.doomed, worker/batch_ownership.py): a dying process closes its files
before its pidfd polls readable, so a fixed wait for the pidfd took a receiver slow to be
seen exited for alive (its batch let go: lost), and cost every live one that wait."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from baton.supervisor.handoff import unix
from baton.worker import batch_ownership


def _stat(state: str = "S", flags: int = 0x400000, comm: str = "python3") -> bytes:
    # pid (comm) state ppid pgrp session tty_nr tpgid flags ...
    return f"4242 ({comm}) {state} 1 4242 4242 0 -1 {flags} 10 0 0 0".encode()


def _status(sigpnd: int = 0, shdpnd: int = 0) -> bytes:
    return (f"Name:\tpython3\nState:\tS (sleeping)\nSigQ:\t0/63431\n"
            f"SigPnd:\t{sigpnd:016x}\nShdPnd:\t{shdpnd:016x}\nSigBlk:\t0000000000000000\n").encode()


@pytest.mark.parametrize("stat, status, doomed", [
    (_stat(), _status(), False),                                    # runs
    (_stat(state="R", comm="a ) b (c"), _status(), False),          # comm with parentheses
    (_stat(flags=0x400000 | unix.PF_EXITING), _status(), True),     # in do_exit
    (_stat(state="Z"), _status(), True),                            # a zombie
    (_stat(), _status(sigpnd=1 << 8), True),                        # SIGKILL sent to it
    (_stat(), _status(shdpnd=1 << 8), True),                        # SIGKILL to its process
    (_stat(), _status(sigpnd=1 << 14), False),                      # SIGTERM: may be caught
], ids=["runs", "comm", "exiting", "zombie", "killed", "group-killed", "terminated"])
def test_a_thread_is_doomed_when_it_can_no_longer_return_to_user_space(stat, status, doomed):
    assert unix.thread_doomed(stat, status) is doomed


@pytest.fixture
def child():
    proc = subprocess.Popen(["sleep", "30"])
    pidfd = os.pidfd_open(proc.pid)
    yield proc, pidfd
    os.close(pidfd)
    proc.kill()
    proc.wait()


def test_a_live_receiver_is_known_alive_at_once(child):
    """CLAIMED_EXIT_WAIT is not waited for: /proc says it runs."""
    proc, pidfd = child
    assert unix.doomed(proc.pid) is False
    runs = asyncio.run(asyncio.wait_for(
        batch_ownership._exits_within(pidfd, 30.0, proc.pid), 5))
    assert runs is False


def test_a_dead_receiver_not_yet_reaped_is_dead(child):
    proc, pidfd = child
    proc.kill()
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)      # a zombie, still ours to reap
    assert unix.doomed(proc.pid) is True
    assert asyncio.run(batch_ownership._exits_within(pidfd, 30.0, proc.pid)) is True


def test_a_process_proc_does_not_show_leaves_the_pidfd_to_decide():
    assert unix.doomed(2 ** 22 + 1) is None         # past pid_max: no such /proc entry
