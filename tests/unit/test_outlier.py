"""Tests for worker/proxy/outlier.py: ejection, overflow, return to service, rate detectors,
all on a fake clock (the interval timer is the only thing that needs a loop)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest

from baton.worker.proxy.cluster import Cluster
from baton.worker.proxy.outlier import OutlierDetector
from baton.xds.cluster_features import OUTLIER_DEFAULTS


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class AlwaysRand(random.Random):
    """random() always returns `value` (to force or refuse the enforcing_* coin)."""

    def __init__(self, value):
        super().__init__(0)
        self.value = value

    def random(self):
        return self.value


def make(n=10, rand=None, **config):
    counters, gauges = defaultdict(int), defaultdict(int)
    cluster = Cluster({"name": "od", "endpoints": [{"address": f"10.0.0.{i + 1}", "port": 80}
                                                   for i in range(n)]}, counters, gauges)
    clock = Clock()
    od = OutlierDetector(cluster, {**OUTLIER_DEFAULTS, **config}, counters, gauges, clock,
                         rand or AlwaysRand(0.0))
    cluster.outlier = od
    return cluster, od, clock, counters, gauges


def stat(counters, key):
    return counters[f"cluster.od.outlier_detection.{key}"]


def test_five_consecutive_5xx_eject_the_host():
    cluster, od, clock, counters, gauges = make()
    host = cluster.hosts[0]
    for _ in range(4):
        od.report(host, 500)
    assert not host.ejected
    od.report(host, 503)
    assert host.ejected
    assert stat(counters, "ejections_detected_consecutive_5xx") == 1
    assert stat(counters, "ejections_enforced_consecutive_5xx") == 1
    assert stat(counters, "ejections_enforced_total") == 1
    assert gauges["cluster.od.outlier_detection.ejections_active"] == 1
    assert gauges["cluster.od.membership_healthy"] == 9
    # The balancer no longer picks it.
    assert host not in {cluster.pick() for _ in range(50)}


def test_a_success_or_4xx_resets_the_count():
    cluster, od, *_ = make()
    host = cluster.hosts[0]
    for outcome in (500, 500, 500, 500, 200, 500, 500, 500, 500, 404, 500, 500, 500, 500):
        od.report(host, outcome)
    assert not host.ejected
    od.success(host)
    for _ in range(4):
        od.report(host, 502)
    assert not host.ejected


def test_gateway_failures_are_detected_but_not_enforced_by_default():
    cluster, od, clock, counters, _ = make(consecutive_gateway_failure=3, consecutive_5xx=100)
    host = cluster.hosts[0]
    for _ in range(3):
        od.report(host, 502)
    assert stat(counters, "ejections_detected_consecutive_gateway_failure") == 1
    assert stat(counters, "ejections_enforced_consecutive_gateway_failure") == 0
    assert not host.ejected                  # enforcing_consecutive_gateway_failure: 0


def test_gateway_failures_enforced_and_a_500_breaks_the_run():
    cluster, od, clock, counters, _ = make(consecutive_gateway_failure=3, consecutive_5xx=100,
                                           enforcing_consecutive_gateway_failure=100)
    host = cluster.hosts[0]
    for outcome in (502, 504, 500, 503, 503):
        od.report(host, outcome)
    assert not host.ejected                  # 500 is 5xx but no gateway error: run restarts
    od.report(host, "timeout")               # a local-origin timeout counts as 504
    assert host.ejected
    assert stat(counters, "ejections_enforced_consecutive_gateway_failure") == 1


def test_local_origin_failures_count_as_5xx_when_not_split():
    cluster, od, *_ = make()
    host = cluster.hosts[0]
    for outcome in ("connect_failure", "reset", "timeout", 500, "connect_failure"):
        od.report(host, outcome)
    assert host.ejected


def test_split_local_origin_failures_have_their_own_counter():
    cluster, od, clock, counters, _ = make(split_external_local_origin_errors=True,
                                           max_ejection_percent=50,
                                           consecutive_local_origin_failure=3)
    host = cluster.hosts[0]
    od.report(host, "connect_failure")
    od.report(host, "connect_failure")
    od.report(host, 200)                     # the upstream answered: local run restarts
    od.report(host, "connect_failure")
    od.report(host, "timeout")
    assert not host.ejected
    od.report(host, "reset")
    assert host.ejected
    assert stat(counters, "ejections_enforced_consecutive_local_origin_failure") == 1
    # ... and they no longer feed consecutive_5xx.
    other = cluster.hosts[1]
    for _ in range(2):
        od.report(other, "connect_failure")
    for _ in range(4):
        od.report(other, 500)
    assert not other.ejected
    od.report(other, 500)
    assert other.ejected


def test_enforcing_percentage_is_a_coin():
    cluster, od, clock, counters, _ = make(rand=AlwaysRand(0.5), enforcing_consecutive_5xx=40)
    host = cluster.hosts[0]
    for _ in range(5):
        od.report(host, 500)
    assert not host.ejected and stat(counters, "ejections_detected_consecutive_5xx") == 1
    od.rand = AlwaysRand(0.39)
    for _ in range(5):
        od.report(host, 500)
    assert host.ejected


def test_max_ejection_percent_overflows():
    cluster, od, clock, counters, gauges = make(n=10, max_ejection_percent=20)
    a, b, c = cluster.hosts[:3]
    for host in (a, b, c):
        for _ in range(5):
            od.report(host, 500)
    assert a.ejected and b.ejected and not c.ejected      # (2 + 1) / 10 > 20%
    assert stat(counters, "ejections_overflow") == 1
    assert gauges["cluster.od.outlier_detection.ejections_active"] == 2


def test_small_cluster_ejects_nobody_under_10_percent_unless_always_eject_one_host():
    cluster, od, clock, counters, _ = make(n=3)
    host = cluster.hosts[0]
    for _ in range(5):
        od.report(host, 500)
    assert not host.ejected and stat(counters, "ejections_overflow") == 1   # 1/3 > 10%
    cluster, od, clock, counters, _ = make(n=3, always_eject_one_host=True)
    for h in cluster.hosts[:2]:
        for _ in range(5):
            od.report(h, 500)
    assert cluster.hosts[0].ejected and not cluster.hosts[1].ejected
    assert stat(counters, "ejections_overflow") == 1


def test_return_to_service_after_base_time_then_longer_ejections_capped():
    cluster, od, clock, counters, gauges = make(base_ejection_time=30.0, max_ejection_time=70.0,
                                                interval=10.0)
    host = cluster.hosts[0]

    def fail():
        for _ in range(5):
            od.report(host, 500)

    fail()
    assert host.ejected
    clock.now += 29.0
    od.sweep()
    assert host.ejected
    clock.now += 1.0
    od.sweep()
    assert not host.ejected
    assert gauges["cluster.od.outlier_detection.ejections_active"] == 0
    assert host in {cluster.pick() for _ in range(50)}
    fail()                                   # second ejection in a row: 60s
    clock.now += 59.0
    od.sweep()
    assert host.ejected
    clock.now += 1.0
    od.sweep()
    assert not host.ejected
    fail()                                   # third: 90s capped at 70s
    clock.now += 70.0
    od.sweep()
    assert not host.ejected
    assert stat(counters, "ejections_enforced_consecutive_5xx") == 3


def test_ejection_multiplier_decays_while_in_service():
    cluster, od, clock, *_ = make(base_ejection_time=30.0)
    host = cluster.hosts[0]
    for _ in range(5):
        od.report(host, 500)
    clock.now += 30.0
    od.sweep()                               # back in service, multiplier 1
    for _ in range(2):                       # two base periods in service: forgiven
        clock.now += 30.0
        od.sweep()
    assert host.outlier.multiplier == 0
    for _ in range(5):
        od.report(host, 500)
    clock.now += 30.0                        # so the next ejection is the base time again
    od.sweep()
    assert not host.ejected


def test_success_rate_detector_ejects_the_outlier():
    cluster, od, clock, counters, _ = make(n=6, max_ejection_percent=50)
    for i, host in enumerate(cluster.hosts):
        failures = 60 if i == 0 else 1
        for j in range(100):
            od.report(host, 500 if j < failures else 200)
            if j % 4 == 0:
                od.success(host)             # keep consecutive_5xx from firing
    od.sweep()
    assert cluster.hosts[0].ejected
    assert not any(h.ejected for h in cluster.hosts[1:])
    assert stat(counters, "ejections_enforced_success_rate") == 1
    # The interval's counts start over.
    assert cluster.hosts[1].outlier.requests == 0


def test_success_rate_needs_minimum_hosts_with_volume():
    cluster, od, clock, counters, _ = make(n=6, max_ejection_percent=50)
    for i, host in enumerate(cluster.hosts[:4]):        # only 4 hosts reach the volume
        for j in range(100):
            od.report(host, 500 if (i == 0 and j % 2) else 200)
    od.sweep()
    assert not any(h.ejected for h in cluster.hosts)
    assert stat(counters, "ejections_detected_success_rate") == 0


def test_failure_percentage_detector():
    cluster, od, clock, counters, _ = make(n=5, enforcing_failure_percentage=100,
                                           enforcing_success_rate=0, max_ejection_percent=100,
                                           failure_percentage_threshold=50)
    for i, host in enumerate(cluster.hosts):
        for j in range(50):
            od.report(host, 503 if (i < 2 and j % 2 == 0) else 200)     # hosts 0, 1: 50%
    od.sweep()
    assert [h.ejected for h in cluster.hosts] == [True, True, False, False, False]
    assert stat(counters, "ejections_enforced_failure_percentage") == 2


def test_host_removed_while_ejected_frees_its_slot():
    cluster, od, clock, counters, gauges = make(n=10)
    host = cluster.hosts[0]
    for _ in range(5):
        od.report(host, 500)
    assert od.ejected == 1
    cluster.update({"name": "od", "endpoints": [{"address": f"10.0.0.{i + 1}", "port": 80}
                                                for i in range(1, 10)]})
    assert od.ejected == 0
    assert gauges["cluster.od.outlier_detection.ejections_active"] == 0


def test_interval_timer_runs_the_sweep_on_a_loop():
    async def main():
        loop = asyncio.get_running_loop()
        cluster, od, clock, counters, _ = make(interval=0.01, base_ejection_time=0.01)
        od.clock = loop.time
        host = cluster.hosts[0]
        for _ in range(5):
            od.report(host, 500)
        assert host.ejected
        od.start(loop)
        try:
            deadline = loop.time() + 5.0
            while host.ejected and loop.time() < deadline:
                await asyncio.sleep(0.005)
            assert not host.ejected
        finally:
            od.stop()
        assert od._timer is None

    asyncio.run(main())


def test_cluster_manager_runs_detector_with_a_loop():
    from baton.worker.proxy.cluster import ClusterManager
    from baton.worker.stats import Stats

    async def main():
        stats = Stats()
        mgr = ClusterManager(loop=asyncio.get_running_loop(), stats=stats)
        spec = {"name": "m", "endpoints": [{"address": "10.0.0.1", "port": 80}],
                "outlier_detection": dict(OUTLIER_DEFAULTS)}
        mgr.apply({"m": spec})
        cluster = mgr.get("m")
        assert cluster.outlier is not None and cluster.outlier._timer is not None
        timer = cluster.outlier
        mgr.apply({"m": {**spec, "outlier_detection": None}})
        assert cluster.outlier is None and timer._timer is None
        mgr.apply({"m": spec})
        detector = cluster.outlier
        mgr.apply({})
        assert detector._timer is None

    asyncio.run(main())


@pytest.mark.parametrize("outcome", ["connect_failure", "reset", "timeout"])
def test_local_origin_outcomes_are_known(outcome):
    cluster, od, *_ = make()
    od.report(cluster.hosts[0], outcome)
    assert cluster.hosts[0].outlier.consecutive_5xx == 1
