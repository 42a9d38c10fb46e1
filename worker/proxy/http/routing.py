"""The route table: a translated route_config (plain dict, shape in xds/snapshot.py) compiled
into matcher objects, and the per-request questions the connection manager asks of a route.

    table = RouteTable(hcm["route_config"])
    route = table.route(request)          # None: no virtual host or no route -> 404, empty body

Semantics are Envoy's, checked against Envoy 1.40 where a client can see them:

- Virtual hosts by the lower-cased Host (:authority), port included unless the route config
  sets ignore_port_in_host_matching (the connection manager's strip_matching_host_port /
  strip_any_host_port change the Host before routing): exact domain, then the longest
  `*suffix`, then the longest `prefix*`, then `*`. A wildcard matches at least one character
  (`*.a.com` does not match `.a.com`). A request without a Host only finds a route when the
  table has nothing but a `*` virtual host.
- Routes in order; the first whose path, header, query and gRPC conditions all hold wins
  (route_match.py; a CONNECT request is routed only by a `connect_matcher`).

Beside this module, one idea each: route_regex.py (RE2 patterns on Python's re),
route_match.py (the matchers), route_rewrite.py (header mutations in Envoy's order, rewrite
and redirect helpers), route_hash.py (hash_policy keys).
"""

from __future__ import annotations

__all__ = ["RouteTable", "Route", "RetryPolicy"]

import json

from .express import admit_routes
from .route_hash import hash_key
from .route_match import _HeaderMatcher, _lower, _path_test, _QueryMatcher, parse_query
from .route_regex import compile_re2, compile_substitution, replace_all
from .route_rewrite import _compose_uri, _overwrite, _port_start, mutation_plan, mutation_steps


# --- routes ------------------------------------------------------------------------------------

class RetryPolicy:
    __slots__ = ("retry_on", "num_retries", "per_try_timeout", "retriable_status_codes",
                 "base", "max", "retriable_headers", "previous_hosts", "host_selection_attempts")

    def __init__(self, spec):
        self.retry_on = frozenset(spec["retry_on"])
        self.num_retries = spec["num_retries"]
        self.per_try_timeout = spec["per_try_timeout"]          # seconds or None
        self.retriable_status_codes = frozenset(spec["retriable_status_codes"])
        self.base = spec["base_interval"]                       # seconds
        self.max = spec["max_interval"]                         # seconds
        # Matchers on the response headers (retry_on retriable-headers).
        self.retriable_headers = [_HeaderMatcher(h) for h in spec.get("retriable_headers", ())]
        # retry_host_predicate previous_hosts: a retry re-picks a host already tried, up to
        # host_selection_retry_max_attempts times (router.py, Router._pick).
        self.previous_hosts = spec.get("previous_hosts", False)
        self.host_selection_attempts = spec.get("host_selection_attempts", 1)

    def __repr__(self):
        return (f"RetryPolicy({sorted(self.retry_on)}, num_retries={self.num_retries}, "
                f"per_try_timeout={self.per_try_timeout})")


