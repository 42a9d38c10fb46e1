"""Fuzz the Dubbo and SOFA Bolt codecs (worker/codecs/dubbo.py, bolt.py, hessian2.py) and what
the proxy reads of a frame (worker/proxy/rpc/protocols.py), with generated inputs.

    .venv/bin/python tests/fuzz/fuzz_rpc.py --count 1000000 [--seed N] [--seconds 900]

Structure-aware mutation, seeded so a run is reproducible: each input starts from a valid
stream of frames (requests with arguments and attachments of every Hessian type the tests'
writer makes, heartbeats, oneway calls, responses, SofaRequest contents) and gets 0-4
mutations (byte flips, insertions of protocol-significant bytes, truncation, duplication,
splicing), then is fed to a decoder in random-sized pieces. The properties: the decoder
raises nothing but its own error, and cuts the same frames whatever the split (up to a bad
frame, which ends the frames of the feed it is in: the connection closes); every frame
it cuts can be routed, answered, re-addressed and refused (local reply) raising nothing but
DecodeError. A failing input is written to tests/fuzz/corpus/rpc/ and the script exits 1;
tests/unit/test_rpc_fuzz_regressions.py replays that directory.
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
from baton.tests.integration.rpc_peers.frames import (bolt_request, dubbo_request,  # noqa: E402
                                                      dubbo_response)
from baton.tests.integration.rpc_peers.hessian_writer import Writer  # noqa: E402
from baton.worker.codecs import bolt, dubbo  # noqa: E402
from baton.worker.proxy.rpc import protocols as P  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus" / "rpc"
SERVICE = "com.example.HelloService"


def seeds(rng: random.Random) -> dict[str, list[bytes]]:
    args = [[], ["x"], [1, 2.5, True], [{"k": [1, "v"]}], ["é" * 40, None, -(1 << 40)]]
    dubbo_seeds = [dubbo_request(i + 1, SERVICE, "m", a, {"group": "g", "timeout": "300"},
                                 rng=rng) for i, a in enumerate(args)]
    dubbo_seeds += [dubbo.heartbeat_request(9), dubbo_request(7, SERVICE, "o", ["x"], two_way=False),
                    dubbo_response(3, "answer"), dubbo_response(4, None, dubbo.SERVER_ERROR)]
    sofa = Writer(rng).write({"methodName": "hello", "targetServiceUniqueName": f"{SERVICE}:1.0"})
    bolt_seeds = [bolt_request(1, f"{SERVICE}:1.0", "hello"),
                  bolt_request(2, f"{SERVICE}:1.0", "m", timeout=300, oneway=True),
                  bolt.request(3, cmd_code=bolt.CMD_HEARTBEAT),
                  bolt.request(4, "com.alipay.sofa.rpc.core.request.SofaRequest", {"a": "b"},
                               sofa.bytes()),
                  bolt.response(5, bolt.SUCCESS, "x", {"k": "v"}, b"\x05hello")]
    return {"dubbo": dubbo_seeds, "bolt": bolt_seeds}


TOKENS = [b"\xda\xbb", b"\x01\x01\x00\x01", b"\x00", b"\xff", b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff",
          b"\x80\x00\x00\x00", b"C", b"O", b"o", b"M", b"H", b"V", b"R", b"S\x00\x05", b"Z", b"N",
          b"\x90", b"\x91", b"\x30\x00", b"\x52\xff\xff"]


def mutate(rng: random.Random, data: bytes, pool) -> bytes:
    return mutation.mutate(rng, data, pool, TOKENS)


def pieces(rng: random.Random, data: bytes):
    return mutation.pieces(rng, data, (1, 2, 3, 7, 16, 64))


def decode(kind: str, chunks) -> tuple[list, bool]:
    """(frames, ended in the codec's error)."""
    protocol = P.PROTOCOLS[kind]
    decoder = protocol.decoder()
    frames = []
    for chunk in chunks:
        try:
            frames += decoder.feed(chunk)
        except protocol.error:
            return frames, True
    return frames, False


def check(kind: str, data: bytes, rng: random.Random) -> None:
    """Raises AssertionError (or anything unexpected) when a property fails."""
    protocol = P.PROTOCOLS[kind]
    whole, failed = decode(kind, [data])
    split, split_failed = decode(kind, pieces(rng, data))
    # A bad frame loses the good ones cut in the same feed (the connection closes anyway), so
    # in pieces more frames may come before the error, never others.
    assert split_failed == failed, "the split changed whether the bytes are malformed"
    assert split == whole if not failed else split[:len(whole)] == whole, \
        "the split changed the frames"
    for frame in whole:
        protocol.with_request_id(frame.raw, 12345)
        if not protocol.is_request(frame):
            protocol.response_outcome(frame)
            continue
        if protocol.is_event(frame):
            protocol.heartbeat_response(frame)
            continue
        protocol.oneway(frame)
        try:
            protocol.request(frame, True)
        except P.DecodeError:
            pass
        for failure in (P.NO_ROUTE, P.RESET, P.TIMEOUT, P.OVERFLOW):
            protocol.local_reply(frame, failure, "detail")


def save(kind: str, data: bytes) -> Path:
    CORPUS.mkdir(parents=True, exist_ok=True)
    path = CORPUS / f"{kind}-{hashlib.sha1(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    return path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: no limit)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    pools = seeds(rng)
    start = time.monotonic()
    done = errors_seen = 0
    for done in range(1, args.count + 1):
        kind = "dubbo" if done % 2 else "bolt"
        pool = pools[kind]
        base = b"".join(rng.choice(pool) for _ in range(rng.choice((1, 1, 2, 3))))
        data = mutate(rng, base, pool)
        try:
            check(kind, data, rng)
        except Exception:  # noqa: BLE001 - any failure is a finding
            path = save(kind, data)
            print(f"FAIL input {done} ({kind}) saved to {path}", file=sys.stderr)
            traceback.print_exc()
            errors_seen += 1
            if errors_seen >= 5:
                break
        if args.seconds and time.monotonic() - start > args.seconds:
            break
        if done % 100_000 == 0:
            print(f"{done} inputs, {time.monotonic() - start:.0f}s", flush=True)
    elapsed = time.monotonic() - start
    print(f"fuzz_rpc: {done} inputs ({done - done // 2} Dubbo, {done // 2} Bolt) in {elapsed:.0f}s, "
          f"seed {args.seed}: {errors_seen} failure(s)")
    return 1 if errors_seen else 0


if __name__ == "__main__":
    sys.exit(main())
