"""envoy.filters.http.fault: inject delays and aborts, by percentage or by request header.

Config: the dict xds/http_filters.py builds (_fault). What this reads from `context`:
    context.stats         worker/stats.py Stats
    context.stat_prefix   the connection manager's stat_prefix
Stats, as Envoy names them (http.<stat_prefix>.fault.*): counters delays_injected,
aborts_injected, faults_overflow, response_rl_injected (0), and <downstream
cluster>.delays_injected / .aborts_injected when the request has
x-envoy-downstream-service-cluster; gauge active_faults.

Envoy's rules, checked against Envoy 1.40:
- A request is eligible only if it matches `headers` (all of them), `upstream_cluster` (the
  routed cluster) and `downstream_nodes` (x-envoy-downstream-service-node); then, if a fault
  is to be injected and max_active_faults is reached, faults_overflow counts it and it is
  not injected (a delay and an abort that both overflow count two).
- Delay first, then abort: a request can get both (flags "DI,FI").
- A percentage that is unset is 0%: the fault never fires.
- Header-controlled faults (header_delay / header_abort) fire only when the request carries
  x-envoy-fault-delay-request (milliseconds) / x-envoy-fault-abort-request (a status in
  [200, 600)); x-envoy-fault-*-request-percentage sets the numerator, capped by the
  configured numerator, over the configured denominator. A bad header value means no fault.
- Active faults count from injection until the stream is done (StreamFilter.on_log).
- A route's or virtual host's typed_per_filter_config under this filter's name (an HTTPFault,
  FaultSettings) replaces the filter's own settings for that route; counters, active faults
  and the comparison with max_active_faults stay the filter's. A gRPC abort answers HTTP 200
  with that grpc-status (trailers-only to a gRPC request).
"""

from __future__ import annotations

import random
import re

from .filter import Delay, FilterFactory, LocalReply, StreamFilter, register
from .per_route import per_route_config, routes_carry

ABORT_BODY = "fault filter abort"
ABORT_DETAILS = "fault_filter_abort"

DELAY_HEADER = "x-envoy-fault-delay-request"
DELAY_PERCENT_HEADER = "x-envoy-fault-delay-request-percentage"
ABORT_HEADER = "x-envoy-fault-abort-request"
ABORT_PERCENT_HEADER = "x-envoy-fault-abort-request-percentage"
ABORT_GRPC_HEADER = "x-envoy-fault-abort-grpc-request"
NODE_HEADER = "x-envoy-downstream-service-node"
CLUSTER_HEADER = "x-envoy-downstream-service-cluster"


def DelayThenReply(seconds: float, then: LocalReply, flags: str = "") -> Delay:
    """A delay after which the request is answered with `then`: Envoy's fault filter aborts
    after its delay. The abort is decided, and counted, when the delay starts; Envoy decides
    it when the delay ends, which draws from the same distribution."""
    return Delay(seconds, flags, then)


# --- header matching (Envoy's HeaderMatcher, as translated by xds/http_filters.py) -----------

def _compile_matcher(m):
    kind, value, name = m["kind"], m["value"], m["name"]
    if kind == "regex":
        pattern = re.compile(value)
        test = lambda v: pattern.fullmatch(v) is not None  # noqa: E731
    elif kind == "range":
        start, end = value

        def test(v):
            try:
                return start <= int(v) < end
            except ValueError:
                return False
    elif kind == "present":
        test = None
    else:
        expected = value.lower() if m["ignore_case"] else value
        compare = {"exact": str.__eq__, "prefix": str.startswith, "suffix": str.endswith,
                   "contains": str.__contains__}[kind]
        if m["ignore_case"]:
            test = lambda v: compare(v.lower(), expected)  # noqa: E731
        else:
            test = lambda v: compare(v, expected)  # noqa: E731
    invert, missing_as_empty = m["invert"], m["treat_missing_as_empty"]

    def match(request):
        header = request.get(name)
        if header is None and missing_as_empty:
            header = ""
        if kind == "present":
            return ((header is not None) == bool(value)) != invert
        if header is None:
            return invert
        return test(header) != invert
    return match


def compile_header_matchers(matchers):
    """[translated HeaderMatcher] -> f(request) -> bool (all must match)."""
    tests = [_compile_matcher(m) for m in matchers]
    return lambda request: all(t(request) for t in tests)


# --- the filter ------------------------------------------------------------------------------

def _header_percentage(request, header, percentage):
    """The header's numerator capped by the configured one, else the configured one."""
    numerator = percentage["numerator"]
    text = request.headers.get(header)
    if text is not None:
        try:
            numerator = min(int(text), numerator)
        except ValueError:
            pass
        if numerator < 0:
            numerator = percentage["numerator"]
    return numerator, percentage["denominator"]


