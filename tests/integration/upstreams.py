"""Real upstream servers for the integration tests, run as their own processes.

    python upstreams.py echo PORT            echo every byte; forward EOF (half-close) after flushing
    python upstreams.py hash PORT            read to EOF, answer "<bytes> <sha256>\n", close
    python upstreams.py slow PORT RATE       read and discard at most RATE bytes/second
    python upstreams.py banner PORT TEXT     send TEXT on accept, then echo
    python upstreams.py udp-echo PORT        UDP: answer each datagram with it + b"@<port>"

Prints "ready <port>" on stdout once listening (port 0 picks a free one).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sys




class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20)
        self.paused = False

    def data_received(self, data):
        self.transport.write(data)

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def eof_received(self):
        self.transport.write_eof()      # keeps our side open for what is still queued
        return True


class Banner(Echo):
    text = b""

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.write(self.text)


class Hash(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.digest = hashlib.sha256()
        self.count = 0

    def data_received(self, data):
        self.digest.update(data)
        self.count += len(data)

    def eof_received(self):
        self.transport.write(f"{self.count} {self.digest.hexdigest()}\n".encode())
        self.transport.close()
        return True


async def slow_reader(reader, writer, rate):
    # Reads in 64 KiB steps, sleeping so the average stays under `rate` bytes/s: a reader
    # that is slower than the sender, to make the proxy's buffers fill.
    step = 65536
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = 0
    while True:
        data = await reader.read(step)
        if not data:
            break
        total += len(data)
        ahead = total / rate - (loop.time() - start)
        if ahead > 0:
            await asyncio.sleep(ahead)
    writer.close()


class UdpEcho(asyncio.DatagramProtocol):
    """Each datagram back to its sender, tagged with this upstream's port: a UDP client
    through the proxy sees which upstream its session reached."""

    def connection_made(self, transport):
        self.transport = transport
        self.tag = b"@%d" % transport.get_extra_info("sockname")[1]

    def datagram_received(self, data, addr):
        self.transport.sendto(data + self.tag, addr)


async def main(argv):
    mode, port = argv[0], int(argv[1])
    loop = asyncio.get_running_loop()
    if mode == "udp-echo":
        transport, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", port))
        print(f"ready {transport.get_extra_info('sockname')[1]}", flush=True)
        await asyncio.Event().wait()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    if mode == "echo":
        server = await loop.create_server(Echo, sock=sock, backlog=4096)
    elif mode == "hash":
        server = await loop.create_server(Hash, sock=sock, backlog=4096)
    elif mode == "banner":
        Banner.text = argv[2].encode()
        server = await loop.create_server(Banner, sock=sock, backlog=4096)
    elif mode == "slow":
        rate = float(argv[2])
        server = await asyncio.start_server(lambda r, w: slow_reader(r, w, rate), sock=sock, limit=65536, backlog=4096)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(f"ready {sock.getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        # The stdlib loop, not uvloop: under load, this server on uvloop 0.23 was aborted by
        # glibc ("double free or corruption") while echoing and half-closing; its dying sockets
        # looked like the proxy closing connections early. The proxy under test keeps uvloop.
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
