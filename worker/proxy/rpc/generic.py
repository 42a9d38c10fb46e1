"""Envoy's generic_proxy over the RPC proxy: its routing and its local replies, pure logic.

A generic_proxy chain is a Dubbo or Bolt chain like the others (same connections, upstream
pools, id remapping, moves at reload); what differs is how a request finds its route and
what a local reply says. Both as Envoy's generic_proxy
(source/extensions/filters/network/generic_proxy/route_impl.cc, router/router.cc,
codecs/dubbo/config.{h,cc}):

- A request's host and path are its service (interface) name, its method the method name,
  and its properties the attachments (Bolt: headers) plus "version", the service version.
- The virtual host is found by host: exact, then the longest "*suffix", then the longest
  "prefix*", then "*" (or route_config.routes); an empty host goes to the default.
- Within it the matcher tree (xds.type.matcher.v3.Matcher) is evaluated: a list takes the
  first matcher whose predicate holds (a nested matcher that does not match lets the list go
  on); a tree looks its input up in exact_match_map, or prefix_match_map longest first; a
  missing input matches nothing; on_no_match when nothing matched.
- Retries: Envoy's num_retries is the number of tries (default 1, so none again), made when
  the upstream connect failed or the connection was reset; the route timeout (default 15 s)
  answers a request that got nothing in time. Neither a timeout nor a local reply is retried.
- Local replies (Dubbo): every failure is SERVER_ERROR (80); Envoy's codec maps only
  InvalidArgument to BAD_REQUEST, which the router never raises. The message is the
  failure's detail: empty, except after a connect failure or reset, where Envoy gives the
  transport's reason and Baton the host (the differential test compares the status only).
"""

from __future__ import annotations

import random

from ...codecs import dubbo
from ..http.route_match import _string_matcher
from . import protocols as P
from .routing import Decision, Request, _Route


# -- the request's inputs ---------------------------------------------------------------------

def _input(spec: dict):
    """The generic_proxy match input -> request -> str or None (missing)."""
    kind = spec["kind"]
    if kind in ("service", "host", "path"):
        return lambda request: request.service
    if kind == "method":
        return lambda request: request.method
    name = spec["name"]
    return lambda request: _property(request, name)


def _property(request: Request, name: str) -> str | None:
    if name == "version":
        return request.version or ""
    return request.headers.get(name.lower())


# -- the matcher tree -------------------------------------------------------------------------

def _predicate(spec: dict):
    """-> request -> bool."""
    if "single" in spec:
        single = spec["single"]
        if "request" in single:
            return _request_matcher(single["request"])
        read, test = _input(single["input"]), _string_matcher(single["value"])
        return lambda request: (value := read(request)) is not None and test(value)
    if "not" in spec:
        inner = _predicate(spec["not"])
        return lambda request: not inner(request)
    combine, parts = (any, spec["or"]) if "or" in spec else (all, spec["and"])
    parts = [_predicate(part) for part in parts]
    return lambda request: combine(part(request) for part in parts)


def _request_matcher(spec: dict):
    """generic_proxy's RequestMatcher: every matcher given holds (host, path, method, then
    each property, a missing one failing)."""
    tests = []
    for field in ("host", "path", "method"):
        if spec.get(field):
            tests.append((_input({"kind": field}), _string_matcher(spec[field])))
    for name, matcher in spec.get("properties") or ():
        tests.append((_input({"kind": "property", "name": name}), _string_matcher(matcher)))
    return lambda request: all((value := read(request)) is not None and test(value)
                               for read, test in tests)


class _OnMatch:
    __slots__ = ("route", "matcher")

    def __init__(self, spec: dict):
        self.route = _Route(spec["action"]) if "action" in spec else None
        self.matcher = Matcher(spec["matcher"]) if "matcher" in spec else None

    def evaluate(self, request: Request):
        return self.route if self.route is not None else self.matcher.evaluate(request)


