"""Envoy's priority levels and locality-weighted load balancing over a cluster's hosts.

Pure logic, no IO. Used instead of a plain balancer (lb.py) when a cluster's endpoints use
more than priority 0, or the cluster sets common_lb_config.locality_weighted_lb_config; the
cluster's lb_policy still picks the host, inside the chosen priority (and locality).

Envoy's rules (load_balancer_impl.cc, "Priority levels" and "Locality weighted load
balancing" in its architecture docs):

- A priority's health is min(100, overprovisioning_factor/100 x its healthy hosts x 100 /
  its hosts): with the default factor 1.4, a level with 72% healthy hosts still counts as
  100% healthy. The normalized total health is min(100, the sum over levels).
- Priority load: levels in order each take min(what is left, health x 100 / normalized
  total health) percent of the traffic; rounding leftovers go to the first level with health.
  So P0 takes all the traffic while it is healthy enough, and spills to P1 as it degrades.
- Panic is per level: a level whose healthy share is below healthy_panic_threshold balances
  over all its hosts. When every level is in panic (or none has health) the load follows the
  levels' host counts. With a threshold of 0 and no health anywhere, nothing is picked.
- Locality weighting: within the chosen level a locality is picked with its effective weight,
  load_balancing_weight x min(1, overprovisioning x its healthy share) (in panic: its
  weight); a locality without a weight gets no traffic. Localities are picked by smooth
  weighted round robin (Envoy uses an EDF schedule: the same proportions).

The levels are computed in refresh(), which Cluster.refresh() calls on every health change.
"""

from __future__ import annotations

import random

from .lb import Host, make_balancer

DEFAULT_OVERPROVISIONING = 140      # ClusterLoadAssignment.Policy.overprovisioning_factor


class _Locality:
    __slots__ = ("key", "weight", "hosts", "balancer", "effective", "current")

    def __init__(self, key, weight, hosts, balancer):
        self.key, self.weight, self.hosts, self.balancer = key, weight, hosts, balancer
        self.effective = 0
        self.current = 0


class _Level:
    """One priority: its hosts, and the balancers over them (one per locality when
    locality-weighted, else one over the whole level)."""

    __slots__ = ("hosts", "localities", "whole", "health", "panic", "load")

    def __init__(self):
        self.hosts: list[Host] = []
        self.localities: list[_Locality] = []
        self.whole = None
        self.health = 0
        self.panic = False
        self.load = 0


def needs_priorities(endpoints, locality_weighted) -> bool:
    """True when the plain balancer would not do: a second priority, or locality weighting."""
    return locality_weighted or any(ep.get("priority") for ep in endpoints)


