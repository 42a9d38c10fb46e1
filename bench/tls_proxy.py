"""TLS termination in front of tcp_proxy, one worker: bulk throughput each way and the time a
reload takes to move idle TLS connections.

    .venv/bin/python bench/tls_proxy.py [--megabytes 256] [--idle 1000]

A real `baton run --concurrency 1` on an ECDSA P-256 certificate (tests/tls_certs.py), TLS 1.3
as a Python `ssl` client negotiates it (TLS_AES_256_GCM_SHA384), and:

  upload    one client sends --megabytes to the `hash` upstream (Baton decrypts)
  echo      one client streams --megabytes through the echo upstream and reads them back
            (Baton decrypts one way, encrypts the other); bytes each way per second
  move      --idle TLS connections open and idle, then `baton reload`: the old worker's
            "moved N of N connection(s) in S s" line

Bounded: every transfer has a deadline (120 s), and the idle connections are at most 10,000.
The figures are wall-clock on whatever else the machine does; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
import ssl
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from baton.tests.integration.conftest import Baton, Upstream, free_port, tcp_bootstrap  # noqa: E402
from baton.tests.integration.tls_clients import client_context, tls_transport_socket  # noqa: E402
from baton.tests.tls_certs import leaf, make_ca  # noqa: E402
from baton.tests.waiting import wait_until  # noqa: E402

CHUNK = 256 * 1024


def connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=120)
    # Without it OpenSSL's two last handshake records (ChangeCipherSpec, Finished) go out in
    # two writes, the second held back by Nagle until the first is ACKed: ~30 ms a handshake.
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def upload(port: int, ctx, total: int) -> float:
    data = os.urandom(CHUNK)
    tls = connect(port, ctx)
    started = time.perf_counter()
    for _ in range(total // CHUNK):
        tls.sendall(data)
    # A bare FIN (no close_notify, which would forbid reading the answer): Baton passes it to
    # the hash upstream, which answers "<bytes> <sha256>" once it has read everything.
    socket.socket.shutdown(tls, socket.SHUT_WR)     # SSLSocket.shutdown would drop the session
    answer = b""
    while chunk := tls.recv(4096):
        answer += chunk
    elapsed = time.perf_counter() - started
    assert answer.split()[0] == str(total // CHUNK * CHUNK).encode(), answer
    tls.close()
    return total / elapsed / 1e6


def echo(port: int, ctx, total: int) -> float:
    data = os.urandom(CHUNK)
    tls = connect(port, ctx)
    tls.setblocking(False)
    sent = got = 0
    digest_in, digest_out = hashlib.sha256(), hashlib.sha256()
    started = time.perf_counter()
    deadline = started + 120
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(tls, selectors.EVENT_READ)
    while got < total and time.perf_counter() < deadline:
        if sent < total:
            try:
                n = tls.send(data)
                digest_out.update(data[:n])
                sent += n
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
        sel.select(0 if sent < total else 0.01)
        while True:
            try:
                chunk = tls.recv(1 << 20)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            digest_in.update(chunk)
            got += len(chunk)
    elapsed = time.perf_counter() - started
    assert got == sent and digest_in.digest() == digest_out.digest(), (got, sent)
    tls.close()
    return total / elapsed / 1e6


def echo_probe(tls: ssl.SSLSocket) -> None:
    tls.sendall(b"x")
    assert tls.recv(1) == b"x"


def move(b: Baton, port: int, ctx, count: int, probe=echo_probe) -> str:
    """Open `count` TLS connections, let them idle, `baton reload`; then `probe` a sample of
    them (on the new generation) and return the old worker's "moved N of N" figures."""
    # Opened from 16 threads (a blocking handshake releases the GIL): one at a time, 10,000
    # handshakes took minutes on a busy machine, waiting on round trips, not on CPU.
    with ThreadPoolExecutor(16) as pool:
        conns = list(pool.map(lambda _: connect(port, ctx), range(count)))
    open_now = []

    def all_open():
        open_now[:] = [sum(w["connections"] for w in b.status()["workers"])]
        return open_now[0] == count
    try:
        wait_until(all_open, 60, "all open")
    except AssertionError:
        raise AssertionError(f"{open_now} of {count} open; log: {b.log[-1500:]}") from None
    old = b.master_pid()
    result = b.reload()
    assert result.returncode == 0, result.stderr
    b.wait_previous_gone(old)
    lines = re.findall(r"worker \d+: moved (\d+) of (\d+) connection\(s\) in ([0-9.]+)s", b.log)
    moved, of, seconds = lines[-1]
    for tls in conns[:50]:            # a sample still talks, on the new generation
        probe(tls)
    for tls in conns:
        tls.close()
    return f"moved {moved} of {of} idle TLS connections in {seconds} s"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--idle", type=int, default=1000)
    args = parser.parse_args()
    total = args.megabytes << 20
    ca = make_ca("ecdsa")
    ctx = client_context(ca)
    hasher, echoer = Upstream("hash"), Upstream("echo")
    try:
        print("\n".join(run(ca, ctx, hasher, echoer, total, args.idle)))
    finally:
        hasher.stop()
        echoer.stop()
    return 0


def run(ca, ctx, hasher, echoer, total: int, idle: int) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for name, upstream in (("upload", hasher), ("echo", echoer)):
            port = free_port()
            data = tcp_bootstrap(free_port(), port, [upstream.port], max_connections=20_000)
            data["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = \
                tls_transport_socket(leaf(ca, "ecdsa"))
            b = Baton(Path(tmp) / name, data, concurrency=1, extra_args=("--log-level", "info"))
            b.start()
            try:
                if name == "upload":
                    results.append(f"upload {upload(port, ctx, total):.0f} MB/s (client -> upstream, decrypt)")
                else:
                    results.append(f"echo {echo(port, ctx, total):.0f} MB/s each way (decrypt + encrypt)")
                    results.append(move(b, port, ctx, min(idle, 10_000)))
            finally:
                b.stop()
    return results


if __name__ == "__main__":
    sys.exit(main())
