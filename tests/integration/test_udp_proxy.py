"""UDP proxy (envoy.filters.udp_listener.udp_proxy) end to end: real Baton processes, real UDP
echo upstreams (upstreams.py udp-echo tags each answer with its port), real client sockets.

Each client socket is one session (one downstream address). What is checked: every datagram
is answered, each session stays on one upstream, and that holds through 20 `baton reload`s
(the sessions move with their upstream sockets: worker/proxy/udp_proxy.py); idle timeout,
hash policy, no route, access log, and Envoy's stat names.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from baton.worker.proxy.udp_proxy import owner_index

from .conftest import free_port, wait_until

UDP_PROXY = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
ROUTE = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route"
SOURCE_PORT_INPUT = ("type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3"
                     ".SourcePortInput")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def route_to(cluster: str) -> dict:
    return {"action": {"name": "route", "typed_config": {"@type": ROUTE, "cluster": cluster}}}


def udp_bootstrap(admin: int, port: int, upstream_ports, *, lb_policy="ROUND_ROBIN",
                  matcher=None, **proxy_fields) -> dict:
    """One UDP listener with udp_proxy (stat_prefix "dns") to cluster "echo" over
    `upstream_ports`; `matcher` replaces the route, `proxy_fields` are added to the filter."""
    proxy = {"@type": UDP_PROXY, "stat_prefix": "dns",
             "matcher": matcher or {"on_no_match": route_to("echo")}, **proxy_fields}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "udp_in",
                "address": {"socket_address": {"protocol": "UDP", "address": "127.0.0.1",
                                               "port_value": port}},
                "udp_listener_config": {},
                "listener_filters": [{"name": "envoy.filters.udp_listener.udp_proxy",
                                      "typed_config": proxy}]}],
            "clusters": [{"name": "echo", "type": "STATIC", "lb_policy": lb_policy,
                          "load_assignment": {"cluster_name": "echo", "endpoints": [{"lb_endpoints": [
                              {"endpoint": {"address": {"socket_address": {
                                  "address": "127.0.0.1", "port_value": p}}}}
                              for p in upstream_ports]}]}}]}}


def exchange(sock: socket.socket, port: int, payload: bytes, timeout: float = 2.0) -> int | None:
    """Send one datagram through the proxy on `sock`; the port of the upstream that answered,
    or None if no answer came in time. Late answers to earlier datagrams are skipped."""
    sock.sendto(payload, ("127.0.0.1", port))
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(2048)
        except socket.timeout:
            return None
        head, _, tag = data.rpartition(b"@")
        if head == payload:
            return int(tag)


class Session(threading.Thread):
    """One UDP session through the proxy: datagram i, then its answer (up to 5 s), every
    `interval` seconds, until `stop` is set or `limit` datagrams were sent (a bounded load).
    An answer that comes late still counts: `lost` is what was never answered."""

    def __init__(self, port: int, name: int, stop: threading.Event, interval: float = 0.01,
                 limit: int = 20000):
        super().__init__(daemon=True)
        self.port, self.name_id, self.stop, self.interval, self.limit = port, name, stop, interval, limit
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sent = 0
        self.unanswered: set[int] = set()
        self.upstreams: set[int] = set()

    @property
    def lost(self) -> list[int]:
        return sorted(self.unanswered)

    def _receive(self, until: float, wanted: int | None) -> bool:
        """Take answers until `wanted` is answered (None: until the time is up); whether it
        was. An earlier datagram's late answer takes it out of `unanswered`."""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(2048)
            except socket.timeout:
                return False
            head, _, tag = data.rpartition(b"@")
            seq = int(head.rpartition(b"-")[2])
            self.unanswered.discard(seq)
            self.upstreams.add(int(tag))
            if seq == wanted:
                return True

    def run(self) -> None:
        while not self.stop.is_set() and self.sent < self.limit:
            seq = self.sent
            self.sock.sendto(b"s%d-%d" % (self.name_id, seq), ("127.0.0.1", self.port))
            if not self._receive(time.monotonic() + 5.0, seq):
                self.unanswered.add(seq)
            self.sent += 1
            self.stop.wait(self.interval)
        if self.unanswered:
            self._receive(time.monotonic() + 2.0, None)       # late answers still count

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def udp_echoes(upstreams):
    def start(count: int) -> list[int]:
        return [upstreams("udp-echo").port for _ in range(count)]
    return start


