"""What one HTTP/2 request costs Baton, to compare two versions (the HTTP/2 protections'
per-request cost, bench/RESULTS.md). Two measures:

rig SNAPSHOT BATCHES [REPEATS [CHAIN [PROTOCOL]]]
    In process, no sockets: the Rig of SNAPSHOT/tests/unit/test_http_express.py (that
    tree's connection manager, lean HTTP/2 server codec, Stream (its straight step, or the
    Router) and HTTP/1.1 upstream pool, on fake transports) and a client like `h2load -m10`:
    10 HEADERS per read
    (HPACK-indexed after the first), each answered by an upstream keep-alive connection
    with a 64-byte body. Prints CPU microseconds per request. CHAIN `mesh`: the Rig reads
    bench/http_proxies.py's bootstrap with the mesh-shaped filter chain instead of its own
    (`plain`: that bootstrap with the router alone; `codec`: the HTTP/2 server codec alone,
    the same 10 HEADERS per receive(), each answered with a head and a 64-byte body); PROTOCOL `h1`: 10 HTTP/1.1 keep-alive
    requests per batch, one at a time, as wrk sends them (default `h2`); `h1full`: the same
    with the express lane closed (the config's verdict, HttpConfig.express), every request on
    the full path (the Stream; since fbfef85 its straight step, without a Router, for these
    requests: worker/proxy/http/straight.py): the two paths compared on one tree; `h1v` and
    `h1vfull`: as `h1` and `h1full` with bench/h1v_cost.py's varied exchanges (every request
    and response its own), which bench/h1v_cost.py's own rig serves on the lane only. The
    rig runs on a clock that stands still and a fixed date (_fixed_clock). For a
    figure that the shared machine's noise does not move, count instructions instead: run it twice under
    `setarch -R valgrind --tool=callgrind` (PYTHONHASHSEED=0, H2COST_NOGC=1) with 30 and
    1030 batches; (Ir(1030) - Ir(30)) / 10,000 is the instructions per request.

e2e ROUNDS REQUESTS NAME=BATON_EXECUTABLE ...
    bench/http_bench.py's setup (Baton alone, one worker pinned to CPU 1, upstream nginx and
    h2load on CPU 0), each Baton started fresh, versions interleaved with a rotating order:
    `h2load -c10 -m10 -n REQUESTS` after 5,000 unmeasured requests; CPU of Baton's process
    tree per request, medians. H2COST_PYSPY=DIR: py-spy records the worker meanwhile (raw
    stacks, see _py_spy). With H2COST_CHAIN=mesh (here and in bench/http_cost.py's
    e2e, which runs on the same harness) each Baton reads the bootstrap with the mesh-shaped
    chain (bench/http_proxies.py, MESH_FILTERS).

A snapshot runs with this repository's .venv: `git archive REV | tar -x -C DIR`, a
directory P holding a symlink P/baton -> DIR, then `PYTHONPATH=P .venv/bin/python
bench/h2_cost.py rig DIR 1000 5`; for e2e, an executable script per version:
    #!/bin/sh
    export PYTHONPATH=P
    exec .venv/bin/python3 -c 'import sys; from baton.supervisor.cli import main; sys.exit(main())' "$@"
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

BODY = b"x" * 64
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 22 Nov 2026 05:20:28 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 64\r\nConnection: keep-alive\r\n\r\n"
            + BODY)


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">L", len(payload))[1:] + bytes([kind, flags]) + \
        struct.pack(">L", stream_id) + payload


def make_rig(loop, chain: str | None):
    """The Rig of the tree's tests; with `chain`, on bench/http_proxies.py's bootstrap."""
    import tests.unit.test_http_express as express_tests

    work = Path(tempfile.mkdtemp(prefix="h2cost-"))
    if chain is None:
        return express_tests.Rig(work, loop)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import http_proxies
    text = http_proxies.envoy_bootstrap(http_proxies.Ports(10001, 10000, 10000, 10002), chain, work)
    saved = express_tests.BOOTSTRAP
    express_tests.BOOTSTRAP = text.replace("%", "%%") + "%s"    # the Rig's route_extra: ""
    try:
        return express_tests.Rig(work, loop)
    finally:
        express_tests.BOOTSTRAP = saved


H1_REQUEST = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:10000\r\n\r\n")     # as wrk sends it


def idle_upstreams(rig, streams: int = 10) -> list:
    """Idle keep-alive upstream connections in the rig's pools, enough for `streams` at once
    on each host (the Rig makes one a host); also used by tests/unit/test_h2_write_batching.py."""
    from tests.unit.test_http_express import FakeTransport

    from baton.worker.proxy.http.pool import UpstreamConnection

    made = []
    for host in rig.cluster.hosts:
        pool = rig.worker.http_pools.get(rig.cluster, host)
        for _ in range(streams):
            conn = UpstreamConnection(pool)
            conn.connection_made(FakeTransport())
            rig.cluster.active += 1
            host.active += 1
            pool.idle.append(conn)
            made.append(conn)
    return made


class H2loadClient:
    """What `h2load -m10` sends: its preface (SETTINGS with 2^30-1 windows, a connection
    WINDOW_UPDATE), then batches of 10 GET HEADERS, HPACK-indexed after the first."""

    PREFACE = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
               + _frame(4, 0, 0, struct.pack(">HLHL", 2, 0, 4, 2**30 - 1))
               + _frame(8, 0, 0, struct.pack(">L", 2**30 - 1 - 65535)))
    SETTINGS_ACK = _frame(4, 1, 0)

    def __init__(self):
        from hpack import Encoder

        encoder = Encoder()
        fields = [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1:10000"),
                  (":path", "/"), ("user-agent", "h2load nghttp2/1.52.0")]
        self.first, self.later = encoder.encode(fields), encoder.encode(fields)
        self.stream_id = 1

    def batch(self) -> bytes:
        data = bytearray()
        stream_id, first, later = self.stream_id, self.first, self.later
        for _ in range(10):
            data += _frame(1, 5, stream_id, first if stream_id == 1 else later)
            stream_id += 2
        self.stream_id = stream_id
        return bytes(data)


def rig_run(batches: int, chain: str | None = None, protocol: str = "h2") -> float:
    """CPU seconds for batches x 10 requests through the in-process rig."""
    loop = asyncio.new_event_loop()
    rig = make_rig(loop, chain)
    _fixed_clock(loop)
    if protocol in ("h1", "h1full", "h1v", "h1vfull"):
        if protocol.endswith("full"):
            rig.conn.hcm.express = False    # the config's verdict, read as the codec is chosen
        if protocol.startswith("h1v"):
            return _h1v_run(loop, rig, _varied(batches * 10))
        return _h1_run(loop, rig, batches)
    ups = list(rig.upstreams.values()) + idle_upstreams(rig)
    client = H2loadClient()
    conn, down = rig.conn, rig.down
    conn.data_received(client.PREFACE)
    down.take()
    conn.data_received(client.SETTINGS_ACK)
    answered, out = 0, b""
    t0 = time.process_time()
    for _ in range(batches):
        conn.data_received(client.batch())
        for up in ups:
            if up.streams:
                up.transport.take()
                up.data_received(RESPONSE)
        # The end of the loop's turn: what was left for it (the HTTP/2 connection's one
        # write of the turn, connection_manager.flush_soon) runs, as in the worker.
        loop.call_soon(loop.stop)
        loop.run_forever()
        out = down.take()
        answered += out.count(b"\x00\x00\x40\x00\x01")   # a 64-byte DATA frame, END_STREAM
    cpu = time.process_time() - t0
    assert answered == batches * 10, (answered, out[:200])
    loop.close()
    return cpu


class _FixedDate:
    """stream.DATE with one value: the date header the same for every response."""

    @staticmethod
    def get() -> str:
        return "Tue, 08 Dec 2026 00:00:00 GMT"


def _fixed_clock(loop) -> None:
    """Every run of one tree the same work: the loop's clock stands still (service time 0)
    and the date is fixed. Without, the date was made again each second of the run (a run
    under valgrind on a loaded machine lasts minutes: the longer run of the two counted
    more of them, ~1-2k instructions a request), and on HTTP/2 a changing
    x-envoy-upstream-service-time or date value is HPACK-encoded afresh where a repeated one
    is one indexed byte (the rig's figure moved by up to 8k between runs of one tree)."""
    from baton.worker.proxy.http import stream

    loop.time = lambda: 1000.0
    stream.DATE = _FixedDate()


def _varied(count: int) -> list:
    """bench/h1v_cost.py's exchanges (each request its own path and x-n header, each
    response its own x-path header), made before the clock starts."""
    import h1v_cost
    return [(h1v_cost.request(n), h1v_cost.response(n)) for n in range(1, count + 1)]


def _h1_run(loop, rig, batches: int) -> float:
    conn, down = rig.conn, rig.down
    ups = list(rig.upstreams.values())
    answered = 0
    t0 = time.process_time()
    for _ in range(batches):
        for _ in range(10):
            conn.data_received(H1_REQUEST)
            for up in ups:
                if up.streams:
                    up.transport.take()
                    up.data_received(RESPONSE)
            answered += down.take().endswith(BODY)
    cpu = time.process_time() - t0
    assert answered == batches * 10, answered
    loop.close()
    return cpu


def _h1v_run(loop, rig, exchanges) -> float:
    """_h1_run with [(request, response)] one an exchange (PROTOCOL h1v/h1vfull)."""
    conn, down = rig.conn, rig.down
    ups = list(rig.upstreams.values())
    answered = 0
    t0 = time.process_time()
    for request, response in exchanges:
        conn.data_received(request)
        for up in ups:
            if up.streams:
                up.transport.take()
                up.data_received(response)
        answered += down.take().endswith(b"x\n")     # (h1v_cost.response's body ends so)
    cpu = time.process_time() - t0
    assert answered == len(exchanges), answered
    loop.close()
    return cpu


def codec_run(batches: int) -> float:
    """CPU seconds for batches x 10 requests through the HTTP/2 server codec alone, with the
    worker's options (Envoy's flood limits and premature-reset check): 10 HEADERS per
    receive() (HPACK-indexed after the first, as h2load sends them), each answered by a 200
    head with two fields and a 64-byte body, the turn's bytes taken once."""
    from baton.worker.codecs.h2server import LeanHttp2ServerCodec
    from baton.worker.codecs.message import Headers, Response
    from baton.worker.proxy.http.config import _h2_options

    codec = LeanHttp2ServerCodec(**_h2_options({}))     # as the worker makes it
    codec.initiate()
    client = H2loadClient()
    codec.receive(client.PREFACE + client.SETTINGS_ACK)
    codec.data_to_send()
    response = Response(200, Headers([("content-type", "text/plain"),
                                      ("content-length", "64")]))
    answered = 0
    t0 = time.process_time()
    for _ in range(batches):
        for event in codec.receive(client.batch()):
            codec.send_head(event.stream_id, response, False)
            codec.send_body(event.stream_id, BODY, True)
        answered += codec.data_to_send().count(b"\x00\x00\x40\x00\x01")
    cpu = time.process_time() - t0
    assert answered == batches * 10, answered
    return cpu


def timed_in_tree(tree: str, run, count: int, repeats: int, nogc: bool) -> None:
    """Import Baton and its tests from `tree`, call `run()` (CPU seconds for `count` requests)
    `repeats` times and print microseconds per request. Shared with bench/http_cost.py."""
    if nogc:
        gc.disable()
    sys.path.append(tree)           # its tests package (appended: its xds/ must not shadow
    import baton                    # the protobuf xds package)
    print(f"baton from {Path(baton.__file__).resolve().parent}", file=sys.stderr)
    times = [run() for _ in range(repeats)]
    print(" ".join(f"{t / count * 1e6:.2f}" for t in times), "us/request; min",
          f"{min(times) / count * 1e6:.2f}")


def rig(argv: list[str]) -> None:
    snapshot, batches = argv[0], int(argv[1])
    repeats = int(argv[2]) if len(argv) > 2 else 1
    chain = argv[3] if len(argv) > 3 else None
    protocol = argv[4] if len(argv) > 4 else "h2"
    if chain == "codec":
        def run():
            return codec_run(batches)
    else:
        def run():
            return rig_run(batches, chain, protocol)
    timed_in_tree(snapshot, run, batches * 10, repeats, bool(os.environ.get("H2COST_NOGC")))


def cpu_sample(meter, requests: float, res: dict, proxy_cpu: int) -> dict:
    """One e2e run's figures from its CpuMeter and the load's result, with the line to print."""
    s = {"us": meter.cpu / requests * 1e6, "rps": res["rps"],
         "others": meter.busy[proxy_cpu] - meter.cpu / meter.wall}
    s["line"] = (f"{s['us']:6.1f} us/request {requests / meter.cpu:8,.0f} per core "
                 f"{s['rps']:8,.0f} req/s others on CPU {proxy_cpu} {s['others']:.2f}"
                 + (f" [{res['errors']}]" if res["errors"] else ""))
    return s


def interleaved(rounds: int, versions: dict, measure, prefix: str) -> None:
    """bench/http_bench.py's setup with Baton alone: each version (name -> Baton executable)
    started fresh for each of `rounds`, versions in a rotating order; `measure(name, proc,
    ports)` loads it and gives a sample: {"us": CPU microseconds per request, "line": what to print}.
    Prints each sample and each version's median. Shared with bench/http_cost.py."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import http_bench as hb
    import http_proxies
    from procs import free_ports, stop

    work = Path(tempfile.mkdtemp(prefix=prefix))
    (up,) = free_ports(1)
    upstream = http_proxies.start_upstream(up, hb.LOAD_CPU, work)
    samples: dict[str, list[dict]] = {name: [] for name in versions}
    chain = os.environ.get("H2COST_CHAIN", "plain")
    deadline = time.monotonic() + 1800
    try:
        for r in range(rounds):
            names = list(versions)
            for name in names[r % len(names):] + names[:r % len(names)]:
                if time.monotonic() > deadline:
                    raise SystemExit("stopped: 30 min")
                ports = http_proxies.allocate("baton", free_ports(3), up)
                rundir = work / f"{name}-{r}"
                rundir.mkdir()
                proc = http_proxies.launch("baton", ports, hb.PROXY_CPU, rundir,
                                           Path(versions[name]), chain)
                try:
                    s = measure(name, proc, ports)
                finally:
                    stop(proc)
                samples[name].append(s)
                print(f"round {r} {name:8} {s['line']}", flush=True)
    finally:
        stop(upstream)
    for name, xs in samples.items():
        if xs:
            us = statistics.median(x["us"] for x in xs)
            print(f"{name}: median {us:.1f} us/request = {1e6 / us:,.0f} per core "
                  f"({len(xs)} runs)")


def _py_spy(proc, name: str):
    """With H2COST_PYSPY=DIR: py-spy records the worker (--native, 500 Hz, raw stacks) for
    H2COST_PYSPY_S seconds (default 3) of the measured run, to DIR/NAME-PID.txt."""
    out = os.environ.get("H2COST_PYSPY")
    if not out:
        return None
    import subprocess

    import psutil
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "worker" in " ".join(p.cmdline())] or \
        psutil.Process(proc.pid).children(recursive=True)
    pid = workers[-1].pid
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(spy), "record", "--pid", str(pid), "--native", "--rate", "500",
                             "--duration", os.environ.get("H2COST_PYSPY_S", "3"),
                             "--format", "raw", "--output", f"{out}/{name}-{pid}.txt"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def e2e(argv: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import http_bench as hb
    from procs import CpuMeter

    rounds, requests = int(argv[0]), int(argv[1])

    def measure(name, proc, ports) -> dict:
        problem = hb.h2_precheck(ports.h2)
        if problem:
            raise SystemExit(f"{name}: {problem}")
        hb.h2load(ports.h2, 10, 10, requests=5000)     # warm-up
        hb.wait_quiet(5.0)
        spy = _py_spy(proc, name)
        try:
            with CpuMeter(proc, cpus=(hb.PROXY_CPU, hb.LOAD_CPU)) as meter:
                res = hb.h2load(ports.h2, 10, 10, requests=requests)
        finally:
            if spy is not None:
                spy.wait(60)
        return cpu_sample(meter, requests, res, hb.PROXY_CPU)

    interleaved(rounds, dict(arg.split("=", 1) for arg in argv[2:]), measure, "h2cost-")


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("rig", "e2e"):
        sys.exit(__doc__)
    {"rig": rig, "e2e": e2e}[sys.argv[1]](sys.argv[2:])
