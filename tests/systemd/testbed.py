"""The Python side of scripts/systemd-testbed.sh: prepare the cached rootfs, boot a container
running a real systemd 252, run commands in it and read a unit's state.

Every wait here polls a condition against a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..waiting import wait_until as _wait_until

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "systemd-testbed.sh"
POLL = 0.1


class Unavailable(Exception):
    """The testbed cannot run on this machine at all (the tests skip with this reason)."""


def wait_until(predicate, timeout: float, what: str):
    """Poll `predicate` (every POLL seconds: systemctl calls are not free) until it returns
    something true; that value, or AssertionError."""
    return _wait_until(predicate, timeout, what, poll=POLL)


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def prepare() -> None:
    """Install the host tools and build (or reuse) the cached rootfs. Raises Unavailable only
    when the testbed truly cannot run here; any other failure is an error for the caller."""
    if os.geteuid() != 0:
        raise Unavailable("needs root (systemd-nspawn, nsenter, cgroups)")
    if not shutil.which("systemd-nspawn"):
        result = _script("install", timeout=900)
        if result.returncode != 0 or not shutil.which("systemd-nspawn"):
            raise Unavailable("systemd-nspawn is missing and could not be installed "
                              f"(`{SCRIPT.name} install`): {result.stderr.strip()[-500:]}")
    result = _script("build", timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"`{SCRIPT.name} build` failed:\n{result.stderr[-3000:]}")


class Container:
    """One booted throw-away container (see the script's header for what is inside)."""

    def __init__(self, name: str):
        self.name = name

    def boot(self) -> None:
        result = _script("boot", self.name, timeout=180)
        if result.returncode != 0:
            raise RuntimeError(f"booting {self.name} failed:\n{result.stderr[-3000:]}")

    def stop(self) -> None:
        _script("stop", self.name, timeout=120)

    def run(self, *argv: str, input: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """Run argv inside the container; stdout and stderr as text."""
        result = subprocess.run([str(SCRIPT), "exec", self.name, *argv], input=input,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)!r} exited {result.returncode} in {self.name}:\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def sh(self, script: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run("sh", "-ec", script, **kwargs)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """`systemctl show -p ...` as a dict, e.g. show("baton.service", "MainPID", "SubState")."""
        out = self.run("systemctl", "show", "-p", ",".join(props), unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal_cursor(self) -> str:
        out = self.run("journalctl", "-n", "0", "--show-cursor", "--no-pager").stdout
        return out.strip().rsplit("-- cursor: ", 1)[-1]

    def journal(self, after_cursor: str, *args: str) -> str:
        """Journal lines after the cursor, once journald has taken everything sent so far."""
        self.run("journalctl", "--sync")
        return self.run("journalctl", "--no-pager", "-o", "short-monotonic",
                        f"--after-cursor={after_cursor}", *args).stdout

    def pid_alive(self, pid: int) -> bool:
        return self.run("test", "-d", f"/proc/{pid}", check=False).returncode == 0