def test_sessions_continue_through_20_reloads(baton, udp_echoes):
    """Four sessions, about 100 datagrams a second each, through 20 reloads of a two-worker
    Baton: every datagram is answered, each session by one upstream all along, the sessions
    spread over both upstreams (round robin) and none is ever opened again (the count of
    sessions stays 4: each moved with its upstream socket)."""
    ups = udp_echoes(2)
    port = free_udp_port()
    b = baton(udp_bootstrap(free_port(), port, ups), concurrency=2)
    stop = threading.Event()
    sessions = [Session(port, i, stop) for i in range(4)]
    try:
        for s in sessions:
            s.start()
        wait_until(lambda: all(s.sent >= 5 for s in sessions), 10, "every session to start")
        for n in range(20):
            sent_before = [s.sent for s in sessions]
            old = b.master_pid()
            result = b.reload()
            assert result.returncode == 0, f"reload {n + 1}: {result.stdout}{result.stderr}"
            b.wait_previous_gone(old)
            # Traffic went on through this reload before the next one starts.
            wait_until(lambda: all(s.sent >= before + 3 for s, before in zip(sessions, sent_before)),
                       10, f"datagrams after reload {n + 1}")
    finally:
        stop.set()
        for s in sessions:
            s.join(10)
            s.close()
    total = sum(s.sent for s in sessions)
    assert total > 400, total
    assert [s.lost for s in sessions] == [[]] * 4, f"unanswered datagrams of {total}"
    assert all(len(s.upstreams) == 1 for s in sessions), [s.upstreams for s in sessions]
    assert set().union(*(s.upstreams for s in sessions)) == set(ups)
    stats = b.stats()
    assert stats["udp.dns.downstream_sess_total"] == 4
    assert stats["udp.dns.downstream_sess_rx_datagrams"] == total
    assert stats["udp.dns.downstream_sess_tx_datagrams"] == total
    assert stats["cluster.echo.udp.sess_tx_datagrams"] == total
    assert stats["udp.dns.downstream_sess_active"] == 4


