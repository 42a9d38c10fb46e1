"""Per-worker counters and gauges, named as Envoy names them.

The hot path only does `counters[name] += n` on names it precomputed at connection or
listener setup, so a stat costs one dict operation. The master sums these over workers.
"""

from __future__ import annotations

from collections import defaultdict


class Stats:
    __slots__ = ("counters", "gauges")

    def __init__(self) -> None:
        self.counters: defaultdict[str, int] = defaultdict(int)
        self.gauges: defaultdict[str, int] = defaultdict(int)

    def snapshot(self) -> dict:
        return {"counters": dict(self.counters), "gauges": dict(self.gauges)}


# Gauges that describe a whole cluster, which every worker observes on its own (membership,
# health, ejections): the same fact N times, so merging takes the largest, not the sum.
SHARED_GAUGE_SUFFIXES = (".membership_healthy", ".membership_degraded", ".membership_excluded",
                         ".membership_total", ".health_check.healthy", ".health_check.degraded",
                         ".outlier_detection.ejections_active")

# Counters of a fact about the cluster's hosts, counted by every worker as it builds the same
# hosts: a cluster's transport_socket_matches choices (Envoy resolves them once per host).
SHARED_COUNTER_SUFFIXES = (".total_match_count",)

# The overload manager's gauges (pressure, active, scale_percent) are each worker's own view
# of a shared fact, like the gauges above; the merge shows the most loaded worker's.
OVERLOAD_PREFIX = "overload."


def merge(snapshots) -> dict:
    """Sum counters and gauges over several workers' snapshots (shared ones: max)."""
    counters: defaultdict[str, int] = defaultdict(int)
    gauges: defaultdict[str, int] = defaultdict(int)
    for snap in snapshots:
        for name, value in snap.get("counters", {}).items():
            if name.endswith(SHARED_COUNTER_SUFFIXES):
                counters[name] = max(counters[name], value)
            else:
                counters[name] += value
        for name, value in snap.get("gauges", {}).items():
            if name.endswith(SHARED_GAUGE_SUFFIXES) or name.startswith(OVERLOAD_PREFIX):
                gauges[name] = max(gauges[name], value)
            else:
                gauges[name] += value
    return {"counters": dict(counters), "gauges": dict(gauges)}