class Route:
    """One matched route. Attributes the connection manager reads: name, kind ("cluster" |
    "redirect" | "direct_response"), virtual_host (its name), timeout / idle_timeout (seconds
    or None: disabled; idle_timeout None also when the route does not override the
    manager's stream_idle_timeout — see idle_timeout_set), retry (RetryPolicy or None),
    hash_policies, auto_host_rewrite, cluster_not_found_status."""

    __slots__ = ("name", "kind", "virtual_host", "timeout", "idle_timeout", "idle_timeout_set",
                 "retry", "hash_policies", "auto_host_rewrite", "cluster_not_found_status",
                 "_path_test", "_connect", "_headers", "_query", "_grpc", "_match",
                 "_cluster", "_cluster_header", "_weights", "_total_weight",
                 "_prefix_rewrite", "_regex", "_substitution", "_host_literal",
                 "_host_header", "_cluster_host", "_request_plans", "_response_plans", "_redirect", "_direct_status", "_direct_body",
                 "_rewrites_path", "express_cluster", "per_filter", "filter_states", "grpc_timeout",
                 "max_stream_duration", "attempt_count_to_upstream",
                 "attempt_count_in_response", "upgrades", "connect_terminate",
                 "plain_request", "single_cluster", "request_steps", "response_steps",
                 "_plain_prefix")

    # The express lane (express.py) and each field: safe (the lane honours it, or it does not
    # change a request) or blocking (name -> whether a value keeps the lane off this route).
    # tests/unit/test_http_express.py fails on a field declared neither way.
    EXPRESS_SAFE = frozenset({
        "name", "virtual_host",                         # names only
        "timeout", "idle_timeout", "idle_timeout_set",  # the lane runs both timers
        "cluster_not_found_status",     # a missing cluster is never taken (express.take)
        "_path_test", "_headers", "_query", "_grpc", "_match",  # matching comes first
        "_plain_prefix",
        "express_cluster",              # the verdict itself
        "plain_request",                # derived from fields declared below
        "single_cluster",               # _cluster, as pick_cluster gives it
        "request_steps", "response_steps",  # _request_plans' / _response_plans' one plan
    })
    EXPRESS_BLOCKING = {
        "kind": lambda kind: kind != "cluster",
        "_cluster": lambda name: not name,              # one named cluster only
        "_cluster_header": lambda name: name is not None,
        "_weights": bool, "_total_weight": bool, "_cluster_host": bool,
        "retry": lambda policy: policy is not None,
        "hash_policies": bool,
        "auto_host_rewrite": bool, "_host_literal": bool, "_host_header": bool,
        "_prefix_rewrite": lambda prefix: prefix is not None,
        "_regex": bool, "_substitution": bool, "_rewrites_path": bool,
        "_request_plans": lambda per_cluster: any(per_cluster.values()),
        "_response_plans": lambda per_cluster: any(per_cluster.values()),
        "_connect": bool,
        "upgrades": bool,       # a route that allows or refuses upgrades: the full path's check
        "connect_terminate": bool,      # CONNECT terminated: http/connect_tunnel.py
        "_redirect": bool, "_direct_status": bool, "_direct_body": bool,
        # typed_per_filter_config (the CORS policy): filters run on the full path only.
        "per_filter": bool,
        "filter_states": bool,      # FilterConfig: a filter turned on or off (filter.py)
        # The router reads grpc-timeout and runs the stream's duration; it counts attempts.
        "grpc_timeout": lambda spec: spec is not None,
        "max_stream_duration": lambda spec: spec is not None,
        "attempt_count_to_upstream": bool, "attempt_count_in_response": bool,
    }

    def __init__(self, spec, vhost_spec, config):
        self.name = spec["name"]
        self.kind = spec["kind"]
        self.virtual_host = vhost_spec["name"]
        match = spec["match"]
        self._match = match
        self._connect = match["path_kind"] == "connect"
        self._path_test = _path_test(match)
        self._headers = [_HeaderMatcher(h) for h in match["headers"]]
        self._query = [_QueryMatcher(q) for q in match["query_parameters"]]
        self._grpc = match["grpc"]
        # A case-sensitive prefix and nothing else to match (the usual route, "/"): the
        # virtual host tests it in place, without matches() and the path test's calls.
        self._plain_prefix = match["path_value"] if (
            match["path_kind"] == "prefix" and match["case_sensitive"] and not self._headers
            and not self._query and not self._grpc) else None
        action = spec["action"]

        self.timeout = self.idle_timeout = None
        self.idle_timeout_set = False
        self.retry = None
        self.grpc_timeout = self.max_stream_duration = None
        self.upgrades = {}      # upgrade type -> allowed, over the connection manager's list
        self.connect_terminate = False      # connect_config: the cluster gets the bytes
        self.attempt_count_to_upstream = vhost_spec.get("attempt_count_to_upstream", False)
        self.attempt_count_in_response = vhost_spec.get("attempt_count_in_response", False)
        self.hash_policies = []
        self.auto_host_rewrite = False
        self.cluster_not_found_status = 503
        self._cluster = self._cluster_header = None
        self._weights = None
        self._total_weight = 0
        self._host_literal = self._host_header = None
        self._cluster_host = {}
        self._redirect = None
        self._direct_status, self._direct_body = 0, b""
        rewrite_spec = None
        if self.kind == "cluster":
            self._cluster = action["cluster"]
            self._cluster_header = action["cluster_header"]
            if action["weighted_clusters"]:
                self._weights = [(w["name"], w["weight"]) for w in action["weighted_clusters"]]
                self._total_weight = sum(w for _, w in self._weights)
                for w in action["weighted_clusters"]:
                    if w["host_rewrite_literal"]:
                        self._cluster_host.setdefault(w["name"], w["host_rewrite_literal"])
            self.cluster_not_found_status = action["cluster_not_found_status"]
            self.timeout = action["timeout"]
            self.idle_timeout_set = action["idle_timeout_set"]
            self.idle_timeout = action["idle_timeout"]
            retry = action["retry_policy"] or vhost_spec["retry_policy"]
            self.retry = RetryPolicy(retry) if retry else None
            # ({"max", "offset"} | None, {"duration", "grpc_max", "grpc_offset"} | None), in
            # seconds; router.py applies them (Envoy: max_stream_duration wins when both).
            self.grpc_timeout = action.get("grpc_timeout")
            self.max_stream_duration = action.get("max_stream_duration")
            self.upgrades = action.get("upgrades") or {}
            self.connect_terminate = action.get("connect_terminate", False)
            self.hash_policies = [(h["kind"], h["name"], h["terminal"])
                                  for h in action["hash_policies"]]
            self.auto_host_rewrite = action["auto_host_rewrite"]
            self._host_literal = action["host_rewrite_literal"]
            self._host_header = action["host_rewrite_header"]
            rewrite_spec = action
        elif self.kind == "redirect":
            self._redirect = action
            rewrite_spec = action
        else:
            self._direct_status = action["status"]
            body = action["body"]
            self._direct_body = body.encode("latin-1") if body else b""

        self._prefix_rewrite = rewrite_spec["prefix_rewrite"] if rewrite_spec else None
        self._regex = self._substitution = None
        if rewrite_spec and rewrite_spec["regex_rewrite"]:
            self._regex = compile_re2(rewrite_spec["regex_rewrite"]["regex"])
            self._substitution = compile_substitution(rewrite_spec["regex_rewrite"]["substitution"],
                                                      self._regex.groups)
        self._rewrites_path = self._prefix_rewrite is not None or self._regex is not None

        # Header mutations, per cluster of a weighted split, in Envoy's evaluation order, as
        # the steps a request runs (route_rewrite.mutation_steps).
        levels = [mutation_steps(spec["request_headers"]),
                  mutation_steps(vhost_spec["request_headers"]),
                  mutation_steps(config["request_headers"])]
        response_levels = [mutation_steps(spec["response_headers"]),
                           mutation_steps(vhost_spec["response_headers"]),
                           mutation_steps(config["response_headers"])]
        if config["most_specific_header_mutations_wins"]:
            levels.reverse()
            response_levels.reverse()
        chain = mutation_plan(sum(levels, ()))
        response_chain = mutation_plan(sum(response_levels, ()))
        self._request_plans = {None: chain}
        self._response_plans = {None: response_chain}
        if self.kind == "cluster" and action["weighted_clusters"]:
            for w in action["weighted_clusters"]:
                self._request_plans.setdefault(
                    w["name"], mutation_plan(mutation_steps(w["request_headers"]) + chain))
                self._response_plans.setdefault(w["name"], mutation_plan(
                    mutation_steps(w["response_headers"]) + response_chain))

        # The plans when every cluster of the route has the same (no weighted split with
        # mutations of its own), else None: read without calling request_plan/response_plan.
        self.request_steps = chain if len(self._request_plans) == 1 else None
        self.response_steps = response_chain if len(self._response_plans) == 1 else None
        self.express_cluster = None     # express.admit_routes, once the table is built
        # Nothing here rewrites a request's host or path or reads its grpc-timeout, and no
        # stream duration is the route's: the full path skips those steps (stream.py _route,
        # router.py Router.start) instead of calling each to find it has nothing to do.
        self.single_cluster = self._cluster or None     # pick_cluster's answer, no call
        self.plain_request = not (self._cluster_host or self._host_literal or self._host_header
                                  or self._rewrites_path or self.grpc_timeout is not None
                                  or self.max_stream_duration is not None)
        # typed_per_filter_config: (the route's, its virtual host's) {filter name: config},
        # or None; a filter reads its own (worker/proxy/http/cors.py).
        route_pf, vhost_pf = spec.get("per_filter"), vhost_spec.get("per_filter")
        self.per_filter = (route_pf or {}, vhost_pf or {}) if route_pf or vhost_pf else None
        # A FilterConfig's on or off per filter name, likewise (MX: filter.plan_for_route).
        route_fe, vhost_fe = spec.get("filter_enabled"), vhost_spec.get("filter_enabled")
        self.filter_states = (route_fe or {}, vhost_fe or {}) if route_fe or vhost_fe else None

    def __repr__(self):
        return f"Route({self.name!r}, {self.kind}, vhost={self.virtual_host!r})"

    def allows_upgrade(self, upgrade: str, hcm_types) -> bool:
        """Envoy's createUpgradeFilterChain: the route's own word on this upgrade type, else
        whether the connection manager enables it."""
        allowed = self.upgrades.get(upgrade)
        return upgrade in hcm_types if allowed is None else allowed

    # --- matching -------------------------------------------------------------------------

    def matches(self, request, path, path_only, params) -> bool:
        """`params`: a one-item list holding the parsed query (filled on first need)."""
        if self._connect:
            if request.method != "CONNECT":
                return False
        elif path is None or not self._path_test(path, path_only):
            return False
        if self._grpc:
            content_type = request.get("content-type")
            if content_type is None or not content_type.startswith("application/grpc"):
                return False
        for header in self._headers:
            if not header.matches(request):
                return False
        if self._query:
            if params[0] is None:
                params[0] = parse_query(request.query)
            for query in self._query:
                if not query.matches(params[0]):
                    return False
        return True

    # --- cluster --------------------------------------------------------------------------

    def pick_cluster(self, request, rand) -> str | None:
        """The cluster for this request: the configured one, the value of cluster_header
        (first value; None when absent or empty: answer cluster_not_found_status), or a
        weighted pick. `rand`: random.random, or anything with a .random() (the random
        module, a random.Random)."""
        if self._cluster:
            return self._cluster
        if self._cluster_header is not None:
            if self._cluster_header[0] == ":":
                value = request.get(self._cluster_header)
            else:
                value = request.headers.get(self._cluster_header)
            return value or None
        if self._weights:
            draw = getattr(rand, "random", rand)
            point = int(draw() * self._total_weight)
            for name, weight in self._weights:
                if point < weight:
                    return name
                point -= weight
            return self._weights[-1][0]
        return None

    def request_plan(self, cluster_name=None) -> tuple:
        """The request header mutations for `cluster_name` (a weighted split's: its own
        first), as route_rewrite.mutation_steps' steps, in the order they run."""
        found = self._request_plans.get(cluster_name)
        return found if found is not None else self._request_plans[None]

    def response_plan(self, cluster_name=None) -> tuple:
        """The same for the response (also applied to redirect and direct responses, as Envoy
        does)."""
        found = self._response_plans.get(cluster_name)
        return found if found is not None else self._response_plans[None]

    # --- rewrites -------------------------------------------------------------------------

    def rewrite(self, request, cluster_name=None, envoy_headers=True) -> None:
        """Apply host and path rewrites to `request` in place. Call it after the request
        header mutations, as Envoy does (host_rewrite_header reads the mutated headers).
        Order (Envoy 1.40): the weighted cluster's host_rewrite_literal, then the route's
        host rewrite, each saving the previous Host in x-envoy-original-host; then the path
        rewrite, saving the original path in x-envoy-original-path. `envoy_headers` False
        (the router's suppress_envoy_headers) leaves both x-envoy-original-* out.
        auto_host_rewrite is the router's (it knows the upstream host): see the attribute."""
        if cluster_name is not None and self._cluster_host:
            host = self._cluster_host.get(cluster_name)
            if host:
                self._set_host(request, host, envoy_headers)
        if self._host_literal:
            self._set_host(request, self._host_literal, envoy_headers)
        elif self._host_header:
            value = request.headers.get(self._host_header) if self._host_header[0] != ":" \
                else request.get(self._host_header)
            if value:
                self._set_host(request, value, envoy_headers)
        if self._rewrites_path:
            new_path = self._rewritten_path(request.path)
            if envoy_headers:
                _overwrite(request.headers, "x-envoy-original-path", request.path)
            request.path = new_path

    @staticmethod
    def _set_host(request, host, envoy_headers):
        if envoy_headers:
            _overwrite(request.headers, "x-envoy-original-host", request.authority)
        request.authority = host

    def _rewritten_path(self, path: str) -> str:
        q = path.find("?")
        path_only = path if q < 0 else path[:q]
        if self._prefix_rewrite is not None:
            kind = self._match["path_kind"]
            if kind == "safe_regex":
                matched = len(path_only)
            elif kind in ("prefix", "path", "path_separated_prefix"):
                matched = len(self._match["path_value"])
            else:
                return path
            return self._prefix_rewrite + path[matched:]
        if self._substitution is None:       # a rewrite RE2 would refuse: Envoy keeps the path
            return path
        return replace_all(self._regex, self._substitution, path_only) + path[len(path_only):]

    # --- local answers --------------------------------------------------------------------

    def redirect_location(self, request):
        """(status, Location) for a redirect route, composed as Envoy does. For a
        direct_response route: (status, Location or None) — Envoy adds the request's own URL
        as Location to a direct response with a 3xx or 201 status. The request's path is
        rewritten in place first (prefix_rewrite / regex_rewrite of the redirect), as Envoy
        does; x-envoy-original-path is set then."""
        if self.kind == "direct_response":
            status = self._direct_status
            if not (300 <= status < 400 or status == 201):
                return status, None
            return status, _compose_uri(request, None)
        if self._rewrites_path:
            new_path = self._rewritten_path(request.path)
            _overwrite(request.headers, "x-envoy-original-path", request.path)
            request.path = new_path
        return self._redirect["status"], _compose_uri(request, self._redirect)

    def direct(self):
        """(status, body bytes) for a direct_response route; b"" when it has no body."""
        return self._direct_status, self._direct_body

    # --- hashing --------------------------------------------------------------------------

    def hash_key(self, request, downstream_remote_ip: str | None) -> int | None:
        """The 64-bit hash for RING_HASH / MAGLEV from hash_policies, or None (then the
        balancer picks as if no hash policy were set)."""
        return hash_key(self.hash_policies, request, downstream_remote_ip)


