"""Envoy's `stats_matcher`: which stats exist. Envoy never creates a stat its matcher rejects;
Baton's workers count everything and the admin leaves the rejected ones out of /stats and
/stats/prometheus (xds/stats_config.py).

    accepts = stats_filter(snapshot["stats_config"]["matcher"])
    accepts("cluster.outbound|80||a.upstream_rq_total") -> True / False
"""

from __future__ import annotations

from typing import Callable


def stats_filter(spec: dict | None) -> Callable[[str], bool]:
    """`spec`: {"mode": "reject_all" | "accept_all" | "inclusion" | "exclusion", "patterns":
    [StringMatcher spec]} or None (every stat exists)."""
    if spec is None or spec["mode"] == "accept_all":
        return lambda name: True
    if spec["mode"] == "reject_all":
        return lambda name: False
    from ..worker.proxy.http.route_match import _string_matcher
    tests = [_string_matcher(p) for p in spec["patterns"]]
    if spec["mode"] == "inclusion":
        return lambda name: any(test(name) for test in tests)
    return lambda name: not any(test(name) for test in tests)
