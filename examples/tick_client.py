"""One TCP connection through Baton, one line a second: watch it go on through `baton reload`.

    python examples/tick_client.py [--port 10000] [--runtime-dir DIR] [--count N]

It connects once to Baton's TCP proxy listener (examples/quickstart.yaml sends it to the demo
upstream, which echoes), then sends "tick N" every second and prints the echo together with
the pid of the master serving now (from DIR/baton.pid). At a reload the pid changes and the
count goes on over the same connection: the connection moved to the new generation. It stops
after --count ticks, on Ctrl-C, or when the connection breaks (exit 1).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

CONNECT_DEADLINE = 30.0


def connect(port: int) -> socket.socket:
    """The listener may still be starting: try until it accepts, for CONNECT_DEADLINE."""
    deadline = time.monotonic() + CONNECT_DEADLINE
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def master_pid(runtime_dir: str | None) -> str:
    if not runtime_dir:
        return "?"
    try:
        return (Path(runtime_dir) / "baton.pid").read_text().strip()
    except OSError:
        return "?"


def echo(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line)
    got = b""
    while not got.endswith(b"\n"):
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("closed by the other side")
        got += data
    return got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=10000)
    parser.add_argument("--runtime-dir", default=None)
    parser.add_argument("--count", type=int, default=3600, help="ticks before stopping (default 3600)")
    args = parser.parse_args()
    try:
        sock = connect(args.port)
    except OSError as exc:
        print(f"[watch] cannot connect to 127.0.0.1:{args.port}: {exc}", flush=True)
        return 1
    local = sock.getsockname()[1]
    try:
        for tick in range(1, args.count + 1):
            line = b"tick %d\n" % tick
            try:
                if echo(sock, line) != line:
                    print("[watch] the echo did not match", flush=True)
                    return 1
            except OSError as exc:
                print(f"[watch] the connection broke after {tick - 1} tick(s): {exc}", flush=True)
                return 1
            print(f"[watch] tick {tick} echoed over the same connection (from port {local}); "
                  f"master pid {master_pid(args.runtime_dir)}", flush=True)
            time.sleep(1.0)         # the pace of the demo, not a wait for anything
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
