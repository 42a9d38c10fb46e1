"""Routing an RPC request as Envoy's dubbo_proxy does (router/route_matcher.cc), pure logic.

Route configurations are tried in order; one applies when its interface, group and version
match the request, and then its routes are tried in order: attachment (header) matchers,
method name, parameter matches. The first route that matches picks the cluster (weighted:
by the sum of the weights, as Envoy). No match anywhere: no route.
"""

from __future__ import annotations

import random
import re
from typing import NamedTuple

from ..http.route_match import _HeaderMatcher, _string_matcher

_INT64 = re.compile(r"[+-]?[0-9]+")


class Request(NamedTuple):
    """What a request routes on (protocols.py builds it)."""
    service: str
    version: str | None
    group: str | None
    method: str
    headers: dict                   # lowercased name -> str
    arguments: tuple = ()           # decoded arguments (parameter matches), if any


class Decision(NamedTuple):
    cluster: str
    timeout: float | None           # the route's own timeout (Bolt config), seconds
    retries: int = 0                # tries again on connect failure or reset (Bolt config)
    hash_header: str | None = None  # what a hashing cluster hashes (None: the service)


def _interface_matcher(pattern: str):
    if pattern == "*":
        return bool
    if pattern.startswith("*"):
        suffix = pattern[1:]
        return lambda name: len(name) > len(suffix) and name.endswith(suffix)
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        return lambda name: len(name) > len(prefix) and name.startswith(prefix)
    return pattern.__eq__


def _parameter_text(value) -> str | None:
    """An argument as the text parameter matches compare with: strings as they are, whole
    numbers in decimal; anything else does not match."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


class _Route:
    __slots__ = ("method", "params", "headers", "cluster", "weighted", "total", "timeout",
                 "retries", "hash_header")

    def __init__(self, spec: dict):
        # A generic_proxy route action (generic.py) has no method: only pick() is used.
        self.method = _string_matcher(spec["method"]) if spec.get("method") else None
        self.params = sorted(spec.get("params", {}).items())
        self.headers = [_HeaderMatcher(h) for h in spec.get("headers") or ()]
        self.cluster = spec.get("cluster")
        self.weighted = [(c["name"], c["weight"]) for c in spec.get("weighted_clusters") or ()]
        self.total = sum(w for _, w in self.weighted)
        self.timeout = spec.get("timeout")
        self.retries = spec.get("retries") or 0
        self.hash_header = spec.get("hash_header")

    def matches(self, request: Request) -> bool:
        if not all(h.matches(request.headers) for h in self.headers):
            return False
        if not request.method or not self.method(request.method):
            return False
        if self.params:
            args = request.arguments
            if not args:
                return False
            for index, spec in self.params:
                if index >= len(args):
                    return False
                text = _parameter_text(args[index])
                if text is None:
                    return False
                if "range" in spec:
                    start, end = spec["range"]
                    if not _INT64.fullmatch(text) or not start <= int(text) < end:
                        return False
                elif spec["exact"] and text != spec["exact"]:
                    return False
        return True

    def pick(self, rand: random.Random) -> str:
        if not self.weighted:
            return self.cluster
        point = rand.randrange(self.total)
        for name, weight in self.weighted:
            if point < weight:
                return name
            point -= weight
        return self.weighted[-1][0]


class _RouteConfig:
    __slots__ = ("interface", "group", "version", "routes")

    def __init__(self, spec: dict):
        self.interface = _interface_matcher(spec["interface"])
        self.group = spec.get("group")
        self.version = spec.get("version")
        self.routes = [_Route(r) for r in spec["routes"]]

    def applies(self, request: Request) -> bool:
        return (self.interface(request.service)
                and (self.version is None or request.version == self.version)
                and (self.group is None or request.group == self.group))


class RouteTable:
    __slots__ = ("configs", "rand", "needs_arguments")

    def __init__(self, route_configs: list, rand: random.Random | None = None):
        self.configs = [_RouteConfig(c) for c in route_configs]
        self.rand = rand or random.Random()
        # Decoding the arguments costs; only parameter matches need them.
        self.needs_arguments = any(r.params for c in self.configs for r in c.routes)

    def route(self, request: Request) -> Decision | None:
        for config in self.configs:
            if not config.applies(request):
                continue
            for route in config.routes:
                if route.matches(request):
                    return Decision(route.pick(self.rand), route.timeout, route.retries,
                                    route.hash_header)
        return None
