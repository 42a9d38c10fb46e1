"""systemd/baton.service under a real systemd 252 (Debian 12), in a systemd-nspawn container
booted by scripts/systemd-testbed.sh from a cached rootfs, running this checkout's code.

Needs root; the first run installs systemd-container/debootstrap and builds the rootfs (about
two minutes), later runs reuse it. Skips (with the reason) only when the testbed cannot run at
all: not root, or no systemd-nspawn and it cannot be installed.

What the unit promises, and what is checked here:
- start: Type=notify, active once the master sends READY=1; MainPID is the master; the
  DynamicUser master holds CAP_NET_BIND_SERVICE + CAP_NET_ADMIN (it binds port 80).
- stop: SIGTERM to the master, a graceful drain, exit status 0, no SIGKILL.
- reload (`ExecReload=baton reload`): a new master takes over MainPID; a broken bootstrap
  makes `systemctl reload` fail while the old master keeps serving; the watchdog holds across
  the hand-over; a stop after a reload is still graceful (the new master is not "alien").
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import CAP_NET_ADMIN, CAP_NET_BIND_SERVICE, UNIT
from .testbed import REPO, wait_until

ECHO = "hello through baton\n"
SHIPPED_BATON = "/usr/local/bin/baton"


# -- the unit file -----------------------------------------------------------------------------

def test_unit_file_verifies_on_the_host(tmp_path):
    """`systemd-analyze verify` prints nothing. It only warns (rc 0) on unknown keys, so any
    output is a failure. verify insists that ExecStart= exists, and the host has no
    /usr/local/bin/baton: check a copy whose commands point at this venv's `baton` instead."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: package systemd)")
    venv_baton = Path(sys.executable).parent / "baton"
    assert venv_baton.exists(), f"{venv_baton} missing: is the project installed in the venv?"
    unit = (REPO / "systemd" / "baton.service").read_text()
    assert SHIPPED_BATON in unit
    (tmp_path / UNIT).write_text(unit.replace(SHIPPED_BATON, str(venv_baton)))
    result = subprocess.run([analyze, "verify", str(tmp_path / UNIT)], capture_output=True, text=True)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_unit_file_verifies_in_the_container(container):
    """The same, unmodified, where /usr/local/bin/baton exists (with the test drop-in)."""
    result = container.run("systemd-analyze", "verify", f"/etc/systemd/system/{UNIT}", check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# -- start and stop ----------------------------------------------------------------------------

def test_start_becomes_active_with_the_master_as_main_pid(baton):
    pid = baton.start()
    status = baton.status()
    assert status["master"]["pid"] == pid, baton.state()
    assert baton.comm(pid) == "baton: master"
    assert len(status["workers"]) == 2
    assert {CAP_NET_BIND_SERVICE, CAP_NET_ADMIN} <= baton.ambient_caps(pid)
    assert baton.probe() == ECHO
    assert baton.show("NRestarts")["NRestarts"] == "0"


def test_stop_is_graceful(baton):
    baton.start()
    assert_graceful_stop(baton)


def assert_graceful_stop(baton):
    result = baton.stop()
    assert result.returncode == 0, result.stderr
    assert baton.show("ActiveState")["ActiveState"] == "inactive"
    # How it ended comes from the journal: once inactive, the unit may be garbage-collected and
    # `systemctl show` then reports defaults (ExecMainCode=0, Result=success) whatever happened.
    journal = baton.journal()
    assert f"{UNIT}: Deactivated successfully." in journal, journal     # Result=success
    for sign in ("SIGKILL", "Failed with result", "Main process exited",   # the last: not 0
                 "not our child"):              # an "alien" MainPID would lose its SIGTERM
        assert sign not in journal, f"{sign!r} in the journal:\n{journal}"
    assert "draining" in journal, journal       # the master handled SIGTERM itself


# -- reload (hot upgrade) ---------------------------------------------------------------------

def assert_reloaded(baton, old_pid: int, old_generation: int) -> int:
    """`systemctl reload` succeeded: a new master is MainPID, serving, and the old one exits."""
    result = baton.reload()
    assert result.returncode == 0, f"systemctl reload failed: {result.stderr}\n{baton.journal()}"
    # `baton reload` returns after the commit point, and the new master's BARRIER=1 made systemd
    # take its MAINPID= before that: no polling needed for MainPID itself.
    new_pid = baton.main_pid()
    assert new_pid not in (0, old_pid), f"MainPID did not change: {baton.state()}\n{baton.journal()}"
    s = baton.show("ActiveState", "SubState")
    assert (s["ActiveState"], s["SubState"]) == ("active", "running"), baton.state()
    status = baton.status()
    assert (status["master"]["pid"], status["master"]["generation"]) == (new_pid, old_generation + 1)
    assert baton.probe() == ECHO
    # The old master drains (no connections here) and exits: --drain-timeout 5 in the drop-in.
    wait_until(lambda: not baton.box.pid_alive(old_pid), 15, f"the old master {old_pid} to exit")
    assert {CAP_NET_BIND_SERVICE, CAP_NET_ADMIN} <= baton.ambient_caps(new_pid)
    assert baton.show("NRestarts")["NRestarts"] == "0"
    return new_pid


def test_reload_hands_main_pid_to_the_new_master(baton):
    pid = baton.start()
    pid = assert_reloaded(baton, pid, old_generation=1)
    assert_reloaded(baton, pid, old_generation=2)           # and again, from the new master
    assert "not our child" not in baton.journal()


def test_failed_reload_keeps_the_old_master(baton):
    pid = baton.start()
    baton.write_bootstrap("static_resources: [this is not\n")
    result = baton.reload()
    assert result.returncode != 0, f"systemctl reload succeeded on a broken bootstrap\n{baton.journal()}"
    # Rolled back: no new MainPID, and not left in "reloading" (the old master sends READY=1).
    wait_until(lambda: baton.show("SubState")["SubState"] == "running", 5,
               f"SubState running after the failed reload ({baton.state()})")
    s = baton.show("MainPID", "ActiveState", "NRestarts")
    assert s == {"MainPID": str(pid), "ActiveState": "active", "NRestarts": "0"}, baton.journal()
    status = baton.status()
    assert (status["master"]["pid"], status["master"]["generation"]) == (pid, 1)
    assert baton.probe() == ECHO
    # `baton reload` said why (its output goes to the journal as ExecReload's).
    assert re.search(r"bootstrap|yaml|config", baton.journal(), re.I), baton.journal()
    # Nothing is left half-done: with the bootstrap fixed, the next reload works.
    baton.write_bootstrap(baton.box.run("cat", "/opt/baton-src/tests/systemd/bootstrap.yaml").stdout)
    assert_reloaded(baton, pid, old_generation=1)


def test_stop_after_reload_is_graceful(baton):
    """The new master was reparented to PID 1 before MAINPID=, so systemd waits for it on stop
    instead of SIGKILLing it at once (the 'alien main PID' trap, recipes/systemd/REPORT.md)."""
    pid = baton.start()
    assert_reloaded(baton, pid, old_generation=1)
    assert_graceful_stop(baton)


def test_watchdog_holds_before_and_after_reload(baton):
    pid = baton.start()
    watchdog = parse_seconds(baton.show("WatchdogUSec")["WatchdogUSec"])   # "infinity" until started
    assert 0 < watchdog <= 10, "the test drop-in sets a short WatchdogSec"
    assert_stays_running(baton, pid, watchdog + 1)          # generation 1 pings
    pid = assert_reloaded(baton, pid, old_generation=1)     # ... returns once the old one is gone
    assert_stays_running(baton, pid, 2 * watchdog + 1)      # the new master alone pings
    journal = baton.journal()
    assert "Watchdog timeout" not in journal, journal


def assert_stays_running(baton, pid: int, seconds: float) -> None:
    """Watch the unit for `seconds` (the watchdog must have had the chance to fire)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s = baton.show("MainPID", "ActiveState", "SubState", "NRestarts")
        assert s == {"MainPID": str(pid), "ActiveState": "active", "SubState": "running",
                     "NRestarts": "0"}, f"{s}\n{baton.journal()}"
        time.sleep(0.5)


def parse_seconds(value: str) -> float:
    """systemd's timespan as `systemctl show` prints it: '3s', '1min 30s', '500ms'."""
    units = {"min": 60, "ms": 0.001, "us": 1e-6, "s": 1, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)\s*(min|ms|us|s|h)", value):
        total += float(number) * units[unit]
    return total
