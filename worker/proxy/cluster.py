"""A worker's view of the upstream clusters: hosts, balancer, circuit breaker, stat names.

Built from the snapshot's plain values (see xds/snapshot.py). Endpoint updates replace the host
list and the balancer but keep the `Cluster` object, so connections that hold a reference keep
counting into the same circuit breaker.
"""

from __future__ import annotations

from .lb import Host, make_balancer
from .pipes import pipe_capacity_for


class Cluster:
    __slots__ = ("name", "type", "connect_timeout", "lb_policy", "max_connections", "buffer_limit",
                 "pipe_capacity", "hosts", "balancer", "active", "stat")

    def __init__(self, spec: dict):
        self.name = spec["name"]
        self.active = 0
        prefix = f"cluster.{self.name}."
        # Precomputed names: the data path increments these without building strings.
        self.stat = {key: prefix + key for key in (
            "upstream_cx_total", "upstream_cx_active", "upstream_cx_connect_fail",
            "upstream_cx_connect_timeout", "upstream_cx_overflow", "upstream_cx_none_healthy",
            "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total", "upstream_cx_destroy",
            "upstream_cx_connect_attempts_exceeded")}
        self.update(spec)

    def update(self, spec: dict) -> None:
        self.type = spec.get("type", "STATIC")
        self.connect_timeout = float(spec.get("connect_timeout") or 5.0)
        self.lb_policy = spec.get("lb_policy", "ROUND_ROBIN")
        self.max_connections = int(spec.get("max_connections", 1024))
        self.buffer_limit = int(spec.get("buffer_limit", 1 << 20))
        self.pipe_capacity = pipe_capacity_for(self.buffer_limit)
        old = {(h.address, h.port): h for h in getattr(self, "hosts", ())}
        hosts = []
        for ep in spec.get("endpoints", ()):
            host = old.get((ep["address"], ep["port"]))
            if host is None:
                host = Host(ep["address"], ep["port"], ep.get("weight", 1))
            else:
                host.weight = max(1, int(ep.get("weight", 1)))
            hosts.append(host)
        self.hosts = hosts
        # ORIGINAL_DST: each connection names its own host; there is nothing to balance.
        self.balancer = None if self.type == "ORIGINAL_DST" else make_balancer(self.lb_policy, hosts)

    def pick(self, exclude=()):
        return self.balancer.pick(exclude)


class ClusterManager:
    """Clusters by name; `apply` reconciles with a new snapshot's cluster map."""

    __slots__ = ("clusters",)

    def __init__(self) -> None:
        self.clusters: dict[str, Cluster] = {}

    def apply(self, specs: dict) -> None:
        for name in list(self.clusters):
            if name not in specs:
                del self.clusters[name]
        for name, spec in specs.items():
            cluster = self.clusters.get(name)
            if cluster is None:
                self.clusters[name] = Cluster(spec)
            else:
                cluster.update(spec)

    def get(self, name: str) -> Cluster | None:
        return self.clusters.get(name)
