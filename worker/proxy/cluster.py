"""A worker's view of the upstream clusters: hosts, balancer, circuit breaker, stat names,
and, in a worker, the cluster's active health checker and outlier detector.

Built from the snapshot's plain values (see xds/snapshot.py, xds/cluster_features.py).
Endpoint updates replace the host list and the balancer but keep the `Cluster` object, so
connections that hold a reference keep counting into the same circuit breaker, and keep the
`Host` objects of unchanged addresses with their counts, health and ejection state.

Health flows one way: the health checker (health.py) and the outlier detector (outlier.py)
set `host.healthy` / `host.ejected` and call `cluster.refresh()`, which rebuilds the
balancer's view and the membership gauges; `pick()` itself never looks at health.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket

from . import health as health_mod
from . import outlier as outlier_mod
from .lb import DEFAULT_PANIC_THRESHOLD, Host, make_balancer
from .priority import DEFAULT_OVERPROVISIONING, PriorityBalancer, needs_priorities
from .pipes import pipe_capacity_for

# Stat keys under cluster.<name>. (Envoy's names). Response-code stats with the code itself
# (upstream_rq_200, ...) are dynamic and not listed here.
COUNTER_KEYS = (
    "upstream_cx_total", "upstream_cx_connect_fail", "upstream_cx_connect_timeout",
    "upstream_cx_overflow", "upstream_cx_none_healthy", "upstream_cx_rx_bytes_total",
    "upstream_cx_tx_bytes_total", "upstream_cx_destroy", "upstream_cx_connect_attempts_exceeded",
    "upstream_cx_http1_total", "upstream_cx_http2_total", "upstream_cx_destroy_local",
    "upstream_cx_destroy_remote", "upstream_cx_destroy_with_active_rq",
    "upstream_cx_destroy_local_with_active_rq", "upstream_cx_destroy_remote_with_active_rq",
    "upstream_cx_idle_timeout", "upstream_cx_max_requests", "upstream_cx_protocol_error",
    "upstream_cx_close_notify", "upstream_cx_pool_overflow",
    "upstream_rq_total", "upstream_rq_completed", "upstream_rq_pending_total",
    "upstream_rq_pending_overflow", "upstream_rq_pending_failure_eject", "upstream_rq_cancelled",
    "upstream_rq_timeout", "upstream_rq_per_try_timeout", "upstream_rq_rx_reset",
    "upstream_rq_tx_reset", "upstream_rq_retry", "upstream_rq_retry_success",
    "upstream_rq_retry_overflow", "upstream_rq_retry_limit_exceeded",
    "upstream_rq_maintenance_mode",
    "upstream_rq_1xx", "upstream_rq_2xx", "upstream_rq_3xx", "upstream_rq_4xx",
    "upstream_rq_5xx",
    "lb_healthy_panic", "membership_change",
)
GAUGE_KEYS = frozenset({
    "upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active",
    "membership_healthy", "membership_degraded", "membership_excluded", "membership_total",
    # Circuit breaker state: 1 while the limit is reached (Envoy's circuit_breakers.<priority>.*).
    "circuit_breakers.default.cx_open", "circuit_breakers.default.rq_pending_open",
    "circuit_breakers.default.rq_open", "circuit_breakers.default.rq_retry_open",
}) | health_mod.GAUGE_KEYS | outlier_mod.GAUGE_KEYS
# Gauges that describe the cluster (the same in every worker) rather than this worker's
# traffic: a sum over workers is N times the value; the master should take one worker's.
SHARED_GAUGE_KEYS = frozenset({
    "membership_healthy", "membership_degraded", "membership_excluded", "membership_total",
    "health_check.healthy", "health_check.degraded", "outlier_detection.ejections_active"})


class Cluster:
    __slots__ = ("name", "type", "connect_timeout", "lb_policy", "max_connections", "buffer_limit",
                 "pipe_capacity", "hosts", "balancer", "active", "stat", "gauge_keys",
                 "max_pending_requests", "max_requests", "max_retries",
                 "rq_active", "rq_pending", "retries_active",
                 "http2", "http2_options", "common_http", "panic_threshold",
                 "ring_hash", "maglev", "outlier_config", "health_checks",
                 "outlier", "health_checker", "counters", "gauges", "_panic_stat",
                 "source_address", "transports", "tls_matches", "host_matches", "auto_sni",
                 "_tls_spec", "metadata", "upstream_filters", "internal_hosts", "internal_upstream")

    def __init__(self, spec: dict, counters=None, gauges=None):
        """`counters` / `gauges`: the worker's stat dicts (Stats.counters / .gauges), which the
        health checker, outlier detector and panic counting write to; None in pure tests."""
        self.name = spec["name"]
        self.active = 0              # upstream connections (circuit breaker max_connections)
        self.rq_active = 0           # requests in flight (max_requests)
        self.rq_pending = 0          # requests waiting for a connection (max_pending_requests)
        self.retries_active = 0      # retries in flight (max_retries)
        self.counters = counters
        self.gauges = gauges
        self.outlier = None
        self.health_checker = None
        self.transports = None          # upstream TLS: see _update_transports
        self.tls_matches = ()
        self.host_matches: dict = {}
        self._tls_spec = None
        prefix = f"cluster.{self.name}."
        # Precomputed names: the data path increments these without building strings.
        keys = ("upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active") + \
            COUNTER_KEYS + tuple(sorted(GAUGE_KEYS - {"upstream_cx_active", "upstream_rq_active",
                                                       "upstream_rq_pending_active"})) + \
            tuple(k for k in health_mod.STAT_KEYS if k not in GAUGE_KEYS) + \
            tuple(k for k in outlier_mod.STAT_KEYS if k not in GAUGE_KEYS)
        self.stat = {key: prefix + key for key in keys}
        self.gauge_keys = GAUGE_KEYS
        self._panic_stat = self.stat["lb_healthy_panic"]
        self.update(spec)

    def update(self, spec: dict) -> None:
        self.type = spec.get("type", "STATIC")
        self.connect_timeout = float(spec.get("connect_timeout") or 5.0)
        self.lb_policy = spec.get("lb_policy", "ROUND_ROBIN")
        self.max_connections = int(spec.get("max_connections", 1024))
        self.max_pending_requests = int(spec.get("max_pending_requests", 1024))
        self.max_requests = int(spec.get("max_requests", 1024))
        self.max_retries = int(spec.get("max_retries", 3))
        self.buffer_limit = int(spec.get("buffer_limit", 1 << 20))
        self.pipe_capacity = pipe_capacity_for(self.buffer_limit)
        http2 = spec.get("http2", False)
        # "downstream" (use_downstream_protocol_config): the pool follows each request;
        # "auto" (auto_config): the upstream's ALPN decides (pool.py).
        self.http2 = http2 if http2 in ("downstream", "auto") else bool(http2)
        self.http2_options = spec.get("http2_options")
        self.common_http = spec.get("common_http") or {"idle_timeout": 3600.0,
                                                       "max_requests_per_connection": None}
        self.panic_threshold = float((spec.get("common_lb") or {}).get(
            "healthy_panic_threshold", DEFAULT_PANIC_THRESHOLD))
        self.ring_hash = spec.get("ring_hash")
        self.maglev = spec.get("maglev")
        self.outlier_config = spec.get("outlier_detection")
        self.health_checks = list(spec.get("health_checks") or ())
        self.metadata = spec.get("metadata")     # filter_metadata (Istio's stats read it)
        self.upstream_filters = spec.get("upstream_filters") or ()   # Istio's exchange
        old = {(h.address, h.port): h for h in getattr(self, "hosts", ())}
        old_hosts = set(old.values())
        hosts = []
        for ep in spec.get("endpoints", ()):
            host = old.pop((ep["address"], ep["port"]), None)
            if host is None:
                host = Host(ep["address"], ep["port"], ep.get("weight", 1))
            else:
                host.weight = max(1, int(ep.get("weight", 1)))
            host.eds_unhealthy = bool(ep.get("eds_unhealthy"))
            hosts.append(host)
        if self.outlier is not None:
            for gone in old.values():
                self.outlier.host_removed(gone)
        self.hosts = hosts
        if self._update_transports(spec):
            new_hosts = hosts                   # a new TLS config: every host chooses again
        else:
            new_hosts = [h for h in hosts if h not in old_hosts]
        for host in new_hosts:
            self.transport_for(host, count=True)     # Envoy resolves the match per host
        self.source_address = spec.get("source_address")
        self.balancer = self._balancer(spec, hosts)
        self._membership_gauges()

    def _balancer(self, spec, hosts):
        # ORIGINAL_DST: each connection names its own host; there is nothing to balance.
        if self.type == "ORIGINAL_DST":
            return None
        endpoints = spec.get("endpoints", ())
        weighted = bool(spec.get("locality_weighted"))
        if not needs_priorities(endpoints, weighted):
            return make_balancer(self.lb_policy, hosts, panic_threshold=self.panic_threshold,
                                 ring_hash=self.ring_hash, maglev=self.maglev)
        placed = [(host, ep.get("priority", 0), ep.get("locality"), ep.get("locality_weight"))
                  for host, ep in zip(hosts, endpoints)]
        overprovisioning = next((ep["overprovisioning"] for ep in endpoints
                                 if "overprovisioning" in ep), DEFAULT_OVERPROVISIONING)
        return PriorityBalancer(placed, self.lb_policy, panic_threshold=self.panic_threshold,
                                locality_weighted=weighted, overprovisioning=overprovisioning,
                                ring_hash=self.ring_hash, maglev=self.maglev)

    # -- upstream TLS (transport_socket, transport_socket_matches) -------------------------

    def _update_transports(self, spec: dict) -> bool:
        """TLS clients are rebuilt only when the cluster's TLS config changes (not at every
        endpoint update): each holds SSLContexts, key log pipes and the sessions it keeps.
        True when it changed."""
        self.auto_sni = spec.get("auto_sni")
        self.host_matches = {(ep["address"], ep["port"]): ep["tls_match"]
                             for ep in spec.get("endpoints", ()) if ep.get("tls_match")}
        # envoy_internal_address hosts: [listener, endpoint id, original_dst local]
        # (internal_listener.py), and what internal_upstream passes along.
        self.internal_hosts = {ep["address"]: ep["internal"]
                               for ep in spec.get("endpoints", ()) if ep.get("internal")}
        self.internal_upstream = spec.get("internal_upstream")
        tls_spec = (spec.get("transport_socket"), spec.get("transport_socket_matches"))
        if tls_spec == self._tls_spec:
            return False
        self._tls_spec = tls_spec
        if "transport_socket" not in spec:
            self.transports, self.tls_matches = None, ()
            return True
        from ..tls.client import TlsClient
        prefix = f"cluster.{self.name}."
        clients = {}                        # one TlsClient per distinct spec

        def client_for(tls):
            if tls is None:
                return None
            key = repr(tls)
            if key not in clients:
                clients[key] = TlsClient(tls)
                if self.counters is not None:
                    clients[key].declare_stats(prefix, self.counters)
            return clients[key]
        self.transports = client_for(spec["transport_socket"])
        self.tls_matches = tuple((m["match"], client_for(m["tls"]), prefix + m["name"] + ".total_match_count")
                                 for m in spec["transport_socket_matches"])
        if self.counters is not None:
            for name in ["default"] + [m["name"] for m in spec["transport_socket_matches"]]:
                self.counters.setdefault(f"{prefix}{name}.total_match_count", 0)
        return True

    @property
    def originates_tls(self) -> bool:
        """Some host of this cluster may be reached over TLS."""
        return self.transports is not None or any(c is not None for _, c, _ in self.tls_matches)

    def transport_for(self, host, count: bool = False):
        """The TlsClient for a new connection to `host` (None: plain TCP): the first
        transport_socket_matches entry whose `match` is a subset of the endpoint's
        envoy.transport_socket_match metadata, else the cluster's transport_socket
        ("default"). `count`: counted as Envoy counts the
        choice (<match name>.total_match_count, once per host as Envoy resolves it: update()
        counts, connections only look)."""
        if not self.originates_tls:
            return None
        metadata = self.host_matches.get((host.address, host.port)) or {}
        for match, client, stat in self.tls_matches:
            if all(metadata.get(k) == v for k, v in match.items()):
                if count:
                    self._count(stat)
                return client
        if count:
            self._count(f"cluster.{self.name}.default.total_match_count")
        return self.transports

    def _count(self, stat: str) -> None:
        if self.counters is not None:
            self.counters[stat] = self.counters.get(stat, 0) + 1

    def bind_source(self, sock) -> int:
        """upstream_bind_config: bind an upstream socket to the cluster's source address
        before it connects (Istio binds inbound traffic to 127.0.0.6). -> 0, or the errno
        that makes the connect fail, as a failed bind does in Envoy."""
        source = self.source_address
        if source is None:
            return 0
        try:
            sock.bind((source["address"], source["port"]))
        except OSError as exc:
            return exc.errno or errno.EADDRNOTAVAIL
        return 0

    async def dial(self, loop, host, mark: int = 0):
        """A connected, non-blocking TCP socket to `host`: TCP_NODELAY, the worker's upstream
        mark, upstream_bind_config, within connect_timeout. Raises OSError or
        asyncio.TimeoutError, the socket closed; a cancelled dial closes it too."""
        family = socket.AF_INET6 if ":" in host.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if mark:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            bind_error = self.bind_source(sock)
            if bind_error:
                raise OSError(bind_error, os.strerror(bind_error))
            await asyncio.wait_for(loop.sock_connect(sock, (host.address, host.port)),
                                   self.connect_timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    def pick(self, exclude=(), hash_key=None):
        balancer = self.balancer
        if balancer is None:
            # ORIGINAL_DST: only a downstream connection names the host (router, tcp_proxy);
            # a call with none (a Wasm callout, ext_authz) finds no host, as Envoy's
            # AsyncClient does ("no healthy upstream").
            return None
        if balancer.panic and self.counters is not None:
            counters = self.counters
            counters[self._panic_stat] = counters.get(self._panic_stat, 0) + 1
        return balancer.pick(exclude, hash_key)

    def refresh(self) -> None:
        """A host's health or ejection changed: rebuild the balancer's view and gauges."""
        if self.balancer is not None:
            self.balancer.refresh()
        self._membership_gauges()

    def had_traffic(self) -> bool:
        """Envoy's "the cluster has ever made a connection" (health check intervals)."""
        return any(h.total for h in self.hosts)

    def _membership_gauges(self) -> None:
        gauges = self.gauges
        if gauges is None:
            return
        stat = self.stat
        gauges[stat["membership_total"]] = len(self.hosts)
        gauges[stat["membership_healthy"]] = sum(1 for h in self.hosts if h.available)

    # -- health checker and outlier detector (workers) -----------------------------------

    def start_monitors(self, loop, mark: int = 0) -> None:
        """Start, reconfigure or stop the health checker and the outlier detector to match
        the current config. Called by ClusterManager after every update when it has a loop."""
        counters = self.counters if self.counters is not None else {}
        gauges = self.gauges if self.gauges is not None else {}
        if self.outlier_config is None:
            if self.outlier is not None:
                self.outlier.stop()
                for host in self.hosts:
                    if host.ejected:
                        self.outlier.uneject(host)
                self.outlier = None
        elif self.outlier is None:
            self.outlier = outlier_mod.OutlierDetector(self, self.outlier_config, counters, gauges)
            gauges.setdefault(self.stat["outlier_detection.ejections_active"], 0)
            self.outlier.start(loop)
        elif self.outlier.config != self.outlier_config:
            self.outlier.stop()
            self.outlier.update(self.outlier_config)
            self.outlier.start(loop)
        config = self.health_checks[0] if self.health_checks and self.balancer is not None else None
        checker = self.health_checker
        if config is None:
            if checker is not None:
                checker.detach()
                self.health_checker = None
        elif checker is None:
            self.health_checker = health_mod.HealthChecker(self, config, loop, counters, gauges,
                                                           mark=mark)
            self.health_checker.start()
        else:
            if checker.config != config:
                checker.update(config)
            checker.sync_hosts()

    def stop_monitors(self) -> None:
        if self.outlier is not None:
            self.outlier.stop()
        if self.health_checker is not None:
            self.health_checker.stop()


