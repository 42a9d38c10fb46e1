"""Tests for worker/proxy/lb.py (balancers) and worker/proxy/cluster.py (Cluster, ClusterManager)."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from baton.worker.proxy.cluster import Cluster, ClusterManager
from baton.worker.proxy.lb import Host, LeastRequest, Random, RoundRobin, make_balancer


def hosts(*weights):
    return [Host(f"10.0.0.{i + 1}", 8000 + i, w) for i, w in enumerate(weights)]


def names(picks, hs):
    index = {id(h): "abcdefghij"[i] for i, h in enumerate(hs)}
    return "".join(index[id(h)] for h in picks)


def max_run(seq: str, ch: str) -> int:
    return max((len(list(g)) for k, g in itertools.groupby(seq) if k == ch), default=0)


class ScriptedRand:
    """random.Random stand-in returning scripted values, to force P2C candidates."""

    def __init__(self, values):
        self._values = iter(values)

    def random(self):
        return next(self._values)


# -- Host --------------------------------------------------------------------------------------

def test_host_defaults_and_weight_floor():
    h = Host("127.0.0.1", 9000)
    assert (h.weight, h.active, h.total, h.connect_fail) == (1, 0, 0, 0)
    assert h.stat_id == "127.0.0.1:9000"
    assert Host("a", 1, 0).weight == 1
    assert Host("a", 1, -5).weight == 1
    assert Host("a", 1, "3").weight == 3


# -- RoundRobin --------------------------------------------------------------------------------

def test_round_robin_equal_weights_rotates_exactly():
    hs = hosts(1, 1, 1)
    rr = RoundRobin(hs)
    assert names([rr.pick() for _ in range(9)], hs) == "abcabcabc"


def test_round_robin_3_to_1_is_exact_and_smooth():
    hs = hosts(3, 1)
    rr = RoundRobin(hs)
    seq = names([rr.pick() for _ in range(400)], hs)
    assert Counter(seq) == {"a": 300, "b": 100}
    assert seq[:4] == "aaba"
    assert all(seq[i] == seq[i + 4] for i in range(len(seq) - 4))       # period 4
    assert max_run(seq, "a") == 3          # a a b a | a a b a: never 4 a's in a row
    assert max_run(seq, "b") == 1


def test_round_robin_nginx_5_1_1_sequence():
    hs = hosts(5, 1, 1)
    rr = RoundRobin(hs)
    assert names([rr.pick() for _ in range(14)], hs) == "aabacaa" * 2


def test_round_robin_proportions_for_uneven_weights():
    hs = hosts(7, 2, 1)
    rr = RoundRobin(hs)
    seq = names([rr.pick() for _ in range(1000)], hs)
    assert Counter(seq) == {"a": 700, "b": 200, "c": 100}
    # Smooth: in every window of one period (10 picks) each host gets exactly its weight.
    for start in range(0, 990):
        assert Counter(seq[start:start + 10]) == {"a": 7, "b": 2, "c": 1}


def test_round_robin_exclude_skips_hosts():
    hs = hosts(1, 1, 1)
    rr = RoundRobin(hs)
    picks = [rr.pick(exclude={hs[1]}) for _ in range(6)]
    assert hs[1] not in picks
    assert Counter(names(picks, hs)) == {"a": 3, "c": 3}


def test_round_robin_exclude_as_list_and_identity():
    hs = hosts(1, 1)
    twin = Host(hs[0].address, hs[0].port)           # same endpoint, different object
    rr = RoundRobin(hs)
    assert rr.pick(exclude=[hs[0]]) is hs[1]
    assert rr.pick(exclude=[twin]) in hs


def test_round_robin_all_excluded_and_empty():
    hs = hosts(1, 2)
    rr = RoundRobin(hs)
    assert rr.pick(exclude=set(hs)) is None
    assert RoundRobin([]).pick() is None
    # An all-excluded pick does not disturb the rotation.
    assert names([rr.pick() for _ in range(3)], hs) == "bab"


# -- Random ------------------------------------------------------------------------------------

def test_random_weighted_proportions():
    hs = hosts(1, 2, 7)
    rnd = Random(hs, random.Random(1234))
    n = 20000
    counts = Counter(names([rnd.pick() for _ in range(n)], hs))
    for ch, w in zip("abc", (1, 2, 7)):
        assert abs(counts[ch] / n - w / 10) < 0.015, counts


def test_random_exclude_keeps_weights_among_the_rest():
    hs = hosts(1, 3, 100)
    rnd = Random(hs, random.Random(99))
    n = 20000
    counts = Counter(names([rnd.pick(exclude={hs[2]}) for _ in range(n)], hs))
    assert set(counts) == {"a", "b"}
    assert abs(counts["a"] / n - 0.25) < 0.015, counts


def test_random_all_excluded_and_empty():
    hs = hosts(1, 1)
    assert Random(hs, random.Random(1)).pick(exclude=hs) is None
    assert Random([], random.Random(1)).pick() is None
    assert Random([], random.Random(1)).pick(exclude=hs) is None


def test_random_single_host():
    hs = hosts(5)
    rnd = Random(hs, random.Random(3))
    assert all(rnd.pick() is hs[0] for _ in range(50))


def test_random_boundaries_of_the_cumulative_table():
    hs = hosts(1, 3)
    assert Random(hs, ScriptedRand([0.0])).pick() is hs[0]
    assert Random(hs, ScriptedRand([0.2499])).pick() is hs[0]
    assert Random(hs, ScriptedRand([0.25])).pick() is hs[1]
    assert Random(hs, ScriptedRand([0.9999999])).pick() is hs[1]


# -- LeastRequest ------------------------------------------------------------------------------

def test_least_request_picks_the_less_loaded_candidate():
    hs = hosts(1, 1)
    a, b = hs
    a.active, b.active = 3, 1
    # Candidates (a, b) and (b, a): b wins both ways; (a, a) is the only way to get a.
    assert LeastRequest(hs, ScriptedRand([0.1, 0.9])).pick() is b
    assert LeastRequest(hs, ScriptedRand([0.9, 0.1])).pick() is b
    assert LeastRequest(hs, ScriptedRand([0.1, 0.1])).pick() is a


def test_least_request_prefers_fewer_active_statistically():
    hs = hosts(1, 1)
    hs[0].active = 10
    lr = LeastRequest(hs, random.Random(5))
    n = 20000
    counts = Counter(names([lr.pick() for _ in range(n)], hs))
    assert abs(counts["a"] / n - 0.25) < 0.015, counts      # only when both candidates are a


def test_least_request_scales_active_by_weight():
    heavy, light = hosts(4, 1)
    heavy.active, light.active = 2, 1         # 2/4 < 1/1: heavy is less loaded
    # cumulative weights [4, 5]: r=0.0 -> heavy, r=0.99 -> light
    assert LeastRequest([heavy, light], ScriptedRand([0.99, 0.0])).pick() is heavy
    assert LeastRequest([heavy, light], ScriptedRand([0.0, 0.99])).pick() is heavy
    # Equal load per weight: a tie keeps the first candidate.
    heavy.active, light.active = 4, 1
    assert LeastRequest([heavy, light], ScriptedRand([0.99, 0.0])).pick() is light
    assert LeastRequest([heavy, light], ScriptedRand([0.0, 0.99])).pick() is heavy


def test_least_request_with_no_load_follows_weights():
    hs = hosts(3, 1)
    lr = LeastRequest(hs, random.Random(17))
    n = 20000
    counts = Counter(names([lr.pick() for _ in range(n)], hs))
    assert abs(counts["a"] / n - 0.75) < 0.015, counts


def test_least_request_exclude_and_empty():
    hs = hosts(1, 1, 1)
    hs[1].active = 0
    hs[0].active = hs[2].active = 50
    lr = LeastRequest(hs, random.Random(8))
    assert all(lr.pick(exclude={hs[1]}) in (hs[0], hs[2]) for _ in range(200))
    assert lr.pick(exclude=set(hs)) is None
    assert LeastRequest([], random.Random(1)).pick() is None


# -- make_balancer -----------------------------------------------------------------------------

@pytest.mark.parametrize("policy, cls", [("ROUND_ROBIN", RoundRobin), ("RANDOM", Random),
                                         ("LEAST_REQUEST", LeastRequest)])
def test_make_balancer_known_policies(policy, cls):
    hs = hosts(1, 2)
    lb = make_balancer(policy, hs)
    assert type(lb) is cls and lb.hosts is hs
    assert lb.pick() in hs


@pytest.mark.parametrize("policy", ["RING_HASH", "MAGLEV", "round_robin", "", "CLUSTER_PROVIDED"])
def test_make_balancer_rejects_unknown_policy(policy):
    with pytest.raises(ValueError, match="lb_policy"):
        make_balancer(policy, hosts(1))


# -- Cluster / ClusterManager ------------------------------------------------------------------

def ep(address, port, weight=None):
    d = {"address": address, "port": port}
    if weight is not None:
        d["weight"] = weight
    return d


def spec(name, *endpoints, **extra):
    return {"name": name, "endpoints": list(endpoints), **extra}


def test_cluster_defaults_and_stat_names():
    c = Cluster(spec("svc.internal", ep("10.0.0.1", 80)))
    assert c.lb_policy == "ROUND_ROBIN" and isinstance(c.balancer, RoundRobin)
    assert c.connect_timeout == 5.0 and c.max_connections == 1024
    assert c.stat["upstream_cx_total"] == "cluster.svc.internal.upstream_cx_total"
    assert c.pick() is c.hosts[0]


def test_cluster_policy_and_limits_from_spec():
    c = Cluster(spec("x", ep("a", 1, 3), ep("b", 2), lb_policy="LEAST_REQUEST",
                     connect_timeout=0.25, max_connections=7))
    assert isinstance(c.balancer, LeastRequest)
    assert (c.connect_timeout, c.max_connections) == (0.25, 7)
    assert [h.weight for h in c.hosts] == [3, 1]


def test_cluster_manager_apply_reconciles():
    mgr = ClusterManager()
    mgr.apply({"web": spec("web", ep("10.0.0.1", 80), ep("10.0.0.2", 80, 2)),
               "db": spec("db", ep("10.0.1.1", 5432))})
    web = mgr.get("web")
    keep, drop = web.hosts
    keep.active, keep.total, keep.connect_fail = 4, 10, 1
    drop.active = 2
    web.active = 6
    db = mgr.get("db")

    mgr.apply({"web": spec("web", ep("10.0.0.1", 80, 5), ep("10.0.0.3", 80)),
               "cache": spec("cache", ep("10.0.2.1", 6379))})

    assert set(mgr.clusters) == {"web", "cache"}
    assert mgr.get("db") is None and db is not mgr.get("cache")
    assert mgr.get("web") is web and web.active == 6            # same Cluster object
    kept, new = web.hosts
    assert kept is keep                                         # same Host object and counts
    assert (kept.active, kept.total, kept.connect_fail) == (4, 10, 1)
    assert kept.weight == 5                                     # weight follows the new spec
    assert new is not drop and new.stat_id == "10.0.0.3:80" and new.active == 0
    assert drop not in web.hosts
    assert web.balancer.hosts is web.hosts
    picks = {web.pick() for _ in range(12)}
    assert picks == {kept, new}


def test_cluster_manager_apply_policy_change_rebuilds_balancer_keeps_hosts():
    mgr = ClusterManager()
    mgr.apply({"c": spec("c", ep("a", 1), ep("b", 2))})
    before = list(mgr.get("c").hosts)
    mgr.apply({"c": spec("c", ep("a", 1), ep("b", 2), lb_policy="RANDOM")})
    c = mgr.get("c")
    assert isinstance(c.balancer, Random) and c.hosts == before
    assert all(x is y for x, y in zip(c.hosts, before))


def test_cluster_manager_apply_empty_removes_everything_and_endpointless_cluster():
    mgr = ClusterManager()
    mgr.apply({"c": spec("c")})
    assert mgr.get("c").hosts == [] and mgr.get("c").pick() is None
    mgr.apply({})
    assert mgr.clusters == {}


def test_cluster_unknown_policy_is_value_error():
    with pytest.raises(ValueError):
        Cluster(spec("c", ep("a", 1), lb_policy="MAGLEV"))
