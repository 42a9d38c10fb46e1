"""Load balancers over a cluster's hosts: ROUND_ROBIN, RANDOM, LEAST_REQUEST, RING_HASH, MAGLEV.

Pure logic, no IO. Every balancer takes the host list once (rebuilt when endpoints change) and
answers `pick(exclude=(), hash_key=None)`, where `exclude` holds hosts this connection or
request already failed on (so that retries and `max_connect_attempts` try other endpoints
while there are any) and `hash_key` is the 64-bit hash a route's hash policy computed.

- ROUND_ROBIN is smooth weighted round robin (as nginx does): with equal weights it is plain
  rotation; with weights 3:1 the sequence is a a b a, never a burst of a's.
- RANDOM picks with probability proportional to weight.
- LEAST_REQUEST is Envoy's power of two choices: two weighted-random candidates, the one with
  fewer active requests (scaled by weight) wins.
- RING_HASH is a ketama ring as Envoy builds it: every host gets a number of points in
  proportion to its weight, each the xxHash64 of "ip:port_<i>", and a key goes to the first
  point at or after its hash. Same hash function and key layout as Envoy, so for the same
  hash key both proxies pick the same host.
- MAGLEV is Google's Maglev table (prime size, 65537 by default) with Envoy's weighting: a
  host of half the top weight takes a slot every second round.
Without a hash key, RING_HASH and MAGLEV pick at a random point, as Envoy does.

Health: a host is available when `healthy` (active health check), not `ejected`
(outlier detection) and not `eds_unhealthy` (its EDS health_status says UNHEALTHY, DRAINING or
TIMEOUT: Envoy's FAILED_EDS_HEALTH; both verdicts must pass, as in Envoy). Envoy's panic mode: when fewer than `panic_threshold` percent of the
hosts are available, the balancer ignores health and balances over all of them. The set to
balance over is computed in `refresh()`, which whoever changes a host's health calls, so
`pick()` never looks at health.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import struct

DEFAULT_PANIC_THRESHOLD = 50.0          # CommonLbConfig.healthy_panic_threshold
DEFAULT_MIN_RING_SIZE = 1024            # RingHashLbConfig.minimum_ring_size
DEFAULT_MAX_RING_SIZE = 8 * 1024 * 1024  # RingHashLbConfig.maximum_ring_size
DEFAULT_MAGLEV_TABLE_SIZE = 65537       # MaglevLbConfig.table_size
_MASK64 = (1 << 64) - 1


class Host:
    __slots__ = ("address", "port", "weight", "active", "total", "connect_fail", "stat_id",
                 "healthy", "ejected", "eds_unhealthy", "outlier", "health", "_hashes")

    def __init__(self, address: str, port: int, weight: int = 1):
        # Built by the ten thousand on a large EDS update: plain stores only, nothing derived
        # that a host may never need (hash_name and _hashes are made on first use).
        self.address = address
        self.port = port
        self.weight = weight if weight.__class__ is int and weight > 0 else max(1, int(weight))
        self.active = 0          # open connections (L4) or requests in flight (L7)
        self.total = 0           # connections attempted
        self.connect_fail = 0
        self.stat_id = f"{address}:{port}"
        self.healthy = True      # active health check verdict (health.py)
        self.ejected = False     # outlier detection verdict (outlier.py)
        self.eds_unhealthy = False   # the control plane's health_status for it
        self.outlier = None      # outlier.py's per-host counters, created on first report
        self.health = None       # health.py's per-host state, while a checker runs
        self._hashes = None      # ring hash function name -> [hash of "ip:port_<i>"]

    @property
    def hash_name(self) -> str:
        """Envoy's string form of the address, which ring hash and Maglev hash (IPv6
        bracketed)."""
        return f"[{self.address}]:{self.port}" if ":" in self.address else self.stat_id

    @property
    def available(self) -> bool:
        return self.healthy and not self.ejected and not self.eds_unhealthy

    def ring_hashes(self, function, count: int) -> list[int]:
        """The first `count` ring points of this host (cached: a health change rebuilds the
        ring from the same points, so only the first build pays for hashing)."""
        if self._hashes is None:
            self._hashes = {}
        hashes = self._hashes.setdefault(function.__name__, [])
        if len(hashes) < count:
            prefix = self.hash_name + "_"     # Envoy's key: the address string + "_<i>"
            hashes.extend(function(f"{prefix}{i}".encode()) for i in range(len(hashes), count))
        return hashes

    def __repr__(self) -> str:
        return f"Host({self.stat_id}, w={self.weight})"


# --- stable 64-bit hashes --------------------------------------------------------------------

_P1, _P2, _P3 = 11400714785074694791, 14029467366897019727, 1609587929392839161
_P4, _P5 = 9650029242287828579, 2870177450012600261
_U64 = struct.Struct("<Q").unpack_from
_U32 = struct.Struct("<I").unpack_from


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK64


def _xx_round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _MASK64, 31) * _P1) & _MASK64


def xxhash64(data: bytes, seed: int = 0) -> int:
    """XXH64 (the xxHash 64-bit algorithm), which Envoy uses for ring hash points, Maglev
    permutations and hash policies. Python's hash() is salted per process: useless here."""
    n, i = len(data), 0
    if n >= 32:
        v1, v2 = (seed + _P1 + _P2) & _MASK64, (seed + _P2) & _MASK64
        v3, v4 = seed & _MASK64, (seed - _P1) & _MASK64
        while i + 32 <= n:
            v1 = _xx_round(v1, _U64(data, i)[0])
            v2 = _xx_round(v2, _U64(data, i + 8)[0])
            v3 = _xx_round(v3, _U64(data, i + 16)[0])
            v4 = _xx_round(v4, _U64(data, i + 24)[0])
            i += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _MASK64
        for v in (v1, v2, v3, v4):
            h = ((h ^ _xx_round(0, v)) * _P1 + _P4) & _MASK64
    else:
        h = (seed + _P5) & _MASK64
    h = (h + n) & _MASK64
    while i + 8 <= n:
        h ^= _xx_round(0, _U64(data, i)[0])
        h = (_rotl(h, 27) * _P1 + _P4) & _MASK64
        i += 8
    if i + 4 <= n:
        h ^= (_U32(data, i)[0] * _P1) & _MASK64
        h = (_rotl(h, 23) * _P2 + _P3) & _MASK64
        i += 4
    while i < n:
        h ^= (data[i] * _P5) & _MASK64
        h = (_rotl(h, 11) * _P1) & _MASK64
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _MASK64
    h ^= h >> 29
    h = (h * _P3) & _MASK64
    return h ^ (h >> 32)


