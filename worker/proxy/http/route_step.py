"""The Stream's routing step, once the filters are through (Envoy's router filter deciding
its upstream request): the route's answer (404, direct response, redirect, missing
cluster), its header mutations and rewrites, the route and retry controls the request may
carry (x-envoy-* headers), and the hand-over to the router, or the Stream's own straight
step (straight.py) when the request needs nothing of the router.
"""

from __future__ import annotations

from .retry_state import GRPC_RETRY_ON
from .router import Router, expected_timeout_header, route_timeout, set_grpc_timeout
from .straight import needs_router


class RouteStep:
    """Stream._route (a base of Stream: stream.py holds the fields)."""

    __slots__ = ()

    def _route(self) -> None:
        if self.done:
            return
        hcm = self.hcm
        route = self.route
        if route is None:
            self.stats[hcm.stat_no_route] += 1
            self.response_flags.append("NR")
            self.local_reply(404, "", "route_not_found")
            return
        kind = route.kind
        if kind != "cluster":               # (one test for the common kind)
            if kind == "direct_response":
                self.stats[hcm.stat_rq_direct_response] += 1
                status, body = route.direct()
                _, location = route.redirect_location(self.request)
                self.local_reply(status, body, "direct_response", content_type=bool(body),
                                 extra=[("location", location)] if location else ())
                return
            if kind == "redirect":
                self.stats[hcm.stat_rq_redirect] += 1
                status, location = route.redirect_location(self.request)
                self.local_reply(status, "", "via_redirect", extra=[("location", location)],
                                 content_type=False)
                return
        request = self.request
        name = self.cluster_name
        cluster = self.worker.clusters.get(name) if name else None
        if cluster is None:
            self.stats[hcm.stat_no_cluster] += 1
            self.response_flags.append("NC")
            self.upstream_cluster = None    # no cluster: %UPSTREAM_CLUSTER% "-", as Envoy
            self.local_reply(route.cluster_not_found_status, "", "cluster_not_found")
            return
        # Envoy's order: header mutations first, then host and path rewrites (a
        # host_rewrite_header reads the mutated headers).
        plan = route.request_steps
        if plan is None:                    # a weighted split's clusters differ
            plan = route.request_plan(name)
        if plan:
            plan.apply(request.headers, self, hcm.render_header_value)   # (_apply_mutations')
        plain = route.plain_request         # no rewrite, no grpc-timeout: nothing to call
        if plain:
            base = route.timeout
        else:
            route.rewrite(request, name, envoy_headers=not hcm.suppress_envoy_headers)
            base = route_timeout(route, request)            # grpc-timeout on gRPC routes
        if self.controls:
            timeout, retry = route_controls(route, request.headers, base)
        else:
            timeout = base
            retry = route.retry
        if not hcm.suppress_envoy_headers and timeout:
            header = expected_timeout_header(
                timeout if retry is None else retry.per_try_timeout or timeout)
            if self.controls or self.filters or (plan and header[0] in plan.names):
                request.headers.set(*header)
            else:
                # An external request came without it (mutate_request_headers strips it)
                # and nothing since could add it (no filter ran; a route plan that does not
                # name it): no scan for an old one.
                request.headers.items.append(header)
        if not plain:
            set_grpc_timeout(route, request, timeout, retry)
        hash_key = route.hash_key(request, self.conn.peer[0] if self.conn.peer else "") \
            if route.hash_policies else None
        if not needs_router(self, route, cluster, retry, hash_key) and \
                self.send_straight(cluster, timeout):
            return                          # sent by the stream itself (straight.py)
        self.to_router(route, cluster, hash_key, timeout, retry)

    def to_router(self, route, cluster, hash_key, timeout, retry) -> None:
        """The Router takes the request (not straight), with the body held so far."""
        router = self.router = Router(self, route, cluster, hash_key, timeout, retry, self.picked)
        if self.held_body:
            held, self.held_body = self.held_body, ()
            router.body = held              # (the new router holds none)
            router.body_bytes += sum(map(len, held))
        router.start()


class HeaderRetryPolicy:
    """A route's retry policy as the request's x-envoy-retry-on / x-envoy-max-retries /
    x-envoy-upstream-rq-per-try-timeout-ms headers amend it (same attributes as
    routing.RetryPolicy)."""

    __slots__ = ("retry_on", "num_retries", "per_try_timeout", "retriable_status_codes",
                 "base", "max", "retriable_headers", "previous_hosts", "host_selection_attempts")

    def __init__(self, base_policy, retry_on, num_retries, per_try_timeout):
        self.retriable_headers = base_policy.retriable_headers if base_policy else ()
        self.previous_hosts = base_policy.previous_hosts if base_policy else False
        self.host_selection_attempts = base_policy.host_selection_attempts if base_policy else 1
        self.retry_on = set(base_policy.retry_on if base_policy else ()) | retry_on
        self.num_retries = num_retries if num_retries is not None else \
            (base_policy.num_retries if base_policy else 1)
        self.per_try_timeout = per_try_timeout if per_try_timeout is not None else \
            (base_policy.per_try_timeout if base_policy else None)
        self.retriable_status_codes = base_policy.retriable_status_codes if base_policy else frozenset()
        self.base = base_policy.base if base_policy else 0.025
        self.max = base_policy.max if base_policy else 0.25


_CONTROL_HEADERS = ("x-envoy-retry-on", "x-envoy-max-retries", "x-envoy-upstream-rq-timeout-ms",
                    "x-envoy-upstream-rq-per-try-timeout-ms", "x-envoy-retry-grpc-on")
_CONTROL_SET = frozenset(_CONTROL_HEADERS)


def route_controls(route, headers, timeout):
    """(timeout, retry policy) for this request: `timeout` (the route's) and the route's
    policy, amended by the x-envoy-* control headers that survived edge sanitizing; the
    router consumes those headers, so they are removed here."""
    retry = route.retry
    if _CONTROL_SET.isdisjoint([name for name, _ in headers.items]):
        return timeout, retry
    values = {name: headers.get(name) for name in _CONTROL_HEADERS}
    for name in _CONTROL_HEADERS:
        headers.remove(name)
    ms = _int(values["x-envoy-upstream-rq-timeout-ms"])
    if ms is not None:
        timeout = ms / 1000 or None
    # Envoy reads the HTTP conditions from x-envoy-retry-on and the gRPC ones from
    # x-envoy-retry-grpc-on, each ignoring the other's names.
    retry_on = {v.strip() for v in (values["x-envoy-retry-on"] or "").split(",")
                if v.strip() and v.strip() not in GRPC_RETRY_ON}
    retry_on |= {v.strip() for v in (values["x-envoy-retry-grpc-on"] or "").split(",")
                 if v.strip() in GRPC_RETRY_ON}
    max_retries = _int(values["x-envoy-max-retries"])
    per_try_ms = _int(values["x-envoy-upstream-rq-per-try-timeout-ms"])
    if retry_on or (retry is not None and (max_retries is not None or per_try_ms is not None)):
        retry = HeaderRetryPolicy(retry, retry_on, max_retries,
                                  per_try_ms / 1000 if per_try_ms else None)
    return timeout, retry


def _int(text):
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
