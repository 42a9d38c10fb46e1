"""The byte-level mutation and splitting the fuzzers share (fuzz_http1.py, fuzz_rpc.py):
each fuzzer brings its own tokens (the bytes its format gives meaning to) and seeds."""

from __future__ import annotations

import random


def mutate(rng: random.Random, data: bytes, seeds, tokens) -> bytes:
    """Up to four edits of `data`: a byte changed, a token inserted, a span deleted or
    repeated, the tail replaced by another seed's, random bytes inserted. The order of `rng`
    calls is fixed: a seed reproduces the same inputs."""
    buf = bytearray(data)
    for _ in range(rng.randrange(5)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = rng.choice(tokens)
        elif op == 2:
            del buf[pos:pos + rng.randrange(1, 16)]
        elif op == 3:
            end = min(len(buf), pos + rng.randrange(1, 32))
            buf[pos:pos] = buf[pos:end] * rng.randrange(1, 4)
        elif op == 4:
            other = rng.choice(seeds)
            buf[pos:] = other[rng.randrange(len(other) + 1):]
        else:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
    return bytes(buf)


def pieces(rng: random.Random, data: bytes, sizes):
    """`data` cut into reads of sizes drawn from `sizes` (len(data) among them: whole)."""
    i = 0
    while i < len(data):
        n = rng.choice((*sizes, len(data)))
        yield data[i:i + n]
        i += n
