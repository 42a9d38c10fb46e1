"""HTTP/1.1 responses in flight through `baton reload` (issue 15, point 2).

A connection whose request has arrived moves to the new generation at once; its response,
still coming from the upstream through the old worker, is forwarded and written by the new
one (worker/proxy/http/inflight.py). The client sees one connection and every byte: a long
poll answered after the reload, server-sent events streaming through several reloads, and
the same connection serving its next request from the new generation.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from .clients import Http1Reader
from .conftest import Baton, free_port, http_bootstrap, pid_alive, wait_until


@pytest.fixture
def baton_http(baton, recorder):
    port = free_port()
    started = baton(http_bootstrap(free_port(), port, recorder), concurrency=1)
    started.port = port
    return started


def _https_session(baton, recorder):
    """Baton terminating TLS 1.3 (ECDSA) in front of the recorder, and a client's TLS
    session to it: (baton, port, the client's socket)."""
    import ssl

    from ..tls_certs import leaf, make_ca
    from .test_https import https_bootstrap
    from .tls_clients import client_context, tls_transport_socket
    ca = make_ca("ecdsa")
    port = free_port()
    b = baton(https_bootstrap(port, recorder, tls_transport_socket(
        leaf(ca, "ecdsa"), alpn=["http/1.1"])), concurrency=1)
    context = client_context(ca, alpn=["http/1.1"], version=ssl.TLSVersion.TLSv1_3)
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30),
                               server_hostname="localhost")
    return b, port, sock


def _request(sock, path: str, *headers: str) -> None:
    lines = [f"GET {path} HTTP/1.1", "Host: inflight.test", *headers, "", ""]
    sock.sendall("\r\n".join(lines).encode())


def _in_flight(baton: Baton) -> bool:
    return baton.stats().get("http.ingress_http.downstream_rq_active", 0) >= 1


def _reload(baton: Baton) -> float:
    started = time.monotonic()
    result = baton.reload()
    assert result.returncode == 0, result.stdout + result.stderr
    return time.monotonic() - started


def _moved_in_flight(baton: Baton, count: int) -> None:
    wait_until(lambda: baton.log.count("moved 1 of 1 connection(s)") >= count, 10,
               "the busy connection moved at once")


def test_a_long_poll_is_answered_across_a_reload_on_the_same_connection(baton_http):
    """Issue 15's 10-second slow response: the reload does not wait for it."""
    with socket.create_connection(("127.0.0.1", baton_http.port), timeout=30) as sock:
        reader = Http1Reader(sock)
        _request(sock, "/poll", "x-test-delay-ms: 10000")
        wait_until(lambda: _in_flight(baton_http), 10, "the long poll in flight")
        old = baton_http.master_pid()
        took = _reload(baton_http)
        _moved_in_flight(baton_http, 1)
        assert took < 6, f"the reload waited {took:.1f}s for the response"
        status, _, body = reader.response()
        assert status == 200 and json.loads(body)["path"] == "/poll"
        # The old generation ends with the exchange it kept, not at the drain timeout...
        baton_http.wait_previous_gone(old, timeout=10)
        # ...and the connection is the new generation's now.
        _request(sock, "/after")
        status, _, body = reader.response()
        assert status == 200 and json.loads(body)["path"] == "/after"


def test_server_sent_events_stream_through_a_reload_and_the_connection_moves_on(baton_http):
    events = 30
    with socket.create_connection(("127.0.0.1", baton_http.port), timeout=30) as sock:
        reader = Http1Reader(sock)
        _request(sock, "/events", f"x-test-events: {events},100")
        status, headers = reader.head()
        assert status == 200 and headers["content-type"] == "text/event-stream"
        received = []
        old = baton_http.master_pid()
        while chunk := reader.chunk():
            received.append(chunk)
            if len(received) == 5:
                _reload(baton_http)
                _moved_in_flight(baton_http, 1)
        assert received == [b"data: %d\n\n" % i for i in range(events)]
        baton_http.wait_previous_gone(old, timeout=10)
        # The next reload finds the connection idle, in its second generation: it moves again.
        _reload(baton_http)
        _request(sock, "/after")
        status, _, body = reader.response()
        assert status == 200 and json.loads(body)["path"] == "/after"
    assert "Traceback" not in baton_http.log


