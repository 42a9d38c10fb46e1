"""use_downstream_protocol_config: translated to http2 == "downstream", and the worker's pools
(worker/proxy/http/pool.py) keep one pool per protocol, chosen by the downstream request's."""

from baton.worker.proxy.cluster import Cluster
from baton.worker.proxy.http.pool import PoolManager
from baton.worker.stats import Stats
from baton.xds import protos
from baton.xds.translate import translate_cluster

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def translated(options):
    protos.import_type(HTTP_OPTIONS)
    pb = protos.json_format.ParseDict({
        "name": "c", "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {HTTP_OPTIONS: {
            "@type": f"type.googleapis.com/{HTTP_OPTIONS}", **options}},
        "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": 1}}}}]}]}},
        protos.Cluster())
    errors = []
    return translate_cluster(pb, "c", errors), errors


def test_downstream_protocol_is_translated_with_the_http2_options():
    spec, errors = translated({"use_downstream_protocol_config": {
        "http_protocol_options": {},
        "http2_protocol_options": {"max_concurrent_streams": 7}}})
    assert errors == []
    assert spec["http2"] == "downstream"
    assert spec["http2_options"]["max_concurrent_streams"] == 7


def test_pools_follow_the_downstream_protocol():
    spec, _ = translated({"use_downstream_protocol_config": {}})
    cluster = Cluster(spec)
    host = cluster.hosts[0]
    pools = PoolManager(None, Stats())
    h1, h2 = pools.get(cluster, host, False), pools.get(cluster, host, True)
    assert (h1.http2, h2.http2) == (False, True)
    assert pools.get(cluster, host, True) is h2 and pools.get(cluster, host) is h1


def test_explicit_protocols_ignore_the_downstream_one():
    spec, _ = translated({"explicit_http_config": {"http2_protocol_options": {}}})
    cluster = Cluster(spec)
    pools = PoolManager(None, Stats())
    assert pools.get(cluster, cluster.hosts[0], False).http2 is True


def test_the_deprecated_protocol_selection_means_the_same():
    pb = protos.json_format.ParseDict({
        "name": "c", "type": "STATIC", "connect_timeout": "1s",
        "protocol_selection": "USE_DOWNSTREAM_PROTOCOL",
        "http2_protocol_options": {"max_concurrent_streams": 9}}, protos.Cluster())
    errors = []
    spec = translate_cluster(pb, "c", errors)
    assert errors == [] and spec["http2"] == "downstream"
    assert spec["http2_options"]["max_concurrent_streams"] == 9
    pb.ClearField("http2_protocol_options")
    spec = translate_cluster(pb, "c", errors)
    assert errors == [] and spec["http2"] == "downstream"