class Matcher:
    """xds.type.matcher.v3.Matcher, evaluated to a route or None."""

    __slots__ = ("entries", "input", "exact", "prefixes", "on_no_match")

    def __init__(self, spec: dict):
        self.entries, self.input, self.exact, self.prefixes = None, None, {}, []
        if "list" in spec:
            self.entries = [(_predicate(m["predicate"]), _OnMatch(m["on_match"]))
                            for m in spec["list"]]
        else:
            tree = spec["tree"]
            self.input = _input(tree["input"])
            self.exact = {k: _OnMatch(v) for k, v in (tree.get("exact") or {}).items()}
            self.prefixes = sorted(((k, _OnMatch(v)) for k, v in
                                    (tree.get("prefix") or {}).items()),
                                   key=lambda kv: -len(kv[0]))
        self.on_no_match = _OnMatch(spec["on_no_match"]) if spec.get("on_no_match") else None

    def evaluate(self, request: Request):
        if self.entries is not None:
            for test, on_match in self.entries:
                if test(request):
                    found = on_match.evaluate(request)
                    if found is not None:
                        return found
        else:
            value = self.input(request)
            if value is not None:
                on_match = self.exact.get(value)
                found = on_match.evaluate(request) if on_match is not None else None
                if found is not None:
                    return found
                for prefix, on_match in self.prefixes:
                    if value.startswith(prefix):
                        found = on_match.evaluate(request)
                        if found is not None:
                            return found
        return self.on_no_match.evaluate(request) if self.on_no_match is not None else None


# -- virtual hosts ----------------------------------------------------------------------------

class GenericRouteTable:
    """The RouteTable of a generic_proxy chain (routing.RouteTable's interface)."""

    __slots__ = ("vhosts", "exact", "suffixes", "prefixes", "default", "rand",
                 "needs_arguments")

    def __init__(self, spec: dict, rand: random.Random | None = None):
        self.vhosts = [Matcher(m) for m in spec["vhosts"]]
        self.exact = spec["exact"]
        # Longest wildcard first (Envoy: "*-bar.baz.com" before "*.baz.com").
        self.suffixes = sorted(spec["suffixes"], key=lambda e: -len(e[0]))
        self.prefixes = sorted(spec["prefixes"], key=lambda e: -len(e[0]))
        self.default = spec["default"]
        self.rand = rand or random.Random()
        self.needs_arguments = False        # no generic_proxy input reads the arguments

    def virtual_host(self, host: str) -> int | None:
        if not host:
            return self.default
        index = self.exact.get(host)
        if index is not None:
            return index
        for suffix, index in self.suffixes:
            if len(suffix) < len(host) and host.endswith(suffix):
                return index
        for prefix, index in self.prefixes:
            if len(prefix) < len(host) and host.startswith(prefix):
                return index
        return self.default

    def route(self, request: Request) -> Decision | None:
        index = self.virtual_host(request.service)
        if index is None:
            return None
        route = self.vhosts[index].evaluate(request)
        if route is None:
            return None
        return Decision(route.pick(self.rand), route.timeout, route.retries, None)


# -- local replies ----------------------------------------------------------------------------

class GenericDubbo(P.Dubbo):
    """Dubbo under generic_proxy: Envoy's generic_proxy local replies, its stat root."""

    stat_root = "generic_proxy"

    @staticmethod
    def local_status(failure: str) -> int:
        # Baton's rate limit (Envoy's generic_proxy has none) answers "busy", as dubbo_proxy's.
        return dubbo.SERVER_THREADPOOL_EXHAUSTED if failure == P.RATE_LIMITED else dubbo.SERVER_ERROR

    @staticmethod
    def local_reply(frame, failure: str, detail: str) -> bytes:
        if failure == P.RATE_LIMITED:
            return dubbo.error_response(frame, dubbo.SERVER_THREADPOOL_EXHAUSTED,
                                        "baton: local rate limit")
        if failure == P.TIMEOUT:
            message = ""                    # Envoy: DeadlineExceeded "timeout", no detail
        elif failure in P.RETRIABLE:
            message = detail                # the connection's failure, as Baton names it
        else:
            message = ""
        return dubbo.error_response(frame, dubbo.SERVER_ERROR, message)


class GenericBolt(P.Bolt):
    """SOFA Bolt under generic_proxy (Baton's codec): Bolt's statuses, generic_proxy's root."""

    stat_root = "generic_proxy"


CODECS = {"dubbo": GenericDubbo, "bolt": GenericBolt}
