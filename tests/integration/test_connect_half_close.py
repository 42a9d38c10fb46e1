"""A terminated CONNECT whose upstream speaks first: it sends a greeting and its FIN the
moment it accepts. The socket is read from the connect on, so both can arrive before the
stream is answered 200; they wait for the 200 and follow it (they were dropped: the client
got the 200, then nothing, until its timeout). The client then sees the greeting and the end
of the tunnel's answer."""

from __future__ import annotations

import socket
import threading

from .clients import Http1Reader
from .conftest import Baton, free_port
from .test_hbone_tunnel import terminator


class GreetingUpstream:
    """Accepts connections; to each sends `greeting` and its FIN at once, then reads until
    the peer is gone."""

    def __init__(self, greeting: bytes):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.greeting = greeting
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(20)
                conn.sendall(self.greeting)
                conn.shutdown(socket.SHUT_WR)
                try:
                    while conn.recv(65536):
                        pass
                except OSError:
                    pass

    def stop(self) -> None:
        self.sock.close()


def test_what_the_upstream_sends_at_once_follows_the_200(tmp_path):
    upstream = GreetingUpstream(b"220 the upstream speaks first\r\n")
    port = free_port()
    config = terminator(free_port(), port, upstream.port, "h1")
    # The tunnel's end reaches the client after delayed_close_timeout (a second by default, as
    # in Envoy): shorter here, or the five rounds wait five seconds out.
    listener = config["static_resources"]["listeners"][0]
    listener["filter_chains"][0]["filters"][0]["typed_config"]["delayed_close_timeout"] = "0.1s"
    b = Baton(tmp_path / "b", config, concurrency=1).start()
    try:
        for _ in range(5):          # the race the bytes used to lose, five times
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                reader = Http1Reader(s)
                s.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          "x-tunnel: hbone\r\n\r\n".encode())
                assert reader.head()[0] == 200
                assert reader.exact(len(upstream.greeting)) == upstream.greeting
                assert reader.buf == b"" and s.recv(1) == b""   # then the tunnel's end
    finally:
        b.stop()
        upstream.stop()
