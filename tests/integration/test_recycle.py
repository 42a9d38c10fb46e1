"""Recycling a worker: a fresh process takes over every connection of the old one."""

from __future__ import annotations

from .clients import Streams, roundtrip
from .conftest import free_port, pid_alive, tcp_bootstrap, wait_until


def test_recycle_moves_streaming_connections(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=1)
    streams = Streams(port, count=20, total=2 << 20, rate=256 * 1024).start()
    wait_until(lambda: streams.progress() > 0, 20, "streams to flow")
    pids = set()
    for _ in range(3):
        old = b.status()["workers"][0]["pid"]
        result = b.cli("recycle", "--worker", "0")
        assert result.returncode == 0, result.stderr
        assert "20 connection(s) moved" in result.stdout, result.stdout
        wait_until(lambda: not pid_alive(old), 20, "the recycled worker to exit")
        new = b.status()["workers"][0]["pid"]
        assert new != old
        # The old pid as it was, though the worker, left with nothing, exits as it answers.
        assert f"recycled: pid {old} -> {new}," in result.stdout, result.stdout
        pids.add(new)
    assert len(pids) == 3
    assert "Logging error" not in b.log and "Traceback" not in b.log, b.log
    streams.end()                       # a chunk more each after the recycles, then the end
    streams.join(60)
    streams.verify()
    assert b.status()["workers"][0]["restarts"] == 0
    assert roundtrip(port, b"after") == b"after"


def test_recycle_unknown_worker_is_an_error(baton, upstreams):
    echo = upstreams("echo")
    b = baton(tcp_bootstrap(free_port(), free_port(), [echo.port]), concurrency=1)
    result = b.cli("recycle", "--worker", "7")
    assert result.returncode == 1 and "no worker 7" in result.stderr


def test_rss_limit_recycles_without_dropping_connections(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    # A limit below any worker's RSS: every check recycles, which is what we want to watch.
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=1,
              extra_args=("--worker-rss-limit", "1M", "--worker-rss-check-interval", "0.5"))
    streams = Streams(port, count=10, total=1 << 20, rate=256 * 1024).start()
    first = b.status()["workers"][0]["pid"]
    wait_until(lambda: b.status()["workers"][0]["pid"] not in (first, None), 20, "an RSS recycle")
    assert "exceeds --worker-rss-limit" in b.log
    streams.end()                       # a chunk more each after the recycle, then the end
    streams.join(60)
    streams.verify()


def test_write_migration_late_responses_reach_the_client_in_order(baton, upstreams, tmp_path):
    """--l4-move client-only: the upstream socket stays in the old worker; what it sends 1-3 s
    after the move is forwarded to the new worker, which alone writes to the client."""
    import socket
    import threading
    import time
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [server.getsockname()[1]]), concurrency=1,
              extra_args=("--l4-move", "client-only"))
    clients = [socket.create_connection(("127.0.0.1", port), timeout=15) for _ in range(5)]
    server.settimeout(10)
    ups = [server.accept()[0] for _ in clients]
    for i, c in enumerate(clients):
        c.sendall(b"request %d\n" % i)
    for u in ups:          # the requests went through (connection order may differ: match by content)
        u.settimeout(10)
    by_request = {}
    for u in ups:
        line = u.recv(100)
        by_request[int(line.split()[1])] = u
    old_worker = b.status()["workers"][0]["pid"]
    result = b.cli("recycle", "--worker", "0")
    assert result.returncode == 0 and "5 connection(s) moved" in result.stdout, result.stdout + result.stderr
    # The old worker must stay: it still holds every upstream socket.
    assert pid_alive(old_worker)
    payloads = {i: b"".join(b"response %d part %03d\n" % (i, k) for k in range(200)) for i in by_request}

    def respond(i, u):
        for k, chunk in enumerate(payloads[i].splitlines(keepends=True)):
            u.sendall(chunk)
            if k == 0:
                # Late: the rest of the answer arrives 1-3 s after the move.
                time.sleep(1 + i * 0.5)
        u.shutdown(socket.SHUT_WR)
    threads = [threading.Thread(target=respond, args=(i, u)) for i, u in by_request.items()]
    for t in threads:
        t.start()
    # The client can still talk to the upstream, too: through the new worker and the old one.
    clients[0].sendall(b"more from client 0\n")
    assert by_request[0].recv(100) == b"more from client 0\n"
    for i, c in enumerate(clients):
        c.shutdown(socket.SHUT_WR)
        got = bytearray()
        while True:
            data = c.recv(65536)
            if not data:
                break
            got += data
        assert bytes(got) == payloads[i], f"client {i}: {len(got)} of {len(payloads[i])} bytes"
    for t in threads:
        t.join(10)
    for u in ups:
        assert u.recv(10) == b""       # the client's FIN was forwarded to the upstream
        u.close()
    wait_until(lambda: not pid_alive(old_worker), 20, "the old worker to exit once its upstreams closed")
    server.close()
