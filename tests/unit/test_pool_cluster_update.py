"""A CDS update changes a cluster in place (ClusterManager.apply -> Cluster.update) and its
pools survive it: the common HTTP options a pool keeps (idle_timeout,
max_requests_per_connection) must follow the update, as they did when the pool read them on
every release (review R1, finding 5)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from baton.worker.proxy.cluster import ClusterManager
from baton.worker.proxy.http.pool import PoolManager
from baton.worker.stats import Stats


def _spec(idle: float, max_requests):
    return {"name": "c", "type": "STATIC", "connect_timeout": 1.0,
            "endpoints": [{"address": "127.0.0.1", "port": 9}],
            "common_http": {"idle_timeout": idle, "max_requests_per_connection": max_requests}}


def test_a_cds_update_of_the_common_options_reaches_a_pool_in_use():
    loop = asyncio.new_event_loop()
    try:
        stats = Stats()
        clusters = ClusterManager(loop=None, stats=stats)
        clusters.apply({"c": _spec(3600.0, None)})
        cluster = clusters.get("c")
        pools = PoolManager(loop, stats)
        pool = pools.get(cluster, cluster.hosts[0], False, None)
        assert (pool.idle_timeout, pool.max_requests) == (3600.0, 0)
        clusters.apply({"c": _spec(5.0, 7)})          # the same Cluster object, updated
        assert clusters.get("c") is cluster
        assert pools.get(cluster, cluster.hosts[0], False, None) is pool
        conn = SimpleNamespace(idle_deadline=0.0, idle_handle=None)
        pool._arm_idle(conn)                          # a connection released to the pool
        conn.idle_handle.cancel()
        assert 4.0 < conn.idle_deadline - loop.time() <= 5.0
        assert pool.max_requests == 7
    finally:
        loop.close()