def test_idle_timeout_ends_a_session_and_logs_it(baton, udp_echoes, tmp_path):
    """A session ends after idle_timeout without datagrams (udp.<prefix>.idle_timeout, the
    session access log line in Envoy's default format); the next datagram from the same
    address opens a new session."""
    [up] = udp_echoes(1)
    port = free_udp_port()
    log_path = tmp_path / "udp-access.log"
    b = baton(udp_bootstrap(free_port(), port, [up], idle_timeout="0.3s", access_log=[{
        "name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(log_path)}}]), concurrency=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert exchange(sock, port, b"one") == up
        assert exchange(sock, port, b"two") == up
        wait_until(lambda: b.stats()["udp.dns.idle_timeout"] == 1, 10, "the idle timeout")
        assert b.stats()["udp.dns.downstream_sess_active"] == 0
        assert exchange(sock, port, b"three") == up
        local = sock.getsockname()
    stats = b.stats()
    assert stats["udp.dns.downstream_sess_total"] == 2
    assert stats["udp.dns.downstream_sess_rx_bytes"] == len(b"onetwothree")
    wait_until(lambda: log_path.exists() and log_path.read_text().count("\n") >= 1, 10,
               "the session's access log line")
    line = log_path.read_text().splitlines()[0]
    # Envoy 1.40 on the same config: [start] "- - -" 0 - 6 <sent> <duration> - "-" "-" "-" "-" "host"
    assert f'"- - -" 0 - 6 {6 + 2 * len(f"@{up}")} ' in line, line
    assert line.endswith(f'- "-" "-" "-" "-" "127.0.0.1:{up}"'), line
    assert local[1] > 0


def test_source_ip_hash_keeps_one_upstream_and_no_route_is_counted(baton, udp_echoes):
    """hash_policies source_ip on a RING_HASH cluster: every session from 127.0.0.1 reaches the
    same upstream (round robin would alternate). A datagram that no route matches is dropped
    and counted in downstream_sess_no_route."""
    ups = udp_echoes(3)
    port = free_udp_port()
    never = {"matcher_list": {"matchers": [{
        "predicate": {"single_predicate": {
            "input": {"name": "port", "typed_config": {"@type": SOURCE_PORT_INPUT}},
            "value_match": {"exact": "1"}}},
        "on_match": route_to("echo")}]}}
    admin = free_port()
    hashed = udp_bootstrap(admin, port, ups, lb_policy="RING_HASH",
                           hash_policies=[{"source_ip": True}])
    no_route_port = free_udp_port()
    second = udp_bootstrap(admin, no_route_port, ups, matcher=never)["static_resources"]["listeners"][0]
    second["name"] = "unrouted"
    second["listener_filters"][0]["typed_config"]["stat_prefix"] = "unrouted"
    hashed["static_resources"]["listeners"].append(second)
    b = baton(hashed, concurrency=2)
    seen = set()
    for i in range(6):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            seen.add(exchange(sock, port, b"h%d" % i))
    assert len(seen) == 1 and seen <= set(ups), seen
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert exchange(sock, no_route_port, b"nowhere", timeout=0.3) is None
    wait_until(lambda: b.stats()["udp.unrouted.downstream_sess_no_route"] == 1, 10, "no_route")
    stats = b.stats()
    assert stats["udp.unrouted.downstream_sess_total"] == 0
    assert stats["udp.dns.downstream_sess_total"] == 6
    # Envoy's names, listed from the start.
    for name in ("udp.unrouted.downstream_sess_active", "udp.unrouted.idle_timeout",
                 "udp.unrouted.downstream_sess_rx_errors", "udp.unrouted.downstream_sess_tx_errors",
                 "cluster.echo.udp.sess_rx_datagrams_dropped", "cluster.echo.udp.sess_rx_errors",
                 "listener.127.0.0.1_%d.udp.downstream_rx_datagram_dropped" % no_route_port):
        assert name in stats, name


def test_recycle_moves_sessions_and_a_crash_loses_only_sessions(baton, udp_echoes):
    """`baton recycle` of the worker that reads the listener moves its session like a reload
    does (nothing lost, same upstream, no new session). A SIGKILL of that worker loses its
    sessions but not the listener: the socket stays with the master, the respawned worker
    reads it, and what clients sent meanwhile is answered (at most the datagram in flight in
    the dead worker is lost)."""
    ups = udp_echoes(2)
    port = free_udp_port()
    b = baton(udp_bootstrap(free_port(), port, ups), concurrency=2)
    owner = owner_index("udp_in", 2)
    stop = threading.Event()
    session = Session(port, 0, stop)
    try:
        session.start()
        wait_until(lambda: session.sent >= 5, 10, "the session to start")
        result = b.cli("recycle", "--worker", str(owner), timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        before = session.sent
        wait_until(lambda: session.sent >= before + 10, 10, "datagrams after the recycle")
        assert session.lost == [] and len(session.upstreams) == 1, (session.lost, session.upstreams)
        assert b.stats()["udp.dns.downstream_sess_total"] == 1
        [pid] = [w["pid"] for w in b.status()["workers"] if w["id"] == owner]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: any(w["id"] == owner and w["pid"] not in (None, pid)
                               for w in b.status()["workers"]), 20, "the worker's respawn")
        before = session.sent
        wait_until(lambda: session.sent >= before + 10, 20, "datagrams after the crash")
    finally:
        stop.set()
        session.join(10)
        session.close()
    assert len(session.lost) <= 1, session.lost
    assert b.stats()["udp.dns.downstream_sess_total"] == 2


def test_per_packet_load_balancing_spreads_one_session(baton, udp_echoes):
    """use_per_packet_load_balancing: each datagram of one session picks a host (round robin),
    and the answers of every host come back to the client."""
    ups = udp_echoes(2)
    port = free_udp_port()
    b = baton(udp_bootstrap(free_port(), port, ups, use_per_packet_load_balancing=True),
              concurrency=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        answers = [exchange(sock, port, b"p%d" % i) for i in range(6)]
    assert None not in answers and set(answers) == set(ups), answers
    assert all(x != y for x, y in zip(answers, answers[1:])), answers      # alternating
    assert b.stats()["udp.dns.downstream_sess_total"] == 1


def test_a_udp_and_a_tcp_listener_share_a_port_through_a_reload(baton, udp_echoes, upstreams):
    """DNS-style: udp_proxy and tcp_proxy on the same address and port, each its own socket;
    both serve, and both are handed to the next generation."""
    port = free_port()
    config = udp_bootstrap(free_port(), port, udp_echoes(1))
    tcp_echo = upstreams("echo").port
    config["static_resources"]["listeners"].append({
        "name": "tcp_in",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "dns_tcp", "cluster": "tcp_echo"}}]}]})
    config["static_resources"]["clusters"].append({
        "name": "tcp_echo", "type": "STATIC", "load_assignment": {"cluster_name": "tcp_echo",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": tcp_echo}}}}]}]}})
    b = baton(config, concurrency=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        for round in range(2):
            if round:
                old = b.master_pid()
                assert b.reload().returncode == 0
                b.wait_previous_gone(old)
            assert exchange(udp, port, b"query-%d" % round, timeout=5) is not None
            with socket.create_connection(("127.0.0.1", port), timeout=5) as tcp:
                tcp.sendall(b"over tcp")
                assert tcp.recv(100) == b"over tcp"
    assert "Traceback" not in b.log
