"""Fixtures for the systemd tests: one container per module (real systemd 252, booted by
scripts/systemd-testbed.sh), and a clean baton.service in it for every test."""

from __future__ import annotations

import json
import os

import pytest

from .testbed import Container, Unavailable, prepare, wait_until

UNIT = "baton.service"
SRC = "/opt/baton-src"                  # the checkout, bind-mounted read-only
BOOTSTRAP = "/etc/baton/bootstrap.yaml"
PROXY_PORT, UPSTREAM_PORT = 80, 10001   # tests/systemd/bootstrap.yaml
START_TIMEOUT = 30                      # well below the unit's TimeoutStartSec=90,
RELOAD_TIMEOUT = 30                     # which applies to reloads too
CAP_NET_BIND_SERVICE, CAP_NET_ADMIN = 10, 12


@pytest.fixture(scope="module")
def container():
    try:
        prepare()
    except Unavailable as exc:
        pytest.skip(f"systemd testbed unavailable: {exc}")
    box = Container(f"baton-sdtest-{os.getpid()}")
    box.boot()
    try:
        box.run("systemd-run", "--unit=echo-upstream", "/usr/bin/python3",
                f"{SRC}/tests/systemd/echo.py", "serve", str(UPSTREAM_PORT))
        wait_until(lambda: f":{UPSTREAM_PORT} " in box.run("ss", "-Hltn").stdout, 10,
                   "the echo upstream to listen")
        yield box
    finally:
        box.stop()


@pytest.fixture
def baton(container):
    unit = BatonUnit(container)
    unit.reset()
    yield unit
    unit.reset()


class BatonUnit:
    """baton.service inside the container, and what the tests ask of it."""

    def __init__(self, container: Container):
        self.box = container
        self.cursor = container.journal_cursor()

    def reset(self) -> None:
        """Stopped, no failed state, the test bootstrap in place; journal read from here on."""
        self.box.run("systemctl", "stop", UNIT, timeout=90)
        self.box.run("systemctl", "reset-failed", UNIT, check=False)
        self.write_bootstrap(self.box.run("cat", f"{SRC}/tests/systemd/bootstrap.yaml").stdout)
        self.cursor = self.box.journal_cursor()

    # -- systemd's view ------------------------------------------------------------------

    def show(self, *props: str) -> dict[str, str]:
        return self.box.show(UNIT, *props)

    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])

    def journal(self) -> str:
        return self.box.journal(self.cursor, "-u", UNIT)

    def state(self) -> str:
        s = self.show("MainPID", "ActiveState", "SubState", "Result", "NRestarts", "StatusText")
        return " ".join(f"{k}={v}" for k, v in sorted(s.items()))

    def start(self) -> int:
        """Start without blocking on systemd's 90 s timeout; the MainPID once active/running."""
        self.box.run("systemctl", "start", "--no-block", UNIT)

        def settled():
            s = self.show("ActiveState", "SubState")
            return s["ActiveState"] != "activating" and s
        try:
            s = wait_until(settled, START_TIMEOUT, f"{UNIT} to leave 'activating'")
        except AssertionError:
            raise AssertionError(f"{UNIT} still activating after {START_TIMEOUT}s: systemd never got "
                                 f"READY=1 from the master\n{self.journal()}") from None
        assert (s["ActiveState"], s["SubState"]) == ("active", "running"), \
            f"{UNIT} did not start: {self.state()}\n{self.journal()}"
        return self.main_pid()

    def reload(self):
        """`systemctl reload`, given up (rc 124) after RELOAD_TIMEOUT rather than the unit's 90 s:
        a unit left "reloading" (RELOADING=1 never followed by READY=1) would wait that long."""
        result = self.box.run("timeout", str(RELOAD_TIMEOUT), "systemctl", "reload", UNIT,
                              check=False, timeout=RELOAD_TIMEOUT + 30)
        assert result.returncode != 124, (
            f"systemctl reload did not return within {RELOAD_TIMEOUT}s, {UNIT} is stuck in "
            f"'reloading' (no READY=1 after RELOADING=1?): {self.state()}\n{self.journal()}")
        return result

    def stop(self):
        return self.box.run("systemctl", "stop", UNIT, check=False, timeout=90)

    # -- Baton's view --------------------------------------------------------------------

    def status(self) -> dict:
        """`baton status --json`, as root inside the container (control socket in /run/baton)."""
        return json.loads(self.box.run("baton", "status", "--json").stdout)

    def probe(self) -> str:
        """A line sent through the proxy listener to the echo upstream, and what came back."""
        return self.box.run("python3", f"{SRC}/tests/systemd/echo.py", "probe", str(PROXY_PORT)).stdout

    def ambient_caps(self, pid: int) -> set[int]:
        status = self.box.run("cat", f"/proc/{pid}/status").stdout
        mask = int(next(l.split()[1] for l in status.splitlines() if l.startswith("CapAmb:")), 16)
        return {bit for bit in range(64) if mask >> bit & 1}

    def comm(self, pid: int) -> str:
        return self.box.run("cat", f"/proc/{pid}/comm").stdout.strip()

    def write_bootstrap(self, text: str) -> None:
        self.box.run("sh", "-c", f"cat > {BOOTSTRAP}", input=text)
