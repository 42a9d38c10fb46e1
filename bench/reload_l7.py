"""The HTTP/2, gRPC, slow-response and UDP phases of the reload benchmark (bench/reload.py).

Each phase runs one client load through each proxy for a series of reloads by the proxy's own
mechanism (reload_proxies.py), one worker per proxy pinned to CPU 1, the upstream and the
client on CPU 0, with the same cadence as the L4 load phase: reload, wait until the new
generation serves and the old one has exited, pause, next. During the whole series the memory
of the proxy's process tree is sampled (reload_memory.py), so each reload's overlap (both
generations alive) can be compared with the steady state before it.

  h2    h2load -c10 -m10 (prior-knowledge h2c) to an nginx upstream, in runs of --h2-run s
        back to back (bench/reload_clients.py h2load): failed/errored/timed-out requests, req/s
  grpc  grpcio server-streaming calls (2 s each) and unary calls (bench/reload_grpc.py) to
        tests/integration/grpc_echo.py over an HTTP/2 cluster: failed calls, streams cut
  slow  HTTP/1.1 keep-alive requests answered after 2 s, and 2 s server-sent-event streams,
        from tests/integration/differential/recorder.py (bench/reload_clients.py slow)
  udp   numbered datagrams at a moderate rate over 10 sessions to a UDP echo upstream
        (bench/reload_clients.py udp): datagrams lost. HAProxy has no UDP proxy.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import http_proxies
import udp_bench
from procs import BenchError, Proc, free_port, start, stop, wait_listening
from reload_memory import TreeSampler, overlap_memory
from reload_proxies import (BatonCtl, EnvoyCtl, HaproxyCtl, ReloadResult, describe, haproxy_head,
                            result_dict)

BENCH_DIR = Path(__file__).resolve().parent
INTEGRATION = BENCH_DIR.parent / "tests" / "integration"
PROXY_CPU = 1
LOAD_CPU = 0
PHASES = ["h2", "grpc", "slow", "udp"]
PROXIES = {"h2": ["baton", "haproxy", "envoy"], "grpc": ["baton", "haproxy", "envoy"],
           "slow": ["baton", "haproxy", "envoy"], "udp": ["baton", "envoy"]}
MEMORY_SAMPLE_S = 0.05


def log(msg: str) -> None:
    print(msg, flush=True)


# ---- configs -------------------------------------------------------------------------------------

def http_bootstrap(admin: int, listen: int, upstream: int) -> str:
    """bench/http_proxies.py's L7 bootstrap (HCM, codec AUTO: HTTP/1.1 and h2c on one port)."""
    return http_proxies.envoy_bootstrap(http_proxies.Ports(admin, listen, listen, upstream))


H2_UPSTREAM = """    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
"""


def grpc_bootstrap(admin: int, listen: int, upstream: int) -> str:
    """The same, with the cluster speaking HTTP/2 to the gRPC upstream."""
    text = http_bootstrap(admin, listen, upstream)
    anchor = "    connect_timeout: 5s\n"
    if text.count(anchor) != 1:
        raise BenchError("http_proxies.envoy_bootstrap changed: no single cluster connect_timeout")
    return text.replace(anchor, anchor + H2_UPSTREAM)


def haproxy_http(client_proto: str, server_proto: str):
    """A HaproxyCtl config: `mode http`, the listener (h2c with client_proto "h2") and one server."""
    bind = f" proto {client_proto}" if client_proto else ""
    server = f" proto {server_proto}" if server_proto else ""

    def cfg(workdir: Path, ready_port: int, listen_port: int, upstream_port: int, hard_stop_s: int) -> str:
        return haproxy_head(workdir, ready_port, hard_stop_s, mode="http") + f"""
frontend main
    bind 127.0.0.1:{listen_port}{bind}
    timeout http-keep-alive 120s
    default_backend upstream

backend upstream
    server upstream 127.0.0.1:{upstream_port}{server}
"""
    return cfg


CONFIGS = {
    "h2": {"baton": http_bootstrap, "envoy": http_bootstrap, "haproxy": haproxy_http("h2", "")},
    "grpc": {"baton": grpc_bootstrap, "envoy": grpc_bootstrap, "haproxy": haproxy_http("h2", "h2")},
    "slow": {"baton": http_bootstrap, "envoy": http_bootstrap, "haproxy": haproxy_http("", "")},
    "udp": {"baton": udp_bench.bootstrap, "envoy": udp_bench.bootstrap},
}


def make_ctl(phase: str, name: str, args, d: Path, upstream: int):
    config = CONFIGS[phase][name]
    port = udp_bench.free_udp_port() if phase == "udp" else free_port()
    if name == "baton":
        return BatonCtl(d, port, upstream, 1, str(PROXY_CPU), args.baton, cli_cpu=str(PROXY_CPU), config=config)
    if name == "haproxy":
        return HaproxyCtl(d, port, upstream, str(PROXY_CPU), args.drain, config=config)
    return EnvoyCtl(d, port, upstream, str(PROXY_CPU), args.drain, config=config)


# ---- upstreams -----------------------------------------------------------------------------------

