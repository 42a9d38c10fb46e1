"""HTTP connections through `baton reload` (issue 4, point 6), with real clients.

HTTP/1.1 keep-alive connections move to the new generation (an idle one at once, one whose
request has arrived at once too, its response forwarded from the old worker), so wrk never sees
an error or a closed connection. HTTP/2 connections move with their codec state at a moment
with no stream open (h2move.py), so h2load and grpcio see no GOAWAY and no failed request.
Each test goes through 20 reloads under load.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Baton, free_port, http_bootstrap, start_ready_process, wait_until

GRPC_ECHO = Path(__file__).resolve().parent / "grpc_echo.py"
RELOADS = 20

pytestmark = pytest.mark.skipif(not shutil.which("wrk") or not shutil.which("h2load"),
                                reason="needs wrk and h2load (make test installs them)")


@pytest.fixture
def baton_http(tmp_path, recorder):
    port = free_port()
    baton = Baton(tmp_path / "baton", http_bootstrap(free_port(), port, recorder), concurrency=2)
    baton.start()
    baton.port = port
    yield baton
    baton.stop()


def reload_and_settle(baton: Baton) -> None:
    old = baton.master_pid()
    result = baton.reload()
    assert result.returncode == 0, result.stdout + result.stderr
    baton.wait_previous_gone(old, timeout=60)


def requests_served(baton: Baton) -> int:
    return baton.stats().get("http.ingress_http.downstream_rq_total", 0)


def test_wrk_keepalive_through_20_reloads(baton_http):
    wrk = subprocess.Popen(["wrk", "-t1", "-c16", "-d300s", f"http://127.0.0.1:{baton_http.port}/"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: requests_served(baton_http) > 100, 30, "wrk's requests flowing")
        for _ in range(RELOADS):
            reload_and_settle(baton_http)
            before = requests_served(baton_http)
            wait_until(lambda: requests_served(baton_http) > before + 50, 30,
                       "requests flowing on the new generation")
    finally:
        wrk.send_signal(signal.SIGINT)           # wrk prints its summary and exits
        out, _ = wrk.communicate(timeout=30)
    done = int(re.search(r"(\d+) requests in", out).group(1))
    assert done > 1000, out
    assert "Socket errors" not in out, out
    assert "Non-2xx" not in out, out
    assert "Traceback" not in baton_http.log


@pytest.fixture
def grpc_upstream():
    proc, port = start_ready_process([sys.executable, str(GRPC_ECHO), "server"])
    yield port
    proc.kill()
    proc.wait(10)


def test_grpc_client_sees_no_failure_through_20_reloads(tmp_path, grpc_upstream):
    """HTTP/2 end to end (grpcio client -> Baton -> grpcio server on an HTTP/2 cluster):
    client connections move with their HTTP/2 state (and would drain by the two-phase GOAWAY
    if they could not), and the grpcio client never sees a failed call."""
    port = free_port()
    bootstrap = http_bootstrap(free_port(), port, grpc_upstream)
    bootstrap["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    baton = Baton(tmp_path / "baton", bootstrap, concurrency=2).start()
    baton.port = port
    stop = tmp_path / "stop"
    client = subprocess.Popen([sys.executable, str(GRPC_ECHO), "client", str(port), str(stop), "240"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "started"
        wait_until(lambda: requests_served(baton) > 100, 30, "gRPC calls flowing")
        for _ in range(RELOADS):
            reload_and_settle(baton)
            before = requests_served(baton)
            wait_until(lambda: requests_served(baton) > before + 50, 30,
                       "gRPC calls flowing on the new generation")
    finally:
        stop.touch()
        out, _ = client.communicate(timeout=60)
        baton.stop()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["failed"] == 0, result
    assert result["ok"] > 1000 and result["streams"] > 20, result
    assert "Traceback" not in baton.log


def _moves_short_of_all(log: str) -> str:
    """Baton's log lines that say why a client could have seen a GOAWAY: a worker that moved
    fewer connections than it held (the rest drained, or closed while it waited: h2move.py's
    HOLD_LIMIT), and every warning or error. Shown with a failed run, so that a flaky failure
    carries its cause."""
    lines = []
    for line in log.splitlines():
        moved = re.search(r"moved (\d+) of (\d+) connection", line)
        if (moved and moved.group(1) != moved.group(2)) or "][WARNING][" in line or \
                "][ERROR][" in line:
            lines.append(line)
    return "\n".join(lines[-40:])


def _h2load_summary(out: str, run: str) -> None:
    summary = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                        r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    assert summary, out
    total, started, done, succeeded, failed, errored, timeouts = map(int, summary.groups())
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert codes, out
    assert int(codes.group(1)) == succeeded > 0, f"run {run}: {out}"
    assert codes.groups()[1:] == ("0", "0", "0"), f"run {run}: {out}"
    assert (failed, errored, timeouts) == (0, 0, 0), f"run {run}: {out}"


def h2load_seconds(slowest_reload: float) -> int:
    """How long one h2load run lasts: 10 s, or room for three of the slowest reloads seen so
    far (at most 60 s). A reload that h2load's run ends in does not count, and on a loaded
    machine a reload nears 10 s (8.9 s from `baton reload` to the old master's exit, measured
    with two busy loops beside the other engineers' tests on the 2-core machine): runs of a
    fixed 10 s then fitted one reload or none, and the test failed on its bound of runs, not on
    anything Baton did (twice at load 20 with a bound of 20 runs: "only 19 reloads finished
    while h2load ran")."""
    return min(60, max(10, math.ceil(3 * slowest_reload)))


def test_h2load_through_20_reloads(baton_http):
    """h2load (-c10 -m10) while reloading: its HTTP/2 connections move to the new generation
    with their codec state (worker/proxy/http/h2move.py) instead of draining by GOAWAY, so
    h2load counts no failed request (before, ~50 over 20 reloads: the requests it could not
    start after a GOAWAY), every answer is 2xx and nothing times out. Runs of 10 s or more
    (h2load_seconds), as many reloads in each as finish while it runs, until 20 reloads
    happened under load."""
    under_load, run, slowest = 0, 0, 0.0
    while under_load < RELOADS:
        run += 1
        # A bound on the loop, not a figure: a reload that h2load's run ends in does not count.
        assert run <= 3 * RELOADS, f"only {under_load} reloads finished while h2load ran"
        seconds = h2load_seconds(slowest)
        h2load = subprocess.Popen(["h2load", "-c10", "-m10", "-D", str(seconds),
                                   f"http://127.0.0.1:{baton_http.port}/"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            before = requests_served(baton_http)
            wait_until(lambda: requests_served(baton_http) > before + 20, 30, "h2load's requests flowing")
            while under_load < RELOADS:
                started = time.monotonic()
                reload_and_settle(baton_http)
                slowest = max(slowest, time.monotonic() - started)
                if h2load.poll() is not None:
                    break
                under_load += 1
        finally:
            out, _ = h2load.communicate(timeout=seconds + 60)
        _h2load_summary(out, f"run {run}, Baton's moves short of all:\n"
                        f"{_moves_short_of_all(baton_http.log)}")
    moved = sum(int(n) for n in re.findall(r"worker \d+: moved (\d+) of", baton_http.log))
    assert moved >= RELOADS * 10 * 3 // 4, \
        f"only {moved} connection(s) moved:\n{_moves_short_of_all(baton_http.log)}"
    assert "Traceback" not in baton_http.log