class ClusterManager:
    """Clusters by name; `apply` reconciles with a new snapshot's cluster map.

    With a loop (in a worker), it also runs each cluster's health checker and outlier
    detector timer, and stops them for removed clusters. `mark`: SO_MARK for health check
    sockets (the worker's upstream_mark)."""

    __slots__ = ("clusters", "loop", "stats", "mark")

    def __init__(self, loop=None, stats=None, mark: int = 0) -> None:
        self.clusters: dict[str, Cluster] = {}
        self.loop = loop
        self.stats = stats
        self.mark = mark

    def apply(self, specs: dict) -> None:
        """Reconcile with a whole snapshot's clusters (name -> spec)."""
        self.apply_changes(specs, [name for name in self.clusters if name not in specs])

    def apply_changes(self, changed: dict, removed) -> None:
        """Part of a snapshot (an xDS update): only the clusters named change; a cluster
        updated in place keeps its hosts' connections and counts."""
        prefixes = []
        for name in removed:
            cluster = self.clusters.pop(name, None)
            if cluster is not None:
                cluster.stop_monitors()
                prefixes.append(f"cluster.{name}.")
        if prefixes and self.stats is not None:
            # Envoy drops a removed cluster's stats with it (one pass for all of them).
            prefixes = tuple(prefixes)
            for table in (self.stats.counters, self.stats.gauges):
                for stat in [k for k in table if k.startswith(prefixes)]:
                    del table[stat]
        counters = self.stats.counters if self.stats is not None else None
        gauges = self.stats.gauges if self.stats is not None else None
        for name, spec in changed.items():
            cluster = self.clusters.get(name)
            if cluster is None:
                cluster = self.clusters[name] = Cluster(spec, counters, gauges)
            else:
                cluster.update(spec)
            if self.loop is not None:
                cluster.start_monitors(self.loop, self.mark)

    def get(self, name: str) -> Cluster | None:
        return self.clusters.get(name)

    def stop(self) -> None:
        """Stop every health checker and outlier timer (worker shutdown)."""
        for cluster in self.clusters.values():
            cluster.stop_monitors()
