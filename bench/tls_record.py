"""TLS record protection throughput per core: Baton's record layer vs OpenSSL through `ssl`.

    .venv/bin/python bench/tls_record.py [--mib 32] [--cpu 1] [--seconds 20]

Both sides of each session come from one real handshake (tests/tls_helpers.py: OpenSSL on
both ends over MemoryBIOs, Baton's handover on the server). Then, pinned to one CPU, the same
plaintext is protected and unprotected by

  baton    RecordLayer.send_data / receive_data (`cryptography` AEADs, Python framing)
  openssl  SSLObject.write + MemoryBIO.read / MemoryBIO.write + SSLObject.read

in 16 KiB writes (full records) and 1 KiB writes (per-record overhead). Prints MB/s
(10^6 bytes of plaintext per second of CPU time of this process). Every loop stops at the
byte count or at --seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from baton.tests.tls_helpers import TLS12, TLS13, baton_server  # noqa: E402

CASES = [
    (TLS13, "TLS_AES_128_GCM_SHA256"),
    (TLS13, "TLS_AES_256_GCM_SHA384"),
    (TLS13, "TLS_CHACHA20_POLY1305_SHA256"),
    (TLS12, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    (TLS12, "ECDHE-ECDSA-CHACHA20-POLY1305"),
]


def timed(fn, total: int, write_size: int, limit: float) -> float:
    """MB/s of plaintext through `fn(chunk)`, CPU time of this process."""
    chunk = os.urandom(write_size)
    done = 0
    wall_deadline = time.monotonic() + limit
    start = time.process_time()
    while done < total and time.monotonic() < wall_deadline:
        fn(chunk)
        done += write_size
    return done / (time.process_time() - start) / 1e6


def drain(obj: ssl.SSLObject) -> int:
    n = 0
    while True:
        try:
            n += len(obj.read(1 << 20))
        except ssl.SSLWantReadError:
            return n


def peer_write(peer, data: bytes) -> bytes:
    peer.obj.write(data)
    return peer.take()


def bench_case(version, suite: str, total: int, write_size: int, limit: float) -> dict:
    hs, keylog, peer = baton_server("ecdsa", version, suite)
    layer = hs.handover()
    keylog.close()
    twin, twin_out = hs.ssl_object, hs._outgoing
    peer.read_all()
    results = {}

    results["baton encrypt"] = timed(layer.send_data, total, write_size, limit)

    def openssl_encrypt(chunk):
        twin.write(chunk)
        twin_out.read()
    results["openssl encrypt"] = timed(openssl_encrypt, total, write_size, limit)

    # Decryption: records made beforehand by the peer (each once: a replayed record would not
    # authenticate), fed in the sizes they were written in. OpenSSL gets a twin session of
    # its own whose peer writes the same way.
    count = total // write_size
    zeros = bytes(write_size)
    records = [peer_write(peer, zeros) for _ in range(count)]
    feed = iter(records)
    results["baton decrypt"] = timed(lambda _c: layer.receive_data(next(feed)), total, write_size, limit)
    del records, feed

    hs2, keylog2, peer2 = baton_server("ecdsa", version, suite)
    keylog2.close()
    server2, server2_in = hs2.ssl_object, hs2._incoming
    feed2 = iter([peer_write(peer2, zeros) for _ in range(count)])

    def openssl_decrypt(_chunk):
        server2_in.write(next(feed2))
        drain(server2)
    results["openssl decrypt"] = timed(openssl_decrypt, total, write_size, limit)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=32, help="plaintext per measurement")
    parser.add_argument("--cpu", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    total = args.mib << 20
    print(f"{ssl.OPENSSL_VERSION}; pinned to CPU {args.cpu}; {args.mib} MiB per measurement")
    print(f"{'suite':34} {'write':>6} {'baton enc':>10} {'openssl enc':>12} {'ratio':>6} "
          f"{'baton dec':>10} {'openssl dec':>12} {'ratio':>6}   (MB/s)")
    for write_size in (16384, 1024):
        for version, suite in CASES:
            r = bench_case(version, suite, total if write_size > 1024 else total // 8, write_size, args.seconds)
            print(f"{suite:34} {write_size:>6} {r['baton encrypt']:>10.0f} {r['openssl encrypt']:>12.0f} "
                  f"{r['baton encrypt'] / r['openssl encrypt']:>6.2f} {r['baton decrypt']:>10.0f} "
                  f"{r['openssl decrypt']:>12.0f} {r['baton decrypt'] / r['openssl decrypt']:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
