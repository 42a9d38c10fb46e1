"""A small demo upstream for `make run`: answers HTTP requests with a greeting and echoes
anything else, so both `curl` and `nc` show traffic flowing through Baton's TCP proxy.

    python examples/demo_upstream.py [--port 10001]
"""

from __future__ import annotations

import argparse
import asyncio
import os

HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")


class Demo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.http = None
        self.buffer = b""

    def data_received(self, data):
        if self.http is None:
            self.buffer += data
            if len(self.buffer) < 8 and not self.buffer.endswith(b"\n"):
                return
            self.http = self.buffer.startswith(HTTP_METHODS)
            data, self.buffer = self.buffer, b""
        if not self.http:
            self.transport.write(data)          # echo
            return
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            request_line = self.buffer.split(b"\r\n", 1)[0].decode(errors="replace")
            body = (f"hello from the Baton demo upstream (pid {os.getpid()})\n"
                    f"you asked: {request_line}\n").encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
            self.transport.close()

    def eof_received(self):
        if not self.http:
            self.transport.write_eof()
            return True
        return False


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Demo, "127.0.0.1", port)
    print(f"demo upstream listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=10001)
    try:
        asyncio.run(main(parser.parse_args().port))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise SystemExit(f"demo upstream: {exc.strerror}")
