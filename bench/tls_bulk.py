"""Bulk TLS traffic for the TLS benchmark: a plain upstream and a TLS client, run as processes.

    python bench/tls_bulk.py serve SINK_PORT SOURCE_PORT  the plain sink and source upstreams
    python bench/tls_bulk.py up|down PORT SECONDS        one TLS client stream, prints JSON

The proxy terminates TLS and passes plaintext to the upstream: `up` sends for SECONDS through
the proxy to the sink (the proxy decrypts), `down` reads for SECONDS what the source sends
through the proxy (the proxy encrypts). Both ends are cheap on purpose (OpenSSL through `ssl`
in 256 KiB calls on the client; recv_into / sendall of one reused buffer upstream), so the
load CPU is not what limits the proxy. The cipher suite is whatever the client's OpenSSL
configuration allows (bench/tls_bench.py pins one for every proxy with OPENSSL_CONF).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import threading
import time

BLOCK = 256 * 1024
HOST = "127.0.0.1"


def _sink(conn: socket.socket) -> None:
    buf = bytearray(1 << 20)
    with conn:
        while conn.recv_into(buf):
            pass


def _source(conn: socket.socket) -> None:
    block = os.urandom(BLOCK)
    with conn:
        try:
            while True:
                conn.sendall(block)
        except OSError:
            pass    # the client went away: the end of a `down` run


def _serve(listener: socket.socket, handler) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def serve(sink_port: int, source_port: int) -> int:
    for port, handler in ((sink_port, _sink), (source_port, _source)):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
        s.listen(64)
        threading.Thread(target=_serve, args=(s, handler), daemon=True).start()
    threading.Event().wait()    # until the harness stops us (SIGTERM, by pid)
    return 0


def client(direction: str, port: int, seconds: float) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE     # the certificates are the proxies' business here
    raw = socket.create_connection((HOST, port), timeout=30)
    tls = ctx.wrap_socket(raw)
    moved = 0
    started = time.perf_counter()
    end = started + seconds
    if direction == "up":
        block = os.urandom(BLOCK)
        while time.perf_counter() < end:
            tls.sendall(block)
            moved += BLOCK
    else:
        buf = bytearray(BLOCK)
        while time.perf_counter() < end:
            n = tls.recv_into(buf)
            if not n:
                raise SystemExit("the proxy closed the stream")
            moved += n
    elapsed = time.perf_counter() - started
    print(json.dumps({"bytes": moved, "seconds": elapsed, "version": tls.version(),
                      "cipher": tls.cipher()[0]}))
    raw.close()     # no close_notify: the measurement is over, the proxy just sees a close
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "serve":
        return serve(int(argv[1]), int(argv[2]))
    if len(argv) == 3 and argv[0] in ("up", "down"):
        return client(argv[0], int(argv[1]), float(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
