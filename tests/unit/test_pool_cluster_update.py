"""A CDS update changes a cluster in place (ClusterManager.apply -> Cluster.update) and its
pools survive it: the common HTTP options a pool keeps (idle_timeout,
max_requests_per_connection) must follow the update, as they did when the pool read them on
every release (review R1, finding 5)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from baton.worker.proxy.cluster import ClusterManager
from baton.worker.proxy.http.pool import PoolManager, UpstreamConnection
from baton.worker.stats import Stats


def _spec(idle: float, max_requests):
    return {"name": "c", "type": "STATIC", "connect_timeout": 1.0,
            "endpoints": [{"address": "127.0.0.1", "port": 9}],
            "common_http": {"idle_timeout": idle, "max_requests_per_connection": max_requests}}


class _Conn(SimpleNamespace):
    """An upstream connection as the pool's HTTP/1.1 checks see it."""
    __hash__ = object.__hash__
    reusable_http1 = UpstreamConnection.reusable_http1
    codec = SimpleNamespace(available_streams=lambda: 1)

    def abort(self, reason):
        self.closed = self.aborted = True


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _pool(loop, pools=None):
    """(the cluster manager, cluster "c" as _spec(3600.0, None) makes it, its host's pool)."""
    stats = Stats()
    clusters = ClusterManager(loop=None, stats=stats)
    clusters.apply({"c": _spec(3600.0, None)})
    cluster = clusters.get("c")
    pools = pools or PoolManager(loop, stats)
    return clusters, cluster, pools.get(cluster, cluster.hosts[0], False, None)


def test_a_cds_update_of_the_common_options_reaches_a_pool_in_use(loop):
    pools = PoolManager(loop, Stats())
    clusters, cluster, pool = _pool(loop, pools)
    assert (pool.idle_timeout, pool.max_requests) == (3600.0, 0)
    clusters.apply({"c": _spec(5.0, 7)})          # the same Cluster object, updated
    assert clusters.get("c") is cluster
    assert pools.get(cluster, cluster.hosts[0], False, None) is pool
    conn = _Conn(closed=False, requests=0, aborted=False, idle_deadline=0.0, idle_handle=None)
    pool.busy.add(conn)
    pool.release(conn)                            # a connection released to the pool
    assert pool.idle == [conn]
    conn.idle_handle.cancel()
    assert 4.0 < conn.idle_deadline - loop.time() <= 5.0
    assert pool.max_requests == 7


def test_a_release_to_a_waiter_follows_a_cds_update_of_max_requests(loop):
    """A busy pool hands a released connection straight to a waiting request (no _arm_idle):
    the updated max_requests_per_connection applies there too (review R2, finding 4)."""
    clusters, cluster, pool = _pool(loop)
    clusters.apply({"c": _spec(3600.0, 1)})       # now one request a connection
    handed = []
    pool.waiters.append(SimpleNamespace(on_pool_ready=handed.append))
    cluster.rq_pending += 1
    conn = _Conn(closed=False, requests=5, aborted=False)
    pool.busy.add(conn)
    pool.release(conn)
    assert conn.aborted and not handed
    # take_idle reads an update too: at 2 a connection, one that carried 1 is taken.
    clusters.apply({"c": _spec(3600.0, 2)})
    fresh = _Conn(closed=False, requests=1, aborted=False)
    pool.idle[:] = [fresh]
    assert pool.take_idle() is fresh and pool.max_requests == 2
