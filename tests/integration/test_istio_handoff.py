"""Istio's outbound layout in a network namespace (issue 14): nft REDIRECT captures the
client's connections into `virtualOutbound` (use_original_dst, no listener filter named, as
istiod sends it), which hands each one to the bind_to_port:false listener of its original
destination: the one bound to that exact address, else the 0.0.0.0 one of its port, else it
stays on virtualOutbound and passes through. The virtual listeners' own filter chains, their
default_filter_chain and their NR access log apply.

Both interception modes: REDIRECT (outbound, the original destination by SO_ORIGINAL_DST)
and TPROXY (inbound, the original destination is the local address). Shares the namespaces,
servers and client of test_passthrough.py."""

from __future__ import annotations

import subprocess
import sys

import yaml

from .conftest import BATON, wait_until
from .test_passthrough import CAPTURE, client, sh, start_baton_in_node, topology  # noqa: F401

T = "type.googleapis.com/"
BANNER = {"ok": "220 smtp.example ESMTP ready\r\n"}


def tcp(stat_prefix, cluster, **extra):
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": stat_prefix, "cluster": cluster, **extra}}


STATS = {"name": "istio.stats", "typed_config": {"@type": T + "stats.PluginConfig"}}


def istio_bootstrap(topo) -> dict:
    v4, log_path = topo["v4"], str(topo["dir"] / "listener.log")
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": f"outbound_{v4}_8082",
        "route_config": {"name": "8082", "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster"},
                        "request_headers_to_add": [{"header": {"key": "x-listener",
                                                               "value": f"{v4}_8082"}}]}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": T + "envoy.extensions.filters.http.router.v3.Router"}}]}}
    http_inspector = {"name": "envoy.filters.listener.http_inspector", "typed_config": {
        "@type": T + "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}
    nr_log = {"name": "envoy.access_loggers.file",
              "filter": {"response_flag_filter": {"flags": ["NR"]}},
              "typed_config": {"@type": T + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                               "path": log_path, "log_format": {"text_format_source": {
                                   "inline_string": "%DOWNSTREAM_LOCAL_ADDRESS% %RESPONSE_FLAGS% "
                                                    "%CONNECTION_TERMINATION_DETAILS%\n"}}}}
    virtual_outbound = [{
        "name": f"virtualOutbound_{name}", "use_original_dst": True, "traffic_direction": "OUTBOUND",
        "address": {"socket_address": {"address": addr, "port_value": CAPTURE}},
        "filter_chains": [
            {"name": "virtualOutbound-blackhole", "filter_chain_match": {"destination_port": CAPTURE},
             "filters": [STATS, tcp("BlackHoleCluster", "BlackHoleCluster")]},
            {"name": "virtualOutbound-catchall-tcp",
             "filters": [STATS, tcp("PassthroughCluster", "PassthroughCluster")]}]}
        for name, addr in (("v4", "127.0.0.1"), ("v6", "::1"))]
    virtual = [
        # The listener of exactly the destination: HTTP by its chain, anything else by the
        # default chain (which answers with the SMTP banner, so the test sees who served).
        {"name": f"{v4}_8082", "bind_to_port": False, "traffic_direction": "OUTBOUND",
         "address": {"socket_address": {"address": v4, "port_value": 8082}},
         "listener_filters": [http_inspector], "listener_filters_timeout": "0.5s",
         "continue_on_listener_filters_timeout": True,
         "filter_chains": [{"filter_chain_match": {"application_protocols": ["http/1.1", "h2c"]},
                            "filters": [hcm]}],
         "default_filter_chain": {"name": "PassthroughFilterChain", "filter_chain_match": {},
                                  "filters": [STATS, tcp("banner", "banner")]}},
        # The wildcard of port 8080 (IPv4 destinations only): to the banner server instead.
        {"name": "0.0.0.0_8080", "deprecated_v1": {"bind_to_port": False},
         # A listener log without a filter: every connection, tcp_proxy ones included.
         "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
             "@type": T + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
             "path": str(topo["dir"] / "listener8080.log"), "log_format": {"text_format_source": {
                 "inline_string": "listener %UPSTREAM_CLUSTER% %BYTES_SENT%\n"}}}}],
         "address": {"socket_address": {"address": "0.0.0.0", "port_value": 8080}},
         "filter_chains": [{"filters": [STATS, tcp("wildcard_8080", "banner", access_log=[{
             "name": "envoy.access_loggers.file", "typed_config": {
                 "@type": T + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                 "path": str(topo["dir"] / "tcp.log"), "log_format": {"text_format_source": {
                     "inline_string": "%DOWNSTREAM_LOCAL_ADDRESS% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% "
                                      "%BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_FLAGS%\n"}}}}])]}]},
        # A listener whose only chain matches nothing a client here can send: its
        # connections are closed and logged with NR.
        {"name": f"{v4}_9999", "bind_to_port": False, "access_log": [nr_log],
         "address": {"socket_address": {"address": v4, "port_value": 9999}},
         "filter_chains": [{"filter_chain_match": {"source_ports": [1]},
                            "filters": [tcp("never", "banner")]}]},
    ]
    static = lambda name, port: {  # noqa: E731
        "name": name, "type": "STATIC", "connect_timeout": "2s", "load_assignment": {
            "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": v4, "port_value": port}}}}]}]}}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 19902}}},
            "static_resources": {"listeners": virtual_outbound + virtual, "clusters": [
                {"name": "PassthroughCluster", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                 "connect_timeout": "2s"},
                {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "2s"},
                static("banner", 8025)]}}


