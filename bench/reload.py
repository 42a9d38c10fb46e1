"""Hot reload benchmark: Baton's `baton reload` vs HAProxy's seamless reload vs Envoy's hot restart.

    .venv/bin/python bench/reload.py                 # full run (about 1.5 hours on 2 busy cores)
    .venv/bin/python bench/reload.py --quick         # 5 / 2 / 10 / 10 reloads instead of 20 / 5 / 100 / 100
    .venv/bin/python bench/reload.py --phases load --proxies baton,haproxy --load-reloads 20 --no-write
    .venv/bin/python bench/reload.py --phases h2,grpc,slow,udp --l7-reloads 40

Phases (each can be run alone with --phases):
  timing  `baton reload` on an idle Baton (--concurrency 2): CLI wall time until exit 0, the
          master log's "took over in Xs", and start -> old master exited; medians.
  idle    1,000 and 10,000 idle established connections (client sockets in this process, the
          echo upstream holds the other ends in its own process), reloaded --idle-reloads
          times: the old workers' "moved X of Y in Ts", start -> old master exited, every
          connection checked end to end after each move, and the RSS/PSS of both generations
          sampled every 20 ms during each reload (phase 4 of the brief).
  load    the same steady client load through each proxy across --load-reloads reloads:
          (a) new connection per 1 KiB exchange, (b) long-lived connections exchanging 1 KiB
          continuously; every failed connect/exchange is counted. One worker per proxy pinned
          to CPU 1, clients and upstream on CPU 0, as in bench/run.py.
  h2, grpc, slow, udp
          the same cadence and pinning with h2load -c10 -m10, gRPC streaming and unary calls,
          2 s HTTP/1.1 responses and SSE streams, and UDP datagrams (bench/reload_l7.py says
          more): failures, the old generation's lifetime, RSS of both generations while they
          overlap. HAProxy has no UDP proxy: the udp phase runs Baton and Envoy.

Writes its own section at the end of bench/RESULTS.md (below its own marker; the L4 part above
it is left alone), raw per-reload data to bench/out/reload-last.json. Within that section the
h2/grpc/slow/udp phases have their own part: a run of only those phases rewrites only it, a run
of only timing/idle/load only the part above it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import proxies
import reload_report
import procs
import reload_l7
from procs import BenchError, free_port, require_tool, start, stop, wait_listening
from reload_clients import IdleClients, raise_nofile
from reload_l7 import reload_series, stop_client
from reload_memory import TreeSampler
from reload_proxies import BatonCtl, EnvoyCtl, HaproxyCtl, ReloadResult, describe, problem_lines, result_dict

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PROXY_CPU = 1
LOAD_CPU = 0
ALL_CPUS = "0-1"
ALL_PROXIES = ["baton", "haproxy", "envoy"]
ALL_PHASES = ["timing", "idle", "load", *reload_l7.PHASES]


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="validation run: 5 timing reloads, 2 per idle count, 10 under load")
    ap.add_argument("--phases", default=",".join(ALL_PHASES), help=f"subset of {','.join(ALL_PHASES)}")
    ap.add_argument("--proxies", default=",".join(ALL_PROXIES), help="for the load, h2, grpc, slow and udp phases")
    ap.add_argument("--concurrency", type=int, default=2,
                    help="Baton workers in the timing and idle phases (default 2 = this machine's CPUs)")
    ap.add_argument("--timing-reloads", type=int, default=20)
    ap.add_argument("--idle", default="1000,10000", help="idle connection counts")
    ap.add_argument("--idle-reloads", type=int, default=5, help="reloads per idle connection count (default 5)")
    ap.add_argument("--load-reloads", type=int, default=100, help="reloads per proxy under load")
    ap.add_argument("--l7-reloads", type=int, default=100, help="reloads per proxy in each of h2, grpc, slow, udp")
    ap.add_argument("--h2-run", type=int, default=15, help="h2 phase: seconds of each h2load run (-D)")
    ap.add_argument("--udp-rate", type=float, default=200.0, help="udp phase: datagrams per second")
    ap.add_argument("--drain", type=int, default=2,
                    help="HAProxy hard-stop-after and Envoy --parent-shutdown-time-s, seconds "
                         "(Envoy --drain-time-s is one less); default 2")
    ap.add_argument("--gap", type=float, default=0.5,
                    help="pause after a reload has completely finished, before the next (default 0.5 s)")
    ap.add_argument("--warmup", type=float, default=2.0, help="load before the first / after the last reload")
    ap.add_argument("--conn-rate", type=float, default=200.0, help="(a) new connections per second")
    ap.add_argument("--conn-tasks", type=int, default=8, help="(a) concurrent client tasks")
    ap.add_argument("--long", type=int, default=50, help="(b) long-lived connections")
    ap.add_argument("--long-interval", type=float, default=0.05,
                    help="(b) seconds between exchanges on one long-lived connection (default 0.05)")
    ap.add_argument("--baton", type=Path, default=proxies.BATON, help="the baton executable")
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    if args.quick:
        given = set(a.split("=")[0] for a in argv)
        if "--timing-reloads" not in given:
            args.timing_reloads = 5
        if "--idle-reloads" not in given:
            args.idle_reloads = 2
        if "--load-reloads" not in given:
            args.load_reloads = 10
        if "--l7-reloads" not in given:
            args.l7_reloads = 10
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    args.proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    args.idle = [int(x) for x in args.idle.split(",") if x.strip()]
    if set(args.phases) - set(ALL_PHASES):
        ap.error(f"unknown phases: {set(args.phases) - set(ALL_PHASES)}")
    if set(args.proxies) - set(ALL_PROXIES):
        ap.error(f"unknown proxies: {set(args.proxies) - set(ALL_PROXIES)}")
    for name in ("timing_reloads", "idle_reloads", "load_reloads", "l7_reloads", "concurrency", "drain"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def log(msg: str) -> None:
    print(msg, flush=True)


# ---- phases --------------------------------------------------------------------------------------

def worker_connections(ctl: BatonCtl) -> list[int]:
    done = ctl.cli("status", "--json", timeout=30)
    if done.returncode != 0:
        return []
    try:
        return [w["connections"] for w in json.loads(done.stdout)["workers"]]
    except (ValueError, KeyError):
        return []


def phase_timing(args, workdir: Path, upstream: int) -> dict:
    d = workdir / "timing"
    d.mkdir()
    ctl = BatonCtl(d, free_port(), upstream, args.concurrency, ALL_CPUS, args.baton)
    log(f"timing: {args.timing_reloads} reloads of an idle Baton, --concurrency {args.concurrency}")
    reloads = []
    ctl.start()
    try:
        for i in range(args.timing_reloads):
            r = ctl.reload()
            reloads.append(result_dict(r))
            log(f"  reload {i + 1}/{args.timing_reloads}: {describe(r)}")
            if not r.ok:
                time.sleep(1)
    finally:
        ctl.stop()
    return {"concurrency": args.concurrency, "reloads": reloads, "log": str(ctl.log_path)}


def phase_idle(args, workdir: Path, upstream: int) -> list[dict]:
    runs = []
    for n in args.idle:
        d = workdir / f"idle-{n}"
        d.mkdir()
        ctl = BatonCtl(d, free_port(), upstream, args.concurrency, ALL_CPUS, args.baton)
        log(f"idle: {n:,} idle connections, --concurrency {args.concurrency}, {args.idle_reloads} reloads")
        run = {"connections": n, "concurrency": args.concurrency, "reloads": [], "log": str(ctl.log_path)}
        runs.append(run)
        ctl.start()
        clients = IdleClients(ctl.listen_port, n)
        try:
            opened = clients.open()
            run["open"] = opened
            run["per_worker"] = worker_connections(ctl)
            log(f"  opened {opened['opened']:,} in {opened['seconds']:.1f} s "
                f"(failed: {opened['failed'] or 0}); per worker: {run['per_worker']}")
            for i in range(args.idle_reloads):
                sampler = TreeSampler(ctl)
                sampler.start()
                time.sleep(1.0)             # steady-state samples before the reload
                r = ctl.reload()
                time.sleep(1.6)             # steady-state samples after the old master exited
                sampler.finish()
                entry = result_dict(r)
                if r.ok:
                    entry["memory"] = sampler.summary(r.started, r.started + r.gone_s)
                entry["verify"] = clients.verify()
                run["reloads"].append(entry)
                mem = entry.get("memory", {})
                log(f"  reload {i + 1}/{args.idle_reloads}: {describe(r)}; "
                    f"after: {entry['verify']['ok']:,} ok, failed {entry['verify']['failed'] or 0}; "
                    f"RSS {mem.get('rss_before', 0) / 1048576:.0f} -> peak {mem.get('rss_peak', 0) / 1048576:.0f} MiB")
                if not r.ok:
                    time.sleep(1)
        finally:
            clients.close()
            ctl.stop()
    return runs


def _load_argv(args, port: int) -> list[str]:
    return [sys.executable, str(BENCH_DIR / "reload_clients.py"), "load", "--port", str(port),
            "--conn-rate", str(args.conn_rate), "--conn-tasks", str(args.conn_tasks),
            "--long", str(args.long), "--long-interval", str(args.long_interval)]


def make_ctl(name: str, args, d: Path, upstream: int):
    port = free_port()
    if name == "baton":
        return BatonCtl(d, port, upstream, 1, str(PROXY_CPU), args.baton, cli_cpu=str(PROXY_CPU))
    if name == "haproxy":
        return HaproxyCtl(d, port, upstream, str(PROXY_CPU), args.drain)
    return EnvoyCtl(d, port, upstream, str(PROXY_CPU), args.drain)


def phase_load_one(name: str, args, workdir: Path, upstream: int) -> dict:
    d = workdir / f"load-{name}"
    d.mkdir()
    ctl = make_ctl(name, args, d, upstream)
    log(f"load: {name}, {args.load_reloads} reloads")
    t_begin = time.monotonic()
    ctl.start()
    load = None
    reloads: list[ReloadResult] = []
    try:
        load = start("load", _load_argv(args, ctl.listen_port), LOAD_CPU, d)
        time.sleep(args.warmup)
        reloads = reload_series(ctl, load, args.load_reloads, args, name)
        time.sleep(args.warmup)
        clients = stop_client(load, 30)
    finally:
        if load is not None:
            stop(load)
        ctl.stop()
    wall = time.monotonic() - t_begin
    windows = [(r.started, r.ended + 1.0) for r in reloads]
    events = clients["events"]
    in_windows = sum(1 for t, _, _ in events if any(a <= t <= b for a, b in windows))
    # Slow exchanges that started while a reload ran (start -> old generation exited): with
    # Baton's ~1 s cycle that span covers about half of the time anyway.
    spans = [(r.started, r.ended) for r in reloads]
    clients["slow_in_reloads"] = sum(1 for t, _, _ in clients["slow"] if any(a <= t <= b for a, b in spans))
    clients["reload_time_share"] = (sum(b - a for a, b in spans) / (clients["stopped"] - clients["started"])
                                    if clients["stopped"] > clients["started"] else float("nan"))
    return {"reloads": [result_dict(r) for r in reloads], "clients": clients, "failures": len(events),
            "in_windows": in_windows, "wall_s": wall, "log": str(ctl.log_path),
            "settings": {"drain_s": args.drain, "gap_s": args.gap}}


def phase_load(args, workdir: Path, upstream: int) -> dict:
    out = {}
    for name in args.proxies:
        try:
            out[name] = phase_load_one(name, args, workdir, upstream)
            c = out[name]["clients"]
            log(f"  {name}: (a) ok {c['ok']['churn']:,} failed {c['failed']['churn'] or 0}; "
                f"(b) ok {c['ok']['long']:,} failed {c['failed']['long'] or 0}; "
                f"{out[name]['in_windows']} of {out[name]['failures']} failures in reload windows; "
                f"{out[name]['wall_s']:.0f} s")
        except BenchError as e:
            log(f"  {name}: FAILED: {e}")
            out[name] = {"error": str(e)}
    return out


# ---- report --------------------------------------------------------------------------------------

def baton_problems(paths: list[str]) -> list[str]:
    """Every problem line of the Baton logs, timestamps and pids stripped, counted."""
    counts: dict[str, int] = {}
    for p in paths:
        try:
            text = Path(p).read_text(errors="replace")
        except OSError:
            continue
        for line in problem_lines(text):
            key = re.sub(r"^\[[^\]]*\]\[\d+\]", "", line)
            key = re.sub(r"\b(pid|worker|generation|connection) \d+", r"\1 N", key)
            counts[key] = counts.get(key, 0) + 1
    return [f"{n:>5}x {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])]


def git_state() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{head}{' + uncommitted changes' if dirty else ''}"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def meta_lines(args, command: str, wall_s: float, load_at_start: tuple, l7: bool = False) -> list[str]:
    model = procs.cpu_model()
    v = proxies.tool_versions()
    if l7:
        phases = [p for p in args.phases if p in reload_l7.PHASES]
        reloads = f"{args.l7_reloads} per proxy and phase ({', '.join(args.proxies)})"
    else:
        phases = [p for p in args.phases if p not in reload_l7.PHASES]
        reloads = (f"{args.timing_reloads} (timing), {args.idle_reloads} per idle count "
                   f"{', '.join(f'{n:,}' for n in args.idle)}, {args.load_reloads} per proxy under load "
                   f"({', '.join(args.proxies)})")
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"the whole run took {wall_s / 60:.1f} min ({wall_s:.0f} s)",
        f"- command: `{command}`",
        f"- phases: {', '.join(phases)}; reloads: {reloads}",
        f"- machine: nproc {os.cpu_count()}, {model}, kernel {platform.release()}, RLIMIT_NOFILE hard "
        f"{__import__('resource').getrlimit(__import__('resource').RLIMIT_NOFILE)[1]}; load average at the start "
        f"{' '.join(f'{x:.2f}' for x in load_at_start)}, at the end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (the machine is shared: other work shows here)",
        f"- versions: Baton {v['baton']} (git {git_state()}), {v['haproxy']}, Envoy {v['envoy']}, "
        f"Python {v['python']}",
    ]


def method_lines(args) -> list[str]:
    return [
        "- **Upstream**: `bench/reload_echo.py`, a uvloop echo server that never closes a connection "
        "(CPU 0). Baton and Envoy read the same Envoy v3 bootstrap (one `tcp_proxy` listener, one "
        "STATIC cluster with `circuit_breakers` `max_connections` 100000 — the default 1024 would "
        "close the 1,025th idle connection); HAProxy gets the equivalent `mode tcp` frontend/backend.",
        f"- **1. timing**: an idle Baton, `--concurrency {args.concurrency}`, not pinned; "
        f"{args.timing_reloads} reloads back to back, each started once the previous old master had "
        "exited (pidfd on the pid from `<runtime-dir>/baton.pid`). Wall time of `baton reload` "
        "(including the CLI's own Python start-up), the old master's \"took over in Xs\", and start "
        "-> old master exited.",
        f"- **2./4. idle**: Baton `--concurrency {args.concurrency}`, not pinned. The benchmark process "
        "opens the connections in batches of 500 (connect, one byte echoed on each, so each is "
        "established through to the upstream), then per reload: samples memory for 1 s, runs "
        "`baton reload`, waits for the old master to exit, samples 1.6 s more, then sends one byte "
        "on every connection and expects it back (a connection that fails here was broken by the move).",
        f"- **3. load**: each proxy with one worker pinned to CPU 1 (Baton `--concurrency 1`, whose "
        "new masters inherit the pinning; HAProxy `nbthread 1`; Envoy `--concurrency 1`); the load "
        "generator (`bench/reload_clients.py load`, its own process) and the echo upstream on CPU 0. "
        f"Load: (a) {args.conn_rate:g} new connections/s from {args.conn_tasks} tasks, each: connect, "
        f"send 1 KiB, read the 1 KiB echo, compare, close; (b) {args.long} long-lived connections, "
        f"each doing a 1 KiB exchange every {args.long_interval * 1000:g} ms (a broken one is counted "
        "and replaced). Timeouts 5 s. The load runs "
        f"{args.warmup:g} s before the first reload and after the last.",
        f"- **Cadence (3.)**, the same rule for all three: start a reload; wait until the new "
        "generation serves **and** every process of the old generation has exited; pause "
        f"{args.gap:g} s; next reload. Baton: `baton reload --runtime-dir DIR` until exit 0, then the "
        "old master's exit; the CLI runs pinned to CPU 1, the proxy's, so its Python start-up is "
        "charged to the proxy side as HAProxy's re-exec and Envoy's new process are (on CPU 0 it "
        "delayed the load generator itself by up to 150 ms). HAProxy 2.6 master-worker "
        "(`haproxy -W -S master.sock`, `stats socket ... expose-fd listeners`, "
        f"`hard-stop-after {args.drain}s`): the master CLI's `reload` command, serving = a new worker "
        "pid in `show proc`, done = the old worker exited (after its connections closed, at the "
        f"latest at hard-stop-after). Envoy hot restart: a new process with `--restart-epoch N+1`, "
        f"the same `--base-id`, `--drain-time-s {max(1, args.drain - 1)} --parent-shutdown-time-s "
        f"{args.drain}`, its own admin port; serving = its `/ready` answers 200, done = the parent "
        "epoch exited.",
        "- **What this shows**: HAProxy's old worker and Envoy's parent keep the long-lived (b) "
        "connections only until the end of their drain and then close them: each is a failure in "
        "(b). Baton moves them to the new generation instead. A longer drain only delays those "
        "closes (and makes every reload that much longer); it does not avoid them for connections "
        "that never end.",
    ]


def l7_method_lines(args) -> list[str]:
    return [
        f"- **5.-8. h2, grpc, slow, udp**: the cadence, pinning and drain settings of 3. above "
        f"(`--drain {args.drain}`: HAProxy `hard-stop-after {args.drain}s`, Envoy `--drain-time-s "
        f"{max(1, args.drain - 1)} --parent-shutdown-time-s {args.drain}`; Baton's old generation "
        "has `--drain-timeout 10`), "
        f"{args.l7_reloads} reloads per proxy, each phase with its own client process and upstream "
        "on CPU 0 (bench/reload_l7.py). Baton and Envoy read bench/http_proxies.py's L7 bootstrap "
        "(HCM, codec AUTO, one STATIC cluster; for gRPC the cluster speaks HTTP/2), or "
        "bench/udp_bench.py's udp_proxy bootstrap; HAProxy `mode http` with `bind ... proto h2` for "
        "h2c and `server ... proto h2` for gRPC. **h2**: h2load `-c10 -m10` (prior-knowledge h2c) to "
        f"an nginx upstream, in runs of {args.h2_run} s back to back (h2load reports only per run). "
        "**grpc**: `bench/reload_grpc.py` on one grpcio channel: 4 threads of server-streaming calls "
        "(40 messages 50 ms apart, 2 s per call, order checked) back to back and 2 threads of unary "
        "calls every 20 ms, to `tests/integration/grpc_echo.py`; a stream cut = a streaming call that "
        "failed after its first message. **slow**: `bench/reload_clients.py slow`, 10 keep-alive "
        "HTTP/1.1 connections each asking for responses delayed 2 s (`x-test-delay-ms: 2000`) and 10 "
        "each asking for 2 s server-sent-event streams (`x-test-events: 20,100`), back to back, from "
        "`tests/integration/differential/recorder.py`; a response that ends with `connection: "
        "close` is complete (the connection is then replaced, not a failure); a request that gets no "
        "complete response is a failure. **udp**: `bench/reload_clients.py udp`, 10 sessions (client "
        f"sockets), {args.udp_rate:g} numbered 64-byte datagrams/s in total, to a UDP echo; lost = no "
        "echo within 2 s after the load stopped. HAProxy has no UDP proxy (it only forwards UDP "
        "syslog in its `log-forward` section), so the udp phase has Baton and Envoy only.",
        "- **Memory (5.-8.)**: the proxy's whole process tree (every generation: Baton masters and "
        "workers, HAProxy's master and its old and new workers, every Envoy epoch) sampled every "
        "50 ms from /proc during the whole series; per reload, the peak while both generations ran "
        "(reload start -> old generation exited) against the median of the samples since the "
        "previous reload ended; medians over the reloads.",
    ]


def exact_command(argv: list[str]) -> str:
    cmd = ["make bench-reload"] if os.environ.get("MAKELEVEL") else [shlex.join([".venv/bin/python", "bench/reload.py", *argv])]
    return " ".join(cmd)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args(argv)
    command = exact_command(argv)
    raise_nofile()
    try:
        require_tool("taskset", "install util-linux")
        proxies.baton_binary(args.baton)
        if "h2" in args.phases:
            require_tool("h2load", "apt-get install nghttp2-client (or run `make bench`)")
            require_tool("nginx", "apt-get install nginx (or run `make bench`)")
        if set(args.phases) & {"load", *reload_l7.PHASES}:
            if "haproxy" in args.proxies:
                require_tool("haproxy", "apt-get install haproxy (or run `make bench`)")
            if "envoy" in args.proxies:
                proxies.envoy_binary()
    except BenchError as e:
        print(f"bench-reload: {e}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="baton-reload-"))
    log(f"bench-reload: phases {', '.join(args.phases)}; configs and logs in {workdir}")
    t_begin = time.monotonic()
    load_at_start = os.getloadavg()
    timing = idle = load = l7 = None
    keep = args.keep_logs
    upstream_port = free_port()
    echo = None
    try:
        echo = start("echo", [sys.executable, str(BENCH_DIR / "reload_echo.py"), str(upstream_port)],
                     LOAD_CPU, workdir)
        wait_listening(echo, upstream_port, 15)
        if "timing" in args.phases:
            timing = phase_timing(args, workdir, upstream_port)
        if "idle" in args.phases:
            idle = phase_idle(args, workdir, upstream_port)
        if "load" in args.phases:
            load = phase_load(args, workdir, upstream_port)
        if set(args.phases) & set(reload_l7.PHASES):
            l7 = reload_l7.run_phases(args, workdir)
    except BenchError as e:
        print(f"bench-reload: {e}\nbench-reload: logs kept in {workdir}", file=sys.stderr)
        keep = True
        return 2
    finally:
        if echo is not None:
            stop(echo)
    wall = time.monotonic() - t_begin
    logs = ([timing["log"]] if timing else []) + [r["log"] for r in idle or []] + \
           ([load["baton"]["log"]] if load and "log" in load.get("baton", {}) else [])
    l7_logs = [runs["baton"]["log"] for runs in (l7 or {}).values() if "log" in runs.get("baton", {})]
    problems, l7_problems = baton_problems(logs), baton_problems(l7_logs)
    lines = l7_lines = None
    if timing or idle or load:
        lines = reload_report.section(meta_lines(args, command, wall, load_at_start), method_lines(args),
                                      timing, idle, load, problems)
        print("\n" + "\n".join(lines))
    if l7:
        l7_lines = reload_report.l7_section(meta_lines(args, command, wall, load_at_start, l7=True),
                                            l7_method_lines(args), l7, l7_problems)
        print("\n" + "\n".join(l7_lines))
    problems = problems + l7_problems
    raw_dir = BENCH_DIR / "out" if not args.no_write else workdir   # bench/out is git-ignored
    raw_dir.mkdir(exist_ok=True)
    (raw_dir / "reload-last.json").write_text(json.dumps(
        {"command": command, "timing": timing, "idle": idle, "load": load, "l7": l7, "problems": problems},
        indent=1))
    if args.no_write:
        keep = True     # the raw data went to the work directory
    else:
        reload_report.write_section(args.results, lines, l7_lines)
        log(f"bench-reload: wrote {args.results} (raw data in {raw_dir / 'reload-last.json'})")
    if problems:
        keep = True
        log(f"bench-reload: Baton logged warnings or errors; logs kept in {workdir}")
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"bench-reload: logs in {workdir}")
    log(f"bench-reload: done in {wall / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
