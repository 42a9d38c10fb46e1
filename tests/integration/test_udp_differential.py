"""The UDP proxy against the real Envoy 1.40 on the same udp_proxy bootstrap: the same datagrams
from the same number of sessions give the same udp.* / cluster udp.* stats (names and values),
the same session life (idle timeout) and the same access log lines (times masked)."""

from __future__ import annotations

import re
import socket
import urllib.request

import pytest

from .conftest import Baton, free_port, wait_until
from .differential.proxies import Envoy, Target
from .test_udp_proxy import exchange, free_udp_port, udp_bootstrap

FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def bootstrap(admin: int, port: int, upstream: int, log_path) -> dict:
    return udp_bootstrap(admin, port, [upstream], idle_timeout="0.5s", access_log=[{
        "name": "envoy.access_loggers.file", "typed_config": {"@type": FILE_LOG,
                                                              "path": str(log_path)}}])


def udp_stats(target: Target, port: int) -> dict[str, int]:
    """The UDP proxy's stats, the listener's port written as PORT (each proxy has its own)."""
    stats = target.stats()
    return {name.replace(f"_{port}.", "_PORT."): value for name, value in stats.items()
            if name.startswith(("udp.", "cluster.echo.udp.", f"listener.127.0.0.1_{port}.udp."))
            or name in ("cluster.echo.upstream_cx_rx_bytes_total",
                        "cluster.echo.upstream_cx_tx_bytes_total", "cluster.echo.upstream_cx_total")}


def udp_prometheus(target: Target, port: int) -> list[str]:
    """The UDP proxy's lines of /stats/prometheus (Envoy's names and tags), port masked."""
    with urllib.request.urlopen(f"http://127.0.0.1:{target.admin_port}/stats/prometheus",
                                timeout=5) as r:
        body = r.read().decode()
    return sorted(line.replace(f"_{port}\"", "_PORT\"") for line in body.splitlines()
                  if not line.startswith("#") and "udp" in line)


def masked(line: str) -> str:
    """An access log line without what differs between runs: the start time, the duration."""
    line = re.sub(r"^\[[^]]+\]", "[START]", line)
    return re.sub(r'^(\[START\] "- - -" 0 - \d+ \d+) \d+ ', r"\1 DURATION ", line)


@pytest.fixture
def proxies(tmp_path, upstreams):
    up = upstreams("udp-echo").port
    started = {}
    try:
        for name in ("envoy", "baton"):
            admin, port = free_port(), free_udp_port()
            log_path = tmp_path / f"{name}-access.log"
            config = bootstrap(admin, port, up, log_path)
            if name == "envoy":
                process = Envoy(tmp_path / "envoy", config).start()
            else:
                process = Baton(tmp_path / "baton", config, concurrency=1).start()
            started[name] = (Target(name, {"udp_in": port}, admin, process), log_path)
        yield started, up
    finally:
        for target, _ in started.values():
            target.process.stop()


def test_stats_sessions_and_access_log_match_envoy(proxies):
    started, up = proxies
    observed = {}
    for name, (target, log_path) in started.items():
        port = target.port
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        try:
            answers = []
            for i in range(5):
                for j, sock in enumerate(socks):
                    answers.append(exchange(sock, port, b"datagram %d of %d" % (i, j)))
            assert answers == [up] * 10, (name, answers)
            # Longer than max_rx_datagram_size (1500): dropped, counted on the listener.
            assert exchange(socks[0], port, b"x" * 1501, timeout=0.3) is None
            during = udp_stats(target, port)
            wait_until(lambda: udp_stats(target, port)["udp.dns.idle_timeout"] == 2, 10,
                       f"{name}: both sessions idle out")
            after = udp_stats(target, port)
            prometheus = udp_prometheus(target, port)
        finally:
            for sock in socks:
                sock.close()
        wait_until(lambda: log_path.exists() and log_path.read_text().count("\n") == 2, 10,
                   f"{name}: two access log lines")
        lines = sorted(masked(line) for line in log_path.read_text().splitlines())
        observed[name] = (during, after, lines, prometheus)
    envoy, baton = observed["envoy"], observed["baton"]
    assert baton[0] == envoy[0], "stats while the sessions are open"
    assert baton[1] == envoy[1], "stats after the idle timeout"
    assert baton[2] == envoy[2], "access log lines"
    assert baton[3] == envoy[3], "/stats/prometheus"
    assert 'envoy_udp_downstream_sess_total{envoy_udp_prefix="dns"} 2' in envoy[3]
    assert envoy[0]["udp.dns.downstream_sess_active"] == 2
    assert envoy[0]["udp.dns.downstream_sess_total"] == 2
    assert envoy[0]["listener.127.0.0.1_PORT.udp.downstream_rx_datagram_dropped"] == 1
