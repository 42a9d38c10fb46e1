"""Hostile and broken HTTP clients (issue 4, point 4), against the real `baton run`: each gets
Envoy's answer and its connection closed, and none of them disturbs a well-behaved keep-alive
connection on the same worker. Also a websocket upgrade tunnelled through the connection
manager (upgrade_configs)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from .answers import whole
from .conftest import Baton, free_port, http_bootstrap, start_ready_process, wait_until

RECORDER = Path(__file__).resolve().parent / "differential" / "recorder.py"

TUNNEL_UPSTREAM = Path(__file__).resolve().parent / "tunnel_upstream.py"


def bootstrap(admin: int, port: int, upstream: int, ws_upstream: int) -> dict:
    # delayed_close_timeout short: the hostile clients wait for the close that follows their
    # error reply, which holds its FIN that long (Envoy's default: a second).
    return http_bootstrap(admin, port, stat_prefix="edge", codec_type="HTTP1", max_request_headers_kb=8,
                          request_headers_timeout="0.5s", delayed_close_timeout="0.05s",
                          upgrade_configs=[{"upgrade_type": "websocket"}],
                          routes=[{"match": {"prefix": "/ws"}, "route": {"cluster": "ws"}},
                                  {"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                          clusters={"app": upstream, "ws": ws_upstream})


@pytest.fixture
def edge(tmp_path):
    recorder, port_app = start_ready_process([sys.executable, str(RECORDER), "app"])
    ws, port_ws = start_ready_process([sys.executable, str(TUNNEL_UPSTREAM), "websocket"])
    port = free_port()
    baton = Baton(tmp_path / "baton", bootstrap(free_port(), port, port_app, port_ws), concurrency=1).start()
    baton.port = port
    baton.upstream_port = port_app
    yield baton
    baton.stop()
    for proc in (recorder, ws):
        proc.kill()
        proc.wait(10)


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of one response with a content-length; b"", b"" when the peer closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def hostile(port: int, payload: bytes) -> tuple[bytes, bytes, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        head, body = read_response(s)
        return head, body, closed_by_peer(s)


def test_bad_clients_get_envoys_answers_and_do_not_disturb_others(edge):
    good = socket.create_connection(("127.0.0.1", edge.port), timeout=10)

    def good_request(i: int) -> None:
        good.sendall(b"GET /ok/%d HTTP/1.1\r\nHost: edge.test\r\n\r\n" % i)
        head, body = read_response(good)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b'"/ok/%d"' % i in body

    good_request(0)
    head, body, closed = hostile(edge.port, b"NOT HTTP AT ALL\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and closed, head
    good_request(1)
    head, _, closed = hostile(edge.port, b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and closed, head
    good_request(2)
    head, _, closed = hostile(edge.port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                                         b"Transfer-Encoding: chunked\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and closed, head
    good_request(3)
    # A client that never finishes its headers is cut at request_headers_timeout (408).
    started = time.monotonic()
    head, body, closed = hostile(edge.port, b"GET /slow HTTP/1.1\r\nHost: h\r\nX-Never: ")
    assert head.startswith(b"HTTP/1.1 408") and closed, head
    assert 0.4 <= time.monotonic() - started < 5, time.monotonic() - started
    good_request(4)
    # A route whose upstream resets before answering: Envoy's 503 and body.
    head, body = b"", b""
    good.sendall(b"GET /reset HTTP/1.1\r\nHost: edge.test\r\nx-test-reset: 1\r\n\r\n")
    head, body = read_response(good)
    assert head.startswith(b"HTTP/1.1 503"), head
    assert body == b"upstream connect error or disconnect/reset before headers. reset reason: connection termination"
    good_request(5)
    good.close()
    stats = edge.stats()
    assert stats["http.edge.downstream_cx_protocol_error"] >= 3
    assert "Traceback" not in edge.log


def test_websocket_upgrade_is_tunnelled(edge):
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: edge.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"upgrade: websocket" in head.lower()
        for message in (b"hello", b"frames are opaque \x00\x01\x02 to the proxy", b"x" * 100_000):
            s.sendall(message)
            got = rest
            while len(got) < len(message):
                chunk = s.recv(65536)
                assert chunk, "tunnel closed"
                got += chunk
            rest = b""
            assert got == message.upper()
    assert "Traceback" not in edge.log


def test_health_checks_keep_requests_off_a_dead_host(tmp_path):
    """Through the real `baton run`: an HTTP health check marks the endpoint on a closed
    port unhealthy, and every request then goes to the healthy one (round robin would send
    half to the dead host)."""
    recorder, port_app = start_ready_process([sys.executable, str(RECORDER), "app"])
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))          # bound, never listening: connections are refused
    port = free_port()
    boot = bootstrap(free_port(), port, port_app, port_app)
    app = boot["static_resources"]["clusters"][0]
    app["load_assignment"]["endpoints"][0]["lb_endpoints"].append(
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": dead.getsockname()[1]}}}})
    app["health_checks"] = [{"timeout": "1s", "interval": "0.1s", "unhealthy_threshold": 1,
                             "healthy_threshold": 1, "no_traffic_interval": "0.1s",
                             "http_health_check": {"path": "/healthz"}}]
    baton = Baton(tmp_path / "baton", boot, concurrency=1).start()
    try:
        wait_until(lambda: baton.stats().get("cluster.app.membership_healthy") == 1
                   and baton.stats().get("cluster.app.health_check.failure", 0) > 0, 20,
                   "the dead endpoint marked unhealthy")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            for i in range(40):
                s.sendall(b"GET /hc/%d HTTP/1.1\r\nHost: edge.test\r\n\r\n" % i)
                head, _ = read_response(s)
                assert head.startswith(b"HTTP/1.1 200"), (i, head)
        assert "Traceback" not in baton.log
    finally:
        baton.stop()
        dead.close()
        recorder.kill()
        recorder.wait(10)


def test_pipelined_garbage_is_answered_in_order(edge):
    """A parse error behind a pipelined request is answered after that request's response,
    never before it (a desync would hand the 400 to the first request)."""
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as s:
        s.sendall(b"GET /first HTTP/1.1\r\nHost: edge.test\r\nx-test-delay-ms: 200\r\n\r\n"
                  b"GARBAGE\x01\r\n\r\n")
        data = b""
        # Both answers, up to the 400's last byte (not the close: its delayed close).
        while (refusal := data.find(b"HTTP/1.1 400")) < 0 or not whole(data[refusal:]):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    first, second = data.find(b"HTTP/1.1 200"), data.find(b"HTTP/1.1 400")
    assert 0 == first < data.find(b'"/first"') < second, data
    assert b"connection: close" in data[second:].lower()
    stats = edge.stats()
    assert stats["http.edge.downstream_rq_active"] == 0, stats


def test_client_gone_never_starts_its_queued_requests(edge, tmp_path):
    """A client that half-closes behind a slow request: the pipelined request after it is
    never sent upstream, and no gauge is left behind."""
    key = f"gone-{tmp_path.name}"
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as s:
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: edge.test\r\nx-test-delay-ms: 300\r\n\r\n"
                  b"POST /charge HTTP/1.1\r\nHost: edge.test\r\nx-test-key: %s\r\nContent-Length: 0\r\n\r\n"
                  % key.encode())
        s.shutdown(socket.SHUT_WR)
        assert closed_by_peer(s) or True
    wait_until(lambda: edge.stats()["http.edge.downstream_rq_active"] == 0, 10, "the streams to end")
    wait_until(lambda: edge.stats()["http.edge.downstream_cx_active"] == 0, 10, "the connection to end")
    # The upstream never saw the queued POST.
    port = edge.upstream_port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as u:
        u.sendall(b"GET /__count/%s HTTP/1.1\r\nHost: x\r\n\r\n" % key.encode())
        _, body = read_response(u)
    assert b'"count": 0' in body, body
