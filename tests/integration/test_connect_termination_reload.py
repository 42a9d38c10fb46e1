"""A terminated CONNECT (a route's connect_config: the stream's bytes go to the cluster over
plain TCP) open across `baton reload`: its upstream is the tunnel's own TCP connection, not a
pooled HTTP one, so it moves client-only (the old generation keeps the upstream and forwards)
and the bytes go on both ways; the reload moves every other connection as usual. Before, the
export raised on that connection and stopped the move of the whole worker."""

from __future__ import annotations

import socket

from .clients import Http1Reader
from .conftest import Baton, Upstream, free_port
from .test_hbone_tunnel import terminator


def test_a_terminated_connect_tunnel_goes_on_across_a_reload(tmp_path):
    echo = Upstream("echo")
    port = free_port()
    b = Baton(tmp_path / "baton", terminator(free_port(), port, echo.port, "h1"), concurrency=1).start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as tunnel, \
                socket.create_connection(("127.0.0.1", port), timeout=20) as idle:
            reader = Http1Reader(tunnel)
            tunnel.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           "x-tunnel: hbone\r\n\r\n".encode())
            assert reader.head()[0] == 200
            tunnel.sendall(b"before")
            assert reader.exact(6) == b"before"
            idle.sendall(b"GET /nothing HTTP/1.1\r\nHost: nowhere\r\n\r\n")
            idle_reader = Http1Reader(idle)
            assert idle_reader.head()[0] == 404
            result = b.reload()
            assert result.returncode == 0, result.stdout + result.stderr
            for message in (b"after the reload", b"z" * 200_000):
                tunnel.sendall(message)
                assert reader.exact(len(message)) == message
            idle.sendall(b"GET /again HTTP/1.1\r\nHost: nowhere\r\n\r\n")
            assert idle_reader.head()[0] == 404       # the keep-alive connection moved and serves
        assert "Traceback" not in b.log, b.log[-3000:]
        assert "export failed" not in b.log
    finally:
        b.stop()
        echo.stop()