def test_the_client_leaving_mid_response_ends_the_exchange_in_the_old_worker(baton_http):
    with socket.create_connection(("127.0.0.1", baton_http.port), timeout=30) as sock:
        _request(sock, "/events", "x-test-events: 100,100")
        Http1Reader(sock).head()
        old = baton_http.master_pid()
        _reload(baton_http)
        _moved_in_flight(baton_http, 1)
    # Gone with the client, 10 s before its stream would have ended.
    baton_http.wait_previous_gone(old, timeout=5)
    assert "Traceback" not in baton_http.log


class _GatedUpstream:
    """An HTTP/1.1 upstream answering {"path": ...} on keep-alive connections; a request for
    a path that starts with /gated is answered only once `answer()` lets it (one each): a
    response in flight for as long as the test needs, instead of a delay to guess."""

    def __init__(self):
        import threading
        self.held = threading.Semaphore(0)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.listener.settimeout(30)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading
        try:
            while True:
                sock, _ = self.listener.accept()
                threading.Thread(target=self._exchanges, args=(sock,), daemon=True).start()
        except OSError:
            return              # closed

    def _exchanges(self, sock) -> None:
        with sock:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(4096)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ")[1].decode()
                if path.startswith("/gated"):
                    self.held.acquire(timeout=30)
                body = json.dumps({"path": path}).encode()
                sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))

    def answer(self) -> None:
        self.held.release()

    def close(self) -> None:
        self.held.release(100)
        self.listener.close()


def test_the_idle_timeouts_drain_window_goes_on_in_the_new_worker(baton):
    """A request in the idle timeout's drain window (every answer says connection: close, the
    connection reads on until drain_timeout: close_policy.py `_drain_when_idle`) moves with its
    response in flight; the new worker keeps the window: the next request is answered with
    connection: close too. Before, the new worker took it for a fresh keep-alive connection.
    (The window is long, for a reload may take seconds on a busy machine: that its end is
    carried too is tests/unit/test_http_inflight_hold.py's.)"""
    upstream = _GatedUpstream()
    port = free_port()
    b = baton(http_bootstrap(free_port(), port, upstream.port,
                             common_http_protocol_options={"idle_timeout": "0.5s"},
                             drain_timeout="60s"), concurrency=1)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            reader = Http1Reader(sock)
            _request(sock, "/first")
            assert reader.response()[0] == 200
            wait_until(lambda: b.stats().get("http.ingress_http.downstream_cx_idle_timeout", 0)
                       >= 1, 10, "the idle timeout's drain to begin")
            _request(sock, "/gated")
            wait_until(lambda: _in_flight(b), 10, "the request in flight")
            _reload(b)
            _moved_in_flight(b, 1)
            upstream.answer()
            status, headers, _ = reader.response()
            assert status == 200 and headers.get("connection") == "close"
            _request(sock, "/after")
            status, headers, body = reader.response()
            assert status == 200 and json.loads(body)["path"] == "/after"
            assert headers.get("connection") == "close", "served as a fresh keep-alive connection"
    finally:
        upstream.close()
    assert "Traceback" not in b.log


def test_an_https_long_poll_is_answered_across_a_reload_on_the_same_session(baton, recorder):
    """Over TLS the record layer's state moves with the socket: the old worker forwards the
    plaintext, the new one protects it (one process ever advances the sequence numbers)."""
    from .tls_clients import ssl_stats
    b, port, sock = _https_session(baton, recorder)
    with sock:
        reader = Http1Reader(sock)
        _request(sock, "/poll", "x-test-delay-ms: 1500")
        wait_until(lambda: b.stats().get("http.ingress_http.downstream_rq_active", 0) >= 1, 10,
                   "the long poll in flight")
        old = b.master_pid()
        _reload(b)
        _moved_in_flight(b, 1)
        status, _, body = reader.response()
        assert status == 200 and json.loads(body)["path"] == "/poll"
        _request(sock, "/after")
        status, _, body = reader.response()
        assert status == 200 and json.loads(body)["path"] == "/after"
    # The handshake was counted by the old generation, whose counters reach /stats when it
    # hands them over on its way out.
    b.wait_previous_gone(old, timeout=10)
    assert ssl_stats(b, port)["handshake"] == 1


