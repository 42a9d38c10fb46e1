"""Fuzz the HTTP/1.1 codec (worker/codecs/http1_*.py), both sides, with generated inputs.

    .venv/bin/python tests/fuzz/fuzz_http1.py --count 1000000 [--seed N] [--seconds 600]

Structure-aware mutation, seeded so a run is reproducible: each input starts from a valid
request or response (methods, bodies by length and chunked, pipelining, upgrades, 1xx, HEAD)
and gets 0-4 mutations (byte flips, insertions of protocol-significant tokens, truncation,
duplication, splicing of two seeds), and is fed in random-sized pieces. The property: receive()
never raises; it yields only the events of the interface, and once a ProtocolError came it
yields nothing more. A failing input is written to tests/fuzz/corpus/http1/ and the script
exits 1; tests/unit/test_http1_fuzz_regressions.py replays that directory.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT.parent))

from baton.tests.fuzz import mutation  # noqa: E402
from baton.worker.codecs.events import Body, ProtocolError, RequestHead, ResponseHead  # noqa: E402
from baton.worker.codecs.http1_client import Http1ClientCodec  # noqa: E402
from baton.worker.codecs.http1_server import Http1ServerCodec  # noqa: E402
from baton.worker.codecs.message import Headers, Request  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus" / "http1"

REQUEST_SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /p?q=1 HTTP/1.0\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01",
    b"PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
]
RESPONSE_SEEDS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nclose-delimited",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nraw",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
]
TOKENS = [b"\r\n", b"\n", b"\r", b":", b" ", b"\t", b"\x00", b"\xff", b"0\r\n\r\n", b"chunked",
          b"Content-Length: ", b"Transfer-Encoding: ", b"HTTP/1.1", b"-1", b"99999999999999999999",
          b"ffffffffffffffff", b";ext=1", b"Host: ", b"Connection: close", b"\r\n\r\n", b"%", b"/.."]


def mutate(rng: random.Random, data: bytes, seeds) -> bytes:
    return mutation.mutate(rng, data, seeds, TOKENS)


def pieces(rng: random.Random, data: bytes):
    return mutation.pieces(rng, data, (1, 2, 7, 64))


def check_server(rng, data: bytes) -> None:
    codec = Http1ServerCodec(max_header_bytes=rng.choice((64, 1024, 61440)), max_headers=rng.choice((4, 100)))
    failed = False
    for piece in pieces(rng, data):
        for event in codec.receive(piece):
            assert isinstance(event, (RequestHead, Body, ProtocolError)), event
            assert not failed or isinstance(event, Body), "events after a ProtocolError"
            if isinstance(event, ProtocolError):
                failed = True
    codec.receive(b"")
    codec.data_to_send()


def check_client(rng, data: bytes) -> None:
    codec = Http1ClientCodec(max_header_bytes=rng.choice((64, 61440)))
    method = rng.choice(("GET", "HEAD", "POST", "CONNECT"))
    codec.send_head(Request(method, "/", "up", Headers()), method != "POST")
    for piece in pieces(rng, data):
        for event in codec.receive(piece):
            assert isinstance(event, (ResponseHead, Body, ProtocolError)), event
    codec.receive(b"")


def save(kind: str, data: bytes) -> Path:
    CORPUS.mkdir(parents=True, exist_ok=True)
    path = CORPUS / f"{kind}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=900.0, help="stop after this long")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.monotonic()
    done = 0
    for done in range(1, args.count + 1):
        server_side = rng.random() < 0.6
        seeds = REQUEST_SEEDS if server_side else RESPONSE_SEEDS
        data = mutate(rng, rng.choice(seeds), seeds)
        case_rng = random.Random(rng.random())
        try:
            (check_server if server_side else check_client)(case_rng, data)
        except Exception:
            path = save("server" if server_side else "client", data)
            traceback.print_exc()
            print(f"fuzz_http1: input {done} failed; saved to {path}", file=sys.stderr)
            return 1
        if time.monotonic() - started > args.seconds:
            break
    elapsed = time.monotonic() - started
    print(f"fuzz_http1: {done} inputs, 0 failures, {elapsed:.1f}s ({done / elapsed:.0f}/s), seed {args.seed}")
    return 0 if done >= args.count else 2


if __name__ == "__main__":
    sys.exit(main())
