"""envoy.filters.network.generic_proxy through a real Baton: sofa-rpc-node's Dubbo and Bolt
clients and servers (Bolt under Baton's own codec type), and Envoy 1.40's generic_proxy with
the Dubbo codec on the same bootstrap (same routing decisions, same local replies, a retry on
connect failure)."""

from __future__ import annotations

import urllib.request

from baton.tests.integration.conftest import free_port, static_cluster
from baton.tests.integration.differential.proxies import Envoy
from baton.tests.integration.generic_proxy_config import (
    action, generic_filter, input_, matcher_list, request_predicate, single, tree)
from baton.tests.integration.rpc_peers.frames import bolt_request, dubbo_request, dubbo_value
from baton.tests.integration.test_rpc_differential import call_cases
from baton.tests.integration.test_rpc_proxy import (SERVICE, RawClient, needs_node, node_client,
                                                    node_server, processes, provider)  # noqa: F401
from baton.tests.waiting import wait_until
from baton.worker.codecs import bolt, dubbo
from baton.worker.codecs.hessian2 import Reader

SVC = "org.example.UserService"


def generic_bootstrap(admin: int, listeners: dict, clusters: dict, route_config: dict) -> dict:
    """One generic_proxy listener per codec ({"dubbo": port, "bolt": port}); clusters are
    {name: port or [ports]} (round robin over the ports)."""
    def cluster(name, ports):
        spec = static_cluster(name, ports if isinstance(ports, int) else ports[0])
        if not isinstance(ports, int):
            spec["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": p}}}} for p in ports]
        return spec
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [{"name": codec, "address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [generic_filter(route_config, codec)]}]}
                    for codec, port in listeners.items()],
                "clusters": [cluster(name, p) for name, p in clusters.items()]}}


def every_method_to(cluster: str) -> dict:
    return {"name": "r", "virtual_hosts": [{"name": "hello", "hosts": [SERVICE],
                                            "routes": matcher_list([], action(cluster))}]}


@needs_node
def test_real_sofa_clients_and_servers_through_generic_proxy(baton, processes):
    """sofa-rpc-node's Dubbo client through generic_proxy's Dubbo codec, its Bolt client
    through Baton's Bolt codec: 30 concurrent calls each over one upstream connection."""
    servers = {"dubbo": node_server(processes, "dubbo", "D"),
               "bolt": node_server(processes, "bolt", "B")}
    for codec, name in (("dubbo", "D"), ("bolt", "B")):
        port = free_port()
        b = baton(generic_bootstrap(free_port(), {codec: port}, {"up": servers[codec]},
                                    every_method_to("up")), concurrency=1)
        results = node_client(codec, port, 30)
        assert sorted(r["i"] for r in results) == list(range(30))
        assert all(r.get("result") == f"{name}:hello:world{r['i']}" for r in results), results
        stats = b.stats()
        assert stats["generic_proxy.gp.downstream_rq_total"] == 30
        assert stats["generic_proxy.gp.response_success"] == 30
        assert stats["cluster.up.upstream_cx_total"] == 1
        b.stop()


ROUTES = {"name": "r", "virtual_hosts": [
    {"name": "users", "hosts": [SVC], "routes": tree(input_("method"), exact={
        "get": {"matcher": matcher_list([
            (single(input_("property", "env"), {"exact": "test"}), action("b")),
            (single(input_("property", "version"), {"exact": "2.0"}), action("b"))],
            on_no_match=action("a"))},
        "sleep": action("a", timeout="0.5s")},
        on_no_match={"matcher": tree(input_("method"), prefix={
            "list": action("b"), "flaky": action("flaky", retry_policy={"num_retries": 2}),
            "dead": action("dead", retry_policy={"num_retries": 3})})})},
    {"name": "others", "hosts": ["org.other.*"], "routes": matcher_list([
        (request_predicate(method={"exact": "ping"}, properties=[("zone", {"prefix": "z"})]),
         action("a"))])},
    {"name": "fallback", "hosts": ["*"], "routes": matcher_list([
        (single(input_("service"), {"suffix": "Legacy"}), action("b"))])}]}

# (service, method, args, attachments, body version)
CASES = [
    (SVC, "get", ["x"], {}, ""),
    (SVC, "get", ["x"], {"env": "test"}, ""),
    (SVC, "get", ["x"], {"env": "prod"}, "2.0"),
    (SVC, "listAll", [], {}, ""),
    (SVC, "delete", ["x"], {}, ""),             # no route in the tree
    ("org.other.Thing", "ping", [], {"zone": "z1"}, ""),
    ("org.other.Thing", "ping", [], {"zone": "a1"}, ""),
    ("org.other.Thing", "ping", [], {}, ""),    # a missing property matches nothing
    ("org.Legacy", "any", [], {}, ""),
    ("org.Unknown", "get", ["x"], {}, ""),      # the default virtual host has no match
    (SVC, "flaky1", [], {}, ""),                # hosts [dead, a]: the retry reaches a
    (SVC, "flaky2", [], {}, ""),
    (SVC, "flaky3", [], {}, ""),
    (SVC, "dead", [], {}, ""),                  # every try fails: a local reply
    (SVC, "sleep", ["2"], {}, ""),              # the route's timeout: a local reply
]


