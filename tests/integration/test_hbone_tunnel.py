"""HBONE's data path: a TCP stream carried in an HTTP CONNECT, end to end, Envoy's way.

An originating proxy's tcp_proxy with `tunneling_config` opens a CONNECT to a terminating
proxy (HTTP/2, HTTP/2 over mTLS as Istio's port 15008 does, or HTTP/1.1, by the cluster's
protocol); the terminator's connection manager (`allow_connect`, a `connect_matcher` route
with `upgrade_configs[].connect_config`) hands the stream's bytes to a TCP echo upstream.
Every pairing runs on the same two bootstraps: Baton -> Envoy 1.40 (Baton's tunneling
against Envoy's termination), Envoy -> Baton (the reverse) and Baton -> Baton. The client
sees its bytes echoed intact, binary and 200 KB included, and its half-close comes back as
the end of the stream; the terminator's route only matches with the tunnel's authority
(`%DOWNSTREAM_LOCAL_ADDRESS%`, as Istio writes it) and the header tunneling_config adds.
"""

from __future__ import annotations

import socket
import urllib.request

import pytest

from ..tls_certs import leaf, make_ca, spiffe_leaf
from ..waiting import wait_until
from .conftest import Baton, free_port, static_cluster
from .differential.proxies import Envoy
from .tls_upstream import upstream_tls_socket

T = "type.googleapis.com/"
HCM = T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
CA = make_ca("ecdsa")
MESSAGES = (b"hello", b"bytes \x00\x01\xff opaque to both proxies", b"y" * 200_000)
SET_INTERNAL_DST = {"name": "set_dst_address", "typed_config": {
    "@type": T + "udpa.type.v1.TypedStruct",
    "type_url": T + "istio.set_internal_dst_address.v1.Config"}}


def _listener(name: str, port: int, filters: list, transport_socket=None) -> dict:
    chain = {"filters": filters}
    if transport_socket is not None:
        chain["transport_socket"] = transport_socket
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [chain]}


def _bootstrap(admin: int, listeners: list, clusters: list) -> dict:
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": listeners, "clusters": clusters}}


