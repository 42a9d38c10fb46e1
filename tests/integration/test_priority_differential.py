"""Priorities and locality weights, Baton against a real Envoy 1.40 on the same bootstrap.

Each proxy gets the bootstrap of test_priority_failover.py (a priority-0 and a priority-1
locality, each a recording upstream process, an active health check) and the same story:
P0 serves; its process is killed; the health check notices and P1 serves. Then a
locality-weighted cluster of three localities weighted 3:1:0 over 40 requests. What the
client sees must be the same for both (the 3:1 split within one request of each other:
Envoy's locality schedule starts at a random point).
"""

from __future__ import annotations

import sys
from collections import Counter

from .conftest import RECORDER, Baton, free_port, start_ready_process, wait_until
from .differential.proxies import Envoy
from .test_priority_failover import answered_by, endpoint, failover_bootstrap


def weighted_bootstrap(admin, port, ports):
    bootstrap = failover_bootstrap(admin, port, ports["a"], ports["b"])
    cluster = bootstrap["static_resources"]["clusters"][0]
    del cluster["health_checks"]
    cluster["load_assignment"]["endpoints"] = [
        {"locality": {"zone": "a"}, "load_balancing_weight": 3,
         "lb_endpoints": [endpoint(ports["a"])]},
        {"locality": {"zone": "b"}, "load_balancing_weight": 1,
         "lb_endpoints": [endpoint(ports["b"])]},
        # Envoy: with locality weighting, a locality without a weight takes no traffic.
        {"locality": {"zone": "c"}, "lb_endpoints": [endpoint(ports["c"])]}]
    return bootstrap


def start(kind, workdir, bootstrap):
    if kind == "envoy":
        return Envoy(workdir, bootstrap).start()
    return Baton(workdir, bootstrap, concurrency=1).start()


def failover_story(kind, workdir):
    p0, p0_port = start_ready_process([sys.executable, str(RECORDER), "p0"])
    p1, p1_port = start_ready_process([sys.executable, str(RECORDER), "p1"])
    port = free_port()
    proxy = start(kind, workdir, failover_bootstrap(free_port(), port, p0_port, p1_port))
    try:
        wait_until(lambda: answered_by(port) == "p0", 10, f"{kind}: priority 0 to serve")
        healthy = [answered_by(port) for _ in range(10)]
        p0.kill()
        p0.wait(10)
        wait_until(lambda: answered_by(port) == "p1", 10, f"{kind}: the failover")
        failed_over = [answered_by(port) for _ in range(10)]
        return healthy, failed_over
    finally:
        proxy.stop()
        for proc in (p0, p1):
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def weighted_story(kind, workdir):
    procs, ports = [], {}
    for name in "abc":
        proc, ports[name] = start_ready_process([sys.executable, str(RECORDER), name])
        procs.append(proc)
    port = free_port()
    proxy = start(kind, workdir, weighted_bootstrap(free_port(), port, ports))
    try:
        return Counter(answered_by(port) for _ in range(40))
    finally:
        proxy.stop()
        for proc in procs:
            proc.kill()
            proc.wait(10)


def test_failover_to_priority_1_as_envoy_does(tmp_path):
    envoy = failover_story("envoy", tmp_path / "envoy")
    baton = failover_story("baton", tmp_path / "baton")
    assert envoy == (["p0"] * 10, ["p1"] * 10)
    assert baton == envoy


def test_locality_weights_split_traffic_as_envoy_does(tmp_path):
    envoy = weighted_story("envoy", tmp_path / "envoy")
    baton = weighted_story("baton", tmp_path / "baton")
    assert set(envoy) == {"a", "b"} and abs(envoy["a"] - 30) <= 1
    assert set(baton) == set(envoy)
    assert abs(baton["a"] - envoy["a"]) <= 1 and abs(baton["b"] - envoy["b"]) <= 1


def eds_health_story(kind, workdir):
    procs, ports = [], {}
    for name in "ab":
        proc, ports[name] = start_ready_process([sys.executable, str(RECORDER), name])
        procs.append(proc)
    port = free_port()
    bootstrap = failover_bootstrap(free_port(), port, ports["a"], ports["b"])
    cluster = bootstrap["static_resources"]["clusters"][0]
    del cluster["health_checks"], cluster["common_lb_config"]
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
        {**endpoint(ports["a"]), "health_status": "UNHEALTHY"},
        {**endpoint(ports["b"]), "health_status": "HEALTHY"}]}]
    cluster["common_lb_config"] = {"healthy_panic_threshold": {"value": 0}}
    proxy = start(kind, workdir, bootstrap)
    try:
        return Counter(answered_by(port) for _ in range(10))
    finally:
        proxy.stop()
        for proc in procs:
            proc.kill()
            proc.wait(10)


def test_an_endpoint_the_control_plane_calls_unhealthy_gets_no_traffic_as_in_envoy(tmp_path):
    envoy = eds_health_story("envoy", tmp_path / "envoy")
    assert envoy == Counter({"b": 10})
    assert eds_health_story("baton", tmp_path / "baton") == envoy
