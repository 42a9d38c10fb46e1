"""The L4 proxy through the real `baton run`, real upstream processes and real client sockets."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time

import psutil
import pytest

from .clients import echo_transfer, recv_all, recv_exact, roundtrip, stream_chunks
from .conftest import free_port, tcp_bootstrap, wait_until

MB = 1 << 20


def test_bulk_20_connections_sha256(baton, upstreams):
    """20 concurrent connections, each 100 MB up and the same 100 MB back, checked by sha256."""
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]))
    per_connection = 100 * MB
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: echo_transfer(port, per_connection, i), range(20)))
    for sent, received in results:
        assert sent == received
    stats = b.stats()
    assert stats["tcp.ingress.downstream_cx_rx_bytes_total"] == 20 * per_connection
    assert stats["tcp.ingress.downstream_cx_tx_bytes_total"] == 20 * per_connection
    assert stats["cluster.backend.upstream_cx_total"] == 20


def test_half_close_reaches_upstream_and_response_returns(baton, upstreams):
    hasher = upstreams("hash")
    port = free_port()
    baton(tcp_bootstrap(free_port(), port, [hasher.port]))
    payload = b"".join(bytes(c) for c in stream_chunks(3 * MB + 17, seed=5))
    # The upstream answers only after it saw our FIN: the answer proves the half-close went
    # through and that the other direction stayed open.
    answer = roundtrip(port, payload)
    import hashlib
    assert answer == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n".encode()


def test_upstream_half_close_keeps_client_direction_open(baton, upstreams):
    """The upstream sends its banner and FIN first; the client can still send afterwards."""
    port = free_port()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    baton(tcp_bootstrap(free_port(), port, [server.getsockname()[1]]))
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    server.settimeout(10)
    upstream, _ = server.accept()
    upstream.sendall(b"banner")
    upstream.shutdown(socket.SHUT_WR)
    assert recv_all(client) == b"banner"          # EOF reached the client
    client.sendall(b"late request")
    client.shutdown(socket.SHUT_WR)
    upstream.settimeout(10)
    assert recv_all(upstream) == b"late request"
    upstream.close()
    client.close()
    server.close()


def test_1000_concurrent_connections(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port], max_connections=5000))
    socks = []
    try:
        for i in range(1000):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=20))
        # All 1000 are open at once: each one now proves its path works end to end.
        for i, s in enumerate(socks):
            s.sendall(b"conn %04d\n" % i)
        for i, s in enumerate(socks):
            assert recv_exact(s, 10) == b"conn %04d\n" % i
        gauges = b.stats()
        assert gauges["listener.127.0.0.1_%d.downstream_cx_active" % port] == 1000
        assert gauges["cluster.backend.upstream_cx_active"] == 1000
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: b.stats()["cluster.backend.upstream_cx_active"] == 0, 20, "connections to close")


def test_refused_upstream_closes_client_and_counts(baton, upstreams):
    echo = upstreams("echo")
    dead = free_port()               # nothing listens here
    port, good_port = free_port(), free_port()
    bootstrap = tcp_bootstrap(free_port(), port, [dead])
    # A second listener to a live upstream shows the worker keeps serving everyone else.
    good = tcp_bootstrap(0, good_port, [echo.port], cluster="good")["static_resources"]
    good["listeners"][0]["name"] = "good"
    bootstrap["static_resources"]["listeners"] += good["listeners"]
    bootstrap["static_resources"]["clusters"] += good["clusters"]
    b = baton(bootstrap, concurrency=1)
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.settimeout(10)
            assert s.recv(10) == b""               # closed, not hung
        assert roundtrip(good_port, b"still here") == b"still here"
    stats = b.stats()
    assert stats["cluster.backend.upstream_cx_connect_fail"] == 5
    assert stats["cluster.backend.upstream_cx_active"] == 0


class _Blackhole:
    """A listener whose accept queue is full: further SYNs are dropped, so connects hang."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.filler = [socket.socket() for _ in range(2)]
        for f in self.filler:
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", self.port))

    def close(self):
        for s in [self.sock, *self.filler]:
            s.close()


