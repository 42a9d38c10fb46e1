"""The three proxies under test, each configured as the same L4 setup.

Every proxy gets two TCP-proxy listeners (one in front of iperf3 -s for bulk throughput, one in
front of nginx for the connection rate) and an HTTP readiness endpoint. Baton and Envoy read the
very same Envoy v3 bootstrap file; HAProxy gets the equivalent `mode tcp` configuration.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from procs import HOST, BenchError, Proc, require_tool, start, stop, wait_http_ok
from loads import APT_HINT

REPO = Path(__file__).resolve().parent.parent
BATON = REPO / ".venv" / "bin" / "baton"
ENVOY = REPO / ".venv-envoy" / "bin" / "envoy"
ENVOY_VENV_SCRIPT = REPO / "scripts" / "envoy-venv.sh"

# Baton is Python and forks its workers after it has parsed the config; give it more time.
READY_DEADLINE_S = {"baton": 60.0, "haproxy": 15.0, "envoy": 30.0}


@dataclass
class Ports:
    ready: int          # admin (Baton, Envoy) or monitor frontend (HAProxy)
    bulk: int           # proxy listener in front of iperf3 -s
    conn: int           # proxy listener in front of nginx
    iperf3: int         # upstream iperf3 -s
    nginx: int          # upstream nginx


# ---- Envoy v3 bootstrap (Baton and Envoy) -----------------------------------------------------

def _listener(name: str, port: int, cluster: str) -> str:
    return f"""
  - name: {name}
    address:
      socket_address: {{address: {HOST}, port_value: {port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: {cluster}"""


def _cluster(name: str, port: int) -> str:
    return f"""
  - name: {name}
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: {HOST}, port_value: {port}}}"""


def envoy_bootstrap(ports: Ports) -> str:
    # Only fields that both Envoy and Baton implement: admin, static tcp_proxy listeners and
    # STATIC clusters. No access logs or stats sinks, so neither does extra work per connection.
    return (
        f"""admin:
  address:
    socket_address: {{address: {HOST}, port_value: {ports.ready}}}
static_resources:
  listeners:"""
        + _listener("bulk", ports.bulk, "iperf3")
        + _listener("conn", ports.conn, "nginx")
        + "\n  clusters:"
        + _cluster("iperf3", ports.iperf3)
        + _cluster("nginx", ports.nginx)
        + "\n"
    )


# ---- HAProxy -----------------------------------------------------------------------------------

# HAProxy's kernel splicing (socket -> pipe -> socket, no copy to user space). "always" is its
# strongest L4 setup and the one that matches Baton's splice(2) data path; "auto" splices only
# when HAProxy guesses it pays off (on loopback that halved its 4-stream throughput per core).
HAPROXY_SPLICE = {
    "always": "    option splice-request\n    option splice-response\n",
    "auto": "    option splice-auto\n",
    "off": "",
}


def haproxy_cfg(ports: Ports, splice: str) -> str:
    # nbthread 1: one worker thread, the same budget as Baton's and Envoy's single worker.
    # The timeouts only need to outlast iperf3's idle control connection during a run.
    splice_line = HAPROXY_SPLICE[splice]
    return f"""global
    nbthread 1
    maxconn 4000

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
{splice_line}
frontend ready
    mode http
    bind {HOST}:{ports.ready}
    monitor-uri /ready

frontend bulk
    bind {HOST}:{ports.bulk}
    default_backend iperf3

frontend conn
    bind {HOST}:{ports.conn}
    default_backend nginx

backend iperf3
    server iperf3 {HOST}:{ports.iperf3}

backend nginx
    server nginx {HOST}:{ports.nginx}
"""


# ---- launching -------------------------------------------------------------------------------

def envoy_binary() -> Path:
    """The envoy console script from .venv-envoy, created on first use (idempotent)."""
    if not ENVOY.exists():
        done = subprocess.run([str(ENVOY_VENV_SCRIPT)], capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0 or not ENVOY.exists():
            raise BenchError(f"could not create .venv-envoy with {ENVOY_VENV_SCRIPT}: "
                             f"{done.stderr.strip()[-600:]}")
    return ENVOY


def baton_binary(path: Path = BATON) -> Path:
    if not path.exists():
        raise BenchError(f"{path} not found; run `make install` first")
    return path


@dataclass
class Options:
    haproxy_splice: str = "always"    # a key of HAPROXY_SPLICE
    baton: Path = BATON     # another `baton` executable can be measured with --baton


def _argv(name: str, ports: Ports, workdir: Path, opts: Options) -> list[str]:
    if name == "haproxy":
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(haproxy_cfg(ports, opts.haproxy_splice))
        # -db: stay in the foreground, so the pid we hold is the proxy itself.
        return [require_tool("haproxy", APT_HINT), "-db", "-f", str(cfg)]
    bootstrap = workdir / "bootstrap.yaml"
    bootstrap.write_text(envoy_bootstrap(ports))
    if name == "envoy":
        # The console script execs the real binary, so the pid stays Envoy's.
        # --disable-hot-restart: no shared-memory segment to clash with another Envoy.
        return [str(envoy_binary()), "-c", str(bootstrap), "--concurrency", "1",
                "--disable-hot-restart", "--log-level", "warning"]
    if name == "baton":
        return [str(baton_binary(opts.baton)), "run", "-c", str(bootstrap), "--concurrency", "1",
                "--log-level", "warning"]
    raise BenchError(f"unknown proxy {name!r}")


def launch(name: str, ports: Ports, cpu: int, workdir: Path, opts: Options) -> Proc:
    """Start proxy `name` pinned to `cpu` and return once its readiness URL answers 200.

    The caller stops the returned Proc; if readiness fails, this stops it itself.
    """
    proc = start(name, _argv(name, ports, workdir, opts), cpu, workdir)
    try:
        wait_http_ok(proc, f"http://{HOST}:{ports.ready}/ready", READY_DEADLINE_S[name])
    except BaseException:
        stop(proc)
        raise
    return proc


# ---- versions, for RESULTS.md -------------------------------------------------------------------

def _first_line(argv: list[str], pattern: str = r".+") -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (done.stdout + "\n" + done.stderr).strip()
    m = re.search(pattern, text)
    return m.group(0).strip() if m else (text.splitlines() or ["unknown"])[0]


def tool_versions() -> dict[str, str]:
    import platform
    import shutil

    def have(tool: str) -> bool:
        return shutil.which(tool) is not None

    versions = {"python": platform.python_version()}
    versions["haproxy"] = _first_line(["haproxy", "-v"], r"HAProxy version \S+") if have("haproxy") else "missing"
    versions["envoy"] = (_first_line([str(ENVOY), "--version"], r"version: \S+")
                         if ENVOY.exists() else "missing")
    versions["iperf3"] = _first_line(["iperf3", "--version"], r"iperf \S+") if have("iperf3") else "missing"
    versions["wrk"] = _first_line(["wrk", "-v"], r"wrk \S+") if have("wrk") else "missing"
    versions["nginx"] = _first_line(["nginx", "-v"], r"nginx/\S+") if have("nginx") else "missing"
    try:
        # The version of the tree that runs (an editable install's package metadata keeps the
        # version of its last `pip install`: the bench said 0.2.0 on 0.3.0).
        from baton.supervisor.version import VERSION
        versions["baton"] = VERSION
    except Exception:
        versions["baton"] = "unknown"
    return versions