_MURMUR_MUL = 0xC6A4A7935BD1E995
_MURMUR_SEED = 0xC70F6907


def murmurhash2_64(data: bytes, seed: int = _MURMUR_SEED) -> int:
    """64-bit MurmurHash2 in the variant of libstdc++'s std::hash<string>, which is what
    Envoy's RingHashLbConfig MURMUR_HASH_2 means (its default seed included)."""
    def shift_mix(v):
        return v ^ (v >> 47)
    n = len(data)
    aligned = n & ~7
    h = (seed ^ (n * _MURMUR_MUL)) & _MASK64
    for i in range(0, aligned, 8):
        k = (shift_mix((_U64(data, i)[0] * _MURMUR_MUL) & _MASK64) * _MURMUR_MUL) & _MASK64
        h = ((h ^ k) * _MURMUR_MUL) & _MASK64
    if n & 7:
        h = ((h ^ int.from_bytes(data[aligned:], "little")) * _MURMUR_MUL) & _MASK64
    h = (shift_mix(h) * _MURMUR_MUL) & _MASK64
    return shift_mix(h)


HASH_FUNCTIONS = {"XX_HASH": xxhash64, "MURMUR_HASH_2": murmurhash2_64}


# --- balancers -------------------------------------------------------------------------------

class Balancer:
    """What every policy shares: the health view and panic mode.

    `hosts` is the cluster's host list (all of them); `available` is what `pick` balances
    over: the healthy, non-ejected hosts, or all hosts in panic.
    """

    __slots__ = ("hosts", "available", "panic", "panic_threshold", "_rand")

    def __init__(self, hosts: list[Host], rand: random.Random | None = None, *,
                 panic_threshold: float = DEFAULT_PANIC_THRESHOLD):
        self.hosts = hosts
        self._rand = rand or random.Random()
        self.panic_threshold = panic_threshold
        self.refresh()

    def refresh(self) -> None:
        """Recompute the set to balance over; call after any host's health changed."""
        hosts = self.hosts
        usable = [h for h in hosts if h.available]
        # Envoy: panic when healthy% < threshold; 0 disables panic mode. An empty cluster
        # is "in panic" too, which changes nothing: there is nothing to pick.
        self.panic = bool(hosts) and 100.0 * len(usable) < self.panic_threshold * len(hosts)
        available = hosts if self.panic or len(usable) == len(hosts) else usable
        self.available = available
        self._rebuild(available)

    def _rebuild(self, available: list[Host]) -> None:
        """Hook for balancers with derived state (ring, Maglev table, weighted schedule);
        round robin, random and least request read `available` directly."""

    def _all_excluded(self, exclude) -> bool:
        return all(h in exclude for h in self.available)


