"""worker/proxy/priority.py: Envoy's priority spill-over and locality-weighted picking.

The priority loads are checked against the table in Envoy's architecture docs ("Priority
levels": P1 fully healthy, P0 at 100/72/71/50/25/0 % healthy -> P0 takes 100/100/99/70/35/0
% of the traffic); the rest are properties over random clusters (Hypothesis).
"""

import random
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from baton.worker.proxy.cluster import Cluster
from baton.worker.proxy.lb import Host
from baton.worker.proxy.priority import PriorityBalancer
from baton.xds import protos
from baton.xds.translate import translate_cluster


def level_hosts(priority, count, healthy, locality=None, weight=None, start=0):
    placed = []
    for i in range(count):
        host = Host("127.0.0.1", 10000 + start + i)
        host.healthy = i < healthy
        placed.append((host, priority, locality, weight))
    return placed


def loads(balancer):
    return [level.load for level in balancer.levels]


@pytest.mark.parametrize("healthy_p0, load_p0", [
    (100, 100), (72, 100), (71, 99), (50, 70), (25, 35), (0, 0)])
def test_priority_load_follows_envoys_documented_table(healthy_p0, load_p0):
    placed = level_hosts(0, 100, healthy_p0) + level_hosts(1, 100, 100, start=100)
    balancer = PriorityBalancer(placed, "ROUND_ROBIN", panic_threshold=0.0)
    assert loads(balancer) == [load_p0, 100 - load_p0]


def test_overprovisioning_factor_changes_the_spill_over():
    placed = level_hosts(0, 10, 5) + level_hosts(1, 10, 10, start=10)
    assert loads(PriorityBalancer(placed, "RANDOM", panic_threshold=0.0,
                                  overprovisioning=100)) == [50, 50]
    assert loads(PriorityBalancer(placed, "RANDOM", panic_threshold=0.0,
                                  overprovisioning=200)) == [100, 0]


def test_unhealthy_priority_0_sends_everything_to_priority_1_and_back():
    placed = level_hosts(0, 2, 2) + level_hosts(1, 2, 2, start=2)
    balancer = PriorityBalancer(placed, "ROUND_ROBIN", panic_threshold=50.0,
                                rand=random.Random(1))
    p0 = {host for host, priority, *_ in placed if priority == 0}
    assert all(balancer.pick() in p0 for _ in range(50))
    for host in p0:
        host.healthy = False
    balancer.refresh()
    assert all(balancer.pick() not in p0 for _ in range(50))
    for host in p0:
        host.healthy = True
    balancer.refresh()
    assert all(balancer.pick() in p0 for _ in range(50))


def test_total_panic_spreads_by_host_count_over_all_hosts():
    placed = level_hosts(0, 3, 0) + level_hosts(1, 1, 0, start=3)
    balancer = PriorityBalancer(placed, "ROUND_ROBIN", panic_threshold=50.0)
    assert balancer.panic and loads(balancer) == [75, 25]
    assert balancer.pick() is not None
    # Panic disabled: nothing healthy means nothing to pick.
    assert PriorityBalancer(placed, "ROUND_ROBIN", panic_threshold=0.0).pick() is None


def test_a_retry_stays_within_the_levels_that_take_load():
    # As in Envoy (without a retry priority plugin) a retry does not change the priority
    # load: P1 takes no load while P0 is healthy, so excluding P0's host leaves nothing (the
    # caller then retries without exclusions).
    placed = level_hosts(0, 1, 1) + level_hosts(1, 1, 1, start=1)
    balancer = PriorityBalancer(placed, "ROUND_ROBIN", panic_threshold=50.0)
    first = balancer.pick()
    assert first is placed[0][0]
    assert balancer.pick(exclude={first}) is None
    # P0 half healthy: 70/30. Excluding P0's healthy host, every pick is P1's.
    placed = level_hosts(0, 2, 1) + level_hosts(1, 1, 1, start=2)
    balancer = PriorityBalancer(placed, "ROUND_ROBIN", panic_threshold=0.0,
                                rand=random.Random(3))
    assert loads(balancer) == [70, 30]
    assert {balancer.pick(exclude={placed[0][0]}) for _ in range(30)} == {placed[2][0]}


levels = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=4)


@settings(max_examples=200, deadline=None)
@given(levels, st.sampled_from([0.0, 50.0]), st.sampled_from([100, 140, 200]))
def test_loads_sum_to_100_and_only_healthy_levels_take_traffic_outside_panic(
        spec, threshold, over):
    placed, start = [], 0
    for priority, (count, healthy) in enumerate(spec):
        placed += level_hosts(priority, count, min(healthy, count), start=start)
        start += count
    balancer = PriorityBalancer(placed, "RANDOM", panic_threshold=threshold,
                                overprovisioning=over)
    total = sum(loads(balancer))
    assert total in (0, 100)
    assert (total == 0) == (not placed or (threshold == 0 and not any(
        h.healthy for h, *_ in placed)))
    for index, level in enumerate(balancer.levels):
        if level.load and not level.panic:
            assert any(h.healthy for h in level.hosts)
        # Spill-over: a lower level takes traffic only when the levels above it are not
        # healthy enough to take it all (or in total panic).
        above = balancer.levels[:index]
        if level.load and not all(lv.panic for lv in balancer.levels if lv.hosts):
            assert sum(lv.health for lv in above) < 100
    host = balancer.pick()
    if total:
        level_of = {id(h): p for h, p, *_ in placed}
        chosen = balancer.levels[level_of[id(host)]]
        assert chosen.load > 0
        assert host.healthy or chosen.panic


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 9), st.integers(1, 4)), min_size=1, max_size=4),
       st.integers(1, 3))
