"""Request-response peers for bench/intercept.py, run inside a namespace with `ip netns exec`.

    intercept_peer.py serve HOST PORT          # each connection: read 1 byte, answer 1 KiB, repeat
    intercept_peer.py pingpong HOST PORT N     # one connection, N timed round trips; prints JSON

The server prints "ready" once it listens. The client sends 1 byte and reads exactly 1 KiB per
round trip, TCP_NODELAY on both ends; 10% extra round trips are run first as a warm-up and not
counted. Output: {"samples_us": [...]} (microseconds, one per round trip)."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

REPLY = b"x" * 1024


def serve(host: str, port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(128)

    def handle(c: socket.socket) -> None:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with c:
            try:
                while c.recv(1):
                    c.sendall(REPLY)
            except OSError:
                pass

    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def pingpong(host: str, port: int, n: int) -> None:
    warm = max(10, n // 10)
    out = []
    with socket.create_connection((host, port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(len(REPLY))
        view = memoryview(buf)
        for i in range(warm + n):
            t0 = time.perf_counter_ns()
            s.sendall(b"?")
            got = 0
            while got < len(REPLY):
                k = s.recv_into(view[got:])
                if not k:
                    raise SystemExit(f"server closed after {i} round trips")
                got += k
            if i >= warm:
                out.append((time.perf_counter_ns() - t0) / 1000)
    print(json.dumps({"samples_us": out}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif cmd == "pingpong":
        pingpong(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit(__doc__)