class RoundRobin(Balancer):
    __slots__ = ("_current",)

    def _rebuild(self, available):
        self._current = [0] * len(available)

    def pick(self, exclude=(), hash_key=None) -> Host | None:
        total = 0
        best = -1
        current = self._current
        available = self.available
        for i, host in enumerate(available):
            if host in exclude:
                continue
            current[i] += host.weight
            total += host.weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        current[best] -= total
        return available[best]


class Random(Balancer):
    __slots__ = ("_cumulative",)

    def _rebuild(self, available):
        self._cumulative = list(itertools.accumulate(h.weight for h in available))

    def _weighted(self, hosts, cumulative) -> Host:
        point = self._rand.random() * cumulative[-1]
        return hosts[bisect.bisect_right(cumulative, point)]

    def pick(self, exclude=(), hash_key=None) -> Host | None:
        available = self.available
        if not available:
            return None
        if exclude:
            remaining = [h for h in available if h not in exclude]
            if not remaining:
                return None
            if len(remaining) < len(available):
                return self._weighted(remaining,
                                      list(itertools.accumulate(h.weight for h in remaining)))
        return self._weighted(available, self._cumulative)


class LeastRequest(Random):
    __slots__ = ()

    def pick(self, exclude=(), hash_key=None) -> Host | None:
        first = super().pick(exclude)
        if first is None:
            return None
        second = super().pick(exclude)
        # Compare active/weight without division: a.active * b.weight vs b.active * a.weight.
        if second.active * first.weight < first.active * second.weight:
            return second
        return first


class _HashBalancer(Balancer):
    """RING_HASH and MAGLEV: a precomputed table looked up by hash; exclusions walk on."""

    __slots__ = ()

    def pick(self, exclude=(), hash_key=None) -> Host | None:
        if not self.available:
            return None
        if exclude and self._all_excluded(exclude):
            return None
        if hash_key is None:
            hash_key = self._rand.getrandbits(64)
        return self._lookup(hash_key & _MASK64, exclude)


