"""Batches of the upstream pools (worker/proxy/http/pool.py): while an HTTP/2 client's read
is dispatched, new connects wait for its end, and one whose request was reset meanwhile is
never started nor counted (a rapid reset opens no upstream connection)."""

from baton.worker.proxy.cluster import Cluster
from baton.worker.proxy.http.pool import PoolManager
from baton.worker.stats import Stats
from baton.xds import protos
from baton.xds.translate import translate_cluster


class Loop:
    def __init__(self):
        self.tasks = []

    def create_task(self, coro):
        self.tasks.append(coro)
        coro.close()            # never run: these tests look at what was started


class Waiter:
    def __init__(self):
        self.ready = self.failed = None

    def on_pool_ready(self, conn):
        self.ready = conn

    def on_pool_failure(self, reason, flag):
        self.failed = (reason, flag)


def pool_of(loop):
    pb = protos.json_format.ParseDict({
        "name": "c", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": 1}}}}]}]}},
        protos.Cluster())
    cluster = Cluster(translate_cluster(pb, "c", []))
    stats = Stats()
    pools = PoolManager(loop, stats)
    return pools, pools.get(cluster, cluster.hosts[0], False), cluster, stats


def test_a_connect_for_a_request_reset_in_the_batch_is_never_started_nor_counted():
    loop = Loop()
    pools, pool, cluster, stats = pool_of(loop)
    pools.begin_batch()
    first, second = Waiter(), Waiter()
    pool.request(first)
    pool.request(second)
    assert loop.tasks == [] and pool.connecting == 2 and cluster.active == 2
    pool.cancel(first)                  # its stream was reset later in the same read
    pools.end_batch()
    assert len(loop.tasks) == 1         # one connect, for the request still waiting
    assert pool.connecting == 1 and cluster.active == 1 and pool.host.active == 1
    assert stats.counters[cluster.stat["upstream_cx_total"]] == 1
    assert stats.counters[cluster.stat["upstream_cx_http1_total"]] == 1
    assert stats.gauges[cluster.stat["upstream_cx_active"]] == 1
    pool.cancel(second)


def test_outside_a_batch_a_connect_starts_at_once():
    loop = Loop()
    pools, pool, cluster, stats = pool_of(loop)
    waiter = Waiter()
    pool.request(waiter)
    assert len(loop.tasks) == 1 and pool.deferred == 0 and pools.deferred == []
    pool.cancel(waiter)