def originator(admin: int, port: int, terminator: int, mode: str) -> dict:
    """tcp_proxy with tunneling_config toward `terminator` (mode h2, h2-tls or h1)."""
    tcp = {"@type": TCP_PROXY, "stat_prefix": "originate", "cluster": "hbone",
           "tunneling_config": {"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%",
                                "headers_to_add": [{"header": {"key": "x-tunnel", "value": "hbone"}}]}}
    cluster = static_cluster("hbone", terminator)
    if mode != "h1":
        cluster["typed_extension_protocol_options"] = {HTTP_OPTIONS: {
            "@type": T + HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}}
    if mode == "h2-tls":
        cluster["transport_socket"] = upstream_tls_socket(CA, client=spiffe_leaf(CA), alpn=["h2"])
    return _bootstrap(admin, [_listener("originate", port, [
        {"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}])], [cluster])


def terminator(admin: int, port: int, echo: int, mode: str) -> dict:
    """An HCM that terminates CONNECT with the tunnel's authority and header into `echo`."""
    hcm = {"@type": HCM, "stat_prefix": "terminate",
           "route_config": {"name": "r", "virtual_hosts": [{
               "name": "tunnels", "domains": ["127.0.0.1:*"],
               "routes": [{"match": {"connect_matcher": {}, "headers": [
                   {"name": "x-tunnel", "string_match": {"exact": "hbone"}}]},
                   "route": {"cluster": "echo", "upgrade_configs": [
                       {"upgrade_type": "CONNECT", "connect_config": {}}]}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": T + "envoy.extensions.filters.http.router.v3.Router"}}],
           "http2_protocol_options": {"allow_connect": True},
           "upgrade_configs": [{"upgrade_type": "CONNECT"}]}
    tls = None
    if mode == "h2-tls":
        server = leaf(CA)
        tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [{"certificate_chain": {"inline_string": server.cert_pem.decode()},
                                      "private_key": {"inline_string": server.key_pem.decode()}}],
                "validation_context": {"trusted_ca": {"inline_string": CA.cert_pem.decode()}}}}}
    return _bootstrap(admin, [_listener("terminate", port, [
        {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}], tls)],
        [static_cluster("echo", echo)])


def open_connect(port: int, authority: str, headers: str = ""):
    """An HTTP/1.1 CONNECT to `authority` through the terminator() on `port` (with its
    route's x-tunnel header, and `headers`: more header lines), answered 200: (socket, its
    Http1Reader)."""
    from .clients import Http1Reader
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    reader = Http1Reader(sock)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nx-tunnel: hbone\r\n"
                 f"{headers}\r\n".encode())
    assert reader.head()[0] == 200
    return sock, reader


def _start(kind: str, workdir, bootstrap: dict):
    if kind == "envoy":
        return Envoy(workdir, bootstrap).start()
    return Baton(workdir, bootstrap, concurrency=1).start(ready_timeout=60)


def tunnel_round_trip(port: int) -> list[bytes]:
    """Each message through the tunnel and back; then our FIN must come back as EOF."""
    echoes = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for message in MESSAGES:
            s.sendall(message)
            got = b""
            while len(got) < len(message):
                chunk = s.recv(65536)
                assert chunk, f"tunnel closed after {len(got)} of {len(message)} bytes"
                got += chunk
            echoes.append(got)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1) == b"", "the end of our stream did not come back as the end of the echo"
    return echoes


@pytest.fixture(scope="module")
def echo_upstream():
    from .conftest import Upstream
    up = Upstream("echo")
    yield up.port
    up.stop()


@pytest.mark.parametrize("mode", ["h2", "h2-tls", "h1"])
@pytest.mark.parametrize("origin,end", [("baton", "envoy"), ("envoy", "baton"), ("baton", "baton")])
def test_tcp_through_connect_tunnel(tmp_path, echo_upstream, origin, end, mode):
    terminate_port, originate_port, end_admin = free_port(), free_port(), free_port()
    started = []
    try:
        started.append(_start(end, tmp_path / "end",
                              terminator(end_admin, terminate_port, echo_upstream, mode)))
        started.append(_start(origin, tmp_path / "origin",
                              originator(free_port(), originate_port, terminate_port, mode)))
        assert tunnel_round_trip(originate_port) == list(MESSAGES)
        # The terminator's cluster saw one TCP connection carrying exactly the payload (the
        # CONNECT head is not part of it), as Envoy counts it.
        payload = sum(len(m) for m in MESSAGES)
        wait_until(lambda: _stats(end_admin, "cluster.echo.").get(
            "cluster.echo.upstream_cx_rx_bytes_total") == payload, 10, "the echo's bytes counted")
        stats = _stats(end_admin, "cluster.echo.")
        assert (stats["cluster.echo.upstream_cx_total"],
                stats["cluster.echo.upstream_cx_tx_bytes_total"]) == (1, payload)
    finally:
        for proc in reversed(started):
            proc.stop()


def _stats(admin: int, prefix: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return {name: int(value) for name, _, value in (line.partition(": ") for line in lines)
            if name.startswith(prefix) and value.strip().isdigit()}


def test_connect_terminated_into_an_internal_listener(tmp_path, echo_upstream):
    """Istio's inbound HBONE as a waypoint's bootstrap has it: connect_terminate's route
    goes to cluster main_internal, whose endpoint is the internal listener main_internal
    (envoy_internal_address); the route enables Istio's connect_authority (with
    connect_baggage beside it, as istiod sends them), so the CONNECT's authority is the
    internal connection's original destination; main_internal's filter_chain_matcher picks
    the chain by that destination port, whose set_filter_state passes it on, and proxies to
    the workload. The internal_listener bootstrap extension is there, as Envoy needs it.
    Baton on both ends."""
    terminate_port, originate_port, end_admin = free_port(), free_port(), free_port()
    end = terminator(end_admin, terminate_port, echo_upstream, "h2")
    end["bootstrap_extensions"] = [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
        "@type": T + "udpa.type.v1.TypedStruct",
        "type_url": T + "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"}}]
    hcm = end["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][:0] = [
        {"name": name, "typed_config": {"@type": T + "udpa.type.v1.TypedStruct",
                                        "type_url": T + f"io.istio.http.{name}.Config"}}
        for name in ("connect_baggage", "connect_authority")]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    route["route"]["cluster"] = "main_internal"
    route["typed_per_filter_config"] = {"connect_authority": {
        "@type": T + "udpa.type.v1.TypedStruct",
        "type_url": T + "io.istio.http.connect_authority.Config", "value": {"enabled": True}}}
    end["static_resources"]["clusters"].append({
        "name": "main_internal", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": "main_internal", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"envoy_internal_address": {"server_listener_name": "main_internal"}}}}]}]}})
    chains, by_port = [], {}
    pass_on = {"name": "connect_authority", "typed_config": {
        "@type": T + "envoy.extensions.filters.network.set_filter_state.v3.Config",
        "on_new_connection": [{
            "object_key": "envoy.filters.listener.original_dst.local_ip",
            "format_string": {"text_format_source": {"inline_string":
                "%FILTER_STATE(envoy.filters.listener.original_dst.local_ip:PLAIN)%"}},
            "shared_with_upstream": "ONCE"}]}}
    for port, cluster in ((originate_port, "echo"), (9, "nowhere")):
        # Only the chain for the port the client dialled (the tunnel's authority) reaches the echo.
        chains.append({"name": f"inbound_{port}", "filters": [pass_on, {
            "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": TCP_PROXY, "stat_prefix": f"inbound_{port}", "cluster": cluster}}]})
        by_port[str(port)] = {"action": {"name": f"inbound_{port}", "typed_config": {
            "@type": T + "google.protobuf.StringValue", "value": f"inbound_{port}"}}}
    end["static_resources"]["clusters"].append(static_cluster("nowhere", 9))
    end["static_resources"]["listeners"].append(
        {"name": "main_internal", "internal_listener": {}, "filter_chains": chains,
         # What restores the authority there (istio/proxy's set_internal_dst_address), as
         # istiod puts it on main_internal.
         "listener_filters": [SET_INTERNAL_DST],
         "filter_chain_matcher": {"matcher_tree": {
             "input": {"name": "port", "typed_config": {"@type": T + "envoy.extensions.matching."
                                                        "common_inputs.network.v3.DestinationPortInput"}},
             "exact_match_map": {"map": by_port}}}})
    started = []
    try:
        started.append(_start("baton", tmp_path / "end", end))
        started.append(_start("baton", tmp_path / "origin",
                              originator(free_port(), originate_port, terminate_port, "h2")))
        assert tunnel_round_trip(originate_port) == list(MESSAGES)
        # The admin's counters may trail the echo on a busy machine: wait for them (as above).
        counted = {"cluster.main_internal.upstream_cx_total": 1,
                   f"tcp.inbound_{originate_port}.downstream_cx_total": 1,
                   "listener.main_internal.downstream_cx_total": 1}
        wait_until(lambda: all(_stats(end_admin, "").get(k) == v for k, v in counted.items()),
                   10, "the internal connection counted")
        stats = _stats(end_admin, "")
        assert {k: stats[k] for k in counted} == counted
    finally:
        for proc in reversed(started):
            proc.stop()
