"""The express lane's pool shortcut (PoolManager.http1_pool): a plain HTTP/1.1 cluster's pool
found by its Host alone is the very pool get() gives, and never one get() has replaced."""

from baton.worker.proxy.cluster import Cluster
from baton.worker.proxy.http.pool import PoolManager
from baton.worker.stats import Stats
from baton.xds import protos
from baton.xds.translate import translate_cluster

from .test_pool_batch import Loop


def _cluster() -> Cluster:
    pb = protos.json_format.ParseDict({
        "name": "c", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}}}}
            for port in (1, 2)]}]}},
        protos.Cluster())
    return Cluster(translate_cluster(pb, "c", []))


def test_the_shortcut_gives_what_get_gives_per_host():
    pools = PoolManager(Loop(), Stats())
    cluster = _cluster()
    one, two = cluster.hosts
    for _ in range(2):
        assert pools.http1_pool(cluster, one, None) is pools.get(cluster, one, False)
        assert pools.http1_pool(cluster, two, None) is pools.get(cluster, two, False)
    assert pools.http1_pool(cluster, one, None) is not pools.http1_pool(cluster, two, None)


def test_a_new_cluster_object_or_transports_set_in_place_are_not_answered_from_it():
    pools = PoolManager(Loop(), Stats())
    cluster = _cluster()
    host = cluster.hosts[0]
    old = pools.http1_pool(cluster, host, None)
    updated = _cluster()                # a CDS update: a new Cluster, the same Host object
    assert pools.http1_pool(updated, host, None) is pools.get(updated, host, False) is not old
    plain = pools.http1_pool(updated, host, None)
    updated.transports = _Tls()         # what an update of its TLS sets, in place
    tls = pools.http1_pool(updated, host, None)
    assert tls is pools.get(updated, host, False) is not plain and tls.tls is updated.transports


class _Tls:
    sni = None


def test_pools_forgotten_are_forgotten_by_the_shortcut_too():
    pools = PoolManager(Loop(), Stats())
    cluster = _cluster()
    host = cluster.hosts[0]
    old = pools.http1_pool(cluster, host, None)
    pools._forget_unused_pools()        # nothing in it: get() makes a new pool now
    assert pools.http1_pool(cluster, host, None) is pools.get(cluster, host, False) is not old