class RingHash(_HashBalancer):
    __slots__ = ("min_ring_size", "max_ring_size", "hash_function", "_points", "_owners")

    def __init__(self, hosts, rand=None, *, minimum_ring_size=DEFAULT_MIN_RING_SIZE,
                 maximum_ring_size=DEFAULT_MAX_RING_SIZE, hash_function="XX_HASH",
                 panic_threshold=DEFAULT_PANIC_THRESHOLD):
        self.min_ring_size = int(minimum_ring_size)
        self.max_ring_size = int(maximum_ring_size)
        self.hash_function = HASH_FUNCTIONS[hash_function]
        super().__init__(hosts, rand, panic_threshold=panic_threshold)

    def _rebuild(self, available):
        if not available:
            self._points, self._owners = [], []
            return
        total_weight = sum(h.weight for h in available)
        min_share = min(h.weight for h in available) / total_weight
        # Envoy's sizing: the lightest host gets at least ceil(min_share * min_ring_size)
        # points, everyone else in proportion, the whole ring capped at max_ring_size.
        scale = min(math.ceil(min_share * self.min_ring_size) / min_share, self.max_ring_size)
        entries = []
        target = 0.0
        count = 0
        for host in available:
            target += scale * host.weight / total_weight
            n = max(0, math.ceil(target) - count)     # Envoy: add points while count < target
            count += n
            entries.extend((point, host) for point in host.ring_hashes(self.hash_function, n))
        entries.sort(key=lambda e: e[0])
        self._points = [p for p, _ in entries]
        self._owners = [h for _, h in entries]

    @property
    def ring_size(self) -> int:
        return len(self._points)

    def _lookup(self, key, exclude):
        index = bisect.bisect_left(self._points, key)     # first point at or after the key
        owners = self._owners
        size = len(owners)
        if index == size:
            index = 0
        host = owners[index]
        while host in exclude:       # terminates: some available host is not excluded
            index = index + 1 if index + 1 < size else 0
            host = owners[index]
        return host


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


class Maglev(_HashBalancer):
    __slots__ = ("table_size", "_table")

    def __init__(self, hosts, rand=None, *, table_size=DEFAULT_MAGLEV_TABLE_SIZE,
                 panic_threshold=DEFAULT_PANIC_THRESHOLD):
        if not is_prime(int(table_size)):
            raise ValueError(f"maglev table size {table_size} is not prime")
        self.table_size = int(table_size)
        super().__init__(hosts, rand, panic_threshold=panic_threshold)

    def _rebuild(self, available):
        size = self.table_size
        if not available:
            self._table = []
            return
        table = [None] * size
        top = max(h.weight for h in available)
        # Per host: [offset, skip, next index into its permutation, weight bar, weight].
        states = []
        for host in available:
            key = host.hash_name.encode()
            states.append([xxhash64(key, 0) % size, xxhash64(key, 1) % (size - 1) + 1, 0,
                           0, host.weight, host])
        filled = 0
        round_ = 0
        while filled < size:
            round_ += 1
            for state in states:
                # A host takes a slot in this round when round * weight has reached its bar;
                # the bar rises by the top weight per slot, so slots follow weight.
                if round_ * state[4] < state[3]:
                    continue
                state[3] += top
                offset, skip, nxt = state[0], state[1], state[2]
                slot = (offset + skip * nxt) % size
                while table[slot] is not None:
                    nxt += 1
                    slot = (offset + skip * nxt) % size
                table[slot] = state[5]
                state[2] = nxt + 1
                filled += 1
                if filled == size:
                    break
        self._table = table

    def _lookup(self, key, exclude):
        table = self._table
        size = len(table)
        index = key % size
        host = table[index]
        while host in exclude:
            index = index + 1 if index + 1 < size else 0
            host = table[index]
        return host


POLICIES = {"ROUND_ROBIN": RoundRobin, "RANDOM": Random, "LEAST_REQUEST": LeastRequest,
            "RING_HASH": RingHash, "MAGLEV": Maglev}


def make_balancer(policy: str, hosts: list[Host], *, panic_threshold=DEFAULT_PANIC_THRESHOLD,
                  ring_hash: dict | None = None, maglev: dict | None = None,
                  rand: random.Random | None = None):
    """A balancer for `policy`; `ring_hash` / `maglev` are the snapshot's config dicts."""
    cls = POLICIES.get(policy)
    if cls is None:
        raise ValueError(f"unsupported lb_policy {policy!r}")
    extra = {}
    if cls is RingHash and ring_hash:
        extra = {k: ring_hash[k] for k in ("minimum_ring_size", "maximum_ring_size",
                                           "hash_function") if ring_hash.get(k) is not None}
    elif cls is Maglev and maglev and maglev.get("table_size"):
        extra = {"table_size": maglev["table_size"]}
    return cls(hosts, rand, panic_threshold=panic_threshold, **extra)
