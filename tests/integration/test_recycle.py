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
        pids.add(new)
    assert len(pids) == 3
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
    streams.join(60)
    streams.verify()
