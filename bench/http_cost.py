"""What one HTTP/1.1 keep-alive request costs Baton's Python, to compare two versions (issue 17,
the keep-alive figure of bench/http_bench.py).

    PYTHONPATH=P .venv/bin/python bench/http_cost.py TREE REQUESTS [REPEATS]

In process, no sockets: the Rig of TREE/tests/unit/test_http_express.py (that tree's
connection manager, HTTP/1.1 codecs, express lane and upstream pool, on fake transports) and a
client like `wrk -c50`: one request per read (wrk's own request line and Host), each answered
by an upstream keep-alive connection with the benchmark's nginx response (64-byte body). Prints
CPU microseconds per request. The system calls (a read and a write on each side per request,
about 40% of the worker's CPU under wrk, bench/RESULTS.md) are not in it: this is the part
Baton's code decides. For a figure the shared machine's noise does not move, count
instructions: run it under `PYTHONHASHSEED=0 setarch -R valgrind --tool=callgrind` with 100
and 1100 requests (HTTPCOST_NOGC=1 for GC off); (Ir(1100) - Ir(100)) / 1000 is the
instructions per request.

A snapshot of another revision runs with this repository's .venv as in bench/h2_cost.py's
docstring: `git archive REV | tar -x -C DIR`, a directory P holding a symlink P/baton -> DIR.
"""

from __future__ import annotations

import asyncio
import gc
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


def rig_run(requests: int) -> float:
    """CPU seconds for `requests` keep-alive exchanges through the in-process rig."""
    from tests.unit.test_http_express import Rig

    loop = asyncio.new_event_loop()
    rig = Rig(Path(tempfile.mkdtemp(prefix="httpcost-")), loop)
    conn, down = rig.conn, rig.down
    ups = list(rig.upstreams.values())
    answered = 0
    t0 = time.process_time()
    for _ in range(requests):
        conn.data_received(REQUEST)
        for up in ups:
            if up.streams:
                up.transport.take()
                up.data_received(RESPONSE)
        answered += down.take().endswith(b"x\n")
    cpu = time.process_time() - t0
    assert answered == requests, answered
    assert rig.conn.hcm.express
    loop.close()
    return cpu


def main(argv: list[str]) -> None:
    tree, requests = argv[0], int(argv[1])
    repeats = int(argv[2]) if len(argv) > 2 else 1
    if os.environ.get("HTTPCOST_NOGC"):
        gc.disable()
    sys.path.append(tree)       # its tests package (appended: its xds/ must not shadow the
    import baton                # protobuf xds package)
    print(f"baton from {Path(baton.__file__).resolve().parent}", file=sys.stderr)
    times = [rig_run(requests) for _ in range(repeats)]
    print(" ".join(f"{t / requests * 1e6:.2f}" for t in times), "us/request; min",
          f"{min(times) / requests * 1e6:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
