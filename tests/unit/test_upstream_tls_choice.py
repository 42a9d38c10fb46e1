"""Which transport socket a host gets (worker/proxy/cluster.py), how the HTTP pools key TLS
connections (worker/proxy/http/pool.py), and auto_sni's name from the Host: pure logic."""

from __future__ import annotations

from types import SimpleNamespace

from baton.worker.proxy.cluster import Cluster
from baton.worker.proxy.http.pool import PoolManager, _auto_sni_host
from baton.worker.stats import merge

from ..tls_certs import make_ca

CA = make_ca("ecdsa")


def tls(sni=None) -> dict:
    return {"sni": sni, "alpn": [], "certificates": [], "min_version": "TLSv1_2",
            "max_version": "TLSv1_2", "cipher_suites": None, "ecdh_curve": None,
            "trusted_ca": CA.cert_pem.decode(), "san_matchers": [], "max_session_keys": 1}


def cluster(counters, **extra) -> Cluster:
    endpoints = [{"address": "127.0.0.1", "port": 1, "weight": 1, "tls_match": {"tlsMode": "istio", "v": "1"}},
                 {"address": "127.0.0.1", "port": 2, "weight": 1, "tls_match": {"tlsMode": "disabled"}},
                 {"address": "127.0.0.1", "port": 3, "weight": 1}]
    spec = {"name": "c", "endpoints": endpoints, "transport_socket": None,
            "transport_socket_matches": [{"name": "istio", "match": {"tlsMode": "istio"}, "tls": tls("a")},
                                         {"name": "off", "match": {"tlsMode": "disabled"}, "tls": None}]}
    spec.update(extra)
    return Cluster(spec, counters, {})


def test_first_subset_match_wins_else_the_default_counted_once_per_host():
    counters: dict = {}
    c = cluster(counters)
    chosen = [c.transport_for(h) for h in c.hosts]
    assert chosen[0] is not None and chosen[0].sni == "a"
    assert chosen[1] is None and chosen[2] is None          # "off", then the raw default
    assert counters["cluster.c.istio.total_match_count"] == 1
    assert counters["cluster.c.off.total_match_count"] == 1
    assert counters["cluster.c.default.total_match_count"] == 1
    assert counters["cluster.c.ssl.handshake"] == 0          # Envoy's names, listed at 0
    # An endpoint update keeps the TLS clients (their sessions) and counts new hosts only.
    client = chosen[0]
    c.update({"name": "c", "transport_socket": None, "endpoints": [
        {"address": "127.0.0.1", "port": 1, "weight": 1, "tls_match": {"tlsMode": "istio"}},
        {"address": "127.0.0.1", "port": 4, "weight": 1, "tls_match": {"tlsMode": "istio"}}],
        "transport_socket_matches": c._tls_spec[1]})
    assert c.transport_for(c.hosts[1]) is client
    assert counters["cluster.c.istio.total_match_count"] == 2


def test_a_plain_cluster_has_no_transport_and_counts_nothing():
    counters: dict = {}
    c = Cluster({"name": "p", "endpoints": [{"address": "127.0.0.1", "port": 1, "weight": 1}]}, counters, {})
    assert not c.originates_tls and c.transport_for(c.hosts[0]) is None
    assert not [k for k in counters if "match_count" in k or ".ssl." in k]


def test_pools_never_mix_tls_contexts_sni_or_plain():
    counters: dict = {}
    stats = SimpleNamespace(counters=counters, gauges={})
    manager = PoolManager(loop=None, stats=stats)
    c = cluster(counters, auto_sni={"sni": True, "san": True, "header": None})
    secure, plain = c.hosts[0], c.hosts[2]
    request = lambda host: SimpleNamespace(get=lambda name: host)   # noqa: E731
    a = manager.get(c, secure, request=request("a.example:8443"))
    assert (a.tls is not None, a.sni, a.expected_san) == (True, "a.example", "a.example")
    assert manager.get(c, secure, request=request("a.example")) is a
    b = manager.get(c, secure, request=request("b.example"))
    assert b is not a and b.sni == "b.example"
    assert manager.get(c, plain, request=request("a.example")).tls is None
    # An IP literal is no server name: the context's own SNI.
    assert manager.get(c, secure, request=request("10.0.0.1:80")).sni == "a"


def test_auto_sni_host():
    c = SimpleNamespace(auto_sni={"sni": True, "san": False, "header": None})
    req = lambda value: SimpleNamespace(get=lambda name: value)     # noqa: E731
    assert _auto_sni_host(c, req("Example.COM:443")) == "example.com"
    assert _auto_sni_host(c, req("[::1]:443")) is None
    assert _auto_sni_host(c, req("")) is None
    assert _auto_sni_host(c, None) is None


def test_match_counts_merge_as_one_fact_across_workers():
    one = {"counters": {"cluster.c.istio.total_match_count": 2, "cluster.c.ssl.handshake": 3}}
    two = {"counters": {"cluster.c.istio.total_match_count": 2, "cluster.c.ssl.handshake": 4}}
    merged = merge([one, two])["counters"]
    assert merged == {"cluster.c.istio.total_match_count": 2, "cluster.c.ssl.handshake": 7}
