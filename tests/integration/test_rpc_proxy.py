"""Dubbo and SOFA Bolt through a real Baton: real clients and servers from sofa-rpc-node (Bolt,
and Dubbo with dubbo-remoting), and raw frames for what a client library hides (heartbeats,
local replies, oneway, timeouts, malformed frames)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from baton.tests.integration.conftest import free_port, start_ready_process, static_cluster
from baton.tests.integration.rpc_peers.frames import (bolt_request, dubbo_request,
                                                      dubbo_value)
from baton.tests.waiting import wait_until
from baton.worker.codecs import bolt, dubbo
from baton.worker.codecs.hessian2 import Reader

PEERS = Path(__file__).resolve().parent / "rpc_peers"
SOFA_PEER = PEERS / "sofa_peer.js"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(
    NODE is None or not (PEERS / "node_modules" / "sofa-rpc-node").is_dir(),
    reason="node and tests/integration/rpc_peers/node_modules (scripts/install.sh with "
           "BATON_TEST_TOOLS=1) are needed for the real SOFA peers")

SERVICE = "com.example.HelloService"
DUBBO_TYPE = "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.DubboProxy"
BOLT_TYPE = "type.googleapis.com/baton.filters.network.bolt_proxy.v1.BoltProxy"


def rpc_filter(kind: str, route_configs: list, stat_prefix: str = "rpc_in") -> dict:
    if kind == "dubbo":
        return {"name": "envoy.filters.network.dubbo_proxy",
                "typed_config": {"@type": DUBBO_TYPE, "stat_prefix": stat_prefix,
                                 "route_config": route_configs}}
    return {"name": "baton.filters.network.bolt_proxy",
            "typed_config": {"@type": "type.googleapis.com/xds.type.v3.TypedStruct",
                             "type_url": BOLT_TYPE,
                             "value": {"stat_prefix": stat_prefix, "route_config": route_configs}}}


def default_routes(cluster: str = "up") -> list:
    return [{"name": "hello", "interface": SERVICE,
             "routes": [{"match": {"method": {"name": {"safe_regex": {"regex": ".*"}}}},
                         "route": {"cluster": cluster}}]}]


def rpc_bootstrap(admin: int, listeners: dict, clusters: dict, routes: dict | None = None) -> dict:
    """One listener per protocol ({"dubbo": port, "bolt": port}); `routes` per protocol
    replace the default (every method of SERVICE to cluster "up")."""
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [{"name": kind, "address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [rpc_filter(
                        kind, (routes or {}).get(kind) or default_routes())]}]}
                    for kind, port in listeners.items()],
                "clusters": [static_cluster(name, p) for name, p in clusters.items()]}}


@pytest.fixture
def processes():
    started = []

    def start(argv):
        proc, port = start_ready_process(argv)
        started.append(proc)
        return port
    yield start
    for proc in started:
        proc.kill()
        proc.wait(10)


def node_server(processes, kind: str, name: str) -> int:
    port = free_port()
    processes([NODE, str(SOFA_PEER), "server", kind, str(port), name])
    return port


def provider(processes, kind: str, name: str, *options: str) -> int:
    return processes([sys.executable, str(PEERS / "providers.py"), kind, "0", name, *options])


def node_client(kind: str, port: int, calls: int, method: str = "hello", arg: str = "world",
                timeout_ms: int = 5000) -> list[dict]:
    out = subprocess.run([NODE, str(SOFA_PEER), "client", kind, f"127.0.0.1:{port}", str(calls),
                          method, arg, str(timeout_ms)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


class RawClient:
    """A client connection speaking raw frames."""

    def __init__(self, kind: str, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.decoder = dubbo.Decoder() if kind == "dubbo" else bolt.Decoder()
        self.frames = []

    def send(self, *raws: bytes) -> None:
        self.sock.sendall(b"".join(raws))

    def receive(self, count: int) -> list:
        while len(self.frames) < count:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed after {len(self.frames)} frame(s)")
            self.frames += self.decoder.feed(data)
        got, self.frames = self.frames[:count], self.frames[count:]
        return got

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def rpc_stats(b, root: str) -> dict:
    return {k: v for k, v in b.stats().items() if k.startswith(root)}


@needs_node
def test_real_sofa_clients_and_servers_through_baton(baton, processes):
    """sofa-rpc-node's Bolt and Dubbo clients call its servers through Baton: 40 concurrent
    calls each, multiplexed over one upstream connection per worker."""
    bolt_server = node_server(processes, "bolt", "B")
    dubbo_server = node_server(processes, "dubbo", "D")
    ports = {"dubbo": free_port(), "bolt": free_port()}
    b = baton(rpc_bootstrap(free_port(), ports, {"up": dubbo_server, "bolt_up": bolt_server},
                            routes={"bolt": default_routes("bolt_up")}), concurrency=1)
    for kind, name in (("dubbo", "D"), ("bolt", "B")):
        results = node_client(kind, ports[kind], 40)
        assert sorted(r["i"] for r in results) == list(range(40))
        assert all(r.get("result") == f"{name}:hello:world{r['i']}" for r in results), results
    stats = b.stats()
    for root in ("dubbo.rpc_in.", "bolt.rpc_in."):
        assert stats[root + "request"] == 40 and stats[root + "request_twoway"] == 40
        assert stats[root + "response_success"] == 40 and stats[root + "request_active"] == 0
    assert stats["cluster.up.upstream_cx_total"] == 1
    assert stats["cluster.bolt_up.upstream_cx_total"] == 1
    assert stats["cluster.up.upstream_rq_total"] == 40


@needs_node
def test_real_dubbo_client_sees_a_local_reply_as_an_error(baton, processes):
    """No route: the client library gets Envoy's no-route reply as a failed call, and the
    connection serves on (the next call succeeds)."""
    dubbo_server = node_server(processes, "dubbo", "D")
    port = free_port()
    routes = [{"interface": SERVICE, "routes": [
        {"match": {"method": {"name": {"exact": "hello"}}}, "route": {"cluster": "up"}}]}]
    baton(rpc_bootstrap(free_port(), {"dubbo": port}, {"up": dubbo_server},
                        routes={"dubbo": routes}), concurrency=1)
    failed = node_client("dubbo", port, 1, method="sleep", arg="1")
    assert "error" in failed[0] and "no route for interface" in failed[0]["error"], failed
    assert node_client("dubbo", port, 1)[0]["result"] == "D:hello:world0"


def test_dubbo_local_replies_heartbeats_oneway_and_bad_frames(baton, processes):
    up = provider(processes, "dubbo", "P", "heartbeat")
    port = free_port()
    routes = [{"interface": SERVICE, "group": "blue", "routes": [
                  {"match": {"method": {"name": {"exact": "echo"}}}, "route": {"cluster": "up"}}]},
              {"interface": SERVICE, "routes": [
                  {"match": {"method": {"name": {"prefix": "s"}}}, "route": {"cluster": "up"}},
                  {"match": {"method": {"name": {"exact": "acks"}}}, "route": {"cluster": "up"}},
                  {"match": {"method": {"name": {"exact": "lost"}}}, "route": {"cluster": "down"}}]}]
    b = baton(rpc_bootstrap(free_port(), {"dubbo": port}, {"up": up, "down": free_port()},
                            routes={"dubbo": routes}), concurrency=1)
    client = RawClient("dubbo", port)
    # Pipelined: a heartbeat, a routed call, a call no route takes (group differs), a oneway,
    # a call to a cluster whose host refuses, and one that counts what the provider saw.
    client.send(dubbo.heartbeat_request(1),
                dubbo_request(2, SERVICE, "echo", ["hi"], {"group": "blue"}),
                dubbo_request(3, SERVICE, "echo", ["hi"], {"group": "green"}),
                dubbo_request(4, SERVICE, "sink", ["x"], two_way=False),
                dubbo_request(5, SERVICE, "lost", ["x"]))
    frames = {f.request_id: f for f in client.receive(4)}
    assert frames[1].is_event and frames[1].status == dubbo.OK and frames[1].body == b"N"
    assert frames[2].status == dubbo.OK and dubbo_value(frames[2]) == "P:echo:hi"
    assert frames[3].raw == dubbo.error_response(frames[3], dubbo.SERVICE_NOT_FOUND,
                                                 f"dubbo router: no route for interface '{SERVICE}'")
    assert frames[5].status == dubbo.SERVER_ERROR
    assert b"dubbo upstream request: remote connection failure '127.0.0.1:" in frames[5].raw
    client.send(dubbo_request(6, SERVICE, "seen", []))
    assert dubbo_value(client.receive(1)[0]) == 3       # echo, the oneway sink, seen
    # The provider's own heartbeat on the upstream connection was answered by Baton.
    client.send(dubbo_request(8, SERVICE, "acks", []))
    assert dubbo_value(client.receive(1)[0]) == 1
    # A malformed frame closes that connection only.
    other = RawClient("dubbo", port)
    client.send(b"\xda\xbb\xc2\x00" + b"\x00" * 8 + b"\x00\x00\x00\x02" + b"\x91\x91")
    wait_until(client.closed, 10, "the connection with the bad frame to close")
    other.send(dubbo_request(7, SERVICE, "echo", ["ok"], {"group": "blue"}))
    assert dubbo_value(other.receive(1)[0]) == "P:echo:ok"
    stats = rpc_stats(b, "dubbo.rpc_in.")
    assert stats["dubbo.rpc_in.request_event"] == 1
    assert stats["dubbo.rpc_in.request"] == 7           # the heartbeat is not a request
    assert stats["dubbo.rpc_in.request_oneway"] == 1
    assert stats["dubbo.rpc_in.local_response_business_exception"] == 2
    assert stats["dubbo.rpc_in.request_decoding_error"] == 1
    assert stats["dubbo.rpc_in.response_success"] == 4
    other.close()


def test_timeouts_give_a_local_reply_and_the_late_answer_is_dropped(baton, processes):
    dubbo_up = provider(processes, "dubbo", "P")
    bolt_up = provider(processes, "bolt", "Q")
    ports = {"dubbo": free_port(), "bolt": free_port()}
    bolt_routes = [{"interface": SERVICE, "routes": [
        {"match": {"method": {"name": {"exact": "sleep"}}},
         "route": {"cluster": "bolt_up", "timeout": "0.5s"}},
        {"match": {"method": {"name": {"safe_regex": {"regex": ".*"}}}},
         "route": {"cluster": "bolt_up"}}]}]
    b = baton(rpc_bootstrap(free_port(), ports, {"up": dubbo_up, "bolt_up": bolt_up},
                            routes={"bolt": bolt_routes}), concurrency=1)
    # Dubbo: the consumer's "timeout" attachment (ms) bounds the call.
    d = RawClient("dubbo", ports["dubbo"])
    d.send(dubbo_request(1, SERVICE, "sleep", ["2"], {"timeout": "300"}),
           dubbo_request(2, SERVICE, "echo", ["fast"]))
    first, second = d.receive(2)
    assert (first.request_id, dubbo_value(first)) == (2, "P:echo:fast")
    assert second.request_id == 1 and second.status == dubbo.SERVER_TIMEOUT
    # Bolt: the route's timeout; then the same connection serves on.
    c = RawClient("bolt", ports["bolt"])
    c.send(bolt_request(11, f"{SERVICE}:1.0", "sleep"), bolt_request(12, f"{SERVICE}:1.0", "hello"))
    first, second = c.receive(2)
    assert (first.request_id, first.status) == (12, bolt.SUCCESS)
    assert Reader(first.content).read() == "Q:hello"
    assert (second.request_id, second.status) == (11, bolt.TIMEOUT)
    c.send(bolt.request(13, cmd_code=bolt.CMD_HEARTBEAT), bolt_request(14, "other.Svc:1.0", "x"))
    ack, no_route = c.receive(2)
    assert (ack.request_id, ack.cmd_code, ack.type) == (13, bolt.CMD_HEARTBEAT, bolt.TYPE_RESPONSE)
    assert (no_route.request_id, no_route.status) == (14, bolt.NO_PROCESSOR)
    stats = b.stats()
    assert stats["bolt.rpc_in.request_timeout"] == 1 and stats["dubbo.rpc_in.request_timeout"] == 1
    assert stats["cluster.bolt_up.upstream_rq_timeout"] == 1
    assert stats["bolt.rpc_in.request_event"] == 1
    wait_until(lambda: b.stats()["bolt.rpc_in.request_active"] == 0, 10, "no request in flight")


def test_an_idle_upstream_connection_closes_after_the_clusters_idle_timeout(baton, processes):
    up = provider(processes, "bolt", "Q")
    port = free_port()
    bootstrap = rpc_bootstrap(free_port(), {"bolt": port}, {"up": up})
    bootstrap["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"idle_timeout": "0.5s"},
            "explicit_http_config": {"http_protocol_options": {}}}}
    b = baton(bootstrap, concurrency=1)
    client = RawClient("bolt", port)
    for rid in (1, 2):      # the second call opens a new upstream connection after the idle close
        client.send(bolt_request(rid, f"{SERVICE}:1.0", "hello"))
        assert client.receive(1)[0].status == bolt.SUCCESS
        wait_until(lambda: b.stats()["cluster.up.upstream_cx_idle_timeout"] == rid, 10,
                   "the idle upstream connection to close")
    stats = b.stats()
    assert stats["cluster.up.upstream_cx_total"] == 2 and stats["cluster.up.upstream_cx_active"] == 0
    client.close()
