"""envoy.filters.http.cors: Envoy's CORS filter, with the policy of the matched route.

The filter has no settings of its own; a route or its virtual host carries the CorsPolicy in
typed_per_filter_config["envoy.filters.http.cors"] (xds/http_filters_istio.py). Each policy
field comes from the route's policy when it sets it, else from the virtual host's. For a
request with an Origin the policy allows (one of allow_origin_string_match matches the origin,
or matches "*"):

- a preflight (OPTIONS with a non-empty access-control-request-method) is answered here: 200
  with access-control-allow-origin (the origin), -allow-credentials, -allow-methods,
  -allow-headers and -max-age as configured (and -expose-headers, as any response); it
  never reaches the upstream;
- any other request goes on, and its response gets access-control-allow-origin,
  access-control-allow-credentials and access-control-expose-headers.

No policy, no Origin, an origin not allowed, or filter_enabled not hit: the request passes
untouched (a preflight then goes upstream, forward_not_matching_preflights' default).

Cost when there is nothing to do (issue 17): a route's merged policy is computed once, not per
request; and when the filter is the chain's first (as Istio puts it), a request without Origin
gets no filter at all (nothing before it can add one), so the stream pays one header lookup.
"""

from __future__ import annotations

import random
import re

from .filter import FilterFactory, LocalReply, StreamFilter, register

NAME = "envoy.filters.http.cors"
_FIELDS = ("origins", "allow_methods", "allow_headers", "expose_headers", "max_age",
           "allow_credentials")


def effective_policy(route) -> dict | None:
    """The route's CORS policy merged over its virtual host's, or None."""
    per_filter = getattr(route, "per_filter", None) if route is not None else None
    if not per_filter:
        return None
    route_policy, vhost_policy = (pf.get(NAME) for pf in per_filter)
    if route_policy is None and vhost_policy is None:
        return None
    first = route_policy or vhost_policy
    policy = {"enabled": first["enabled"]}
    for key in _FIELDS:
        policy[key] = (route_policy or {}).get(key) or (vhost_policy or {}).get(key)
    return policy


_REGEX_CACHE: dict = {}


def _matches(matcher: dict, value: str) -> bool:
    kind, pattern = matcher["kind"], matcher["value"]
    if kind == "regex":
        compiled = _REGEX_CACHE.get(pattern)
        if compiled is None:
            compiled = _REGEX_CACHE[pattern] = re.compile(pattern)
        return compiled.fullmatch(value) is not None
    if matcher["ignore_case"]:
        pattern, value = pattern.lower(), value.lower()
    if kind == "exact":
        return value == pattern
    if kind == "prefix":
        return value.startswith(pattern)
    if kind == "suffix":
        return value.endswith(pattern)
    return pattern in value


def origin_allowed(policy: dict, origin: str) -> bool:
    return any(_matches(m, origin) or _matches(m, "*") for m in policy["origins"] or ())


_POLICIES_KEPT = 4096    # routes whose merged policy a factory keeps (RDS replaces routes)


@register(NAME)
class CorsFactory(FilterFactory):
    clears_route_cache = False

    def __init__(self, config: dict, context):
        super().__init__(config, context)
        self.policies: dict = {}       # route -> its effective_policy (None: no policy)
        self.first = None              # first filter of its chain (known at the first request)
        # The last request's route and its policy: a request on the same route (most, on a
        # table of few routes) reads them with an identity test, not the dict's get call.
        self.last_route = self.last_policy = self

    def create(self, stream):
        route = stream.route
        if route is self.last_route:
            policy = self.last_policy
        else:
            policies = self.policies
            policy = policies.get(route, policies)
            if policy is policies:
                if len(policies) >= _POLICIES_KEPT:
                    policies.clear()
                policy = policies[route] = effective_policy(route)
            self.last_route, self.last_policy = route, policy
        if policy is None:
            return None
        first = self.first
        if first is None:
            hcm = getattr(stream, "hcm", None)
            first = self.first = hcm is not None and hcm.filter_factories[0] is self
        if first:
            # Headers.__contains__ written in place (one call fewer for every request).
            for key, _ in stream.request.headers.items:
                if key == "origin":
                    break
            else:
                return None
        return CorsFilter(stream, policy)


class CorsFilter(StreamFilter):
    __slots__ = ("policy", "origin")

    def __init__(self, stream, policy: dict):
        super().__init__(stream)
        self.policy = policy
        self.origin = None

    def on_request_headers(self, request, end_stream: bool):
        policy = self.policy
        origin = request.headers.get("origin")
        if not origin or not origin_allowed(policy, origin):
            return None
        if policy["enabled"] < 1.0 and random.random() >= policy["enabled"]:
            return None
        self.origin = origin
        if request.method != "OPTIONS" or not request.headers.get("access-control-request-method"):
            return None
        headers = [("access-control-allow-origin", origin)]
        if policy["allow_credentials"]:
            headers.append(("access-control-allow-credentials", "true"))
        for key in ("allow_methods", "allow_headers", "max_age"):
            if policy[key]:
                headers.append(("access-control-" + key.replace("_", "-"), policy[key]))
        return LocalReply(200, b"", headers, details="cors_response")

    def on_response_headers(self, response, end_stream: bool):
        # The preflight answer comes through here too (Envoy encodes it through the filter
        # chain): it gains access-control-expose-headers as well.
        if self.origin is None:
            return None
        headers = response.headers
        headers.set("access-control-allow-origin", self.origin)
        if self.policy["allow_credentials"]:
            headers.set("access-control-allow-credentials", "true")
        if self.policy["expose_headers"]:
            headers.set("access-control-expose-headers", self.policy["expose_headers"])
        return None