def test_use_original_dst_hands_connections_to_the_virtual_listener_of_their_destination(topology):  # noqa: F811
    topo = topology
    start_baton_in_node(topo, istio_bootstrap(topo))
    v4, v6 = topo["v4"], topo["v6"]
    # Exact address: HTTP goes through that listener's HCM (its route adds the header) ...
    status, _, head = client(topo, v4, 8082, "http")["ok"].partition("\n")
    assert status == "HTTP/1.1 200 OK"
    assert f"x-listener: {v4}_8082" in head.lower().split("\r\n"), head
    # ... anything else gets its default_filter_chain.
    assert client(topo, v4, 8082, "banner") == BANNER
    # No exact listener for :8080, the 0.0.0.0 one takes IPv4 ...
    assert client(topo, v4, 8080, "banner") == BANNER
    # ... and its tcp_proxy's access log has the connection once it closed.
    tcp_log = topo["dir"] / "tcp.log"
    wait_until(lambda: tcp_log.exists() and tcp_log.read_text(), 10, "the tcp_proxy access log line")
    assert tcp_log.read_text() == f"{v4}:8080 {v4}:8025 banner 0 {len(BANNER['ok'])} -\n"
    listener_log = topo["dir"] / "listener8080.log"
    wait_until(lambda: listener_log.exists() and listener_log.read_text(), 10, "the listener log line")
    assert listener_log.read_text() == f"listener banner {len(BANNER['ok'])}\n"
    # ... but not IPv6, which stays on virtualOutbound: passed through to the echo server.
    assert client(topo, v6, 8080) == {"ok": "match"}
    # No listener at all for :8025: virtualOutbound's catch-all passes it through.
    assert client(topo, v4, 8025, "banner") == BANNER
    # No chain of the 9999 listener matches: closed, and its NR access log says so.
    assert client(topo, v4, 9999, "banner") == {"ok": ""}
    log_path = topo["dir"] / "listener.log"
    wait_until(lambda: log_path.exists() and log_path.read_text(), 10, "the NR access log line")
    assert log_path.read_text() == f"{v4}:9999 NR -\n"
    # The listeners without a socket bound nothing: the node's only listening sockets on
    # those ports are none (the servers run in the other namespace).
    listening = sh("ip", "netns", "exec", topo["node"], "ss", "-Hltn").stdout
    assert ":8080 " not in listening and ":8082 " not in listening and ":9999 " not in listening
    stats = sh("ip", "netns", "exec", topo["node"], "curl", "-s", "http://127.0.0.1:19902/stats").stdout
    assert "tcp.wildcard_8080.downstream_cx_total: 1" in stats
    assert "tcp.banner.downstream_cx_total: 1" in stats
    assert f"listener.{v4}_9999.no_filter_chain_match: 1" in stats
    assert "Traceback" not in (topo["dir"] / "baton.log").read_text()


