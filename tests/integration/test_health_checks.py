"""worker/proxy/health.py against real local servers on 127.0.0.1: the checker runs
in-process on an asyncio loop (no Baton process), and every wait is for a state change with
a deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
import socket
from collections import defaultdict

import pytest

from baton.worker.proxy.cluster import Cluster, ClusterManager
from baton.worker.proxy.health import HealthChecker
from baton.worker.proxy.outlier import OutlierDetector
from baton.xds.cluster_features import OUTLIER_DEFAULTS
from baton.worker.stats import Stats

DEADLINE = 10.0


def hc_config(kind="http", **extra):
    config = {"timeout": 1.0, "interval": 0.05, "initial_jitter": 0.0, "interval_jitter": 0.0,
              "interval_jitter_percent": 0, "unhealthy_threshold": 2, "healthy_threshold": 2,
              "reuse_connection": True, "no_traffic_interval": 0.05,
              "no_traffic_healthy_interval": 0.05, "unhealthy_interval": 0.05,
              "unhealthy_edge_interval": 0.05, "healthy_edge_interval": 0.05,
              "kind": kind, "http": None, "tcp": None}
    if kind == "http":
        config["http"] = {"path": "/healthz", "host": "backend", "method": "GET",
                          "request_headers_to_add": [["x-probe", "1", "APPEND_IF_EXISTS_OR_ADD"]],
                          "request_headers_to_remove": [], "expected_statuses": [[200, 201]],
                          "retriable_statuses": []}
    else:
        config["tcp"] = {"send": None, "receive": []}
    for key, value in extra.items():
        if key in ("http", "tcp"):
            config[key].update(value)
        else:
            config[key] = value
    return config


class HttpServer:
    """HTTP/1.1 keep-alive server that answers with `self.status`, records requests, and
    counts connections."""

    def __init__(self, status=200, close=False):
        self.status = status
        self.close = close
        self.requests: list[bytes] = []
        self.connections = 0
        self.open = 0
        self.server = None
        self.port = None
        self.writers = set()

    async def start(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader, writer):
        self.connections += 1
        self.open += 1
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                body = b"ok" if self.status < 300 else b"nope"
                extra = b"connection: close\r\n" if self.close else b""
                writer.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%s\r\n%s"
                             % (self.status, len(body), extra, body))
                await writer.drain()
                if self.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            self.writers.discard(writer)
            writer.close()

    async def stop(self):
        """Stop listening and drop the open connections (asyncio's close() keeps them)."""
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()


def refused_port() -> int:
    """A port with nothing listening (bound then closed; the kernel refuses connections)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_for(*ports, **spec):
    counters, gauges = defaultdict(int), defaultdict(int)
    cluster = Cluster({"name": "backend", "endpoints": [{"address": "127.0.0.1", "port": p}
                                                        for p in ports], **spec},
                      counters, gauges)
    return cluster, counters, gauges


async def until(predicate, what):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 30))


# -- HTTP ------------------------------------------------------------------------------------

def test_http_check_healthy_then_503_is_unhealthy_at_once_then_back():
    async def main():
        server = await HttpServer().start()
        cluster, counters, gauges = cluster_for(server.port)
        host = cluster.hosts[0]
        checker = HealthChecker(cluster, hc_config(), asyncio.get_running_loop(), counters, gauges)
        checker.start()
        try:
            assert not host.healthy                      # new host: unhealthy until checked
            await until(lambda: host.healthy, "first pass")
            assert gauges["cluster.backend.health_check.healthy"] == 1
            assert gauges["cluster.backend.membership_healthy"] == 1
            request = server.requests[0]
            assert request.startswith(b"GET /healthz HTTP/1.1\r\n")
            assert b"host: backend\r\n" in request and b"user-agent: Envoy/HC\r\n" in request
            assert b"x-probe: 1\r\n" in request
            server.status = 503                          # a bad status: unhealthy at once
            before = counters["cluster.backend.health_check.failure"]
            await until(lambda: not host.healthy, "503 makes it unhealthy")
            assert counters["cluster.backend.health_check.failure"] == before + 1
            assert counters["cluster.backend.health_check.network_failure"] == 0
            server.status = 200                          # healthy_threshold 2: two passes
            passes = counters["cluster.backend.health_check.success"]
            await until(lambda: host.healthy, "back to healthy")
            assert counters["cluster.backend.health_check.success"] >= passes + 2
            assert server.connections == 1               # one kept connection throughout
            assert counters["cluster.backend.health_check.attempt"] >= 4
        finally:
            checker.stop()
            await until(lambda: server.open == 0, "checker closes its connection")
            await server.stop()

    run(main())


def test_http_check_refused_port_needs_unhealthy_threshold_failures():
    async def main():
        server = await HttpServer().start()
        cluster, counters, gauges = cluster_for(server.port)
        host = cluster.hosts[0]
        checker = HealthChecker(cluster, hc_config(unhealthy_threshold=3),
                                asyncio.get_running_loop(), counters, gauges)
        checker.start()
        try:
            await until(lambda: host.healthy, "first pass")
            await server.stop()                          # now connections are refused
            fails = counters["cluster.backend.health_check.network_failure"]
            await until(lambda: counters["cluster.backend.health_check.network_failure"]
                        >= fails + 2, "two network failures")
            # Two network failures are below unhealthy_threshold (3) ...
            if counters["cluster.backend.health_check.network_failure"] < fails + 3:
                assert host.healthy
            await until(lambda: not host.healthy, "third failure")
            assert counters["cluster.backend.health_check.network_failure"] >= fails + 3
        finally:
            checker.stop()

    run(main())


def test_http_check_never_up_host_stays_unhealthy_and_panic_uses_all():
    async def main():
        server = await HttpServer().start()
        dead = refused_port()
        cluster, counters, gauges = cluster_for(server.port, dead)
        good, bad = cluster.hosts
        checker = HealthChecker(cluster, hc_config(), asyncio.get_running_loop(), counters, gauges)
        checker.start()
        try:
            assert cluster.balancer.panic                # nobody checked yet: 0% healthy
            await until(lambda: good.healthy and bad.health and not bad.health.first,
                        "both checked once")
            assert not bad.healthy
            assert not cluster.balancer.panic            # 50% healthy is not below 50%
            assert {cluster.pick() for _ in range(20)} == {good}
            assert gauges["cluster.backend.health_check.healthy"] == 1
        finally:
            checker.stop()
            await server.stop()

    run(main())


def test_http_check_timeout_counts_as_network_failure_and_closes():
    async def main():
        accepted = []

        async def silent(reader, writer):              # accepts, reads, never answers
            accepted.append(writer)
            await reader.read()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cluster, counters, gauges = cluster_for(port)
        host = cluster.hosts[0]
        checker = HealthChecker(cluster, hc_config(timeout=0.1, unhealthy_threshold=1),
                                asyncio.get_running_loop(), counters, gauges)
        checker.start()
        try:
            await until(lambda: counters["cluster.backend.health_check.network_failure"] >= 2,
                        "timeouts")
            assert not host.healthy
            assert host.health.conn is None or len(accepted) >= 2   # reconnects after a timeout
        finally:
            checker.stop()
            server.close()
            await server.wait_closed()

    run(main())


def test_http_check_server_closing_each_time_and_expected_ranges():
    async def main():
        server = await HttpServer(status=202, close=True).start()
        cluster, counters, gauges = cluster_for(server.port)
        host = cluster.hosts[0]
        config = hc_config(http={"expected_statuses": [[200, 300]], "host": "svc.example"})
        checker = HealthChecker(cluster, config, asyncio.get_running_loop(), counters, gauges)
        checker.start()
        try:
            await until(lambda: counters["cluster.backend.health_check.success"] >= 3, "passes")
            assert host.healthy
            assert server.connections >= 3              # `connection: close` -> reconnect
            assert b"host: svc.example\r\n" in server.requests[0]
        finally:
            checker.stop()
            await server.stop()

    run(main())


def test_retriable_status_counts_toward_the_threshold():
    async def main():
        server = await HttpServer().start()
        cluster, counters, gauges = cluster_for(server.port)
        host = cluster.hosts[0]
        config = hc_config(unhealthy_threshold=3, http={"retriable_statuses": [[503, 504]]})
        checker = HealthChecker(cluster, config, asyncio.get_running_loop(), counters, gauges)
        checker.start()
        try:
            await until(lambda: host.healthy, "first pass")
            server.status = 503
            failures = counters["cluster.backend.health_check.failure"]
            await until(lambda: not host.healthy, "three retriable failures")
            assert counters["cluster.backend.health_check.failure"] >= failures + 3
        finally:
            checker.stop()
            await server.stop()

    run(main())


def test_passing_check_returns_an_ejected_host():
    async def main():
        server = await HttpServer().start()
        cluster, counters, gauges = cluster_for(server.port)
        host = cluster.hosts[0]
        config = {**OUTLIER_DEFAULTS, "always_eject_one_host": True}
        cluster.outlier = OutlierDetector(cluster, config, counters, gauges)
        for _ in range(5):
            cluster.outlier.report(host, 500)
        assert host.ejected
        checker = HealthChecker(cluster, hc_config(), asyncio.get_running_loop(), counters, gauges)
        checker.start()
        try:
            await until(lambda: host.healthy and not host.ejected, "uneject on pass")
        finally:
            checker.stop()
            await server.stop()

    run(main())


# -- TCP -------------------------------------------------------------------------------------

def test_tcp_connect_only_and_refused():
    async def main():
        async def hold(reader, writer):
            await reader.read()
            writer.close()

        server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cluster, counters, gauges = cluster_for(port, refused_port())
        up, down = cluster.hosts
        checker = HealthChecker(cluster, hc_config("tcp"), asyncio.get_running_loop(), counters,
                                gauges)
        checker.start()
        try:
            await until(lambda: up.healthy and not down.health.first, "both checked")
            assert not down.healthy
            assert counters["cluster.backend.health_check.network_failure"] >= 1
        finally:
            checker.stop()
            server.close()
            await server.wait_closed()

    run(main())


def test_tcp_send_and_fuzzy_receive():
    async def main():
        replies = {"answer": b"+PONG and then some\r\n"}

        async def pong(reader, writer):
            data = await reader.readexactly(6)
            assert data == b"PING\r\n"
            writer.write(replies["answer"])
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(pong, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cluster, counters, gauges = cluster_for(port)
        host = cluster.hosts[0]
        config = hc_config("tcp", unhealthy_threshold=1,
                           tcp={"send": b"PING\r\n".hex(),
                                "receive": [b"PON".hex(), b"then".hex()]})
        checker = HealthChecker(cluster, config, asyncio.get_running_loop(), counters, gauges)
        checker.start()
        try:
            await until(lambda: host.healthy, "PONG matches")
            replies["answer"] = b"then PONG\r\n"         # blocks out of order: no match
            await until(lambda: not host.healthy, "mismatch fails")
        finally:
            checker.stop()
            server.close()
            await server.wait_closed()

    run(main())


# -- intervals, manager, cleanup -------------------------------------------------------------

def test_no_traffic_interval_until_the_cluster_has_traffic():
    async def main():
        server = await HttpServer().start()
        cluster, counters, gauges = cluster_for(server.port)
        host = cluster.hosts[0]
        checker = HealthChecker(cluster, hc_config(no_traffic_interval=60.0,
                                                   no_traffic_healthy_interval=60.0),
                                asyncio.get_running_loop(), counters, gauges)
        assert checker._next_interval(host, "pass", False) == 60.0
        host.total = 1                                  # the cluster made a connection
        assert checker._next_interval(host, "pass", False) == 0.05
        checker.config = {**checker.config, "healthy_edge_interval": 0.5, "unhealthy_interval": 2.0,
                          "unhealthy_edge_interval": 3.0}
        assert checker._next_interval(host, "pass", True) == 0.5
        assert checker._next_interval(host, "network", False) == 2.0
        assert checker._next_interval(host, "network", True) == 3.0
        await server.stop()

    run(main())


def test_cluster_manager_starts_and_stops_checkers_and_closes_sockets():
    async def main():
        server = await HttpServer().start()
        stats = Stats()
        mgr = ClusterManager(loop=asyncio.get_running_loop(), stats=stats)
        spec = {"name": "backend", "endpoints": [{"address": "127.0.0.1", "port": server.port}],
                "health_checks": [hc_config()]}
        mgr.apply({"backend": spec})
        cluster = mgr.get("backend")
        host = cluster.hosts[0]
        await until(lambda: host.healthy, "manager's checker passes")
        await until(lambda: server.open == 1, "kept connection")
        # Health check removed from the config: hosts are plainly healthy again.
        mgr.apply({"backend": {**spec, "health_checks": []}})
        assert cluster.health_checker is None and host.healthy
        await until(lambda: server.open == 0, "connection closed on stop")
        # Back, then the whole cluster removed.
        mgr.apply({"backend": spec})
        await until(lambda: server.open == 1, "checking again")
        assert stats.counters["cluster.backend.health_check.attempt"] >= 2
        mgr.apply({})
        await until(lambda: server.open == 0, "closed with the cluster")
        # As in Envoy, a removed cluster's stats go with it.
        assert not [k for k in (*stats.counters, *stats.gauges) if k.startswith("cluster.backend.")]
        await server.stop()

    run(main())


@pytest.mark.parametrize("mark", [0])
def test_checker_sockets_get_the_mark_option_only_when_set(mark):
    # SO_MARK needs CAP_NET_ADMIN; 0 means "do not set", which must work unprivileged.
    async def main():
        server = await HttpServer().start()
        cluster, counters, gauges = cluster_for(server.port)
        checker = HealthChecker(cluster, hc_config(), asyncio.get_running_loop(), counters,
                                gauges, mark=mark)
        checker.start()
        try:
            await until(lambda: cluster.hosts[0].healthy, "pass without a mark")
        finally:
            checker.stop()
            await server.stop()

    run(main())
