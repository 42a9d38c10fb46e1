"""Istio's connect_authority `port` on a terminated CONNECT into an internal listener: the
CONNECT's authority stays the internal connection's local address (its port picks the
chain), and `port` is only where the ORIGINAL_DST cluster behind it dials, at the
authority's ip (istio/proxy source/extensions/filters/listener/set_internal_dst_address:
the local address restored from the authority, Envoy's DestinationAddress filter state from
the authority's ip and `port`). Baton used `port` as the local port, so the chain for the
tunnel port took the connection instead of the authority's.

Istio's filters are not in upstream Envoy, so Baton alone; the echo answering and the
chain's counter show both halves."""

from __future__ import annotations

from ..waiting import wait_until
from .conftest import Baton, free_port, static_cluster
from .test_hbone_tunnel import SET_INTERNAL_DST, T, TCP_PROXY, _stats, open_connect, terminator


def _bootstrap(admin: int, port: int, echo: int, authority_port: int) -> dict:
    end = terminator(admin, port, echo, "h1")
    hcm = end["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(0, {"name": "connect_authority", "typed_config": {
        "@type": T + "udpa.type.v1.TypedStruct", "type_url": T + "io.istio.http.connect_authority.Config"}})
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    route["route"]["cluster"] = "main_internal"
    route["typed_per_filter_config"] = {"connect_authority": {
        "@type": T + "udpa.type.v1.TypedStruct", "type_url": T + "io.istio.http.connect_authority.Config",
        "value": {"enabled": True, "port": echo}}}
    clusters = end["static_resources"]["clusters"]
    clusters.append({"name": "main_internal", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": "main_internal", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"envoy_internal_address": {"server_listener_name": "main_internal"}}}}]}]}})
    clusters.append({"name": "passthrough", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                     "connect_timeout": "1s"})
    clusters.append(static_cluster("nowhere", 9))

    def chain(dst_port: int, cluster: str) -> dict:
        return {"filter_chain_match": {"destination_port": dst_port}, "filters": [{
            "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": TCP_PROXY, "stat_prefix": f"inbound_{dst_port}", "cluster": cluster}}]}
    end["static_resources"]["listeners"].append({
        "name": "main_internal", "internal_listener": {}, "listener_filters": [SET_INTERNAL_DST],
        # The authority's port reaches the ORIGINAL_DST cluster; the tunnel port's chain goes
        # nowhere, so a connection that took it would not be echoed.
        "filter_chains": [chain(authority_port, "passthrough"), chain(echo, "nowhere")]})
    return end


def test_the_authority_port_picks_the_chain_and_the_config_port_the_upstream(tmp_path):
    from .conftest import Upstream
    echo = Upstream("echo")
    port, admin = free_port(), free_port()
    authority_port = free_port()         # nothing listens there: only a chain is picked by it
    b = Baton(tmp_path / "b", _bootstrap(admin, port, echo.port, authority_port),
              concurrency=1).start()
    try:
        s, reader = open_connect(port, f"127.0.0.1:{authority_port}")
        with s:
            s.sendall(b"ping")
            assert reader.exact(4) == b"ping"
        counted = {f"tcp.inbound_{authority_port}.downstream_cx_total": 1,
                   "cluster.passthrough.upstream_cx_total": 1}
        wait_until(lambda: all(_stats(admin, "").get(k) == v for k, v in counted.items()),
                   10, "the internal connection counted on the authority port's chain")
        assert _stats(admin, "").get(f"tcp.inbound_{echo.port}.downstream_cx_total", 0) == 0
    finally:
        b.stop()
        echo.stop()