def test_tproxy_inbound_hands_off_to_the_listener_of_the_destination(topology):  # noqa: F811
    """TPROXY (Istio's inbound interception mode): the transparent catch-all on 15006 sees the
    original destination as its local address and hands the connection to the
    bind_to_port:false listener of that address; a port without one passes through."""
    topo = topology
    node, d = topo["node"], topo["dir"]
    sh("ip", "netns", "exec", node, "nft", "delete", "table", "inet", "baton_test")
    app = subprocess.Popen(["ip", "netns", "exec", node, sys.executable, str(d / "servers.py"),
                            topo["node_v4"], topo["node_v6"]], stdout=subprocess.PIPE, text=True)
    topo["procs"].append(app)
    assert app.stdout.readline().strip() == "ready"
    node_v4 = topo["node_v4"]
    banner = {"name": "banner_local", "type": "STATIC", "connect_timeout": "2s", "load_assignment": {
        "cluster_name": "banner_local", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": node_v4, "port_value": 8025}}}}]}]}}
    listeners = [
        {"name": "virtualInbound", "transparent": True, "use_original_dst": True,
         "traffic_direction": "INBOUND",
         "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
         "filter_chains": [{"filters": [STATS, tcp("InboundPassthroughClusterIpv4",
                                                   "InboundPassthroughClusterIpv4")]}]},
        {"name": f"{node_v4}_8080", "bind_to_port": False, "traffic_direction": "INBOUND",
         "address": {"socket_address": {"address": node_v4, "port_value": 8080}},
         "filter_chains": [{"filters": [STATS, tcp("inbound_8080", "banner_local")]}]}]
    bootstrap = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 19903}}},
                 "static_resources": {"listeners": listeners, "clusters": [
                     {"name": "InboundPassthroughClusterIpv4", "type": "ORIGINAL_DST",
                      "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "2s"}, banner]}}
    (d / "bootstrap.yaml").write_text(yaml.safe_dump(bootstrap))
    log = open(d / "baton.log", "wb")
    proc = subprocess.Popen(["ip", "netns", "exec", node, BATON, "run", "-c", str(d / "bootstrap.yaml"),
                             "--concurrency", "1", "--runtime-dir", str(d / "run"), "--intercept",
                             "-m", "TPROXY", "-z", "15006", "-b", "8080,8082", "-i", ""],
                            stdout=log, stderr=subprocess.STDOUT)
    topo["procs"].append(proc)
    wait_until(lambda: "intercept: applied" in (d / "baton.log").read_text() or proc.poll() is not None,
               30, "the capture rules")
    assert proc.poll() is None, (d / "baton.log").read_text()
    # :8080 has a listener: handed to it, whose cluster is the banner server.
    assert client(topo, node_v4, 8080, "banner", ns="srv") == BANNER
    # :8082 has none: virtualInbound passes it through to the app itself.
    status = client(topo, node_v4, 8082, "http", ns="srv")["ok"].partition("\n")[0]
    assert status == "HTTP/1.1 200 OK"
    stats = sh("ip", "netns", "exec", node, "curl", "-s", "http://127.0.0.1:19903/stats").stdout
    assert "tcp.inbound_8080.downstream_cx_total: 1" in stats, stats
    assert "tcp.InboundPassthroughClusterIpv4.downstream_cx_total: 1" in stats, stats
    assert "Traceback" not in (d / "baton.log").read_text()