class FaultSettings:
    """One HTTPFault's decisions: the filter's own config, or a route's or virtual host's
    (typed_per_filter_config), which replaces it for that route whole, as Envoy's
    FaultFilter::decodeHeaders takes resolveMostSpecificPerFilterConfig<FaultSettings> over the
    filter's settings (source/extensions/filters/http/fault/fault_filter.cc). The counters,
    the active faults and max_active_faults' comparison stay the filter's."""

    __slots__ = ("delay", "abort", "idle", "matches", "has_headers", "upstream_cluster",
                 "downstream_nodes", "max_active", "cluster_stats")

    def __init__(self, config: dict):
        self.delay = config.get("delay")
        self.abort = config.get("abort")
        self.idle = self.delay is None and self.abort is None     # no fault to inject
        self.matches = compile_header_matchers(config.get("headers") or [])
        self.has_headers = bool(config.get("headers"))
        self.upstream_cluster = config.get("upstream_cluster")
        self.downstream_nodes = frozenset(config.get("downstream_nodes") or ())
        self.max_active = config.get("max_active_faults")
        self.cluster_stats = not config.get("disable_downstream_cluster_stats", False)

    def eligible(self, request, info) -> bool:
        if self.has_headers and not self.matches(request):
            return False
        if self.upstream_cluster is not None:
            cluster = getattr(info, "upstream_cluster", None) if info is not None else None
            if cluster != self.upstream_cluster:
                return False
        if self.downstream_nodes and request.headers.get(NODE_HEADER) not in \
                self.downstream_nodes:
            return False
        return True

    def delay_seconds(self, request, rng) -> float | None:
        delay = self.delay
        if delay is None:
            return None
        fixed = delay["fixed_delay"]
        if fixed == "header_controlled":
            text = request.headers.get(DELAY_HEADER)
            if text is None:
                return None
            try:
                millis = int(text)
            except ValueError:
                return None
            if millis <= 0:
                return None
            seconds = millis / 1000
            numerator, denominator = _header_percentage(request, DELAY_PERCENT_HEADER,
                                                        delay["percentage"])
        else:
            seconds = fixed
            numerator = delay["percentage"]["numerator"]
            denominator = delay["percentage"]["denominator"]
        return seconds if _roll(rng, numerator, denominator) else None

    def abort_status(self, request, rng) -> tuple[int, int | None] | None:
        """(HTTP status, gRPC status or None), or None: no abort. A gRPC status is answered
        with HTTP 200, as Envoy's abortStatus does (gRPC errors travel in a 200's trailers)."""
        abort = self.abort
        if abort is None:
            return None
        status, grpc_status = abort["http_status"], abort.get("grpc_status")
        if status == "header_controlled":
            status = _header_status(request)
            if status is None:
                return None
            numerator, denominator = _header_percentage(request, ABORT_PERCENT_HEADER,
                                                        abort["percentage"])
        else:
            numerator = abort["percentage"]["numerator"]
            denominator = abort["percentage"]["denominator"]
            if status is None:          # grpc_status
                status = (200, grpc_status)
            else:
                status = (status, None)
        return status if _roll(rng, numerator, denominator) else None


def _roll(rng, numerator, denominator) -> bool:
    return numerator > 0 and rng.randrange(denominator) < numerator


def _header_status(request) -> tuple[int, int | None] | None:
    """header_abort: x-envoy-fault-abort-request (an HTTP status in [200, 600)), else
    x-envoy-fault-abort-grpc-request (a gRPC status, answered with 200), as Envoy's
    HeaderAbortProvider reads them and abortStatus takes them: an HTTP status that is absent,
    not a number or out of range leaves the word to the gRPC header; neither: no abort."""
    status = _unsigned(request.headers.get(ABORT_HEADER))
    if status is not None and 200 <= status < 600:
        return status, None
    grpc_status = _unsigned(request.headers.get(ABORT_GRPC_HEADER))
    return (200, grpc_status) if grpc_status is not None else None