def test_localities_get_exactly_their_weight_share_when_healthy(localities, rounds):
    placed, start = [], 0
    for i, (weight, count) in enumerate(localities):
        placed += level_hosts(0, count, count, locality=f"r/z{i}/", weight=weight, start=start)
        start += count
    balancer = PriorityBalancer(placed, "ROUND_ROBIN", panic_threshold=50.0,
                                locality_weighted=True)
    locality_of = {id(h): key for h, _, key, _ in placed}
    picks = Counter(locality_of[id(balancer.pick())]
                    for _ in range(rounds * sum(w for w, _ in localities)))
    assert picks == Counter({f"r/z{i}/": rounds * w for i, (w, _) in enumerate(localities)})


def test_a_degraded_locality_loses_weight_and_one_without_weight_gets_nothing():
    placed = (level_hosts(0, 10, 5, locality="a", weight=1) +     # 5/10 x 1.4 = 0.7
              level_hosts(0, 10, 10, locality="b", weight=1, start=10) +
              level_hosts(0, 4, 4, locality="c", weight=None, start=20))
    balancer = PriorityBalancer(placed, "ROUND_ROBIN", panic_threshold=0.0,
                                locality_weighted=True)
    effective = {loc.key: loc.effective for loc in balancer.levels[0].localities}
    assert effective == {"a": 0, "b": 1, "c": 0}        # Envoy truncates 0.7 x 1 to 0
    heavy = (level_hosts(0, 10, 5, locality="a", weight=10) +
             level_hosts(0, 10, 10, locality="b", weight=10, start=10))
    balancer = PriorityBalancer(heavy, "ROUND_ROBIN", panic_threshold=0.0,
                                locality_weighted=True)
    assert {loc.key: loc.effective for loc in balancer.levels[0].localities} == {
        "a": 7, "b": 10}


def cluster_pb(**fields):
    endpoints = [
        {"priority": 0, "locality": {"region": "r1", "zone": "z1"},
         "load_balancing_weight": 3, "lb_endpoints": [
             {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                          "port_value": 9001}}}}]},
        {"priority": 1, "locality": {"region": "r2"}, "load_balancing_weight": 1,
         "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
             "address": "127.0.0.1", "port_value": 9002}}}}]}]
    data = {"name": "c", "type": "STATIC", "connect_timeout": "1s",
            "common_lb_config": {"locality_weighted_lb_config": {}},
            "load_assignment": {"cluster_name": "c", "endpoints": endpoints,
                                "policy": {"overprovisioning_factor": 200}}, **fields}
    return protos.json_format.ParseDict(data, protos.Cluster())


def test_translated_cluster_carries_priorities_localities_and_istio_fields():
    errors = []
    spec = translate_cluster(cluster_pb(
        metadata={"filter_metadata": {"istio": {"services": [{"name": "details"}]}}},
        upstream_bind_config={"source_address": {"address": "127.0.0.6", "port_value": 0}}),
        "c", errors)
    assert errors == []
    assert spec["endpoints"] == [        # priority 0 is the default, so not written
        {"address": "127.0.0.1", "port": 9001, "weight": 1, "locality": "r1/z1/",
         "locality_weight": 3, "overprovisioning": 200},
        {"address": "127.0.0.1", "port": 9002, "weight": 1, "priority": 1,
         "locality": "r2//", "locality_weight": 1, "overprovisioning": 200}]
    assert spec["locality_weighted"] is True
    assert spec["metadata"] == {"filter_metadata": {"istio": {"services": [{"name": "details"}]}},
                                "typed_filter_metadata": {}}
    assert spec["source_address"] == {"address": "127.0.0.6", "port": 0}
    cluster = Cluster(spec)
    assert isinstance(cluster.balancer, PriorityBalancer)
    assert cluster.balancer.overprovisioning == 200
    assert cluster.source_address == {"address": "127.0.0.6", "port": 0}


@pytest.mark.parametrize("fields, error", [
    ({"upstream_bind_config": {"source_address": {"address": "localhost"}}},
     "c.upstream_bind_config.source_address.address: 'localhost' is not an IP address"),
    ({"upstream_bind_config": {"freebind": True}},
     ["c.upstream_bind_config.freebind: not supported (only source_address)",
      "c.upstream_bind_config.source_address: required"]),
    ({"metadata": {"typed_filter_metadata": {"x": {
        "@type": "type.googleapis.com/google.protobuf.Duration", "value": "1s"}}}}, None),
])
def test_cluster_field_refusals_name_their_path(fields, error):
    errors = []
    translate_cluster(cluster_pb(**fields), "c", errors)
    assert errors == (error if isinstance(error, list) else [error] if error else [])


def test_a_zero_overprovisioning_factor_or_locality_weight_is_refused():
    pb = cluster_pb()
    pb.load_assignment.policy.overprovisioning_factor.value = 0
    pb.load_assignment.endpoints[0].load_balancing_weight.value = 0
    errors = []
    assert translate_cluster(pb, "c", errors) is None
    assert errors == ["c.load_assignment.policy.overprovisioning_factor: must be greater than 0",
                      "c.load_assignment.endpoints[0].load_balancing_weight: must be at least 1"]


def test_plain_endpoints_keep_the_plain_balancer():
    from baton.worker.proxy.lb import RoundRobin
    cluster = Cluster({"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 1,
                                                   "weight": 1}]})
    assert isinstance(cluster.balancer, RoundRobin)