# --- virtual hosts and the table ---------------------------------------------------------------

class _VirtualHost:
    __slots__ = ("name", "routes")

    # As on Route: its config (retry policy, header mutations) is compiled into each route.
    EXPRESS_SAFE = frozenset({"name", "routes"})
    EXPRESS_BLOCKING: dict = {}

    def __init__(self, spec, config):
        self.name = spec["name"]
        self.routes = [Route(r, spec, config) for r in spec["routes"]]

    def route(self, request):
        if request.method == "CONNECT":
            path = path_only = None         # CONNECT has no :path for path matchers
        else:
            path = request.path
            q = path.find("?")
            path_only = path if q < 0 else path[:q]
        params = [None]
        for route in self.routes:
            prefix = route._plain_prefix
            if prefix is not None:          # what matches() decides for it, inline
                if path is not None and path.startswith(prefix):
                    return route
                continue
            if route.matches(request, path, path_only, params):
                return route
        return None


def _proxy_header(name: str) -> bool:
    name = name.lower()
    return name.startswith(("x-forwarded-", "x-envoy-")) or name == "x-request-id"


class RouteTable:
    """A compiled route_config (see module docstring)."""

    __slots__ = ("name", "adds_request_headers", "_exact", "_suffixes", "_prefixes", "_default",
                 "_ignore_port", "_only_default", "virtual_hosts", "matches_proxy_headers")

    # As on Route: the express lane (express.py) and each field, safe or blocking.
    EXPRESS_SAFE = frozenset({"name", "_exact", "_suffixes", "_prefixes", "_default",
                              "_ignore_port", "_only_default",     # host matching comes first
                              "virtual_hosts"})                    # each route is judged itself
    EXPRESS_BLOCKING = {"adds_request_headers": bool, "matches_proxy_headers": bool}

    def __init__(self, config: dict):
        self.name = config["name"]
        # Whether any header mutation names an x-envoy-* header (the router then reads the
        # request's control headers even on external requests). Conservative: any mention.
        self.adds_request_headers = '"x-envoy-' in json.dumps(config)
        self._ignore_port = config["ignore_port_in_host_matching"]
        self._exact, self._default = {}, None
        suffixes, prefixes = {}, {}
        self.virtual_hosts = []
        for spec in config["virtual_hosts"]:
            vhost = _VirtualHost(spec, config)
            self.virtual_hosts.append(vhost)
            for domain in spec["domains"]:
                domain = _lower(domain)
                if domain == "*":
                    self._default = vhost
                elif domain.startswith("*"):
                    suffixes.setdefault(len(domain) - 1, {})[domain[1:]] = vhost
                elif domain.endswith("*"):
                    prefixes.setdefault(len(domain) - 1, {})[domain[:-1]] = vhost
                else:
                    self._exact[domain] = vhost
        # Longest wildcard first; each length is one dict lookup.
        self._suffixes = sorted(suffixes.items(), reverse=True)
        self._prefixes = sorted(prefixes.items(), reverse=True)
        self._only_default = not (self._exact or self._suffixes or self._prefixes)
        # Whether a route matches on a header the connection manager sets or strips before
        # routing (x-forwarded-*, x-request-id, x-envoy-*): the express lane routes before
        # those edits, so it stands aside for such a table.
        self.matches_proxy_headers = any(
            _proxy_header(h.name) for vh in self.virtual_hosts for r in vh.routes
            for h in r._headers)
        admit_routes(self)

    def virtual_host(self, request):
        if self._only_default:
            return self._default
        host = request.authority
        if not host:
            return None
        if self._ignore_port:
            cut = _port_start(host)
            if cut >= 0:
                host = host[:cut]
        host = _lower(host)
        found = self._exact.get(host)
        if found is not None:
            return found
        size = len(host)
        for length, table in self._suffixes:
            if length < size:
                found = table.get(host[size - length:])
                if found is not None:
                    return found
        for length, table in self._prefixes:
            if length < size:
                found = table.get(host[:length])
                if found is not None:
                    return found
        return self._default

    def route(self, request):
        """The first matching route of the request's virtual host, or None (404)."""
        vhost = self._default if self._only_default else self.virtual_host(request)
        return vhost.route(request) if vhost is not None else None
