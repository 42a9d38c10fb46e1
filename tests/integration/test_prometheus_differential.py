"""/stats/prometheus against a real Envoy 1.40 on the same bootstrap: Envoy's tag extraction
(supervisor/stat_tags.py) and the bootstrap's stats_config (stats_tags, use_all_default_tags,
stats_matcher; xds/stats_config.py).

For every stat both proxies have (by its /stats name), the series Baton writes (metric name and
labels, in order) must be one Envoy writes too; and a stat the matcher rejects is in neither
/stats nor /stats/prometheus. Envoy creates some stats lazily (a 3xx class before any 3xx) and
Baton eagerly, so only the stats both have are compared, and there must be many of them.
"""

from __future__ import annotations

import http.client
import socket
import urllib.request

import pytest

from .conftest import Baton, free_port, http_bootstrap, tcp_bootstrap
from .differential.proxies import Envoy

CLUSTER = "outbound|80||app.default.svc.cluster.local"      # an Istio-style name, with dots

# What Istio's pilot-agent writes into a sidecar's bootstrap, in part (its tags replace
# Envoy's defaults; only what the inclusion list names exists).
ISTIO_STATS_CONFIG = {
    "use_all_default_tags": False,
    "stats_tags": [
        {"tag_name": "cluster_name", "regex": r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"},
        {"tag_name": "tcp_prefix", "regex": r"^tcp\.((.*?)\.)\w+?$"},
        {"tag_name": "response_code", "regex": r"_rq(_(\d{3}))$"},
        {"tag_name": "response_code_class", "regex": r"_rq(_(\dxx))$"},
        {"tag_name": "http_conn_manager_prefix",
         "regex": r"^http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"},
        {"tag_name": "listener_address",
         "regex": r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"},
        {"tag_name": "mesh", "fixed_value": "m1"}],
    "stats_matcher": {"inclusion_list": {"patterns": [
        {"prefix": "cluster.outbound"}, {"prefix": "listener"}, {"prefix": "server"},
        {"safe_regex": {"regex": "http.*"}}, {"suffix": "rbac.allowed"}]}},
}


def _config(admin: int, http_port: int, tcp_port: int, recorder: int, stats_config) -> dict:
    config = http_bootstrap(admin, http_port, clusters={CLUSTER: recorder},
                            routes=[{"match": {"prefix": "/missing"}, "direct_response": {"status": 404}},
                                    {"match": {"prefix": "/"}, "route": {"cluster": CLUSTER}}])
    tcp = tcp_bootstrap(admin, tcp_port, [recorder], cluster="tcp-backend")["static_resources"]
    for kind in ("listeners", "clusters"):
        config["static_resources"][kind] += tcp[kind]
    if stats_config is not None:
        config["stats_config"] = stats_config
    return config


def _traffic(http_port: int, tcp_port: int) -> None:
    for path in ("/a", "/b", "/missing"):
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        conn.request("GET", path)
        conn.getresponse().read()
        conn.close()
    with socket.create_connection(("127.0.0.1", tcp_port), timeout=10) as s:
        s.sendall(b"GET /tcp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass


def _admin(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read().decode()


def _observe(proxy, admin: int, http_port: int, tcp_port: int) -> tuple[set, set]:
    """(the /stats names, the /stats/prometheus series "name{labels}") once traffic has passed."""
    proxy.start()
    try:
        _traffic(http_port, tcp_port)
        names = {line.split(":", 1)[0] for line in _admin(admin, "/stats").splitlines() if ":" in line}
        series = {line.rsplit(" ", 1)[0] for line in _admin(admin, "/stats/prometheus").splitlines()
                  if line and not line.startswith("#")}
    finally:
        proxy.stop()
    return names, series


def _both(tmp_path, recorder, stats_config):
    out = {}
    # The same ports for both, one after the other: listener addresses are in stat names.
    http_port, tcp_port, admin = free_port(), free_port(), free_port()
    for name in ("envoy", "baton"):
        config = _config(admin, http_port, tcp_port, recorder, stats_config)
        proxy = (Envoy(tmp_path / name, config) if name == "envoy"
                 else Baton(tmp_path / name, config, concurrency=1))
        out[name] = _observe(proxy, admin, http_port, tcp_port)
    return out


def _baton_series_for(names: set, stats_config) -> dict:
    """name -> the series Baton's renderer makes of it, for these names."""
    from baton.supervisor.admin import prometheus_name
    from baton.supervisor.stat_tags import TagProducer
    tags = TagProducer.from_config(stats_config and {
        "stats_tags": stats_config.get("stats_tags", []),
        "use_all_default_tags": stats_config.get("use_all_default_tags", True)})
    return {n: "".join(prometheus_name(n, tags)) for n in names}


@pytest.mark.parametrize("stats_config", [None, ISTIO_STATS_CONFIG], ids=["defaults", "istio"])
def test_prometheus_series_are_envoys(tmp_path, recorder, stats_config):
    observed = _both(tmp_path, recorder, stats_config)
    (envoy_names, envoy_series), (baton_names, baton_series) = observed["envoy"], observed["baton"]
    common = {n for n in baton_names & envoy_names if not n.startswith("listener.admin.")}
    assert len(common) >= 40, sorted(common)
    rendered = _baton_series_for(common, stats_config)
    wrong = {n: s for n, s in rendered.items() if s not in envoy_series}
    assert not wrong, wrong
    missing = {n: s for n, s in rendered.items() if s not in baton_series}
    assert not missing, missing
    if stats_config is not None:
        # What the inclusion list leaves out exists in neither proxy's output.
        for names in (envoy_names, baton_names):
            assert not [n for n in names if n.startswith(("tcp.", "cluster.tcp-backend."))]
        assert not [s for s in baton_series if s.startswith("envoy_tcp_")]
        # Istio's cluster_name regex keeps the whole service name; tags without a first token
        # of their own (the fixed one too) come before those that have one.
        assert ('envoy_cluster_upstream_rq{response_code="200",mesh="m1",'
                f'cluster_name="{CLUSTER}"}}') in baton_series
    else:
        # Envoy's default cluster_name tag stops at the first dot of the name.
        assert ('envoy_cluster_default_svc_cluster_local_upstream_rq_total'
                '{envoy_cluster_name="outbound|80||app"}') in baton_series
        assert ('envoy_http_downstream_rq_xx{envoy_response_code_class="4",'
                'envoy_http_conn_manager_prefix="ingress_http"}') in baton_series
