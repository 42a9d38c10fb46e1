"""One listener, every protocol (MOSN's "Auto", issue 16 point 2): rpc_inspector,
http_inspector and tls_inspector read the first bytes, and filter_chain_match sends Dubbo,
Bolt, HTTP/1, the HTTP/2 preface and TLS each to its own chain; anything else takes the chain
without a match (the fallback)."""

from __future__ import annotations

import socket

from baton.tests.integration.clients import recv_exact
from baton.tests.integration.conftest import free_port, static_cluster
from baton.tests.integration.rpc_peers.frames import bolt_request, dubbo_request, dubbo_value
from baton.tests.integration.test_inspection import client_hello, tcp
from baton.tests.integration.test_rpc_proxy import (RawClient, default_routes,  # noqa: F401
                                                   processes, provider, rpc_filter)
from baton.worker.codecs import bolt

SERVICE = "com.example.HelloService"


def inspector(name: str, kind: str) -> dict:
    return {"name": f"envoy.filters.listener.{name}", "typed_config": {
        "@type": f"type.googleapis.com/envoy.extensions.filters.listener.{name}.v3.{kind}"}}


def test_one_listener_sends_each_protocol_to_its_chain(baton, processes, upstreams):
    banners = {text: upstreams("banner", text) for text in ("H", "2", "T", "D")}
    dubbo_up, bolt_up = provider(processes, "dubbo", "P"), provider(processes, "bolt", "Q")
    port = free_port()
    chains = [
        {"filter_chain_match": {"application_protocols": ["dubbo"]},
         "filters": [rpc_filter("dubbo", default_routes("dubbo_up"), "auto")]},
        {"filter_chain_match": {"application_protocols": ["bolt"]},
         "filters": [rpc_filter("bolt", default_routes("bolt_up"), "auto")]},
        {"filter_chain_match": {"application_protocols": ["http/1.1"]}, "filters": [tcp("h", "H")]},
        {"filter_chain_match": {"application_protocols": ["h2c"]}, "filters": [tcp("h2", "2")]},
        {"filter_chain_match": {"transport_protocol": "tls"}, "filters": [tcp("t", "T")]},
        {"filters": [tcp("other", "D")]}]
    clusters = [static_cluster(name, up.port) for name, up in banners.items()]
    clusters += [static_cluster("dubbo_up", dubbo_up), static_cluster("bolt_up", bolt_up)]
    b = baton({"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                        "port_value": free_port()}}},
               "static_resources": {"listeners": [{
                   "name": "auto", "address": {"socket_address": {"address": "127.0.0.1",
                                                                  "port_value": port}},
                   "listener_filters": [
                       {"name": "baton.filters.listener.rpc_inspector"},
                       inspector("http_inspector", "HttpInspector"),
                       inspector("tls_inspector", "TlsInspector")],
                   "listener_filters_timeout": "0.3s",
                   "continue_on_listener_filters_timeout": True,
                   "filter_chains": chains}],
                   "clusters": clusters}}, concurrency=1)

    d = RawClient("dubbo", port)
    d.send(dubbo_request(1, SERVICE, "echo", ["auto"]))
    assert dubbo_value(d.receive(1)[0]) == "P:echo:auto"
    q = RawClient("bolt", port)
    q.send(bolt_request(2, f"{SERVICE}:1.0", "hello"))
    reply = q.receive(1)[0]
    assert (reply.request_id, reply.status) == (2, bolt.SUCCESS)

    def first_byte(payload: bytes | None) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            if payload:
                s.sendall(payload)
            return recv_exact(s, 1)

    assert first_byte(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == b"H"
    assert first_byte(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == b"2"
    assert first_byte(client_hello("rpc.example.com")) == b"T"
    assert first_byte(b"\xda\x00 not dubbo") == b"D"
    assert first_byte(b"\x01\x01\x00\x07 not bolt") == b"D"
    assert first_byte(None) == b"D"           # a client that waits for the server: the timeout
    stats = b.stats()
    assert stats["dubbo.auto.request"] == 1 and stats["bolt.auto.response_success"] == 1
    d.close()
    q.close()