class PriorityBalancer:
    __slots__ = ("hosts", "available", "panic", "panic_threshold", "levels", "overprovisioning",
                 "locality_weighted", "_rand")

    def __init__(self, placed, policy, *, panic_threshold, locality_weighted=False,
                 overprovisioning=DEFAULT_OVERPROVISIONING, ring_hash=None, maglev=None,
                 rand: random.Random | None = None):
        """placed: [(host, priority, locality key or None, locality weight or None)]."""
        self._rand = rand or random.Random()
        self.panic_threshold = panic_threshold
        self.overprovisioning = overprovisioning
        self.locality_weighted = locality_weighted
        self.hosts = [host for host, *_ in placed]
        top = max((priority for _, priority, _, _ in placed), default=0)
        self.levels = [_Level() for _ in range(top + 1)]
        grouped: list[dict] = [{} for _ in self.levels]
        for host, priority, key, weight in placed:
            level = self.levels[priority]
            level.hosts.append(host)
            entry = grouped[priority].setdefault(key, [weight, []])
            entry[1].append(host)

        def inner(hosts):
            # Panic is decided per level here; the inner balancer is told by its threshold
            # (100: every host, 0: healthy hosts only), set in refresh().
            return make_balancer(policy, hosts, panic_threshold=0.0, ring_hash=ring_hash,
                                 maglev=maglev, rand=self._rand)

        for level, localities in zip(self.levels, grouped):
            if locality_weighted:
                level.localities = [_Locality(key, weight or 0, hosts, inner(hosts))
                                    for key, (weight, hosts) in localities.items()]
            else:
                level.whole = inner(level.hosts)
        self.refresh()

    # -- health -> loads -----------------------------------------------------------------

    def refresh(self) -> None:
        over = self.overprovisioning
        threshold = self.panic_threshold
        for level in self.levels:
            total = len(level.hosts)
            healthy = sum(1 for h in level.hosts if h.available)
            level.health = min(100, over * healthy // total) if total else 0
            level.panic = bool(total) and 100 * healthy < threshold * total
        total_health = min(100, sum(level.health for level in self.levels))
        if total_health == 0:
            if threshold == 0:          # panic disabled and nothing healthy: no host at all
                for level in self.levels:
                    level.load, level.panic = 0, False
            else:
                for level in self.levels:
                    level.panic = bool(level.hosts)
        if total_health and not all(level.panic for level in self.levels if level.hosts):
            self._share([level.health * 100 // total_health for level in self.levels],
                        [level.health for level in self.levels])
        elif total_health or threshold:
            # Total panic: the load follows the host counts.
            count = len(self.hosts)
            self._share([100 * len(level.hosts) // count if count else 0
                         for level in self.levels], [len(level.hosts) for level in self.levels])
        for level in self.levels:
            self._refresh_level(level)
        self.panic = any(level.panic and level.load for level in self.levels)
        self.available = [h for level in self.levels if level.load for h in level.hosts]

    def _share(self, wanted, eligible):
        remaining = 100
        for level, want in zip(self.levels, wanted):
            level.load = min(remaining, want)
            remaining -= level.load
        if remaining:                   # rounding: to the first level that may take load
            for level, ok in zip(self.levels, eligible):
                if ok:
                    level.load += remaining
                    break

    def _refresh_level(self, level):
        everyone = 100.0 if level.panic else 0.0
        balancers = [level.whole] if level.whole is not None else [
            loc.balancer for loc in level.localities]
        for balancer in balancers:
            balancer.panic_threshold = everyone
            balancer.refresh()
        over = self.overprovisioning
        for loc in level.localities:
            if level.panic:
                loc.effective = loc.weight
            else:
                healthy = sum(1 for h in loc.hosts if h.available)
                # Envoy: weight x min(1, overprovisioning x healthy / hosts), truncated.
                loc.effective = loc.weight * min(100 * len(loc.hosts), over * healthy) // (
                    100 * len(loc.hosts)) if loc.hosts else 0

    # -- picking -------------------------------------------------------------------------

    def pick(self, exclude=(), hash_key=None) -> Host | None:
        point = (hash_key if hash_key is not None else self._rand.getrandbits(32)) % 100
        chosen, upto = None, 0
        for index, level in enumerate(self.levels):
            upto += level.load
            if level.load and point < upto:
                chosen = index
                break
        if chosen is None:
            return None
        # The chosen level first; then, if everything there is excluded (a retry), the others
        # that take load, in priority order.
        order = [chosen] + [i for i, level in enumerate(self.levels)
                            if i != chosen and level.load]
        for index in order:
            host = self._pick_in(self.levels[index], exclude, hash_key)
            if host is not None:
                return host
        return None

    def _pick_in(self, level, exclude, hash_key):
        if level.whole is not None:
            return level.whole.pick(exclude, hash_key)
        tried = set()
        while True:
            loc = self._next_locality(level, tried)
            if loc is None:
                return None
            host = loc.balancer.pick(exclude, hash_key)
            if host is not None:
                return host
            tried.add(loc.key)

    @staticmethod
    def _next_locality(level, tried):
        """Smooth weighted round robin over the effective weights (skipping `tried`)."""
        best, total = None, 0
        for loc in level.localities:
            if loc.effective <= 0 or loc.key in tried:
                continue
            loc.current += loc.effective
            total += loc.effective
            if best is None or loc.current > best.current:
                best = loc
        if best is not None:
            best.current -= total
        return best

    def _all_excluded(self, exclude) -> bool:
        return all(h in exclude for h in self.available)
