"""tls_inspector / http_inspector and filter_chain_match: connections are routed at L4 by
TLS SNI, by HTTP detection, and otherwise by the default chain — including a client that never
speaks first, decided at listener_filters_timeout."""

from __future__ import annotations

import socket
import ssl
import time

from .clients import recv_exact
from .conftest import free_port, tcp_bootstrap


def client_hello(server_name: str) -> bytes:
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def tcp(stat_prefix, cluster):
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": stat_prefix, "cluster": cluster}}


def test_routing_by_sni_http_and_default_with_server_first_timeout(baton, upstreams):
    a, h, d = upstreams("banner", "A"), upstreams("banner", "H"), upstreams("banner", "D")
    port = free_port()
    bootstrap = tcp_bootstrap(free_port(), port, [d.port], cluster="default")
    for name, up in (("sni", a), ("http", h)):
        bootstrap["static_resources"]["clusters"] += tcp_bootstrap(0, 0, [up.port], cluster=name)["static_resources"]["clusters"]
    listener = bootstrap["static_resources"]["listeners"][0]
    listener["listener_filters"] = [
        {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}},
        {"name": "envoy.filters.listener.http_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}]
    listener["listener_filters_timeout"] = "0.3s"
    listener["continue_on_listener_filters_timeout"] = True
    listener["filter_chains"] = [
        {"filter_chain_match": {"server_names": ["*.example.com"], "transport_protocol": "tls"},
         "filters": [tcp("sni", "sni")]},
        {"filter_chain_match": {"application_protocols": ["http/1.1"]}, "filters": [tcp("http", "http")]},
        {"filters": [tcp("other", "default")]}]
    b = baton(bootstrap, concurrency=1)

    def first_byte(payload: bytes | None) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            if payload:
                s.sendall(payload)
            return recv_exact(s, 1)

    hello = client_hello("api.example.com")
    assert first_byte(hello) == b"A"
    assert first_byte(client_hello("elsewhere.org")) == b"D"       # TLS, but no chain for that name
    assert first_byte(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b"H"
    assert first_byte(b"\x00\x01binary protocol") == b"D"
    start = time.monotonic()
    assert first_byte(None) == b"D"                                   # server speaks first
    assert 0.2 < time.monotonic() - start < 5
    # The inspected bytes were not lost: they reach the upstream first, then the rest.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(hello)
        assert recv_exact(s, 1) == b"A"
        s.sendall(b"more")
        assert recv_exact(s, len(hello) + 4) == hello + b"more"
    stats = b.stats()
    assert stats["tcp.sni.downstream_cx_total"] == 2
    assert stats["tcp.http.downstream_cx_total"] == 1
    assert stats["tcp.other.downstream_cx_total"] == 3
    assert stats[f"listener.127.0.0.1_{port}.downstream_cx_total"] == 6


def test_no_matching_chain_closes(baton, upstreams):
    a = upstreams("banner", "A")
    port = free_port()
    bootstrap = tcp_bootstrap(free_port(), port, [a.port], cluster="sni")
    listener = bootstrap["static_resources"]["listeners"][0]
    listener["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]
    listener["filter_chains"][0]["filter_chain_match"] = {"server_names": ["only.example.com"]}
    b = baton(bootstrap, concurrency=1)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(client_hello("other.example.com"))
        s.settimeout(10)
        assert s.recv(1) == b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(client_hello("only.example.com"))
        assert recv_exact(s, 1) == b"A"
    assert b.stats()[f"listener.127.0.0.1_{port}.no_filter_chain_match"] == 1