def _unsigned(text: str | None) -> int | None:
    """A header's unsigned number as absl::SimpleAtoi reads it (spaces around, a + sign)."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("+"):
        text = text[1:]
    return int(text) if text.isascii() and text.isdigit() else None


@register("envoy.filters.http.fault")
class FaultFilterFactory(FilterFactory):
    clears_route_cache = False

    def __init__(self, config: dict, context):
        super().__init__(config, context)
        self.rng = random.Random()            # tests replace it with a seeded one
        self.stats = context.stats
        self.prefix = f"http.{context.stat_prefix}.fault."
        self.settings = FaultSettings(config)
        # The name a route's typed_per_filter_config gives this filter's settings by: the
        # HCM entry's (Envoy's filter config name).
        self.filter_name = config.get("filter_name") or self.name
        # A route's settings, looked up once per route (None: no route of the table has
        # any, and no route is looked at): see routes_changed.
        self.by_route = None
        self.idle = self.settings.idle      # create() makes nothing (until a route has some)
        self.active = 0
        counters = self.stats.counters
        # Visible at 0, as in Envoy (response_rl_injected stays 0: response_rate_limit is
        # refused).
        for name in ("delays_injected", "aborts_injected", "faults_overflow",
                     "response_rl_injected"):
            counters[self.prefix + name] += 0
        self.stats.gauges[self.prefix + "active_faults"] += 0

    def routes_changed(self, table) -> bool:
        """A route table is installed (HttpConfig.set_routes): routes with settings of their
        own make this factory work even when its own config has no fault. Answers whether
        `idle` changed (the connection manager then decides its chain again)."""
        self.by_route = {} if routes_carry(table, self.filter_name) else None
        idle = self.settings.idle and self.by_route is None
        changed, self.idle = idle != self.idle, idle
        return changed

    def create(self, stream) -> StreamFilter | None:
        settings = self.settings
        by_route = self.by_route
        if by_route is not None:
            route = stream.route
            if route is not None and route.per_filter is not None:
                settings = by_route.get(route) or self._route_settings(route)
        if settings.idle:
            return None
        return FaultFilter(stream, self, settings)

    def _route_settings(self, route) -> FaultSettings:
        """A route's settings, the first time it is seen (create() reads by_route after)."""
        by_route = self.by_route
        config = per_route_config(route, self.filter_name)
        found = FaultSettings(config) if config is not None else self.settings
        if len(by_route) >= 4096:       # routes of tables replaced since: forget them
            by_route.clear()
        by_route[route] = found
        return found

    # Decisions on the filter's own settings (a route's: FaultSettings), testable on a plain
    # request.

    def eligible(self, request, info) -> bool:
        return self.settings.eligible(request, info)

    def delay_seconds(self, request) -> float | None:
        return self.settings.delay_seconds(request, self.rng)

    def abort_status(self, request) -> tuple[int, int | None] | None:
        return self.settings.abort_status(request, self.rng)

    def overflowing(self, settings: FaultSettings) -> bool:
        if settings.max_active is not None and self.active >= settings.max_active:
            self.stats.counters[self.prefix + "faults_overflow"] += 1
            return True
        return False

    def count(self, request, what: str, settings: FaultSettings) -> None:
        counters = self.stats.counters
        counters[self.prefix + what] += 1
        if settings.cluster_stats:
            cluster = request.headers.get(CLUSTER_HEADER)
            if cluster:
                counters[f"{self.prefix}{cluster}.{what}"] += 1

    def activate(self) -> None:
        self.active += 1
        self.stats.gauges[self.prefix + "active_faults"] += 1

    def deactivate(self) -> None:
        self.active -= 1
        self.stats.gauges[self.prefix + "active_faults"] -= 1


class FaultFilter(StreamFilter):
    __slots__ = ("factory", "settings", "active")

    def __init__(self, stream, factory: FaultFilterFactory, settings: FaultSettings):
        super().__init__(stream)
        self.factory = factory
        self.settings = settings
        self.active = False

    def on_request_headers(self, request, end_stream: bool):
        factory, settings = self.factory, self.settings
        if not settings.eligible(request, getattr(self.stream, "info", None)):
            return None
        seconds = settings.delay_seconds(request, factory.rng)
        abort = settings.abort_status(request, factory.rng)
        # max_active_faults is asked only of a fault about to be injected, the delay's and
        # then (the delay not injected) the abort's, each counting faults_overflow, as
        # Envoy 1.40's tryIncActiveFaults (maybeSetupDelay, maybeDoAbort).
        if seconds is not None and factory.overflowing(settings):
            seconds = None
        if abort is not None and seconds is None and factory.overflowing(settings):
            abort = None
        if seconds is None and abort is None:
            return None
        factory.activate()
        self.active = True
        reply = None
        if abort is not None:
            factory.count(request, "aborts_injected", settings)
            reply = LocalReply(abort[0], ABORT_BODY, details=ABORT_DETAILS, flags="FI",
                               grpc_status=abort[1])
        if seconds is None:
            return reply
        factory.count(request, "delays_injected", settings)
        if reply is None:
            return Delay(seconds, flags="DI")
        return DelayThenReply(seconds, reply, flags="DI")

    def on_log(self) -> None:
        if self.active:
            self.active = False
            self.factory.deactivate()