def test_connect_timeout_then_next_endpoint(baton, upstreams):
    echo = upstreams("echo")
    hole = _Blackhole()
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [hole.port, echo.port],
                            connect_timeout="0.25s", max_connect_attempts=2), concurrency=1)
    # Round robin starts on the black hole for the first connection: it must time out and
    # be retried on the live endpoint.
    for i in range(4):
        start = time.monotonic()
        assert roundtrip(port, b"attempt %d" % i) == b"attempt %d" % i
        assert time.monotonic() - start < 5
    stats = b.stats()
    assert stats["cluster.backend.upstream_cx_connect_timeout"] >= 1
    assert stats["cluster.backend.upstream_cx_connect_fail"] == stats["cluster.backend.upstream_cx_connect_timeout"]
    hole.close()


def test_connect_timeout_alone_closes_client(baton):
    hole = _Blackhole()
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [hole.port], connect_timeout="0.3s"), concurrency=1)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        start = time.monotonic()
        assert s.recv(10) == b""
        elapsed = time.monotonic() - start
    assert 0.2 < elapsed < 5
    assert b.stats()["cluster.backend.upstream_cx_connect_timeout"] == 1
    hole.close()


def test_idle_timeout(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port], idle_timeout="0.5s"), concurrency=1)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        # Activity keeps it open past the timeout ...
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            s.sendall(b"x")
            assert recv_exact(s, 1) == b"x"
            time.sleep(0.1)     # pacing the client's own traffic, not synchronisation
        # ... silence closes it.
        start = time.monotonic()
        assert s.recv(1) == b""
        assert 0.3 < time.monotonic() - start < 3
    assert b.stats()["tcp.ingress.idle_timeout"] == 1


def test_circuit_breaker_max_connections(baton, upstreams):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port], max_connections=2), concurrency=1)
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    for i, s in enumerate(held):
        s.sendall(b"%d" % i)
        assert recv_exact(s, 1) == b"%d" % i
    with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
        assert third.recv(1) == b""
    assert b.stats()["cluster.backend.upstream_cx_overflow"] == 1
    for s in held:
        s.close()
    wait_until(lambda: b.stats()["cluster.backend.upstream_cx_active"] == 0, 10, "release")
    assert roundtrip(port, b"again") == b"again"


def test_weighted_clusters_split(baton, upstreams):
    a, c = upstreams("banner", "A"), upstreams("banner", "B")
    port = free_port()
    bootstrap = tcp_bootstrap(free_port(), port, [a.port], cluster="a")
    other = tcp_bootstrap(0, 0, [c.port], cluster="b")["static_resources"]["clusters"]
    bootstrap["static_resources"]["clusters"] += other
    tcp = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    del tcp["cluster"]
    tcp["weighted_clusters"] = {"clusters": [{"name": "a", "weight": 3}, {"name": "b", "weight": 1}]}
    b = baton(bootstrap, concurrency=1)
    seen = {"A": 0, "B": 0}
    for i in range(400):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            try:
                seen[recv_exact(s, 1).decode()] += 1
            except ConnectionError as exc:
                # Seen once in a full run (not reproduced alone): say what the proxy counted.
                counters = {k: v for k, v in b.stats().items() if k.startswith("cluster.") and v}
                raise AssertionError(f"connection {i}: {exc}; proxy counters: {counters}") from exc
    assert 240 <= seen["A"] <= 360, seen          # 3:1 of 400, well inside 6 sigma


def test_slow_reader_memory_is_bounded(baton, upstreams):
    """1 GiB pushed at a reader that takes ~200 MB/s: Baton holds at most its buffer limit."""
    limit = 1 * MB
    slow = upstreams("slow", str(200 * MB))
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [slow.port], buffer_limit=limit), concurrency=1)
    worker = psutil.Process(b.worker_pids()[0])
    baseline = worker.memory_info().rss
    peak_rss, peak_buffered = baseline, 0
    done = threading.Event()

    def push():
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            for chunk in stream_chunks(1 << 30, seed=1, chunk=1 * MB):
                s.sendall(chunk)
        done.set()

    thread = threading.Thread(target=push)
    thread.start()
    deadline = time.monotonic() + 120
    while not done.is_set() and time.monotonic() < deadline:
        peak_rss = max(peak_rss, worker.memory_info().rss)
        peak_buffered = max(peak_buffered, b.stats()["tcp.ingress.downstream_cx_rx_bytes_buffered"])
        done.wait(0.05)       # sampling period; the loop ends on the Event
    thread.join(10)
    assert done.is_set(), "the transfer did not finish"
    assert peak_buffered <= limit, f"buffered {peak_buffered} bytes in one direction"
    assert peak_buffered > 0, "the reader was never slower than the sender"
    assert peak_rss - baseline < 8 * MB, f"worker RSS grew by {(peak_rss - baseline) / MB:.1f} MiB"
