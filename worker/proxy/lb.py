"""Load balancers over a cluster's hosts: ROUND_ROBIN, RANDOM, LEAST_REQUEST.

Pure logic, no IO. Every balancer takes the host list once (rebuilt when endpoints change) and
answers `pick(exclude)`, where `exclude` holds hosts this connection already failed on, so that
`max_connect_attempts` tries other endpoints while there are any.

- ROUND_ROBIN is smooth weighted round robin (as nginx does): with equal weights it is plain
  rotation; with weights 3:1 the sequence is a a b a, never a burst of a's.
- RANDOM picks with probability proportional to weight.
- LEAST_REQUEST is Envoy's power of two choices: two weighted-random candidates, the one with
  fewer active requests (scaled by weight) wins.
"""

from __future__ import annotations

import bisect
import itertools
import random


class Host:
    __slots__ = ("address", "port", "weight", "active", "total", "connect_fail", "stat_id")

    def __init__(self, address: str, port: int, weight: int = 1):
        self.address = address
        self.port = port
        self.weight = max(1, int(weight))
        self.active = 0          # open connections (L4) or requests in flight (L7)
        self.total = 0           # connections attempted
        self.connect_fail = 0
        self.stat_id = f"{address}:{port}"

    def __repr__(self) -> str:
        return f"Host({self.stat_id}, w={self.weight})"


class RoundRobin:
    __slots__ = ("hosts", "_current")

    def __init__(self, hosts: list[Host]):
        self.hosts = hosts
        self._current = [0] * len(hosts)

    def pick(self, exclude=()) -> Host | None:
        total = 0
        best = -1
        current = self._current
        for i, host in enumerate(self.hosts):
            if host in exclude:
                continue
            current[i] += host.weight
            total += host.weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        current[best] -= total
        return self.hosts[best]


class Random:
    __slots__ = ("hosts", "_cumulative", "_rand")

    def __init__(self, hosts: list[Host], rand: random.Random | None = None):
        self.hosts = hosts
        self._cumulative = list(itertools.accumulate(h.weight for h in hosts))
        self._rand = rand or random.Random()

    def _weighted(self) -> Host:
        point = self._rand.random() * self._cumulative[-1]
        return self.hosts[bisect.bisect_right(self._cumulative, point)]

    def pick(self, exclude=()) -> Host | None:
        if not self.hosts:
            return None
        if exclude:
            remaining = [h for h in self.hosts if h not in exclude]
            if not remaining:
                return None
            if len(remaining) < len(self.hosts):
                return Random(remaining, self._rand)._weighted()
        return self._weighted()


class LeastRequest(Random):
    __slots__ = ()

    def pick(self, exclude=()) -> Host | None:
        first = super().pick(exclude)
        if first is None:
            return None
        second = super().pick(exclude)
        # Compare active/weight without division: a.active * b.weight vs b.active * a.weight.
        if second.active * first.weight < first.active * second.weight:
            return second
        return first


POLICIES = {"ROUND_ROBIN": RoundRobin, "RANDOM": Random, "LEAST_REQUEST": LeastRequest}


def make_balancer(policy: str, hosts: list[Host]):
    try:
        return POLICIES[policy](hosts)
    except KeyError:
        raise ValueError(f"unsupported lb_policy {policy!r}") from None
