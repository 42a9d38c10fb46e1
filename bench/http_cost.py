"""What one HTTP/1.1 keep-alive request costs Baton, to compare two versions (issue 17, the
keep-alive figure of bench/http_bench.py). Two measures:

rig TREE REQUESTS [REPEATS]
    In process, no sockets: the Rig of TREE/tests/unit/test_http_express.py (that tree's
    connection manager, HTTP/1.1 codecs, express lane and upstream pool, on fake transports)
    and a client like `wrk -c50`: one request per read (wrk's own request line and Host), each
    answered by an upstream keep-alive connection with the benchmark's nginx response (64-byte
    body). Prints CPU microseconds per request. The system calls (a read and a write on each
    side per request, about 45% of the worker's CPU under wrk, bench/RESULTS.md) are not in
    it: this is the part Baton's code decides. For a figure the shared machine's noise does
    not move, count instructions: run it under `PYTHONHASHSEED=0 setarch -R valgrind
    --tool=callgrind` with 100 and 1100 requests (HTTPCOST_NOGC=1 for GC off);
    (Ir(1100) - Ir(100)) / 1000 is the instructions per request.

e2e ROUNDS SECONDS NAME=BATON_EXECUTABLE ...
    bench/http_bench.py's setup (Baton alone, one worker pinned to CPU 1, upstream nginx and
    wrk on CPU 0), each Baton started fresh, versions interleaved with a rotating order:
    `wrk -c50` for SECONDS after 2 s unmeasured; CPU of Baton's process tree per request,
    each run and the medians (h2_cost.interleaved). Beside another Baton: RUNTIME_DIRECTORY=DIR.

e2e-close ROUNDS SECONDS NAME=BATON_EXECUTABLE ...
    The same with `wrk -c50 -H 'Connection: close'` (a new client connection per request, the
    bench's `close` figure; the upstream side stays pooled).

A snapshot of another revision runs with this repository's .venv as in bench/h2_cost.py's
docstring: `git archive REV | tar -x -C DIR`, a directory P holding a symlink P/baton -> DIR,
then `PYTHONPATH=P .venv/bin/python bench/http_cost.py rig DIR 20000 5`; for e2e, an
executable script per version (h2_cost.py's docstring shows it).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

# What wrk sends and what the benchmark's upstream nginx answers (`return 200`, 64 bytes).
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:10000\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 05:05:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 64\r\nConnection: keep-alive\r\n\r\n"
            + b"x" * 63 + b"\n")


def rig_run(requests: int, exchange=None) -> float:
    """CPU seconds for `requests` keep-alive exchanges through the in-process rig; `exchange(n)`
    gives the n-th (request, response) bytes (default: wrk's and nginx's, every time the same;
    bench/h1v_cost.py gives each its own)."""
    from tests.unit.test_http_express import Rig

    loop = asyncio.new_event_loop()
    rig = Rig(Path(tempfile.mkdtemp(prefix="httpcost-")), loop)
    conn, down = rig.conn, rig.down
    ups = list(rig.upstreams.values())
    wires = [exchange(n) for n in range(1, requests + 1)] if exchange else \
        [(REQUEST, RESPONSE)] * requests
    answered = 0
    t0 = time.process_time()
    for wire_request, wire_response in wires:
        conn.data_received(wire_request)
        for up in ups:
            if up.streams:
                up.transport.take()
                up.data_received(wire_response)
        answered += down.take().endswith(b"x\n")
    cpu = time.process_time() - t0
    assert answered == requests, answered
    assert rig.conn.hcm.express
    loop.close()
    return cpu


def rig(argv: list[str]) -> None:
    from h2_cost import timed_in_tree
    requests, repeats = int(argv[1]), int(argv[2]) if len(argv) > 2 else 1
    timed_in_tree(argv[0], lambda: rig_run(requests), requests, repeats,
                  bool(os.environ.get("HTTPCOST_NOGC")))


def e2e(argv: list[str], close: bool = False) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import http_bench as hb
    from h2_cost import cpu_sample, interleaved
    from procs import CpuMeter

    rounds, seconds = int(argv[0]), int(argv[1])
    load = hb.wrk_close if close else hb.wrk_keepalive

    def measure(name, proc, ports) -> dict:
        hb.wrk_keepalive(ports.h1, 2, 50)         # warm-up: the upstream pool, the memos
        hb.wait_quiet(5.0)
        with CpuMeter(proc, cpus=(hb.PROXY_CPU, hb.LOAD_CPU)) as meter:
            res = load(ports.h1, seconds, 50)
        # wrk's rate over its own duration
        return cpu_sample(meter, res["rps"] * seconds, res, hb.PROXY_CPU)

    interleaved(rounds, dict(arg.split("=", 1) for arg in argv[2:]), measure, "httpcost-")


if __name__ == "__main__":
    {"rig": rig, "e2e": e2e, "e2e-close": lambda argv: e2e(argv, close=True)}[sys.argv[1]](
        sys.argv[2:])
