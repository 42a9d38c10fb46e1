"""What the HTTP/2 server codec costs a request whose header block is not a repeat.

h2load sends one header block over and over (HPACK-indexed after the first), so the codec's
per-connection cache of decoded blocks (h2reader.py) answers every request of `h2_cost.py`'s
rigs and of bench/http_bench.py's `h2` figure: their best case. Real clients send a value
that changes per request (x-request-id, traceparent, a path, a cookie), inserted into the
HPACK table ("literal with incremental indexing", Huffman-coded, as nghttp2 and Envoy send
it), so every block is decoded (by worker/codecs/hpack_decoder.py since issue 17's decoder,
by the `hpack` library before: run both trees the same way to compare).

    PYTHONPATH=P .venv/bin/python bench/h2v_cost.py TREE MODE BATCHES [REPEATS]

TREE as in bench/h2_cost.py (a `git archive` tree, P a directory holding P/baton -> TREE).
MODE `repeated`: h2load's block (five fields); `varied`: the same five and an x-request-id of
32 random hex digits; `build`: only the blocks of `varied` are made (for the callgrind
difference below). BATCHES x 10 requests, each received by the codec (10 HEADERS per
receive()) and answered by a head and a 64-byte body, as bench/h2_cost.py's `codec` rig.
Prints CPU microseconds per request (the blocks are built before the clock starts).

For a figure that the shared machine's noise does not move, count instructions:
`PYTHONHASHSEED=0 setarch -R valgrind --tool=callgrind .venv/bin/python bench/h2v_cost.py
TREE MODE N 1` for N = 50 and 250, then (Ir(250) - Ir(50)) / 2,000 per request for MODE and
for `build`: the difference of the two is what the codec costs a request (building the
blocks with hpack's encoder is counted in both).
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time

from h2_cost import BODY, H2loadClient, _frame     # (bench/ is the script's own folder)

FIELDS = [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1:10000"),
          (":path", "/"), ("user-agent", "h2load nghttp2/1.52.0")]


def batches_of(mode: str, count: int) -> list:
    """`count` reads of 10 HEADERS frames (END_STREAM, END_HEADERS), as one client sends them."""
    from hpack import Encoder

    encoder, pick = Encoder(), random.Random(1).getrandbits
    reads, stream_id = [], 1
    for _ in range(count):
        data = bytearray()
        for _ in range(10):
            fields = FIELDS if mode == "repeated" else \
                FIELDS + [("x-request-id", "%032x" % pick(128))]
            data += _frame(1, 5, stream_id, encoder.encode(fields))
            stream_id += 2
        reads.append(bytes(data))
    return reads


def run(mode: str, count: int) -> float:
    """CPU seconds for `count` x 10 requests through the codec (0.0 for `build`)."""
    from baton.worker.codecs.h2server import LeanHttp2ServerCodec
    from baton.worker.codecs.message import Headers, Response
    from baton.worker.proxy.http.config import _h2_options

    reads = batches_of(mode, count)
    if mode == "build":
        return 0.0
    codec = LeanHttp2ServerCodec(**_h2_options({}))     # as the worker makes it
    codec.initiate()
    codec.receive(H2loadClient.PREFACE + H2loadClient.SETTINGS_ACK)
    codec.data_to_send()
    response = Response(200, Headers([("content-type", "text/plain"),
                                      ("content-length", "64")]))
    answered = 0
    t0 = time.process_time()
    for data in reads:
        for event in codec.receive(data):
            codec.send_head(event.stream_id, response, False)
            codec.send_body(event.stream_id, BODY, True)
        answered += codec.data_to_send().count(b"\x00\x00\x40\x00\x01")
    cpu = time.process_time() - t0
    assert answered == count * 10, answered
    return cpu


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] not in ("repeated", "varied", "build"):
        raise SystemExit(__doc__)
    tree, mode, count = argv[0], argv[1], int(argv[2])
    repeats = int(argv[3]) if len(argv) > 3 else 1
    gc.disable()
    sys.path.append(tree)
    import baton
    print(f"baton from {baton.__path__[0]}", file=sys.stderr)
    us = [run(mode, count) / (count * 10) * 1e6 for _ in range(repeats)]
    print(f"{mode}: {statistics.median(us):.2f} us/request; min {min(us):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
