"""Tests for worker/proxy/lb.py (balancers, health, panic mode) and worker/proxy/cluster.py
(Cluster, ClusterManager)."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from baton.worker.proxy.cluster import Cluster, ClusterManager
from baton.worker.proxy.lb import (Host, LeastRequest, Maglev, Random, RingHash, RoundRobin,
                                   make_balancer, murmurhash2_64, xxhash64)


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
                                         ("LEAST_REQUEST", LeastRequest), ("RING_HASH", RingHash),
                                         ("MAGLEV", Maglev)])
def test_make_balancer_known_policies(policy, cls):
    hs = hosts(1, 2)
    lb = make_balancer(policy, hs)
    assert type(lb) is cls and lb.hosts is hs
    assert lb.pick() in hs


@pytest.mark.parametrize("policy", ["ring_hash", "round_robin", "", "CLUSTER_PROVIDED"])
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


def test_an_original_dst_cluster_picks_no_host_without_a_downstream():
    # A Wasm callout to Istio's PassthroughCluster raised AttributeError in the hostcall
    # (the balancer is None), which trapped the guest and failed its VM for good.
    c = Cluster(spec("PassthroughCluster", type="ORIGINAL_DST", lb_policy="CLUSTER_PROVIDED"))
    assert c.balancer is None and c.pick() is None


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
        Cluster(spec("c", ep("a", 1), lb_policy="LEAST_LOADED"))


# -- stable hashes -----------------------------------------------------------------------------

def test_xxhash64_reference_vectors():
    # XXH64 reference values (seed 0), short and long (>= 32 bytes: the 4-lane path).
    assert xxhash64(b"") == 0xEF46DB3751D8E999
    assert xxhash64(b"a") == 0xD24EC4F1A98C6E5B
    assert xxhash64(b"abc") == 0x44BC2CF5AD770999
    assert xxhash64(b"Nobody inspects the spammish repetition") == 0xFBCEA83C8A378BF1
    assert xxhash64(b"abc", 1) != xxhash64(b"abc")


def test_murmurhash2_matches_libstdcxx_std_hash():
    # Values printed by std::_Hash_bytes(s, len, 0xc70f6907) (libstdc++, x86-64), which is
    # the function behind Envoy's MURMUR_HASH_2.
    assert murmurhash2_64(b"") == 6142509188972423790
    assert murmurhash2_64(b"a") == 4993892634952068459
    assert murmurhash2_64(b"abc") == 3663726644998027833
    assert murmurhash2_64(b"10.0.0.1:80_0") == 13659246566588789388
    assert murmurhash2_64(b"hello world, this is longer text") == 6649995221618699559


# -- RingHash ----------------------------------------------------------------------------------

def ring_hosts(n, weights=None):
    weights = weights or [1] * n
    return [Host(f"10.1.0.{i + 1}", 80, w) for i, w in enumerate(weights)]


def keys(n, seed=7):
    rnd = random.Random(seed)
    return [rnd.getrandbits(64) for _ in range(n)]


def test_ring_hash_ring_size_follows_envoys_formula():
    # Three equal hosts, minimum 1024: each gets ceil(1024 / 3) = 342 points.
    assert RingHash(ring_hosts(3)).ring_size == 1026
    # Weights 1:3 -> the light host gets ceil(0.25 * 1024) = 256, the ring is 1024.
    ring = RingHash(ring_hosts(2, [1, 3]))
    assert ring.ring_size == 1024
    assert Counter(ring._owners) == {ring.hosts[0]: 256, ring.hosts[1]: 768}
    # Capped by maximum_ring_size.
    assert RingHash(ring_hosts(3), minimum_ring_size=5000, maximum_ring_size=600).ring_size == 600


def test_ring_hash_points_are_envoys_keys():
    hs = ring_hosts(2)
    ring = RingHash(hs, minimum_ring_size=4)
    expected = sorted(xxhash64(f"{h.address}:{h.port}_{i}".encode()) for h in hs for i in range(2))
    assert ring._points == expected
    murmur = RingHash(hs, minimum_ring_size=4, hash_function="MURMUR_HASH_2")
    assert murmur._points == sorted(murmurhash2_64(f"{h.address}:{h.port}_{i}".encode())
                                    for h in hs for i in range(2))
    v6 = Host("2001:db8::1", 443)
    assert v6.hash_name == "[2001:db8::1]:443"


def test_ring_hash_lookup_takes_the_first_point_at_or_after_the_key():
    ring = RingHash(ring_hosts(3), minimum_ring_size=6)
    points, owners = ring._points, ring._owners
    for i, point in enumerate(points):
        assert ring.pick(hash_key=point) is owners[i]
        assert ring.pick(hash_key=point - 1) is owners[i]
    # Past the last point wraps to the first.
    assert ring.pick(hash_key=points[-1] + 1) is owners[0]
    assert ring.pick(hash_key=(1 << 64) - 1) is owners[0] or points[-1] == (1 << 64) - 1


def test_ring_hash_same_key_same_host_and_weighted_spread():
    hs = ring_hosts(4, [1, 1, 2, 4])
    ring = RingHash(hs)
    ks = keys(20000)
    first = [ring.pick(hash_key=k) for k in ks]
    assert first == [ring.pick(hash_key=k) for k in ks]                 # consistent
    again = RingHash(hs)
    assert first == [again.pick(hash_key=k) for k in ks]                # and reproducible
    counts = Counter(first)
    for host, share in zip(hs, (1 / 8, 1 / 8, 2 / 8, 4 / 8)):
        assert abs(counts[host] / len(ks) - share) < 0.05, counts


def test_ring_hash_minimal_disruption_when_a_host_goes():
    hs = ring_hosts(5)
    ks = keys(5000)
    full = RingHash(hs)
    before = {k: full.pick(hash_key=k) for k in ks}
    gone = hs[2]
    after = RingHash([h for h in hs if h is not gone])
    assert all(after.pick(hash_key=k) is not gone for k in ks)
    # The remaining hosts keep all their points; only the points they gain (the ring is
    # re-sized for 4 hosts: 256 points each instead of 205) take keys from one another.
    kept = [k for k in ks if before[k] is not gone]
    moved = sum(1 for k in kept if after.pick(hash_key=k) is not before[k])
    assert moved / len(kept) < 0.12, moved
    # With a fixed ring size per host (minimum == what 5 hosts already had), nobody moves.
    same = RingHash([h for h in hs if h is not gone], minimum_ring_size=820, maximum_ring_size=820)
    full = RingHash(hs, minimum_ring_size=1025, maximum_ring_size=1025)
    assert all(same.pick(hash_key=k) is full.pick(hash_key=k) for k in ks
               if full.pick(hash_key=k) is not gone)


def test_ring_hash_exclude_walks_to_the_next_host_and_all_excluded_is_none():
    hs = ring_hosts(3)
    ring = RingHash(hs)
    for k in keys(300):
        owner = ring.pick(hash_key=k)
        other = ring.pick(exclude={owner}, hash_key=k)
        assert other is not None and other is not owner
        assert ring.pick(exclude=set(hs), hash_key=k) is None
    assert RingHash([]).pick(hash_key=1) is None


def test_ring_hash_without_key_is_random():
    hs = ring_hosts(4)
    ring = RingHash(hs, random.Random(3))
    counts = Counter(ring.pick() for _ in range(8000))
    assert set(counts) == set(hs)
    assert all(abs(c / 8000 - 0.25) < 0.05 for c in counts.values()), counts


# -- Maglev ------------------------------------------------------------------------------------

def test_maglev_table_is_full_and_even_for_equal_weights():
    hs = ring_hosts(5)
    lb = Maglev(hs, table_size=65537)
    counts = Counter(lb._table)
    assert sum(counts.values()) == 65537 and None not in counts
    assert max(counts.values()) - min(counts.values()) <= 1


def test_maglev_weights_shape_the_table():
    hs = ring_hosts(3, [1, 2, 4])
    lb = Maglev(hs, table_size=7919)
    counts = Counter(lb._table)
    for host, share in zip(hs, (1 / 7, 2 / 7, 4 / 7)):
        assert abs(counts[host] / 7919 - share) < 0.01, counts


def test_maglev_consistent_and_little_disruption():
    hs = ring_hosts(10)
    ks = keys(10000)
    lb = Maglev(hs)
    before = [lb.pick(hash_key=k) for k in ks]
    again = Maglev(hs)
    assert before == [again.pick(hash_key=k) for k in ks]
    gone = hs[4]
    after = Maglev([h for h in hs if h is not gone])
    moved = sum(1 for k, b in zip(ks, before) if b is not gone and after.pick(hash_key=k) is not b)
    kept_total = sum(1 for b in before if b is not gone)
    # Maglev trades a little disruption for evenness: only a few percent of the keys of the
    # remaining hosts move (the hosts that lost their slot to nobody keep theirs).
    assert moved / kept_total < 0.05, moved


def test_maglev_rejects_non_prime_and_handles_exclude():
    with pytest.raises(ValueError, match="prime"):
        Maglev(ring_hosts(2), table_size=65536)
    hs = ring_hosts(3)
    lb = Maglev(hs, table_size=251)
    for k in keys(200):
        owner = lb.pick(hash_key=k)
        assert owner is hs[0] or owner is hs[1] or owner is hs[2]
        assert lb.pick(exclude={owner}, hash_key=k) not in (owner, None)
        assert lb.pick(exclude=hs, hash_key=k) is None
    assert Maglev([], table_size=251).pick(hash_key=5) is None


def test_make_balancer_passes_ring_and_maglev_config():
    hs = ring_hosts(2)
    ring = make_balancer("RING_HASH", hs, ring_hash={"minimum_ring_size": 8, "maximum_ring_size": 8,
                                                    "hash_function": "MURMUR_HASH_2"})
    assert ring.ring_size == 8 and ring.hash_function is murmurhash2_64
    maglev = make_balancer("MAGLEV", hs, maglev={"table_size": 13})
    assert len(maglev._table) == 13


# -- health and panic mode ---------------------------------------------------------------------

ALL_POLICIES = ["ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "RING_HASH", "MAGLEV"]


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_unhealthy_and_ejected_hosts_are_skipped_above_the_panic_threshold(policy):
    hs = ring_hosts(4)
    lb = make_balancer(policy, hs, rand=random.Random(1))
    hs[0].healthy = False
    hs[1].ejected = True                      # 2 of 4 available: 50%, not below 50
    lb.refresh()
    assert not lb.panic
    picks = {lb.pick(hash_key=k) for k in keys(400)} | {lb.pick() for _ in range(400)}
    assert picks == {hs[2], hs[3]}


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_panic_mode_balances_over_all_hosts(policy):
    hs = ring_hosts(4)
    lb = make_balancer(policy, hs, rand=random.Random(2))
    for h in hs[:3]:
        h.healthy = False                     # 1 of 4: 25% < 50%
    lb.refresh()
    assert lb.panic
    picks = {lb.pick(hash_key=k) for k in keys(400)} | {lb.pick() for _ in range(400)}
    assert picks == set(hs)
    # Health restored: back to normal.
    for h in hs:
        h.healthy = True
    lb.refresh()
    assert not lb.panic and lb.available is hs


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_panic_threshold_zero_disables_panic(policy):
    hs = ring_hosts(3)
    lb = make_balancer(policy, hs, panic_threshold=0.0)
    for h in hs:
        h.healthy = False
    lb.refresh()
    assert not lb.panic
    assert lb.pick() is None and lb.pick(hash_key=12345) is None
    hs[1].healthy = True
    lb.refresh()
    assert all(lb.pick(hash_key=k) is hs[1] for k in keys(50))


def test_panic_threshold_100_panics_on_a_single_unhealthy_host():
    hs = ring_hosts(4)
    lb = make_balancer("ROUND_ROBIN", hs, panic_threshold=100.0)
    hs[0].healthy = False
    lb.refresh()
    assert lb.panic and hs[0] in {lb.pick() for _ in range(8)}


def test_health_changes_need_refresh_pick_stays_cheap():
    hs = ring_hosts(2)
    lb = RoundRobin(hs)
    hs[0].healthy = False
    # Without refresh the precomputed view is unchanged (pick never reads health) ...
    assert hs[0] in {lb.pick() for _ in range(4)}
    lb.refresh()
    assert {lb.pick() for _ in range(4)} == {hs[1]}


def test_cluster_refresh_counts_panic_and_sets_membership_gauges():
    from collections import defaultdict
    counters, gauges = defaultdict(int), defaultdict(int)
    c = Cluster(spec("p", ep("10.0.0.1", 80), ep("10.0.0.2", 80), ep("10.0.0.3", 80)),
                counters, gauges)
    assert gauges["cluster.p.membership_total"] == 3
    assert gauges["cluster.p.membership_healthy"] == 3
    c.hosts[0].healthy = False
    c.hosts[1].ejected = True
    c.refresh()
    assert gauges["cluster.p.membership_healthy"] == 1
    assert c.balancer.panic                     # 1 of 3 < 50%
    c.pick()
    c.pick()
    assert counters["cluster.p.lb_healthy_panic"] == 2


def test_cluster_features_reach_the_cluster():
    c = Cluster(spec("f", ep("10.0.0.1", 80), ep("10.0.0.2", 80), lb_policy="RING_HASH",
                     ring_hash={"minimum_ring_size": 16, "maximum_ring_size": 64,
                                "hash_function": "XX_HASH"},
                     max_pending_requests=5, max_requests=6, max_retries=1, http2=True,
                     http2_options={"max_concurrent_streams": 10},
                     common_http={"idle_timeout": 30.0, "max_requests_per_connection": 9},
                     common_lb={"healthy_panic_threshold": 0.0}))
    assert isinstance(c.balancer, RingHash) and c.balancer.ring_size == 16
    assert (c.max_pending_requests, c.max_requests, c.max_retries) == (5, 6, 1)
    assert c.http2 and c.http2_options == {"max_concurrent_streams": 10}
    assert c.common_http["max_requests_per_connection"] == 9
    assert c.balancer.panic_threshold == 0.0
    k = 0xDEADBEEF
    assert c.pick(hash_key=k) is c.pick(hash_key=k)
    # Stat names and which ones are gauges.
    assert c.stat["upstream_rq_pending_overflow"] == "cluster.f.upstream_rq_pending_overflow"
    assert c.stat["health_check.attempt"] == "cluster.f.health_check.attempt"
    assert c.stat["outlier_detection.ejections_enforced_consecutive_5xx"] == \
        "cluster.f.outlier_detection.ejections_enforced_consecutive_5xx"
    for gauge in ("upstream_rq_active", "upstream_rq_pending_active", "membership_healthy",
                  "membership_total", "health_check.healthy", "outlier_detection.ejections_active",
                  "upstream_cx_active"):
        assert gauge in c.gauge_keys and gauge in c.stat
    for counter in ("upstream_rq_total", "upstream_rq_retry", "upstream_rq_5xx",
                    "health_check.failure", "outlier_detection.ejections_overflow"):
        assert counter not in c.gauge_keys and counter in c.stat


def test_cluster_update_keeps_health_and_ejection_of_unchanged_hosts():
    mgr = ClusterManager()
    mgr.apply({"c": spec("c", ep("10.0.0.1", 80), ep("10.0.0.2", 80), ep("10.0.0.3", 80))})
    c = mgr.get("c")
    a, b, _ = c.hosts
    a.healthy = False
    b.ejected = True
    mgr.apply({"c": spec("c", ep("10.0.0.1", 80), ep("10.0.0.2", 80), ep("10.0.0.4", 80),
                         ep("10.0.0.5", 80))})
    assert c.hosts[0] is a and not a.healthy
    assert c.hosts[1] is b and b.ejected
    assert {c.pick() for _ in range(20)} == set(c.hosts[2:])


# -- agreement with Envoy ----------------------------------------------------------------------

# Recorded from Envoy 1.40: clusters of 127.0.0.1:18801, :18802 (weight 2), :18803 with
# lb_policy RING_HASH / MAGLEV (defaults), a route hash_policy on header x-key, and requests
# with x-key: k1 .. k24. Each digit is the last digit of the port that answered. Envoy hashes
# a header value with xxHash64, so hash_key = xxhash64(value) must choose the same host.
ENVOY_RING_HASH_PICKS = "322221313231231322211121"
ENVOY_MAGLEV_PICKS = "221212232122132333332222"


@pytest.mark.parametrize("cls, expected", [(RingHash, ENVOY_RING_HASH_PICKS),
                                           (Maglev, ENVOY_MAGLEV_PICKS)])
def test_same_host_as_envoy_for_the_same_hash_key(cls, expected):
    hs = [Host("127.0.0.1", 18801), Host("127.0.0.1", 18802, 2), Host("127.0.0.1", 18803)]
    lb = cls(hs)
    picks = "".join(str(lb.pick(hash_key=xxhash64(f"k{i}".encode())).port)[-1]
                    for i in range(1, 25))
    assert picks == expected
