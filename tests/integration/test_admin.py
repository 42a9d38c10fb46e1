"""The admin API: Envoy's paths, formats and stat names, summed over workers."""

from __future__ import annotations

import json

from .clients import roundtrip
from .conftest import free_port, tcp_bootstrap, wait_until


def _started(baton, upstreams, concurrency=2):
    echo = upstreams("echo")
    port = free_port()
    b = baton(tcp_bootstrap(free_port(), port, [echo.port]), concurrency=concurrency)
    return b, port, echo


def test_ready_and_server_info(baton, upstreams):
    b, _, _ = _started(baton, upstreams)
    assert b.admin("/ready") == (200, "LIVE\n")
    status, body = b.admin("/server_info")
    info = json.loads(body)
    assert status == 200 and info["state"] == "LIVE"
    assert info["command_line_options"]["concurrency"] == 2
    assert info["uptime_current_epoch"].endswith("s")


def test_stats_are_summed_over_workers(baton, upstreams):
    b, port, echo = _started(baton, upstreams)
    for i in range(40):
        assert roundtrip(port, b"%d" % i) == b"%d" % i
    stats = b.stats()
    listener = f"listener.127.0.0.1_{port}"
    assert stats[f"{listener}.downstream_cx_total"] == 40
    assert stats["tcp.ingress.downstream_cx_total"] == 40
    assert stats["cluster.backend.upstream_cx_total"] == 40
    assert stats["cluster.backend.upstream_cx_connect_fail"] == 0      # declared before use
    sent = sum(len(b"%d" % i) for i in range(40))
    assert stats["tcp.ingress.downstream_cx_rx_bytes_total"] == sent
    assert stats["cluster.backend.upstream_cx_rx_bytes_total"] == sent
    wait_until(lambda: b.stats()[f"{listener}.downstream_cx_active"] == 0, 10, "connections to close")
    # Both workers served some of the 40 connections, and the sum is still exact.
    status, body = b.admin("/stats?format=json")
    names = {s["name"]: s["value"] for s in json.loads(body)["stats"]}
    assert names["cluster.backend.upstream_cx_total"] == 40
    status, body = b.admin("/stats?filter=^cluster%5C.")
    assert body and all(line.startswith("cluster.") for line in body.splitlines())


def test_prometheus(baton, upstreams):
    b, port, _ = _started(baton, upstreams)
    assert roundtrip(port) == b"ping"
    status, body = b.admin("/stats/prometheus")
    assert status == 200
    assert "# TYPE envoy_cluster_upstream_cx_total counter" in body
    assert 'envoy_cluster_upstream_cx_total{envoy_cluster_name="backend"} 1' in body
    assert f'envoy_listener_downstream_cx_total{{envoy_listener_address="127.0.0.1_{port}"}} 1' in body
    assert "# TYPE envoy_cluster_upstream_cx_active gauge" in body


def test_clusters_and_config_dump(baton, upstreams):
    b, port, echo = _started(baton, upstreams)
    assert roundtrip(port) == b"ping"
    status, body = b.admin("/clusters")
    host = f"backend::127.0.0.1:{echo.port}"
    assert f"{host}::cx_total::1" in body.splitlines()
    assert f"{host}::health_flags::healthy" in body.splitlines()
    status, body = b.admin("/config_dump")
    dump = json.loads(body)
    types = [c["@type"].rsplit(".", 1)[1] for c in dump["configs"]]
    assert types == ["BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump"]
    assert dump["configs"][0]["bootstrap"]["static_resources"]["clusters"][0]["name"] == "backend"


def test_unknown_path_and_quitquitquit(baton, upstreams):
    b, _, _ = _started(baton, upstreams, concurrency=1)
    status, body = b.admin("/nope")
    assert status == 404 and "/stats" in body
    assert b.admin("/quitquitquit")[0] == 405
    assert b.admin("/quitquitquit", method="POST")[0] == 200
    assert b.wait(15) == 0


def _health_views(admin) -> tuple[dict, dict]:
    """({host: health_flags} from /clusters, {host: health_status} from ?format=json)."""
    _, text = admin("/clusters")
    flags = {line.split("::")[1]: line.rsplit("::", 1)[1] for line in text.splitlines()
             if "::health_flags::" in line}
    _, body = admin("/clusters?format=json")
    statuses = {f"{h['address']['socket_address']['address']}:"
                f"{h['address']['socket_address']['port_value']}": h["health_status"]
                for c in json.loads(body)["cluster_statuses"] for h in c["host_statuses"]}
    return flags, statuses


def test_clusters_health_flags_match_envoy(tmp_path, baton, upstreams):
    """A host that fails its active health check shows as Envoy shows it, in both formats."""
    from .differential.proxies import Envoy
    echo, dead = upstreams("echo"), free_port()
    expected_flags = {f"127.0.0.1:{echo.port}": "healthy", f"127.0.0.1:{dead}": "/failed_active_hc"}
    views = {}
    for name in ("envoy", "baton"):
        boot = tcp_bootstrap(free_port(), free_port(), [echo.port, dead])
        boot["static_resources"]["clusters"][0]["health_checks"] = [{
            "timeout": "1s", "interval": "0.1s", "no_traffic_interval": "0.1s",
            "unhealthy_threshold": 1, "healthy_threshold": 1, "tcp_health_check": {}}]
        if name == "envoy":
            proxy = Envoy(tmp_path / "envoy", boot).start()

            def admin(path, port=boot["admin"]["address"]["socket_address"]["port_value"]):
                import urllib.request
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.status, r.read().decode()
        else:
            proxy, admin = None, baton(boot).admin
        try:
            wait_until(lambda: _health_views(admin)[0] == expected_flags, 15,
                       f"{name}: the dead host flagged")
            views[name] = _health_views(admin)
        finally:
            if proxy is not None:
                proxy.stop()
    assert views["baton"] == views["envoy"]
    assert views["baton"][1][f"127.0.0.1:{dead}"] == {"failed_active_health_check": True,
                                                      "eds_health_status": "HEALTHY"}
