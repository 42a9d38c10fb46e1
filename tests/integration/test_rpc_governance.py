"""RPC governance (issue 16 point 3): retries on connect failure per route, hashing on a
service or a header key with the cluster's RING_HASH or MAGLEV, circuit breakers."""

from __future__ import annotations

from baton.tests.integration.conftest import free_port
from baton.tests.integration.rpc_peers.frames import bolt_request, dubbo_request, dubbo_value
from baton.tests.integration.test_rpc_proxy import (RawClient, processes, provider,  # noqa: F401
                                                   rpc_bootstrap)
from baton.worker.codecs import bolt
from baton.worker.codecs.hessian2 import Reader

SERVICE = "com.example.HelloService"


def cluster(name: str, ports: list[int], lb_policy: str = "ROUND_ROBIN", **fields) -> dict:
    return {"name": name, "connect_timeout": "1s", "lb_policy": lb_policy, **fields,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": p}}}}
                for p in ports]}]}}


def bolt_route(method: str, cluster_name: str, **action) -> dict:
    return {"match": {"method": {"name": {"exact": method}}},
            "route": {"cluster": cluster_name, **action}}


def answer(frame) -> str:
    assert frame.status == bolt.SUCCESS, frame.status
    return Reader(frame.content).read()


def test_retries_hashing_and_circuit_breakers(baton, processes):
    live = provider(processes, "bolt", "A")
    other = provider(processes, "bolt", "B")
    dubbo_a, dubbo_b = provider(processes, "dubbo", "A"), provider(processes, "dubbo", "B")
    dead = free_port()                          # nothing listens: every connect fails
    ports = {"dubbo": free_port(), "bolt": free_port()}
    routes = {"bolt": [{"interface": SERVICE, "routes": [
        bolt_route("retried", "flaky", retry_policy={"num_retries": 1}),
        bolt_route("once", "flaky"),
        bolt_route("keyed", "ring", hash_policy={"header": "User"}),
        bolt_route("capped", "capped")]}],
        "dubbo": [{"interface": SERVICE, "routes": [
            {"match": {"method": {"name": {"safe_regex": {"regex": ".*"}}}},
             "route": {"cluster": "dubbo_ring"}}]}]}
    bootstrap = rpc_bootstrap(free_port(), ports, {}, routes=routes)
    bootstrap["static_resources"]["clusters"] = [
        cluster("flaky", [dead, live]), cluster("ring", [live, other], "RING_HASH"),
        cluster("dubbo_ring", [dubbo_a, dubbo_b], "MAGLEV"),
        cluster("capped", [live], circuit_breakers={"thresholds": [{"max_requests": 1}]})]
    b = baton(bootstrap, concurrency=1)
    q = RawClient("bolt", ports["bolt"])

    # Retries: half the connects fail; the route that retries loses no call, the other does.
    q.send(*(bolt_request(i, f"{SERVICE}:1.0", "retried") for i in range(1, 11)))
    assert sorted(answer(f) for f in q.receive(10)) == ["A:retried"] * 10
    q.send(*(bolt_request(i, f"{SERVICE}:1.0", "once") for i in range(11, 21)))
    statuses = [f.status for f in q.receive(10)]
    assert bolt.CONNECTION_CLOSED in statuses and bolt.SUCCESS in statuses, statuses
    stats = b.stats()
    assert stats["cluster.flaky.upstream_rq_retry"] >= 1
    assert stats["cluster.flaky.upstream_cx_connect_fail"] >= 2

    # Hashing on a header: one user always reaches the same host; users spread over both.
    def host_of(user: str, rid: int) -> str:
        q.send(bolt_request(rid, f"{SERVICE}:1.0", "keyed", extra_headers={"user": user}))
        return answer(q.receive(1)[0]).split(":")[0]
    for rid, user in enumerate(("u1", "u7", "u9"), 100):
        first = host_of(user, rid)
        assert all(host_of(user, rid * 10 + k) == first for k in range(5))
    assert {host_of(f"user{n}", 2000 + n) for n in range(32)} == {"A", "B"}

    # Hashing on the service (no hash_policy): every call of one Dubbo service, one host.
    d = RawClient("dubbo", ports["dubbo"])
    d.send(*(dubbo_request(i, SERVICE, "echo", [str(i)]) for i in range(1, 13)))
    assert len({dubbo_value(f).split(":")[0] for f in d.receive(12)}) == 1

    # Circuit breaker: one request at a time to "capped"; the second of a pipelined pair
    # is refused at once (Bolt's SERVER_THREADPOOL_BUSY), the first answered.
    q.send(bolt_request(500, f"{SERVICE}:1.0", "capped"), bolt_request(501, f"{SERVICE}:1.0", "capped"))
    replies = {f.request_id: f.status for f in q.receive(2)}
    assert replies == {500: bolt.SUCCESS, 501: bolt.SERVER_THREADPOOL_BUSY}
    assert b.stats()["cluster.capped.upstream_rq_pending_overflow"] == 1
    q.close()
    d.close()


def test_a_local_rate_limit_refuses_calls_beyond_its_bucket(baton, processes):
    port = free_port()
    bootstrap = rpc_bootstrap(free_port(), {"bolt": port}, {"up": provider(processes, "bolt", "A")})
    value = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["value"]
    value["local_rate_limit"] = {"max_tokens": 3, "tokens_per_fill": 1, "fill_interval": "60s"}
    b = baton(bootstrap, concurrency=1)
    q = RawClient("bolt", port)
    q.send(*(bolt_request(i, f"{SERVICE}:1.0", "hello") for i in range(1, 6)))
    statuses = sorted(f.status for f in q.receive(5))
    assert statuses == [bolt.SUCCESS] * 3 + [bolt.SERVER_THREADPOOL_BUSY] * 2
    stats = b.stats()
    assert stats["bolt.rpc_in.request_rate_limited"] == 2 and stats["bolt.rpc_in.request"] == 5
    q.close()
