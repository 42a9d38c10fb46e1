"""Baton driven by a control plane (tests/xds_support): the xDS agent, end to end.

Real processes on real sockets: the grpcio control plane, Baton (master, two workers, the
agent it execs), HTTP upstreams that answer with their name, and clients that keep loading
Baton while the config changes under them. Every wait polls against a deadline.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import threading

import pytest

from ..waiting import wait_until
from ..xds_support.control_plane import (CLUSTER, ENDPOINT, LISTENER, ROUTE, ControlPlane,
                                          to_message)
from ..xds_support.resources import (ADS, NODE, ROUTE_CONFIG, NamedUpstream, bootstrap, cluster,
                                     endpoints, get, listener)
from .conftest import Baton, free_port, pid_alive

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


# ---- resources ------------------------------------------------------------------------------

def http_listener(name: str, port: int, routes: str = "local", prefix: str = "ingress") -> dict:
    spec = listener(port)
    spec["name"] = name
    hcm = spec["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stat_prefix"] = prefix
    hcm["rds"]["route_config_name"] = routes
    # A drained connection's close holds its FIN this long (a second by default), which the
    # changed listener's idle client waits out.
    hcm["delayed_close_timeout"] = "0.1s"
    return spec


def tcp_listener(name: str, port: int, cluster_name: str) -> dict:
    return {"name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                            "typed_config": {"@type": TCP_PROXY, "stat_prefix": name,
                                                             "cluster": cluster_name}}]}]}


def eds_cluster(name: str) -> dict:
    return {**cluster(), "name": name}


def assignment(name: str, *ports: int) -> dict:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in ports]}]}


def routes(name: str, cluster_name: str, tag: str) -> dict:
    """Everything to `cluster_name`; every response says which table routed it."""
    return {"name": name, "virtual_hosts": [{
        "name": "all", "domains": ["*"],
        "response_headers_to_add": [{"header": {"key": "x-table", "value": tag}}],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster_name}}]}]}


def start_baton(tmp_path, cp_port: int, api_type: str = "GRPC", static_listeners=(),
                fetch_timeout: str | None = None, name: str = "baton") -> Baton:
    boot = bootstrap(free_port(), cp_port, api_type)
    boot["static_resources"]["listeners"] = list(static_listeners)
    if fetch_timeout is not None:
        for key in ("lds_config", "cds_config"):
            boot["dynamic_resources"][key] = {**ADS, "initial_fetch_timeout": fetch_timeout}
    return Baton(tmp_path / name, boot).start(30)


def serve_basics(plane: ControlPlane, port: int, upstream: NamedUpstream, version: str = "1") -> None:
    plane.set_resources(LISTENER, [listener(port)], version)
    plane.set_resources(ROUTE, [ROUTE_CONFIG], version)
    plane.set_resources(CLUSTER, [cluster()], version)
    plane.set_resources(ENDPOINT, [endpoints(upstream.port)], version)


def resource_version(type_url: str, resource: dict) -> str:
    """The version the test control plane gives a resource in delta (a hash of its bytes)."""
    data = to_message(type_url, resource).SerializeToString(deterministic=True)
    return hashlib.sha256(data).hexdigest()[:16]


@pytest.fixture
def plane():
    cp = ControlPlane()
    cp.start()
    yield cp
    cp.close()


@pytest.fixture
def named():
    started = []

    def start(name: str) -> NamedUpstream:
        up = NamedUpstream(name)
        started.append(up)
        return up
    yield start
    for up in started:
        up.stop()


# ---- load -----------------------------------------------------------------------------------

class _Load:
    """Client threads running `_run` until stopped; `results` and `errors` under `lock`."""

    def __init__(self, port: int, clients: int):
        self.port = port
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.results: list = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(15)


class HttpLoad(_Load):
    """Keep-alive clients: every answer (status, body, x-table) or error is kept."""

    def __init__(self, port: int, clients: int = 4):
        super().__init__(port, clients)

    @property
    def answers(self) -> list[tuple[int, str, str | None]]:
        return self.results

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.stop_event.is_set():
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                answer = (resp.status, resp.read().decode(), resp.getheader("x-table"))
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.errors.append(repr(exc))
                conn.close()
                continue
            with self.lock:
                self.results.append(answer)


class TcpLoad(_Load):
    """New connections through a tcp_proxy listener, one HTTP/1.0 exchange each."""

    def __init__(self, port: int, clients: int = 2):
        super().__init__(port, clients)

    @property
    def bodies(self) -> list[str]:
        return self.results

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    data = b""
                    while chunk := sock.recv(65536):
                        data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):     # the upstream speaks 1.1, then closes
                    raise AssertionError(f"answer {data[:80]!r}")
                with self.lock:
                    self.results.append(body.decode())
            except (OSError, AssertionError) as exc:
                with self.lock:
                    self.errors.append(repr(exc))


# ---- the protocol, both flavours --------------------------------------------------------------

@pytest.mark.parametrize("api_type,protocol", [("GRPC", "sotw"), ("DELTA_GRPC", "delta")])
def test_baton_follows_the_control_plane(tmp_path, plane, named, api_type, protocol):
    """What the Envoy test (test_xds_control_plane_envoy.py) shows of Envoy, shown of Baton."""
    up1, up2 = named("up1"), named("up2")
    listen = free_port()
    serve_basics(plane, listen, up1)
    baton = start_baton(tmp_path, plane.port, api_type)
    try:
        for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINT):
            ack = wait_until(lambda: plane.acked(type_url, "1"), 10, f"{type_url} v1 ACK")
            assert ack["protocol"] == protocol and ack["node_id"] == NODE
        assert wait_until(lambda: get(listen) == "up1", 10, "traffic to up1")

        plane.set_resources(ENDPOINT, [endpoints(up2.port)], "2")
        wait_until(lambda: plane.acked(ENDPOINT, "2"), 10, "EDS v2 ACK")
        assert wait_until(lambda: get(listen) == "up2", 10, "traffic moved to up2")

        # An enum number without a name (possible on the wire, not in a file) is NACKed with
        # its path; the old config serves on.
        plane.set_resources(CLUSTER, [cluster(lb_policy=99)], "2")
        nack = wait_until(lambda: plane.nacked(CLUSTER, "2"), 10, "CDS v2 NACK")
        assert nack["error_detail"]["code"] == 3
        assert nack["error_detail"]["message"].startswith("Cluster[backend].lb_policy: 99 ")
        if protocol == "sotw":
            assert nack["version_info"] == "1"
        assert [get(listen) for _ in range(5)] == ["up2"] * 5

        stats = baton.stats()
        assert stats["control_plane.connected_state"] == 1
        assert stats["cluster_manager.cds.update_success"] == 1
        assert stats["cluster_manager.cds.update_rejected"] == 1
        assert stats["listener_manager.lds.update_success"] == 1
        assert stats["http.ingress.rds.local.update_success"] == 1
        assert stats["cluster.backend.update_success"] == 2

        dump = json.loads(baton.admin("/config_dump?include_eds")[1])
        by_type = {c["@type"].rsplit(".", 1)[1]: c for c in dump["configs"]}
        clusters = by_type["ClustersConfigDump"]
        assert clusters["version_info"] == "1"
        (active,) = clusters["dynamic_active_clusters"]
        assert active["cluster"]["name"] == "backend" and active["last_updated"]
        (dyn_listener,) = by_type["ListenersConfigDump"]["dynamic_listeners"]
        # Per resource: the type's version in state of the world, the resource's own in delta.
        expected = "1" if protocol == "sotw" else resource_version(LISTENER, listener(listen))
        assert dyn_listener["name"] == "main"
        assert dyn_listener["active_state"]["version_info"] == expected
        (route,) = by_type["RoutesConfigDump"]["dynamic_route_configs"]
        assert route["route_config"]["name"] == "local"
        (eds,) = by_type["EndpointsConfigDump"]["dynamic_endpoint_configs"]
        assert eds["version_info"] == ("2" if protocol == "sotw" else
                                       resource_version(ENDPOINT, endpoints(up2.port)))

        # The control plane restarts: Baton serves meanwhile, reconnects and says what it has.
        last_stream = max(r["stream"] for r in plane.requests())
        port = plane.port
        plane.stop()
        wait_until(lambda: baton.stats()["control_plane.connected_state"] == 0, 10, "disconnected")
        assert get(listen) == "up2"
        plane.set_resources(CLUSTER, [cluster()], "3")
        plane.start(port)
        first = wait_until(lambda: [r for r in plane.requests(CLUSTER) if r["stream"] > last_stream],
                           15, "Baton reconnected")[0]
        if protocol == "sotw":
            assert first["version_info"] == "1"
        else:
            assert "backend" in first["initial_resource_versions"]
        wait_until(lambda: plane.acked(CLUSTER, "3"), 10, "CDS v3 ACK after restart")
        assert get(listen) == "up2"
        assert baton.stats()["cluster_manager.cds.update_failure"] >= 1
    finally:
        baton.stop()


# ---- updates under load ---------------------------------------------------------------------

def test_endpoint_churn_under_http_and_tcp_load(tmp_path, plane, named):
    """EDS changes every 100 ms while HTTP keep-alive clients and TCP connections run:
    no request fails, and the upstreams in use follow the assignments."""
    ups = [named(n) for n in ("a", "b", "c")]
    http_port, tcp_port = free_port(), free_port()
    plane.set_resources(LISTENER, [listener(http_port), tcp_listener("tcp", tcp_port, "backend")], "1")
    plane.set_resources(ROUTE, [ROUTE_CONFIG], "1")
    plane.set_resources(CLUSTER, [cluster()], "1")
    plane.set_resources(ENDPOINT, [assignment("backend", ups[0].port, ups[1].port)], "1")
    baton = start_baton(tmp_path, plane.port)
    http_load = tcp_load = None
    try:
        wait_until(lambda: get(http_port) in ("a", "b"), 10, "HTTP through the dynamic listener")
        http_load, tcp_load = HttpLoad(http_port), TcpLoad(tcp_port)
        wait_until(lambda: http_load.count() > 20 and tcp_load.count() > 5, 20, "load flowing")
        pace = threading.Event()
        for version in range(2, 32):
            pair = (ups[version % 3], ups[(version + 1) % 3])
            plane.set_resources(ENDPOINT, [assignment("backend", *(u.port for u in pair))], str(version))
            pace.wait(0.1)                       # the churn rate itself, not a wait for readiness
        wait_until(lambda: plane.acked(ENDPOINT, "31"), 10, "the last assignment ACKed")
        before = (http_load.count(), tcp_load.count())
        wait_until(lambda: http_load.count() > before[0] + 20 and tcp_load.count() > before[1] + 5,
                   20, "load after the churn")
    finally:
        for load in (http_load, tcp_load):
            if load is not None:
                load.stop()
        baton.stop()
    assert http_load.errors == [] and tcp_load.errors == []
    assert {status for status, _, _ in http_load.answers} == {200}
    assert {body for _, body, _ in http_load.answers} == {"a", "b", "c"}
    assert {body for body in tcp_load.bodies} == {"a", "b", "c"}
    # The last assignment (version 31: b and c) is the one serving at the end.
    assert {body for _, body, _ in http_load.answers[-8:]} <= {"b", "c"}


def test_route_swap_under_load_is_atomic(tmp_path, plane, named):
    """RDS swaps between two tables under keep-alive load: every response comes whole from one
    table (blue's upstream with blue's header, or green's with green's), nothing fails, and no
    connection is closed by a swap."""
    named_ups = {"blue": named("blue"), "green": named("green")}
    listen = free_port()
    plane.set_resources(LISTENER, [listener(listen)], "1")
    plane.set_resources(ROUTE, [routes("local", "blue", "blue")], "1")
    plane.set_resources(CLUSTER, [eds_cluster("blue"), eds_cluster("green")], "1")
    plane.set_resources(ENDPOINT, [assignment(n, u.port) for n, u in named_ups.items()], "1")
    baton = start_baton(tmp_path, plane.port)
    load = None
    try:
        wait_until(lambda: get(listen) == "blue", 10, "blue table serving")
        load = HttpLoad(listen)
        wait_until(lambda: load.count() > 20, 20, "load flowing")
        pace = threading.Event()
        for version in range(2, 22):
            colour = ("blue", "green")[version % 2]
            plane.set_resources(ROUTE, [routes("local", colour, colour)], str(version))
            wait_until(lambda: plane.acked(ROUTE, str(version)), 10, f"RDS v{version} ACK")
            pace.wait(0.1)
        final = load.count()
        wait_until(lambda: load.count() > final + 20, 20, "load after the swaps")
    finally:
        if load is not None:
            load.stop()
        stats = baton.stats()
        baton.stop()
    assert load.errors == []
    assert {status for status, _, _ in load.answers} == {200}
    mixed = [a for a in load.answers if a[1] != a[2]]
    assert mixed == [], mixed[:5]
    assert {body for _, body, _ in load.answers} == {"blue", "green"}
    assert load.answers[-1][1] == "green"                        # version 21: green
    assert stats["http.ingress.downstream_cx_total"] == 4 + 1    # the 4 clients and get()
    assert stats["http.ingress.rds.local.update_success"] == 21


def test_listeners_added_changed_and_removed(tmp_path, plane, named):
    up = named("up")
    main_port, extra_port = free_port(), free_port()
    serve_basics(plane, main_port, up)
    baton = start_baton(tmp_path, plane.port)
    try:
        wait_until(lambda: get(main_port) == "up", 10, "main listener")
        plane.set_resources(LISTENER, [listener(main_port), http_listener("extra", extra_port)], "2")
        assert wait_until(lambda: get(extra_port) == "up", 10, "the added listener serving")

        # An idle keep-alive connection on "extra"; then "extra" changes (another stat_prefix):
        # its connections drain as when Baton stops (an idle one is closed with a FIN, one
        # with a request in flight finishes it with `connection: close`), and new connections
        # get the new listener.
        idle = socket.create_connection(("127.0.0.1", extra_port), timeout=5)
        idle.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"\r\n\r\nup"):         # head and body may come apart
            chunk = idle.recv(65536)
            assert chunk, answer
            answer += chunk
        plane.set_resources(LISTENER, [listener(main_port),
                                       http_listener("extra", extra_port, prefix="extra2")], "3")
        wait_until(lambda: plane.acked(LISTENER, "3"), 10, "LDS v3 ACK")
        assert idle.recv(65536) == b""                  # closed cleanly by the drain
        idle.close()
        assert get(extra_port) == "up"
        assert baton.stats()["http.extra2.downstream_cx_total"] == 1

        # Removed: the port refuses new connections; "main" never noticed anything.
        plane.set_resources(LISTENER, [listener(main_port)], "4")
        wait_until(lambda: plane.acked(LISTENER, "4"), 10, "LDS v4 ACK")

        def refused():
            try:
                socket.create_connection(("127.0.0.1", extra_port), timeout=2).close()
                return False
            except ConnectionRefusedError:
                return True
        wait_until(refused, 10, "the removed listener's port refusing")
        assert get(main_port) == "up"
        stats = baton.stats()
        assert stats["listener_manager.listener_added"] == 2        # main, extra
        assert stats["listener_manager.listener_modified"] == 1
        assert stats["listener_manager.listener_removed"] == 1
        assert stats["listener_manager.total_listeners_active"] == 1
    finally:
        baton.stop()


# ---- bad input ------------------------------------------------------------------------------

def test_invalid_resources_are_nacked_with_their_path(tmp_path, plane, named):
    up = named("up")
    static_port, listen = free_port(), free_port()
    serve_basics(plane, listen, up)
    static = tcp_listener("static", static_port, "xds")
    baton = start_baton(tmp_path, plane.port, static_listeners=[static])
    try:
        wait_until(lambda: get(listen) == "up", 10, "serving v1")
        bad = [
            (ROUTE, [{**ROUTE_CONFIG, "validate_clusters": True, "virtual_hosts": [{
                "name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "nope"}}]}]}],
             "RouteConfiguration[local].virtual_hosts[0].routes[0].route.cluster: unknown cluster 'nope'"),
            (LISTENER, [{**listener(listen), "freebind": True}],
             "Listener[main].freebind: not supported"),
            (LISTENER, [listener(listen), {**http_listener("clash", static_port)}],
             f"Listener[clash].address: 127.0.0.1:{static_port} is already used by listener 'static'"),
            (ENDPOINT, [{"cluster_name": "backend", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "localhost", "port_value": up.port}}}}]}]}],
             "ClusterLoadAssignment[backend].endpoints[0].lb_endpoints[0].endpoint.address"
             ".socket_address.address: 'localhost' is not an IP address"),
            (CLUSTER, [{**cluster(), "name": "xds"}],
             "Cluster[xds]: a static cluster has that name"),
        ]
        for i, (type_url, resources, message) in enumerate(bad):
            version = f"bad{i}"
            plane.set_resources(type_url, resources, version)
            nack = wait_until(lambda: plane.nacked(type_url, version), 10, f"NACK of {message}")
            assert nack["version_info"] == "1"
            assert nack["error_detail"]["message"].startswith(message), nack["error_detail"]
            assert get(listen) == "up"
        assert baton.stats()["listener_manager.lds.update_rejected"] == 2
    finally:
        baton.stop()


def test_unreachable_control_plane_at_start(tmp_path, named):
    """Static resources serve at once; /ready says what is missing; after the first fetch's
    timeout Baton is LIVE on what it has, and says what it still misses."""
    up = named("static-up")
    static_port = free_port()
    static = {"name": "static", "address": {"socket_address": {"address": "127.0.0.1",
                                                               "port_value": static_port}},
              "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                              "typed_config": {"@type": TCP_PROXY, "stat_prefix": "s",
                                                               "cluster": "static_up"}}]}]}
    boot = bootstrap(free_port(), free_port(), "GRPC")       # nobody listens on that port
    boot["static_resources"]["listeners"] = [static]
    boot["static_resources"]["clusters"].append({
        "name": "static_up", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "static_up", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": up.port}}}}]}]}})
    for key in ("lds_config", "cds_config"):
        boot["dynamic_resources"][key] = {**ADS, "initial_fetch_timeout": "3s"}
    baton = Baton(tmp_path / "baton", boot).launch()
    try:
        def reported():
            try:
                status, body = baton.admin("/ready", timeout=1)
            except OSError:
                return None                               # the admin port is not up yet
            return (status, body) if "xds: the agent" not in body else None
        status, body = wait_until(reported, 10, "/ready with the agent's first report")
        assert status == 503
        assert body.splitlines() == ["PRE_INITIALIZING",
                                     "cds: no response from the control plane yet",
                                     "lds: no response from the control plane yet"]
        assert get(static_port) == "static-up"            # static resources already serve
        baton.wait_ready(15)
        status, body = baton.admin("/ready")
        assert status == 200 and body.splitlines()[0] == "LIVE"
        assert "cds: no response from the control plane yet" in body.splitlines()
        assert baton.stats()["control_plane.connected_state"] == 0
    finally:
        baton.stop()


def test_a_flood_of_updates_is_coalesced(tmp_path, plane, named):
    """300 assignments pushed back to back: every one is ACKed and the last one serves. (The
    agent keeps one config in flight to the master and always sends the newest, so a flood
    is coalesced rather than queued; gRPC's flow control bounds what waits on the stream.)"""
    ups = [named(n) for n in ("a", "b")]
    listen = free_port()
    serve_basics(plane, listen, ups[0])
    baton = start_baton(tmp_path, plane.port)
    try:
        wait_until(lambda: get(listen) == "a", 10, "serving v1")
        for version in range(2, 302):
            plane.set_resources(ENDPOINT, [endpoints(ups[version % 2].port)], str(version))
        wait_until(lambda: plane.acked(ENDPOINT, "301"), 30, "the last assignment ACKed")
        assert wait_until(lambda: get(listen) == "b", 10, "the last assignment serving")
        assert baton.stats()["cluster.backend.update_success"] >= 2
        assert "xds: applied" in baton.log
    finally:
        baton.stop()


# ---- failures of Baton's own parts ---------------------------------------------------------

def test_agent_killed_and_restarted(tmp_path, plane, named):
    up1, up2 = named("up1"), named("up2")
    listen = free_port()
    serve_basics(plane, listen, up1)
    baton = start_baton(tmp_path, plane.port)
    try:
        wait_until(lambda: get(listen) == "up1", 10, "serving v1")
        agent = baton.status()["xds_agent"]
        last_stream = max(r["stream"] for r in plane.requests())
        os.kill(agent["pid"], signal.SIGKILL)
        wait_until(lambda: not pid_alive(agent["pid"]), 10, "the agent gone")
        assert get(listen) == "up1"                      # the last accepted config serves on
        restarted = wait_until(lambda: (baton.status()["xds_agent"] or {}).get("pid") not in
                               (None, agent["pid"]) and baton.status()["xds_agent"], 15,
                               "a new agent")
        assert restarted["restarts"] == 1
        first = wait_until(lambda: [r for r in plane.requests(CLUSTER) if r["stream"] > last_stream],
                           15, "the new agent's stream")[0]
        assert first["version_info"] == "1"              # it resumed from what was accepted
        plane.set_resources(ENDPOINT, [endpoints(up2.port)], "2")
        assert wait_until(lambda: get(listen) == "up2", 10, "an update after the restart")
        assert "xds agent (pid" in baton.log and "killed by SIGKILL" in baton.log
    finally:
        baton.stop()


def test_reload_keeps_the_dynamic_config_without_the_control_plane(tmp_path, plane, named):
    """`baton reload` while the control plane is down: the new generation serves the dynamic
    listener it never heard of from a control plane, the keep-alive connection moves, and its
    own agent picks the stream up once the control plane is back."""
    up1, up2 = named("up1"), named("up2")
    listen = free_port()
    serve_basics(plane, listen, up1)
    baton = start_baton(tmp_path, plane.port)
    try:
        wait_until(lambda: get(listen) == "up1", 10, "serving v1")
        conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"up1"
        port = plane.port
        plane.stop()
        old_pid = baton.master_pid()
        result = baton.reload()
        assert result.returncode == 0, result.stdout + result.stderr
        baton.wait_previous_gone(old_pid)
        assert baton.master_pid() != old_pid
        assert get(listen) == "up1"
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"up1"
        assert baton.admin("/ready")[0] == 200
        plane.set_resources(ENDPOINT, [endpoints(up2.port)], "2")
        plane.start(port)
        assert wait_until(lambda: get(listen) == "up2", 20, "an update through the new agent")
        conn.close()
    finally:
        baton.stop()
