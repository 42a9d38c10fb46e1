"""What a new client connection per request costs Baton in process, to compare two versions
(issue 17, the `close` figure of bench/http_bench.py: `wrk -c50 -H 'Connection: close'`).

rig TREE CONNECTIONS [REPEATS]
    TREE's connection manager, HTTP/1.1 codecs, express lane and upstream pool on the Rig of
    TREE/tests/unit/test_http_express.py, on a uvloop loop (its timers are the worker's): per
    connection an HttpConnection made and started on a fake transport that can half-close,
    wrk's request with `Connection: close`, the benchmark's nginx response from a pooled
    upstream connection, the delayed close (write_eof), the client's EOF and connection_lost;
    one turn of the loop every 50 connections (what the loop does with cancelled timers).
    Prints CPU microseconds per connection (as `us/request`: one request each). Not in it: the accept and the transport (uvloop's
    C code and the system calls: accept4, getsockname, getpeername, ioctl, setsockopt, read,
    write, shutdown, close; bench/RESULTS.md counts them). For a figure the shared machine's
    noise does not move, count instructions: `PYTHONHASHSEED=0 CLOSECOST_NOGC=1 setarch -R
    valgrind --tool=callgrind .venv/bin/python bench/close_cost.py rig TREE N 1` with N = 200
    and 1200; (Ir(1200) - Ir(200)) / 1000 is the instructions per connection.

TREE is a snapshot made as in bench/h2_cost.py's docstring (`git archive REV | tar -x -C DIR`,
P/baton -> DIR, PYTHONPATH=P).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:10000\r\nConnection: close\r\n\r\n"
TURN = 50                   # connections per turn of the loop


def rig_run(connections: int) -> float:
    """CPU seconds for `connections` connections of one request each."""
    import uvloop
    from baton.worker.proxy.http.connection_manager import HttpConnection
    from tests.unit.test_http_express import FakeTransport, Rig

    from http_cost import RESPONSE

    class HalfClosing(FakeTransport):
        def can_write_eof(self):
            return True

        def write_eof(self):
            pass

    loop = uvloop.new_event_loop()
    rig = Rig(Path(tempfile.mkdtemp(prefix="closecost-")), loop)
    worker, listener, chain = rig.worker, rig.conn.listener, rig.conn.chain
    ups = list(rig.upstreams.values())
    answered = 0
    t0 = time.process_time()
    for n in range(connections):
        conn = HttpConnection(worker, listener, chain, ("127.0.0.1", 40000 + n % 20000), None,
                              n + 2)
        down = HalfClosing()
        conn.connection_made(down)
        conn.data_received(REQUEST)
        for up in ups:
            if up.streams:
                up.transport.take()
                up.data_received(RESPONSE)
        answered += down.take().endswith(b"x\n")
        conn.eof_received()
        conn.connection_lost(None)
        if n % TURN == TURN - 1:
            loop.call_soon(loop.stop)
            loop.run_forever()
    cpu = time.process_time() - t0
    assert answered == connections, answered
    loop.close()
    return cpu


def rig(argv: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from h2_cost import timed_in_tree
    connections, repeats = int(argv[1]), int(argv[2]) if len(argv) > 2 else 1
    timed_in_tree(argv[0], lambda: rig_run(connections), connections, repeats,
                  bool(os.environ.get("CLOSECOST_NOGC")))


if __name__ == "__main__":
    {"rig": rig}[sys.argv[1]](sys.argv[2:])
