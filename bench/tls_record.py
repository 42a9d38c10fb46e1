"""TLS record protection throughput per core: Baton's record layer vs OpenSSL through `ssl`.

    .venv/bin/python bench/tls_record.py [--cpu-seconds 0.4] [--cpu 1] [--seconds 10]

Both sides of each session come from one real handshake (tests/tls_helpers.py: OpenSSL on
both ends over MemoryBIOs, Baton's handover on the server). Then, pinned to one CPU, the same
plaintext is protected and unprotected by

  baton    RecordLayer.send_data / receive_data (`cryptography` AEADs, Python framing)
  openssl  SSLObject.write + MemoryBIO.read / MemoryBIO.write + SSLObject.read

in 16 KiB writes (full records) and 1 KiB writes (per-record overhead). Prints MB/s
(10^6 bytes of plaintext per second of CPU time of this process, so other load on a shared
machine mostly cancels out). Each measurement runs passes of 8 MiB (1 MiB for 1 KiB writes)
until --cpu-seconds of CPU were spent, and stops at its wall-clock bound regardless.
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
from baton.worker.tls.state import export_state, import_state  # noqa: E402

CASES = [
    (TLS13, "TLS_AES_128_GCM_SHA256"),
    (TLS13, "TLS_AES_256_GCM_SHA384"),
    (TLS13, "TLS_CHACHA20_POLY1305_SHA256"),
    (TLS12, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    (TLS12, "ECDHE-ECDSA-CHACHA20-POLY1305"),
]


def measure(setup, run, min_cpu: float, deadline: float) -> float:
    """MB/s of plaintext: passes of `run(setup())` until `min_cpu` seconds of CPU were spent in
    `run` (setup excluded), or the wall-clock deadline passed."""
    done = 0
    cpu = 0.0
    while cpu < min_cpu and time.monotonic() < deadline:
        arg = setup()
        start = time.process_time()
        done += run(arg)
        cpu += time.process_time() - start
    return done / cpu / 1e6


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


def bench_case(version, suite: str, pass_bytes: int, write_size: int, min_cpu: float,
               limit: float) -> dict:
    """Baton and OpenSSL, each direction, on sessions from real handshakes."""
    deadline = time.monotonic() + limit
    count = pass_bytes // write_size
    chunk = os.urandom(write_size)
    hs, keylog, peer = baton_server("ecdsa", version, suite)
    layer = hs.handover()
    keylog.close()
    twin, twin_out = hs.ssl_object, hs._outgoing
    peer.read_all()
    results = {}

    def baton_encrypt(_):
        for _ in range(count):
            layer.send_data(chunk)
        return count * write_size
    results["baton encrypt"] = measure(lambda: None, baton_encrypt, min_cpu, deadline + limit)

    def openssl_encrypt(_):
        for _ in range(count):
            twin.write(chunk)
            twin_out.read()
        return count * write_size
    results["openssl encrypt"] = measure(lambda: None, openssl_encrypt, min_cpu, deadline + 2 * limit)

    # Decryption needs records nobody has read yet: Baton's layer is re-imported from one
    # snapshot before each pass (so the same records authenticate again); OpenSSL's session
    # cannot be rewound, so its peer writes fresh records before each pass. Setup is untimed.
    snapshot = export_state(layer)
    records = [peer_write(peer, chunk) for _ in range(count)]

    def baton_decrypt(receiver):
        for record in records:
            receiver.receive_data(record)
        return count * write_size
    results["baton decrypt"] = measure(lambda: import_state(snapshot), baton_decrypt, min_cpu,
                                       deadline + 3 * limit)

    hs2, keylog2, peer2 = baton_server("ecdsa", version, suite)
    keylog2.close()
    server2, server2_in = hs2.ssl_object, hs2._incoming
    drain(server2)

    def openssl_decrypt(fresh):
        for record in fresh:
            server2_in.write(record)
            drain(server2)
        return count * write_size
    results["openssl decrypt"] = measure(lambda: [peer_write(peer2, chunk) for _ in range(count)],
                                         openssl_decrypt, min_cpu, deadline + 4 * limit)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-seconds", type=float, default=0.4,
                        help="CPU time spent in each measurement (several passes of 8 MiB)")
    parser.add_argument("--cpu", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0, help="wall-clock bound per direction")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    print(f"{ssl.OPENSSL_VERSION}; pinned to CPU {args.cpu}; {args.cpu_seconds} s of CPU per measurement")
    print(f"{'suite':34} {'write':>6} {'baton enc':>10} {'openssl enc':>12} {'ratio':>6} "
          f"{'baton dec':>10} {'openssl dec':>12} {'ratio':>6}   (MB/s)")
    for write_size in (16384, 1024):
        for version, suite in CASES:
            r = bench_case(version, suite, 8 << 20 if write_size > 1024 else 1 << 20, write_size,
                           args.cpu_seconds, args.seconds)
            print(f"{suite:34} {write_size:>6} {r['baton encrypt']:>10.0f} {r['openssl encrypt']:>12.0f} "
                  f"{r['baton encrypt'] / r['openssl encrypt']:>6.2f} {r['baton decrypt']:>10.0f} "
                  f"{r['openssl decrypt']:>12.0f} {r['baton decrypt'] / r['openssl decrypt']:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