def wait_line(proc: Proc, pattern: str, deadline_s: float) -> re.Match:
    """The first line of the process's log matching `pattern` (its readiness line)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        m = re.search(pattern, proc.log_path.read_text(errors="replace"), re.M)
        if m:
            return m
        if not proc.alive():
            break
        time.sleep(0.05)
    raise BenchError(f"{proc.name} did not print /{pattern}/ within {deadline_s:.0f} s: {proc.log_tail()}")


def start_upstream(phase: str, workdir: Path) -> tuple[Proc, int]:
    """The phase's upstream on the load CPU: (process, port)."""
    d = workdir / f"{phase}-upstream"
    d.mkdir()
    if phase == "h2":
        port = free_port()
        return http_proxies.start_upstream(port, LOAD_CPU, d), port
    if phase == "grpc":
        proc = start("grpc-echo", [sys.executable, str(INTEGRATION / "grpc_echo.py"), "server"], LOAD_CPU, d)
        return proc, int(wait_line(proc, r"^ready (\d+)$", 30).group(1))
    if phase == "slow":
        proc = start("recorder", [sys.executable, str(INTEGRATION / "differential" / "recorder.py"), "bench"],
                     LOAD_CPU, d)
        return proc, int(wait_line(proc, r"^ready (\d+)$", 30).group(1))
    proc = start("udp-echo", [sys.executable, "-u", "-c", udp_bench.ECHO], LOAD_CPU, d)
    return proc, int(wait_line(proc, r"^(\d+)$", 30).group(1))


def client_argv(phase: str, args, port: int) -> list[str]:
    clients = str(BENCH_DIR / "reload_clients.py")
    if phase == "h2":
        return [sys.executable, clients, "h2load", "--port", str(port), "--run-seconds", str(args.h2_run)]
    if phase == "grpc":
        return [sys.executable, str(BENCH_DIR / "reload_grpc.py"), str(port)]
    if phase == "slow":
        return [sys.executable, clients, "slow", "--port", str(port)]
    return [sys.executable, clients, "udp", "--port", str(port), "--rate", str(args.udp_rate)]


def client_result(proc: Proc) -> dict:
    """The last JSON line a client process printed (its result)."""
    for line in reversed(proc.log_path.read_text(errors="replace").splitlines()):
        if line.startswith("{") and '"ok"' in line:
            return json.loads(line)
    raise BenchError(f"the load generator printed no result; its log ends with:\n{proc.log_tail()}")


# ---- one series ----------------------------------------------------------------------------------

def reload_series(ctl, client: Proc, count: int, args, label: str) -> list[ReloadResult]:
    """`count` reloads back to back while `client` runs: each waits for the old generation to
    exit, then --gap s. The load phase and these phases share it."""
    reloads = []
    for i in range(count):
        if not client.alive():
            raise BenchError(f"the load generator exited: {client.log_tail()}")
        r = ctl.reload()
        reloads.append(r)
        if not r.ok or (i + 1) % 10 == 0 or count <= 20:
            log(f"  {label} reload {i + 1}/{count}: {describe(r)}")
        time.sleep(args.gap if r.ok else max(args.gap, 1.0))
    return reloads


def stop_client(client: Proc, timeout: float = 60) -> dict:
    os.kill(client.pid, signal.SIGTERM)
    client.popen.wait(timeout)
    return client_result(client)


def run_one(phase: str, name: str, args, workdir: Path, upstream: int) -> dict:
    d = workdir / f"{phase}-{name}"
    d.mkdir()
    ctl = make_ctl(phase, name, args, d, upstream)
    log(f"{phase}: {name}, {args.l7_reloads} reloads")
    t_begin = time.monotonic()
    ctl.start()
    client = sampler = None
    try:
        sampler = TreeSampler(ctl, MEMORY_SAMPLE_S, limit_s=3600)
        sampler.start()
        client = start(f"client-{phase}", client_argv(phase, args, ctl.listen_port), LOAD_CPU, d)
        time.sleep(args.warmup)
        reloads = reload_series(ctl, client, args.l7_reloads, args, f"{phase} {name}")
        time.sleep(args.warmup)
        result = stop_client(client)
    finally:
        if sampler is not None:
            sampler.finish()
        if client is not None:
            stop(client)
        ctl.stop()
    spans = [(r.started, r.started + r.gone_s) for r in reloads if r.ok]
    windows = [(a, b + 1.0) for a, b in spans]
    events = result.get("events", [])
    return {"reloads": [result_dict(r) for r in reloads], "clients": result,
            "failures": sum(sum(k.values()) for k in result["failed"].values()),
            "in_windows": sum(1 for e in events if any(a <= e[0] <= b for a, b in windows)),
            "memory": overlap_memory(sampler.samples, spans), "wall_s": time.monotonic() - t_begin,
            "log": str(ctl.log_path), "settings": {"drain_s": args.drain, "gap_s": args.gap}}


def run_phases(args, workdir: Path) -> dict:
    """{phase: {proxy: run}} for the L7/UDP phases asked for."""
    out: dict[str, dict] = {}
    for phase in [p for p in PHASES if p in args.phases]:
        out[phase] = {}
        upstream, port = start_upstream(phase, workdir)
        try:
            if phase != "udp":
                wait_listening(upstream, port, 15)
            for name in [n for n in args.proxies if n in PROXIES[phase]]:
                try:
                    run = out[phase][name] = run_one(phase, name, args, workdir, port)
                    log(f"  {phase} {name}: ok {run['clients']['ok']}, failed {run['clients']['failed']}; "
                        f"{run['in_windows']} of {run['failures']} failures in reload windows; "
                        f"RSS {run['memory']['rss_steady'] / 1048576:.0f} -> peak "
                        f"{run['memory']['rss_peak'] / 1048576:.0f} MiB; {run['wall_s']:.0f} s")
                except BenchError as e:
                    log(f"  {phase} {name}: FAILED: {e}")
                    out[phase][name] = {"error": str(e)}
        finally:
            stop(upstream)
    return out
