"""Upstream servers (iperf3 -s, nginx) and load generators (iperf3 -c, wrk) for the benchmark.

All of them run on the load CPU; the proxy under test has the other CPU to itself.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from procs import HOST, BenchError, Proc, require_tool, start, wait_listening

APT_HINT = "run `make bench` (it apt-installs haproxy, iperf3, wrk and nginx-light)"

# The response body for the connection-rate figure: 1 KiB, so each connection moves a request
# one way and 1 KiB the other way before it closes.
BODY_BYTES = 1024


# ---- upstream servers -------------------------------------------------------------------------

def start_iperf3_server(port: int, cpu: int, workdir: Path) -> Proc:
    iperf3 = require_tool("iperf3", APT_HINT)
    proc = start("iperf3-server", [iperf3, "-s", "-B", HOST, "-p", str(port)], cpu, workdir)
    wait_listening(proc, port, deadline_s=10)
    return proc


def nginx_conf(port: int, workdir: Path, host: str = HOST, access_log: bool = False) -> str:
    """`host=""` listens on every address (inside a namespace); `access_log` writes one client
    address per request to <workdir>/access.log (bench/intercept.py counts bypasses with it)."""
    body = "x" * (BODY_BYTES - 1) + "\n"
    # One worker and no keepalive: every request is a fresh connection that nginx closes.
    # Every path nginx might write to points into the temp dir, so it never touches /var.
    log = (f"log_format src $remote_addr; access_log {workdir}/access.log src buffer=64k flush=100ms;"
           if access_log else "access_log off;")
    listen = f"{host}:{port}" if host else str(port)
    return f"""
daemon off;
master_process on;
worker_processes 1;
user root;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
    {log}
    keepalive_timeout 0;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    fastcgi_temp_path {workdir}/nginx-fastcgi;
    uwsgi_temp_path {workdir}/nginx-uwsgi;
    scgi_temp_path {workdir}/nginx-scgi;
    server {{
        listen {listen} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"""


def start_nginx(port: int, cpu: int, workdir: Path) -> Proc:
    nginx = require_tool("nginx", APT_HINT)
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(port, workdir))
    # -e: send startup errors to our log instead of the packaged /var/log path.
    proc = start("nginx", [nginx, "-p", str(workdir), "-c", str(conf), "-e", "stderr"], cpu, workdir)
    wait_listening(proc, port, deadline_s=10)
    return proc


# ---- load generators --------------------------------------------------------------------------

@dataclass
class LoadResult:
    value: float        # bits/s for iperf3, requests (= connections) per second for wrk
    unit: str
    errors: str = ""    # non-empty when the client saw errors; the run is still reported


def _run_client(argv: list[str], timeout_s: float, what: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # subprocess.run kills the child (by its pid) before raising.
        raise BenchError(f"{what} did not finish within {timeout_s:.0f}s")
    if done.returncode != 0:
        raise BenchError(f"{what} failed (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[-800:]}")
    return done.stdout


def iperf3_client(port: int, streams: int, duration: int, cpu: int) -> LoadResult:
    """Bulk transfer client -> proxy -> iperf3 -s; returns the receiver-side bits/s."""
    iperf3 = require_tool("iperf3", APT_HINT)
    taskset = require_tool("taskset", "install util-linux")
    # -Z (sendfile) keeps the sender cheap on the shared load CPU; -J gives parseable output.
    argv = [taskset, "-c", str(cpu), iperf3, "-c", HOST, "-p", str(port), "-t", str(duration),
            "-P", str(streams), "-Z", "-J", "--connect-timeout", "5000"]
    out = _run_client(argv, duration + 30, f"iperf3 -c -P {streams}")
    try:
        report = json.loads(out)
    except json.JSONDecodeError:
        raise BenchError(f"iperf3 printed no JSON: {out[-400:]}")
    if "error" in report:
        raise BenchError(f"iperf3: {report['error']}")
    return LoadResult(report["end"]["sum_received"]["bits_per_second"], "bit/s")


_REQS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_SOCKET_ERRORS = re.compile(r"Socket errors:.*$", re.M)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")


def wrk_close(port: int, duration: int, threads: int, connections: int, cpu: int) -> LoadResult:
    """New-connection rate: every request carries `Connection: close`, so requests/s from wrk
    is connections/s through the proxy (connect, request, 1 KiB response, close)."""
    wrk = require_tool("wrk", APT_HINT)
    taskset = require_tool("taskset", "install util-linux")
    argv = [taskset, "-c", str(cpu), wrk, "-t", str(threads), "-c", str(connections),
            "-d", f"{duration}s", "--timeout", "5s", "-H", "Connection: close",
            f"http://{HOST}:{port}/"]
    out = _run_client(argv, duration + 30, "wrk")
    m = _REQS.search(out)
    if not m:
        raise BenchError(f"wrk printed no Requests/sec: {out[-400:]}")
    errors = [e.group(0).strip() for e in [_SOCKET_ERRORS.search(out)] if e]
    non2xx = _NON_2XX.search(out)
    if non2xx:
        errors.append(f"non-2xx responses: {non2xx.group(1)}")
    return LoadResult(float(m.group(1)), "conn/s", "; ".join(errors))
