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


def merge(snapshots) -> dict:
    """Sum counters and gauges over several workers' snapshots."""
    counters: defaultdict[str, int] = defaultdict(int)
    gauges: defaultdict[str, int] = defaultdict(int)
    for snap in snapshots:
        for name, value in snap.get("counters", {}).items():
            counters[name] += value
        for name, value in snap.get("gauges", {}).items():
            gauges[name] += value
    return {"counters": dict(counters), "gauges": dict(gauges)}
