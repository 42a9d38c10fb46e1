"""HTTP connections through `baton reload` (issue 4, point 6), with real clients.

HTTP/1.1 keep-alive connections move to the new generation between requests (an idle one at
once, a busy one once its response is written), so wrk never sees an error or a closed
connection. HTTP/2 connections get the two-phase GOAWAY and drain; h2load, which honours
GOAWAY, sees no failed request. Each test goes through 20 reloads under load.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
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
    client connections drain with the two-phase GOAWAY and grpcio, which honours it, never
    sees a failed call."""
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
    assert result["ok"] > 1000, result
    assert "Traceback" not in baton.log


def test_h2load_through_20_reloads(baton_http):
    """h2load while reloading: every answer 2xx, no timeout. (h2load does not re-send what it
    could not start after a GOAWAY; it counts those as failed, and they never reach Baton.)"""
    failed_locally = 0
    for i in range(RELOADS):
        h2load = subprocess.Popen(["h2load", "-c4", "-m4", "-D", "3", f"http://127.0.0.1:{baton_http.port}/"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            before = requests_served(baton_http)
            wait_until(lambda: requests_served(baton_http) > before + 20, 30, "h2load's requests flowing")
            reload_and_settle(baton_http)
        finally:
            out, _ = h2load.communicate(timeout=60)
        summary = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                            r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
        assert summary, out
        total, started, done, succeeded, failed, errored, timeouts = map(int, summary.groups())
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        assert codes, out
        assert int(codes.group(1)) == succeeded > 0, f"run {i}: {out}"
        assert codes.groups()[1:] == ("0", "0", "0"), f"run {i}: {out}"
        assert timeouts == 0, f"run {i}: {out}"
        failed_locally += failed
    assert "Traceback" not in baton_http.log
    print(f"h2load: {failed_locally} request(s) not started after GOAWAY over {RELOADS} reloads")