def run_cases(port: int) -> list:
    client = RawClient("dubbo", port)
    # A connect failure's detail is each proxy's own wording: its status alone is compared.
    results = [result if case[1] != "dead" else result[:1]
               for case, result in zip(CASES, call_cases(client, CASES))]
    client.send(dubbo.heartbeat_request(7))
    results.append(client.receive(1)[0].raw)
    client.close()
    return results


def envoy_counters(envoy) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/stats", timeout=5) as r:
        return {n: int(v) for n, _, v in (line.partition(": ") for line in
                                          r.read().decode().splitlines()) if v.strip().isdigit()}


def downstream_rq(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k.startswith("generic_proxy.gp.downstream_rq")}


def test_same_routing_retries_and_local_replies_as_envoy_generic_proxy(baton, processes,
                                                                      tmp_path):  # noqa: F811
    dead = free_port()                          # nothing listens there
    a, b = provider(processes, "dubbo", "A"), provider(processes, "dubbo", "B")
    clusters = {"a": a, "b": b, "flaky": [dead, a], "dead": [dead]}
    envoy_port, baton_port = free_port(), free_port()
    envoy = Envoy(tmp_path / "envoy", generic_bootstrap(free_port(), {"dubbo": envoy_port},
                                                        clusters, ROUTES)).start()
    try:
        expected = run_cases(envoy_port)
        envoy_stats = envoy_counters(envoy)
        proxy = baton(generic_bootstrap(free_port(), {"dubbo": baton_port}, clusters, ROUTES),
                      concurrency=1)
        got = run_cases(baton_port)
        assert got == expected, "\n".join(f"{c} baton={g} envoy={e}"
                                          for c, g, e in zip(CASES, got, expected))
        # Enough variety to mean something: both providers, retries, local replies.
        answers = {o[1].split(":")[0] for o in got[:-1] if o[0] == "ok"}
        assert answers == {"A", "B"}
        assert [o[0] for o in got[10:13]] == ["ok"] * 3
        assert got[13][0] == dubbo.SERVER_ERROR and got[4][0] == dubbo.SERVER_ERROR
        assert got[14][0] == dubbo.SERVER_ERROR
        stats = proxy.stats()
        # Envoy's generic_proxy stats: totals, status codes, local replies and their flags.
        assert downstream_rq(stats) == downstream_rq(envoy_stats)
        assert stats["generic_proxy.gp.downstream_rq_flag.NR"] == 4
        assert stats["cluster.flaky.upstream_rq_retry"] >= 1
        assert stats["cluster.dead.upstream_rq_retry"] == 2     # num_retries 3: three tries
        assert stats["generic_proxy.gp.request_timeout"] == 1
    finally:
        envoy.stop()


def test_a_call_in_flight_at_a_reload_is_answered_and_the_connection_serves_on(baton, processes):
    """A generic_proxy connection moves at reload as a dubbo_proxy one does (record rpc)."""
    port = free_port()
    upstream = provider(processes, "dubbo", "P")
    b = baton(generic_bootstrap(free_port(), {"dubbo": port}, {"a": upstream},
                                {"name": "r", "routes": matcher_list([], action("a"))}),
              concurrency=1)
    client = RawClient("dubbo", port)
    client.send(dubbo_request(1, SVC, "sleep", ["1.5"]))
    wait_until(lambda: b.stats()["generic_proxy.gp.downstream_rq_active"] == 1, 10,
               "the call in flight")
    old = b.master_pid()
    assert b.reload().returncode == 0
    client.send(dubbo_request(2, SVC, "echo", ["new"]))
    answers = {f.request_id: dubbo_value(f) for f in client.receive(2)}
    assert answers == {1: "P:sleep:1.5", 2: "P:echo:new"}
    b.wait_previous_gone(old)
    stats = b.stats()
    assert stats["generic_proxy.gp.downstream_rq_total"] == 2
    assert stats["generic_proxy.gp.response_success"] == 2
    assert [v for k, v in stats.items() if k.endswith("downstream_cx_total")] == [1]
    client.close()


