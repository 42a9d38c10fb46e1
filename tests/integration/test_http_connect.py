"""CONNECT through the connection manager, Envoy's way, checked against a real Envoy.

With `upgrade_configs: [{upgrade_type: CONNECT}]` and a `connect_matcher` route (and no
`connect_config`, so the proxy does not terminate CONNECT), Envoy forwards the CONNECT request
to the cluster over HTTP/1.1 and, once the upstream answers 2xx, the connection is a byte
tunnel both ways. The same bootstrap runs through Envoy and Baton; the client must see the
same status and the same tunnelled bytes, and the upstream the same request line.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from .conftest import Baton, free_port, http_bootstrap, start_ready_process
from .differential.proxies import Envoy

TUNNEL_UPSTREAM = Path(__file__).resolve().parent / "tunnel_upstream.py"


def bootstrap(admin: int, port: int, upstream: int) -> dict:
    return http_bootstrap(admin, port, stat_prefix="connect", codec_type="HTTP1",
                          upgrade_configs=[{"upgrade_type": "CONNECT"}],
                          routes=[{"match": {"connect_matcher": {}}, "route": {"cluster": "tunnel"}},
                                  {"match": {"prefix": "/"}, "direct_response": {"status": 404}}],
                          clusters={"tunnel": upstream})


def tunnel(port: int) -> tuple[int, bytes, list[bytes]]:
    """CONNECT, then three messages through the tunnel: (status, request line the upstream
    saw, the echoes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or b"\n" not in data.partition(b"\r\n\r\n")[2]:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        seen, _, rest = rest.partition(b"\n")
        echoes = []
        for message in (b"hello", b"bytes \x00\x01\xff opaque to the proxy", b"y" * 200_000):
            s.sendall(message)
            got = rest
            while len(got) < len(message):
                chunk = s.recv(65536)
                assert chunk, "tunnel closed"
                got += chunk
            rest = b""
            echoes.append(got)
        return status, seen, echoes


@pytest.fixture
def upstream():
    proc, port = start_ready_process([sys.executable, str(TUNNEL_UPSTREAM), "connect"])
    yield port
    proc.kill()
    proc.wait(10)


def test_connect_is_tunnelled_as_envoy_tunnels_it(tmp_path, upstream):
    results = {}
    for name in ("envoy", "baton"):
        port = free_port()
        boot = bootstrap(free_port(), port, upstream)
        proxy = (Envoy(tmp_path / name, boot) if name == "envoy"
                 else Baton(tmp_path / name, boot, concurrency=1))
        proxy.start()
        try:
            results[name] = tunnel(port)
        finally:
            proxy.stop()
    assert results["baton"] == results["envoy"]
    status, seen, echoes = results["baton"]
    assert status == 200 and seen == b"CONNECT example.test:443 HTTP/1.1"
    assert echoes == [b"HELLO", b"BYTES \x00\x01\xff OPAQUE TO THE PROXY", b"Y" * 200_000]
