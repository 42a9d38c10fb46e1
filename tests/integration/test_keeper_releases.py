"""The keeper with a previous release (supervisor/keeper.py, README "Upgrade and rollback"): a
keeper-started current Baton is rolled back in place to each release of tests/releases.txt and
upgraded again. The release's master does not announce itself to the keeper, so the keeper
must follow it by itself: SIGHUP sent to the keeper while the release serves is what starts
the upgrade back. A TCP connection held open lives through both reloads."""

from __future__ import annotations

import json
import signal
import socket

import psutil
import pytest

from .. import releases
from .clients import recv_exact
from .conftest import free_port, tcp_bootstrap, wait_until
from .test_upgrade_releases import RELEASES, ReleaseBaton
from .test_upgrade_releases import wheels  # noqa: F401,F811 - the module's fixture, shared


def _serves_version(b: ReleaseBaton, version: str) -> bool:
    result = b.cli("status", "--json")          # fails for a moment while the control socket moves
    return result.returncode == 0 and json.loads(result.stdout)["version"] == version


def _echoes(sock: socket.socket, text: bytes) -> bool:
    sock.sendall(text)
    return recv_exact(sock, len(text)) == text


@pytest.mark.parametrize("release", RELEASES, ids=str)
def test_a_keeper_started_baton_rolls_back_to_a_release_and_follows_it(release, wheels, tmp_path,
                                                                        upstreams):
    current = releases.current_version()
    venv = releases.ReleaseVenv(tmp_path / "venv")
    venv.install(wheels["current"])
    echo = upstreams("echo")
    port = free_port()
    b = ReleaseBaton(venv, tmp_path / "baton", tcp_bootstrap(free_port(), port, [echo.port]),
                     concurrency=1)
    b.start()
    try:
        keeper = b.proc.pid
        assert b.status()["keeper"] == {"pid": keeper}
        held = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert _echoes(held, b"on the current code")

        old = b.master_pid()
        venv.install(wheels[release])
        result = b.reload(timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr + b.log[-3000:]
        b.wait_previous_gone(old, timeout=60)
        status = b.status()
        assert status["version"] == release.version
        assert psutil.Process(status["master"]["pid"]).ppid() == keeper
        assert _echoes(held, b"on the release")

        old = status["master"]["pid"]
        venv.install(wheels["current"])
        b.signal(signal.SIGHUP)                 # the keeper follows the release's master
        wait_until(lambda: _serves_version(b, current), 60, "the upgrade back", poll=0.2)
        b.wait_previous_gone(old, timeout=60)
        status = b.status()
        assert status["keeper"] == {"pid": keeper}
        assert psutil.Process(status["master"]["pid"]).ppid() == keeper
        assert _echoes(held, b"back on the current code")
        held.close()
        b.signal(signal.SIGTERM)
        assert b.wait(30) == 0
        assert "Traceback" not in b.log, b.log[-3000:]
    finally:
        b.stop()
