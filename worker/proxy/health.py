"""Active health checks (HTTP and TCP) for one cluster, in one worker.

Envoy checks each host once per process, on its main thread, and shares the verdict with the
workers. Baton has no shared memory between workers, and the master must never touch
upstream sockets; so every worker checks on its own. That multiplies the probes by the
worker count (one small request per host per interval each), and for a moment after a
state change two workers may disagree about a host: both are acceptable for a health check,
and in exchange each worker's view is independent and needs no messages. The counters
(health_check.attempt, ...) are per worker and the master sums them, so they read N times
Envoy's; the `healthy` gauge is a per-worker view of the same hosts (sum / N is the count).

Envoy's semantics, which this follows:
- A host of a checked cluster starts unhealthy (Envoy's FAILED_ACTIVE_HC on a new host) and
  the first check decides: one pass makes it healthy, whatever healthy_threshold says.
  Until then the balancer is in panic mode and uses every host.
- A pass: `healthy_threshold` passes in a row make an unhealthy host healthy.
- A failure: a bad HTTP status (not in expected_statuses, nor in retriable_statuses) makes
  the host unhealthy at once; network failures (refused, reset, timeout, closed) and
  retriable statuses need `unhealthy_threshold` in a row.
- Next check after: interval; unhealthy_interval for a failure; healthy_edge_interval /
  unhealthy_edge_interval while a change is pending (threshold not reached); and
  no_traffic_interval (no_traffic_healthy_interval for a healthy host) while the cluster has
  never had a connection. Plus interval_jitter and interval_jitter_percent; the first check
  after a random part of initial_jitter.
- HTTP: "GET <path> HTTP/1.1" with host (the cluster name unless configured) and
  user-agent Envoy/HC; the connection is kept for the next check (reuse_connection).
- TCP: connect; with `send`, write it; with `receive`, every block must arrive, in order,
  anywhere in the reply ("fuzzy" matching, as Envoy does). Without receive, the connect (and
  the write) is the check.
- A passing check returns a host ejected by outlier detection to service
  (successful_active_health_check_uneject_host, default on).

Every check runs under `timeout`; a cancelled or finished checker closes its sockets.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket

import httptools

log = logging.getLogger("baton.worker.health")

USER_AGENT = "Envoy/HC"
READ_SIZE = 16384
MAX_RESPONSE = 1 << 20           # bytes read from one HTTP response before giving up on it

STAT_KEYS = ("health_check.attempt", "health_check.success", "health_check.failure",
             "health_check.network_failure", "health_check.passive_failure",
             "health_check.verify_cluster", "health_check.healthy", "health_check.degraded")
GAUGE_KEYS = frozenset({"health_check.healthy", "health_check.degraded"})

# Check outcomes.
PASS = "pass"
ACTIVE_FAIL = "active"          # the host answered, and its answer is a failure
NETWORK_FAIL = "network"        # could not ask or got no answer (counts toward the threshold)
RETRIABLE_FAIL = "retriable"    # a retriable_statuses answer (counts toward the threshold)


class HostHealth:
    """Per-host checker state, on Host.health while the checker runs."""

    __slots__ = ("passes", "fails", "first", "conn")

    def __init__(self) -> None:
        self.passes = 0
        self.fails = 0
        self.first = True
        self.conn = None        # a kept HTTP connection: (socket,)


class HealthChecker:
    def __init__(self, cluster, config: dict, loop, counters=None, gauges=None, mark: int = 0,
                 rand: random.Random | None = None):
        self.cluster = cluster
        self.config = config
        self.loop = loop
        self.counters = counters if counters is not None else {}
        self.gauges = gauges if gauges is not None else {}
        self.mark = mark
        self.rand = rand or random.Random()
        self.tasks: dict = {}          # Host -> asyncio.Task
        self.stat = cluster.stat
        self._request = self._http_request() if config["kind"] == "http" else None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.sync_hosts()

    def update(self, config: dict) -> None:
        """A new config for the same cluster: sessions read it from their next check on."""
        self.config = config
        self._request = self._http_request() if config["kind"] == "http" else None

    def sync_hosts(self) -> None:
        """Start a session for every new host, stop those of removed hosts."""
        hosts = set(self.cluster.hosts)
        for host in list(self.tasks):
            if host not in hosts:
                self._stop_host(host)
        added = False
        for host in self.cluster.hosts:
            if host not in self.tasks:
                if host.health is None:
                    # Envoy: a new host is unhealthy until its first check passes.
                    host.health = HostHealth()
                    host.healthy = False
                    added = True
                self.tasks[host] = self.loop.create_task(self._session(host))
        self._set_gauge()
        if added:
            self.cluster.refresh()

    def detach(self) -> None:
        """The cluster no longer has this health check: stop, and forget every verdict
        (hosts of an unchecked cluster are healthy)."""
        self.stop()
        for host in self.cluster.hosts:
            host.health = None
            host.healthy = True
        self.gauges.pop(self.stat["health_check.healthy"], None)
        self.cluster.refresh()

    def stop(self) -> None:
        for host in list(self.tasks):
            self._stop_host(host)

    def _stop_host(self, host) -> None:
        # The session closes its connection as it unwinds (after the loop has forgotten
        # the socket), never under a pending read.
        self.tasks.pop(host).cancel()

    # -- one host ------------------------------------------------------------------------

    async def _session(self, host) -> None:
        state = host.health
        try:
            jitter = self.config["initial_jitter"]
            if jitter:
                await asyncio.sleep(self.rand.random() * jitter)
            while True:
                outcome = await self.check(host)
                pending = self._apply(host, outcome)
                await asyncio.sleep(self._next_interval(host, outcome, pending))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a checker bug must not kill the worker's loop
            log.exception("health checker for %s %s stopped", self.cluster.name, host.stat_id)
        finally:
            _close(state)

    async def check(self, host) -> str:
        """One check of `host` -> PASS, ACTIVE_FAIL, NETWORK_FAIL or RETRIABLE_FAIL."""
        self._count("health_check.attempt")
        try:
            async with asyncio.timeout(self.config["timeout"]):
                if self.config["kind"] == "http":
                    return await self._http_check(host)
                return await self._tcp_check(host)
        except (TimeoutError, OSError, ConnectionError, EOFError):
            _close(host.health)
            return NETWORK_FAIL

    def _apply(self, host, outcome: str) -> bool:
        """Count and move the host's state; True when a change is pending (threshold)."""
        state = host.health
        first, state.first = state.first, False
        config = self.config
        if outcome == PASS:
            self._count("health_check.success")
            state.fails = 0
            state.passes += 1
            pending = False
            if not host.healthy:
                if first or state.passes >= config["healthy_threshold"]:
                    self._set_healthy(host, True)
                else:
                    pending = True
            outlier = getattr(self.cluster, "outlier", None)
            if host.ejected and outlier is not None and \
                    outlier.config["successful_active_health_check_uneject_host"]:
                outlier.uneject(host)
            return pending
        self._count("health_check.failure")
        if outcome == NETWORK_FAIL:
            self._count("health_check.network_failure")
        state.passes = 0
        state.fails += 1
        if host.healthy:
            if outcome == ACTIVE_FAIL or first or state.fails >= config["unhealthy_threshold"]:
                self._set_healthy(host, False)
            else:
                return True
        return False

    def _set_healthy(self, host, healthy: bool) -> None:
        host.healthy = healthy
        self._set_gauge()
        self.cluster.refresh()

    def _next_interval(self, host, outcome: str, pending: bool) -> float:
        config = self.config
        if self.cluster.had_traffic():
            if outcome == PASS:
                base = config["healthy_edge_interval" if pending else "interval"]
            else:
                base = config["unhealthy_edge_interval" if pending else "unhealthy_interval"]
        elif outcome == PASS and not pending:
            base = config["no_traffic_healthy_interval"]
        else:
            base = config["no_traffic_interval"]
        extra = 0.0
        if config["interval_jitter_percent"]:
            extra += self.rand.random() * base * config["interval_jitter_percent"] / 100.0
        if config["interval_jitter"]:
            extra += self.rand.random() * config["interval_jitter"]
        return base + extra

    def _count(self, key: str) -> None:
        name = self.stat[key]
        self.counters[name] = self.counters.get(name, 0) + 1

    def _set_gauge(self) -> None:
        self.gauges[self.stat["health_check.healthy"]] = sum(
            1 for h in self.cluster.hosts if h.healthy)

    # -- connections ---------------------------------------------------------------------

    async def _connect(self, host) -> socket.socket:
        family = socket.AF_INET6 if ":" in host.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.mark:
                # Loop avoidance: interception rules let marked (Baton's own) traffic pass.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
            await self.loop.sock_connect(sock, (host.address, host.port))
        except BaseException:
            sock.close()
            raise
        return sock

    # -- HTTP ----------------------------------------------------------------------------

    def _http_request(self) -> bytes:
        http = self.config["http"]
        headers = {"host": [http["host"]], "user-agent": [USER_AGENT]}
        for name, value, action in http["request_headers_to_add"]:
            if action == "APPEND_IF_EXISTS_OR_ADD":
                headers.setdefault(name, []).append(value)
            elif action == "ADD_IF_ABSENT":
                headers.setdefault(name, [value])
            elif action == "OVERWRITE_IF_EXISTS_OR_ADD" or name in headers:
                headers[name] = [value]
        for name in http["request_headers_to_remove"]:
            if name not in ("host", ":authority"):
                headers.pop(name, None)
        lines = [f"{http['method']} {http['path']} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, values in headers.items() for value in values]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _http_check(self, host) -> str:
        state = host.health
        sock = state.conn
        if sock is None:
            sock = state.conn = await self._connect(host)
        try:
            await self.loop.sock_sendall(sock, self._request)
            status, keep_alive = await self._read_response(
                sock, self.config["http"]["method"] == "HEAD")
        except (OSError, EOFError):
            # Also when a kept connection was closed by the server meanwhile: the attempt
            # fails (as in Envoy) and the next one reconnects.
            _close(state)
            raise
        if not keep_alive or not self.config["reuse_connection"]:
            _close(state)
        http = self.config["http"]
        if _in_ranges(status, http["expected_statuses"]):
            return PASS
        if _in_ranges(status, http["retriable_statuses"]):
            return RETRIABLE_FAIL
        return ACTIVE_FAIL

    async def _read_response(self, sock, head: bool) -> tuple[int, bool]:
        """Read one response -> (status, keep-alive)."""
        done = []               # [keep-alive], once the message (or, for HEAD, the head) ends

        class Callbacks:
            # llhttp forgets keep-alive once the message is over: ask while it is current.
            def on_headers_complete(self):
                if head:
                    done.append(parser.should_keep_alive())

            def on_message_complete(self):
                if not done:
                    done.append(parser.should_keep_alive())

        parser = httptools.HttpResponseParser(Callbacks())
        received = 0
        while not done:
            data = await self.loop.sock_recv(sock, READ_SIZE)
            if not data:
                # A close-delimited body ends here; the status line is all a check needs.
                if parser.get_status_code():
                    return parser.get_status_code(), False
                raise EOFError("health check: connection closed before a response")
            received += len(data)
            if received > MAX_RESPONSE:
                raise EOFError("health check: response too large")
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                return parser.get_status_code(), False
            except httptools.HttpParserError as exc:
                raise EOFError(f"health check: bad response: {exc}") from None
        return parser.get_status_code(), done[0]

    # -- TCP -----------------------------------------------------------------------------

    async def _tcp_check(self, host) -> str:
        tcp = self.config["tcp"]
        sock = await self._connect(host)
        try:
            if tcp["send"]:
                await self.loop.sock_sendall(sock, bytes.fromhex(tcp["send"]))
            blocks = [bytes.fromhex(b) for b in tcp["receive"]]
            if not blocks:
                return PASS
            buffer = bytearray()
            while True:
                data = await self.loop.sock_recv(sock, READ_SIZE)
                if not data:
                    raise EOFError("health check: closed before the expected reply")
                buffer += data
                if _contains_in_order(buffer, blocks):
                    return PASS
                if len(buffer) > MAX_RESPONSE:
                    return ACTIVE_FAIL
        finally:
            sock.close()


def _contains_in_order(buffer: bytearray, blocks: list[bytes]) -> bool:
    start = 0
    for block in blocks:
        at = buffer.find(block, start)
        if at < 0:
            return False
        start = at + len(block)
    return True


def _in_ranges(status: int, ranges) -> bool:
    return any(start <= status < end for start, end in ranges)


def _close(state) -> None:
    if state is not None and state.conn is not None:
        state.conn.close()
        state.conn = None
