"""Fuzz Baton's TLS record layer (worker/tls/layer.py) with generated inputs.

    .venv/bin/python tests/fuzz/fuzz_tls_record.py --count 1000000 [--seed N] [--seconds 900]

Structure-aware mutation, seeded so a run is reproducible. Each input starts from a valid
stream that one side of a session sends to the other — application data of many sizes,
KeyUpdates with and without update_requested, NewSessionTickets split over records (to a
client), alerts, close_notify, TLS 1.2 renegotiation attempts, authentic records with arbitrary
inner content (content types, short or bad handshake messages) — for every suite, and gets 0-4
mutations: byte flips, header edits (type, version, length), truncation, record duplication,
dropping and reordering, insertion of garbage or of a record from another session, splicing.
It is fed to a fresh receiving layer in random-sized pieces. The properties:

- receive_data() raises nothing but TLSAlert; once it has, every later call raises too;
- the plaintext that comes out is a prefix of what the sender really sent (each seed has its
  own keys, so nothing from another session or position may authenticate);
- a locally raised alert leaves an alert record to send.

A failing input is written to tests/fuzz/corpus/tls/ and the script exits 1;
tests/unit/test_tls_fuzz_regressions.py replays that directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT.parent))

from baton.tests.tls_helpers import layer_pair  # noqa: E402
from baton.worker.tls.records import TLSAlert, pack_header, split_records  # noqa: E402
from baton.worker.tls.state import export_state, import_state  # noqa: E402
from baton.worker.tls.suites import SUITES  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus" / "tls"
HANDSHAKE, ALERT = 22, 21


class Seed:
    """One valid stream: who receives it, with which keys, and the plaintext it carries."""

    def __init__(self, suite: str, receiver: str, key_seed: bytes, wire: bytes, expected: bytes,
                 state: dict) -> None:
        self.suite, self.receiver, self.key_seed = suite, receiver, key_seed
        self.wire, self.expected, self.state = wire, expected, state


def make_seed(suite: str, receiver: str, n: int, rng: random.Random) -> Seed:
    key_seed = b"fuzz-%s-%s-%d" % (suite.encode(), receiver.encode(), n)
    server, client = layer_pair(suite, key_seed)
    sender, target = (client, server) if receiver == "server" else (server, client)
    state = export_state(target)
    wire, expected = bytearray(), bytearray()
    for _ in range(rng.randrange(1, 7)):
        op = rng.randrange(7)
        if op <= 1:
            size = rng.choice((0, 1, 5, 100, 1000, 16383, 16384, 16385, 40000))
            chunk = rng.randbytes(size)
            wire += sender.send_data(chunk)
            expected += chunk
        elif op == 2 and sender.tls13:
            wire += sender.update_keys(request_peer=rng.random() < 0.5)
        elif op == 3 and sender.tls13 and sender.role == "server":
            ticket = bytes((4, 0, 1, 0)) + rng.randbytes(256)
            cut = rng.randrange(1, len(ticket))
            wire += sender.write.seal(HANDSHAKE, ticket[:cut]) + sender.write.seal(HANDSHAKE, ticket[cut:])
        elif op == 3 and not sender.tls13:
            hello = bytes((1, 0, 0, 4, 3, 3, 0, 0)) if sender.role == "client" else bytes((0, 0, 0, 0))
            wire += sender.write.seal(HANDSHAKE, hello)
        elif op == 4:
            wire += sender.write.seal(ALERT, bytes((1, rng.choice((90, 100)))))
        elif op == 5:                           # authentic record, arbitrary inner content
            content_type = rng.choice((0, 20, 21, 22, 23, 99))
            content = rng.choice((b"", bytes((24, 0, 0, 1, rng.randrange(4))), bytes((4, 0, 0, 0)),
                                  bytes((13, 0, 0, 0)), rng.randbytes(rng.randrange(1, 9))))
            wire += sender.write.seal(content_type, content)
            if content_type == 23:
                expected += content
            if content_type == 22 and content[:1] == b"\x18" and sender.tls13 and len(content) == 5:
                sender.write.update()           # the receiver rekeys on a KeyUpdate it accepts
        else:
            wire += sender.close()
            break
    return Seed(suite, receiver, key_seed, bytes(wire), bytes(expected), state)


def mutate(rng: random.Random, seed: Seed, others: list) -> bytes:
    data = bytearray(seed.wire)
    for _ in range(rng.randrange(5)):
        op = rng.randrange(9)
        records, rest = split_records(bytes(data))
        if op == 0 and data:                                    # byte flip
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif op == 1 and data:                                  # header edit
            starts = [0]
            for *_, header, fragment in records:
                starts.append(starts[-1] + len(header) + len(fragment))
            at = rng.choice(starts[:-1] or [0])
            field = rng.randrange(3)
            if field == 0:
                data[at:at + 1] = bytes((rng.choice((0, 20, 21, 22, 23, 24, 255)),))
            elif field == 1:
                data[at + 1:at + 3] = rng.choice((b"\x03\x01", b"\x03\x04", b"\xfe\xfd", b"\x00\x00"))
            else:
                data[at + 3:at + 5] = rng.choice((0, 1, 16, 17, 2 ** 14, 2 ** 14 + 256, 2 ** 14 + 257,
                                                  2 ** 14 + 2048, 2 ** 14 + 2049, 65535)).to_bytes(2, "big")
        elif op == 2 and data:                                  # truncation
            del data[rng.randrange(len(data)):]
        elif op == 3 and records:                               # duplicate a record
            r = rng.choice(records)
            at = rng.randrange(len(data) + 1)
            data[at:at] = r[2] + r[3]
        elif op == 4 and len(records) > 1:                      # drop or swap records
            i = rng.randrange(len(records))
            if rng.random() < 0.5:
                del records[i]
            else:
                j = rng.randrange(len(records))
                records[i], records[j] = records[j], records[i]
            data = bytearray(b"".join(h + f for *_, h, f in records) + rest)
        elif op == 5:                                           # garbage
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randrange(1, 64))
        elif op == 6:                                           # a record from another session
            other = rng.choice(others)
            o_records, _ = split_records(other.wire)
            if o_records:
                r = rng.choice(o_records)
                at = rng.randrange(len(data) + 1)
                data[at:at] = r[2] + r[3]
        elif op == 7:                                           # splice
            other = rng.choice(others).wire
            data = data[:rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]
        else:                                                   # a bare header claiming a body
            data += pack_header(rng.choice((21, 22, 23)), rng.randrange(0, 2 ** 14 + 300))
    return bytes(data)


def pieces_of(rng: random.Random, data: bytes) -> list[bytes]:
    pieces, pos = [], 0
    while pos < len(data):
        size = rng.choice((1, 2, 5, 13, 100, 1000, 20000, len(data)))
        pieces.append(data[pos:pos + size])
        pos += size
    return pieces or [b""]


def check(state: dict, pieces: list, expected: bytes) -> None:
    """Feed `pieces` to a layer imported from `state`; raise AssertionError on a violation."""
    layer = import_state(state)
    received = bytearray()
    failed = None
    for piece in pieces:
        try:
            received += layer.receive_data(piece)
        except TLSAlert as exc:
            received += exc.data
            failed = exc
            break
    if failed is not None:
        try:
            layer.receive_data(b"more")
        except TLSAlert:
            pass
        else:
            raise AssertionError("a layer accepted input after an alert")
        if not failed.remote and not layer.data_to_send():
            raise AssertionError("a local alert left nothing to send")
    if not expected.startswith(bytes(received)):
        raise AssertionError("plaintext that was never sent came out of the layer")


def save(seed: Seed, pieces: list, error: str) -> Path:
    CORPUS.mkdir(parents=True, exist_ok=True)
    blob = b"".join(pieces)
    path = CORPUS / f"{hashlib.sha256(blob).hexdigest()[:16]}.json"
    path.write_text(json.dumps({
        "suite": seed.suite, "receiver": seed.receiver, "key_seed": seed.key_seed.hex(),
        "pieces": [p.hex() for p in pieces], "expected_sha256": hashlib.sha256(seed.expected).hexdigest(),
        "expected": seed.expected.hex(), "error": error,
    }, indent=1))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=900.0, help="stop early after this long")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    seeds = [make_seed(suite, receiver, n, rng) for suite in SUITES for receiver in ("server", "client")
             for n in range(4)]
    started = time.monotonic()
    failures = 0
    done = 0
    for done in range(1, args.count + 1):
        seed = rng.choice(seeds)
        data = mutate(rng, seed, seeds) if rng.random() < 0.9 else seed.wire
        pieces = pieces_of(rng, data)
        try:
            check(seed.state, pieces, seed.expected)
        except Exception as exc:  # the property: anything escaping is a finding
            failures += 1
            path = save(seed, pieces, "".join(traceback.format_exception_only(exc)).strip())
            print(f"FAIL #{done}: {exc!r} -> {path}", file=sys.stderr)
            if failures >= 20:
                break
        if time.monotonic() - started > args.seconds:
            break
        if done % 100000 == 0:
            print(f"{done} inputs, {time.monotonic() - started:.0f}s, {failures} failures", flush=True)
    elapsed = time.monotonic() - started
    print(f"fuzz_tls_record: seed={args.seed} inputs={done} failures={failures} "
          f"time={elapsed:.1f}s ({done / elapsed:.0f}/s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