def test_consecutive_error_answers_eject_a_host(baton, processes):
    """Outlier detection on RPC: a provider answering SERVER_ERROR (Dubbo's 5xx) three times
    in a row is ejected, and the calls after go to the healthy host alone."""
    port = free_port()
    good, bad = provider(processes, "dubbo", "A"), provider(processes, "dubbo", "F", "fail")
    bootstrap = generic_bootstrap(free_port(), {"dubbo": port}, {"pool": [good, bad]},
                                  {"name": "r", "routes": matcher_list([], action("pool"))})
    bootstrap["static_resources"]["clusters"][0]["outlier_detection"] = {
        "consecutive_5xx": 3, "interval": "60s", "base_ejection_time": "60s",
        "max_ejection_percent": 50}
    b = baton(bootstrap, concurrency=1)
    client = RawClient("dubbo", port)
    statuses = []
    for i in range(20):                 # one at a time: round robin alternates the hosts
        client.send(dubbo_request(i, SVC, "echo", [str(i)]))
        statuses.append(client.receive(1)[0].status)
    assert statuses.count(dubbo.SERVER_ERROR) == 3, statuses
    assert statuses[-10:] == [dubbo.OK] * 10
    stats = b.stats()
    assert stats["cluster.pool.outlier_detection.ejections_enforced_total"] == 1
    assert stats["cluster.pool.outlier_detection.ejections_active"] == 1
    assert stats["generic_proxy.gp.response_error"] == 3
    client.close()


def test_bolt_under_generic_proxy_routes_on_service_method_and_headers(baton, processes):
    """Baton's Bolt codec: the host is the interface of "interface:version", the properties
    the header map and the version; no route is Bolt's NO_PROCESSOR."""
    port = free_port()
    clusters = {"a": provider(processes, "bolt", "A"), "b": provider(processes, "bolt", "B")}
    routes = {"name": "r", "virtual_hosts": [{"name": "hello", "hosts": [SERVICE], "routes":
              matcher_list([
                  (single(input_("property", "user"), {"prefix": "vip"}), action("b")),
                  (single(input_("property", "version"), {"exact": "2.0"}), action("b")),
                  (single(input_("method"), {"exact": "hello"}), action("a"))])}]}
    b = baton(generic_bootstrap(free_port(), {"bolt": port}, clusters, routes), concurrency=1)
    client = RawClient("bolt", port)
    calls = [(f"{SERVICE}:1.0", "hello", {}), (f"{SERVICE}:1.0", "hello", {"user": "vip7"}),
             (f"{SERVICE}:2.0", "other", {}), (f"{SERVICE}:1.0", "other", {}),
             ("org.Unknown:1.0", "hello", {})]
    client.send(*(bolt_request(i, service, method, extra_headers=headers)
                  for i, (service, method, headers) in enumerate(calls)))
    frames = sorted(client.receive(len(calls)), key=lambda f: f.request_id)
    got = [Reader(f.content).read() if f.status == bolt.SUCCESS else f.status for f in frames]
    assert got == ["A:hello", "B:hello", "B:other", bolt.NO_PROCESSOR, bolt.NO_PROCESSOR]
    stats = b.stats()
    assert stats["generic_proxy.gp.downstream_rq_flag.NR"] == 2
    assert stats["generic_proxy.gp.downstream_rq_code.0"] == 3     # Bolt's SUCCESS
    status, dump = b.admin("/config_dump")         # Baton's codec type renders as Envoy's do
    assert status == 200 and "baton.generic_proxy.codecs.bolt.v1.BoltCodecConfig" in dump
    client.close()


def test_a_local_rate_limit_answers_busy_beyond_its_bucket(baton, processes):
    """Baton's generic_proxy local rate limit (Envoy's generic_proxy has none; MOSN limits
    any protocol): a bucket of 3 tokens refilled once a minute admits 3 of 6 Dubbo calls; the
    others get Dubbo's SERVER_THREADPOOL_EXHAUSTED and count in request_rate_limited."""
    port = free_port()
    bootstrap = generic_bootstrap(free_port(), {"dubbo": port}, {"a": provider(processes, "dubbo", "A")},
                                  every_method_to("a"))
    filters = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    filters[0]["typed_config"]["filters"].insert(0, {
        "name": "baton.filters.generic.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/baton.generic_proxy.filters.local_ratelimit.v1.LocalRateLimit",
            "token_bucket": {"max_tokens": 3, "fill_interval": "60s"}}})
    b = baton(bootstrap, concurrency=1)
    client = RawClient("dubbo", port)
    client.send(*(dubbo_request(i, SERVICE, "echo", [str(i)]) for i in range(6)))
    statuses = sorted(f.status for f in client.receive(6))
    assert statuses == [dubbo.OK] * 3 + [dubbo.SERVER_THREADPOOL_EXHAUSTED] * 3
    assert b.stats()["generic_proxy.gp.request_rate_limited"] == 3
    client.close()