def _tunnel_through_reloads(tmp_path, mode: str, opening: bytes, seen: bytes,
                            split: bool = False) -> Baton:
    """A tunnel of `mode` (tunnel_upstream.py) through 5 reloads: at each, the tunnel moves
    with both its sockets (record http-tunnel, worker/proxy/http/tunnel_move.py) and the old
    generation exits while the tunnel stays open; bytes each way after every reload, the
    last ones large enough to need many splices. With `split` (`--l4-move client-only`) the
    tunnel moves client-only instead (record tcp-split): one reload, after which the old
    generation serves the upstream until the tunnel ends."""
    import sys

    from .conftest import start_ready_process
    from .test_http_connect import TUNNEL_UPSTREAM, bootstrap
    proc, upstream = start_ready_process([sys.executable, str(TUNNEL_UPSTREAM), mode])
    port = free_port()
    config = bootstrap(free_port(), port, upstream)
    if mode == "websocket":
        config = http_bootstrap(free_port(), port, stat_prefix="connect", codec_type="HTTP1",
                                upgrade_configs=[{"upgrade_type": "websocket"}],
                                clusters={"tunnel": upstream},
                                routes=[{"match": {"prefix": "/"}, "route": {"cluster": "tunnel"}}])
    extra = ("--l4-move", "client-only") if split else ()
    b = Baton(tmp_path / "baton", config, concurrency=1, extra_args=extra).start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            reader = Http1Reader(sock)
            sock.sendall(opening)
            status, _ = reader.head()
            assert status in (101, 200)
            assert reader.exact(len(seen)) == seen
            sock.sendall(b"before")
            assert reader.exact(6) == b"BEFORE"
            for i in range(1 if split else 5):
                old = b.master_pid()
                _reload(b)
                if not split:
                    # The old generation keeps nothing of the tunnel: it exits while it is open.
                    b.wait_previous_gone(old, timeout=10)
                else:
                    # `baton reload` returns once the new generation took over and the old one
                    # moves its connections right after: wait for the move, or the bytes below
                    # and the tunnel's end could all come first, leaving nothing to move.
                    wait_until(lambda: b.log.count("moved 1 of 1 connection(s)") >= 1, 10,
                               "the tunnel moved client-only")
                for message in (f"after reload {i}".encode(), b"z" * 300_000):
                    sock.sendall(message)
                    assert reader.exact(len(message)) == message.upper()
            if split:
                assert pid_alive(old), "the old generation serves the tunnel's upstream"
        if split:
            b.wait_previous_gone(old, timeout=10)     # the tunnel's end ends it
        wait_until(lambda: b.stats().get("http.connect.downstream_cx_active", 0) == 0, 10,
                   "the tunnel's end counted by the generation that holds it")
    finally:
        b.stop()
        proc.kill()
        proc.wait(10)
    assert b.log.count("moved 1 of 1 connection(s)") >= (1 if split else 5)
    assert "Traceback" not in b.log
    return b


def test_a_connect_tunnel_moves_with_both_sockets_and_the_old_generation_exits(tmp_path):
    """An established CONNECT tunnel moves as an open L4 connection does: client and upstream
    socket to the new generation, nothing forwarded, nothing left behind."""
    _tunnel_through_reloads(
        tmp_path, "connect", b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
        b"CONNECT example.test:443 HTTP/1.1\n")


def test_a_connect_tunnel_moves_client_only_under_l4_move_client_only(tmp_path):
    _tunnel_through_reloads(
        tmp_path, "connect", b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
        b"CONNECT example.test:443 HTTP/1.1\n", split=True)


def test_a_websocket_moves_with_both_sockets_and_the_old_generation_exits(tmp_path):
    _tunnel_through_reloads(
        tmp_path, "websocket",
        b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n", b"")


def test_an_https_request_in_flight_at_each_of_20_reloads_keeps_its_session(baton):
    """Issue 12's "a connection with a request in flight through 20 consecutive reloads": at
    every reload a request waits for its answer on the same TLS session (held by the upstream
    until the connection moved: in flight at each move however long the reload takes, where a
    fixed delay left it to the reload's speed); each is answered on the connection, kept
    alive, and the session is never renegotiated."""
    from .tls_clients import ssl_stats
    upstream = _GatedUpstream()
    b, port, sock = _https_session(baton, upstream.port)
    try:
        with sock:
            reader = Http1Reader(sock)
            for i in range(20):
                old = b.master_pid()
                _request(sock, f"/gated{i}")
                wait_until(lambda: _in_flight(b), 10, "the request in flight")
                _reload(b)
                _moved_in_flight(b, i + 1)
                upstream.answer()
                status, headers, body = reader.response()
                assert status == 200 and json.loads(body)["path"] == f"/gated{i}"
                assert "connection" not in headers, f"reload {i}: the connection is closing"
                b.wait_previous_gone(old, timeout=15)
    finally:
        upstream.close()
    assert ssl_stats(b, port)["handshake"] == 1
    assert "Traceback" not in b.log
