"""The upstream of the reload benchmark: a TCP echo server that holds every connection open.

    .venv/bin/python bench/reload_echo.py PORT

Echoes every byte back until the peer closes, and never closes a connection itself, so idle
connections through a proxy stay established for as long as the client keeps them. It raises
its own RLIMIT_NOFILE soft limit to the hard limit (10,000 held connections need 10,000
descriptors here, the clients' 10,000 live in another process). Prints "listening" on stdout
once it accepts; exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import socket
import sys

try:
    import uvloop
except ImportError:     # pragma: no cover - .venv has it; plain asyncio also works, slower
    uvloop = None


class Echo(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False    # close our side too once the peer half-closed

    def connection_lost(self, exc):
        self.transport = None


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    server = await loop.create_server(Echo, "127.0.0.1", port, backlog=4096, reuse_address=True)
    print("listening", flush=True)
    await stop
    server.close()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    raise_nofile()
    if uvloop is not None:
        uvloop.install()
    asyncio.run(serve(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
