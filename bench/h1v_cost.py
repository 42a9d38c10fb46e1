"""What one HTTP/1.1 keep-alive request costs Baton when no message repeats (issue 17, the
`h1v` figure of bench/http_bench.py), to compare two versions. bench/http_cost.py measures
wrk's identical requests, which Baton's memos serve (http1_head.py); here each request has its
own path and x-n header and each response its own x-path header, as bench/wrk_varied.lua and
the benchmark's upstream make them.

rig TREE REQUESTS [REPEATS]
    In process, no sockets: the Rig of TREE/tests/unit/test_http_express.py (that tree's
    connection manager, HTTP/1.1 codecs, express lane and upstream pool, on fake transports),
    one varied request per read, each answered by the upstream with a varied nginx-like
    response (64-byte body). Prints CPU microseconds per request. For a figure the shared
    machine's noise does not move, count instructions: run it under `PYTHONHASHSEED=0
    setarch -R valgrind --tool=callgrind` with 200 and 2200 requests (H1VCOST_NOGC=1 for GC
    off); (Ir(2200) - Ir(200)) / 2000 is the instructions per request.

e2e ROUNDS SECONDS NAME=BATON_EXECUTABLE ...
    bench/http_cost.py's e2e with `wrk -c50 -s bench/wrk_varied.lua`: each Baton started
    fresh, versions interleaved, CPU of Baton's process tree per request and the medians.

A snapshot of another revision: as in bench/http_cost.py's docstring.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))     # its sibling benchmarks


def request(n: int) -> bytes:
    """What wrk_varied.lua sends for its n-th request (wrk.format: Host first)."""
    return b"GET /v/%d HTTP/1.1\r\nHost: 127.0.0.1:10000\r\nx-n: %d\r\n\r\n" % (n, n)


def response(n: int) -> bytes:
    """What the benchmark's upstream nginx answers to /v/n (http_proxies.upstream_nginx_conf)."""
    return (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 05:05:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 64\r\nConnection: keep-alive\r\n"
            b"x-path: /v/%d\r\n\r\n" % n + b"x" * 63 + b"\n")


def rig_run(requests: int) -> float:
    """CPU seconds for `requests` varied keep-alive exchanges through the in-process rig."""
    from http_cost import rig_run as run
    return run(requests, lambda n: (request(n), response(n)))


def rig(argv: list[str]) -> None:
    from h2_cost import timed_in_tree
    requests, repeats = int(argv[1]), int(argv[2]) if len(argv) > 2 else 1
    timed_in_tree(argv[0], lambda: rig_run(requests), requests, repeats,
                  bool(os.environ.get("H1VCOST_NOGC")))


def e2e(argv: list[str]) -> None:
    import http_bench as hb
    from h2_cost import cpu_sample, interleaved
    from procs import CpuMeter

    rounds, seconds = int(argv[0]), int(argv[1])

    def measure(name, proc, ports) -> dict:
        hb.wrk_keepalive(ports.h1, 2, 50)         # warm-up: the upstream pool
        hb.wait_quiet(5.0)
        with CpuMeter(proc, cpus=(hb.PROXY_CPU, hb.LOAD_CPU)) as meter:
            res = hb.wrk_keepalive(ports.h1, seconds, 50, script=hb.VARIED)
        return cpu_sample(meter, res["rps"] * seconds, res, hb.PROXY_CPU)

    interleaved(rounds, dict(arg.split("=", 1) for arg in argv[2:]), measure, "h1vcost-")


if __name__ == "__main__":
    {"rig": rig, "e2e": e2e}[sys.argv[1]](sys.argv[2:])
