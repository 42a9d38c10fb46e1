"""envoy.filters.http.rbac: Istio's AuthorizationPolicy on HTTP, as Envoy's RBAC filter.

Config: xds/rbac.py translate_http_rbac, plus "filter_name" (the HCM entry's name: a route's
typed_per_filter_config[that name], an RBACPerRoute, replaces the filter's rules and shadow
rules for that route; the route's over its virtual host's). Per request, in Envoy's order
(checked against Envoy 1.40, tests/integration/test_differential_rbac.py):

- shadow rules, when there are: evaluated and counted (shadow_allowed / shadow_denied),
  never enforced; the result goes into the stream's dynamic metadata as Envoy writes it
  (`envoy.filters.http.rbac`: `<shadow_rules_stat_prefix>shadow_engine_result` allowed or
  denied, and `<shadow_rules_stat_prefix>shadow_effective_policy_id` when a policy
  matched), which Istio's CUSTOM action reads to enable ext_authz;
- rules, when there are: allowed counts `allowed` and the request goes on; denied counts
  `denied` and is answered 403 "RBAC: access denied", response code details
  rbac_access_denied_matched_policy[<the DENY policy that matched, or none>], flag UAEX.
  LOG rules always allow. No rules: nothing is enforced.

Stats: http.<hcm stat_prefix>.rbac.<rules_stat_prefix>{allowed,denied} and
...rbac.<shadow_rules_stat_prefix>{shadow_allowed,shadow_denied}; a rules prefix without a
trailing dot gets one, as Envoy 1.40 shows (rbac.istio_dry_run_allow_.shadow_allowed).
"""

from __future__ import annotations

from ..internal_listener import peer_principal
from ..rbac_engine import Engine, Facts
from .filter import FilterFactory, LocalReply, StreamFilter, register

NAME = "envoy.filters.http.rbac"
BODY = "RBAC: access denied"


def details(policy: str | None) -> str:
    return f"rbac_access_denied_matched_policy[{policy or 'none'}]"


def stat_prefix_join(prefix: str, more: str | None) -> str:
    """Envoy's statPrefixJoin: a prefix without its trailing dot gets one (rbac.r_.allowed)."""
    if not more:
        return prefix
    return prefix + more + ("" if more.endswith(".") else ".")


MAX_PER_ROUTE = 4096      # per-route engines kept; an RDS update leaves old ones behind


class Engines:
    """One RBAC config's enforced and shadow engines with their counter names."""

    __slots__ = ("rules", "shadow", "allowed", "denied", "shadow_allowed", "shadow_denied",
                 "policy_key", "result_key")

    def __init__(self, config: dict, prefix: str, counters):
        self.rules = Engine(config["rules"]) if config.get("rules") else None
        self.shadow = Engine(config["shadow_rules"]) if config.get("shadow_rules") else None
        rules_prefix = stat_prefix_join(prefix, config.get("rules_stat_prefix"))
        shadow_prefix = stat_prefix_join(prefix, config.get("shadow_rules_stat_prefix"))
        self.allowed, self.denied = rules_prefix + "allowed", rules_prefix + "denied"
        self.shadow_allowed = shadow_prefix + "shadow_allowed"
        self.shadow_denied = shadow_prefix + "shadow_denied"
        raw = config.get("shadow_rules_stat_prefix") or ""
        self.policy_key = raw + "shadow_effective_policy_id"
        self.result_key = raw + "shadow_engine_result"
        for name in (self.allowed, self.denied, self.shadow_allowed, self.shadow_denied):
            counters[name] += 0

    def check(self, facts, counters, info=None) -> tuple[bool, str | None]:
        """-> (allowed, matched policy), counting both engines; the shadow result goes into
        `info`'s dynamic metadata."""
        if self.shadow is not None:
            shadow_ok, shadow_policy = self.shadow.decide(facts)
            counters[self.shadow_allowed if shadow_ok else self.shadow_denied] += 1
            if info is not None:
                self._shadow_metadata(info, shadow_ok, shadow_policy)
        if self.rules is None:
            return True, None
        allowed, policy = self.rules.decide(facts)
        counters[self.allowed if allowed else self.denied] += 1
        return allowed, policy

    def _shadow_metadata(self, info, allowed: bool, policy: str | None) -> None:
        if info.dynamic_metadata is None:
            info.dynamic_metadata = {}
        fields = info.dynamic_metadata.setdefault(NAME, {})
        fields[self.result_key] = "allowed" if allowed else "denied"
        if policy:
            fields[self.policy_key] = policy


@register(NAME)
class RbacFactory(FilterFactory):
    def __init__(self, config: dict, context):
        super().__init__(config, context)
        self.counters = context.stats.counters
        self.prefix = f"http.{context.stat_prefix}.rbac."
        self.filter_name = config.get("filter_name") or NAME
        self.engines = Engines(config, self.prefix, self.counters)
        self.per_route: dict = {}           # id(route config) -> (that config, Engines)

    def _engines_for(self, route) -> Engines:
        per_filter = getattr(route, "per_filter", None) if route is not None else None
        if per_filter:
            for level in per_filter:         # (the route's, its virtual host's)
                config = level.get(self.filter_name)
                if config is not None:
                    # The config is kept with its engines so that its id is not reused.
                    known = self.per_route.get(id(config))
                    if known is None or known[0] is not config:
                        if len(self.per_route) >= MAX_PER_ROUTE:
                            self.per_route.clear()      # RDS updates replace the configs
                        known = self.per_route[id(config)] = (
                            config, Engines(config, self.prefix, self.counters))
                    return known[1]
        return self.engines

    def create(self, stream):
        engines = self._engines_for(stream.route)
        if engines.rules is None and engines.shadow is None:
            return None
        return RbacFilter(stream, engines, self.counters)


class RbacFilter(StreamFilter):
    __slots__ = ("engines", "counters")

    def __init__(self, stream, engines: Engines, counters):
        super().__init__(stream)
        self.engines = engines
        self.counters = counters

    def on_request_headers(self, request, end_stream: bool):
        stream = self.stream
        info = stream.info
        facts = Facts(request, info.downstream_local, stream.conn.peer, info.downstream_remote,
                      stream.conn.tls, info.dynamic_metadata, peer_principal(stream.conn))
        allowed, policy = self.engines.check(facts, self.counters, info)
        if allowed:
            return None
        return LocalReply(403, BODY, details=details(policy), flags="UAEX")
