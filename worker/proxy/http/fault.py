"""envoy.filters.http.fault: inject delays and aborts, by percentage or by request header.

Config: the dict xds/http_filters.py builds (_fault). What this reads from `context`:
    context.stats         worker/stats.py Stats
    context.stat_prefix   the connection manager's stat_prefix
Stats, as Envoy names them (http.<stat_prefix>.fault.*): counters delays_injected,
aborts_injected, faults_overflow, and <downstream cluster>.delays_injected /
.aborts_injected when the request has x-envoy-downstream-service-cluster; gauge active_faults.

Envoy's rules, checked against Envoy 1.40:
- A request is eligible only if it matches `headers` (all of them), `upstream_cluster` (the
  routed cluster) and `downstream_nodes` (x-envoy-downstream-service-node); then, if
  max_active_faults is reached, faults_overflow counts it and it passes untouched.
- Delay first, then abort: a request can get both (flags "DI,FI").
- A percentage that is unset is 0%: the fault never fires.
- Header-controlled faults (header_delay / header_abort) fire only when the request carries
  x-envoy-fault-delay-request (milliseconds) / x-envoy-fault-abort-request (a status in
  [200, 600)); x-envoy-fault-*-request-percentage sets the numerator, capped by the
  configured numerator, over the configured denominator. A bad header value means no fault.
- Active faults count from injection until the stream is done (StreamFilter.on_log).
"""

from __future__ import annotations

import random
import re

from .filter import Delay, FilterFactory, LocalReply, StreamFilter, register

ABORT_BODY = "fault filter abort"
ABORT_DETAILS = "fault_filter_abort"

DELAY_HEADER = "x-envoy-fault-delay-request"
DELAY_PERCENT_HEADER = "x-envoy-fault-delay-request-percentage"
ABORT_HEADER = "x-envoy-fault-abort-request"
ABORT_PERCENT_HEADER = "x-envoy-fault-abort-request-percentage"
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


@register("envoy.filters.http.fault")
class FaultFilterFactory(FilterFactory):
    clears_route_cache = False

    def __init__(self, config: dict, context):
        super().__init__(config, context)
        self.rng = random.Random()            # tests replace it with a seeded one
        self.stats = context.stats
        self.prefix = f"http.{context.stat_prefix}.fault."
        self.delay = config.get("delay")
        self.abort = config.get("abort")
        self.idle = self.delay is None and self.abort is None     # create() makes nothing
        self.matches = compile_header_matchers(config.get("headers") or [])
        self.has_headers = bool(config.get("headers"))
        self.upstream_cluster = config.get("upstream_cluster")
        self.downstream_nodes = frozenset(config.get("downstream_nodes") or ())
        self.max_active = config.get("max_active_faults")
        self.cluster_stats = not config.get("disable_downstream_cluster_stats", False)
        self.active = 0
        counters = self.stats.counters
        for name in ("delays_injected", "aborts_injected", "faults_overflow"):
            counters[self.prefix + name] += 0     # visible at 0, as in Envoy
        self.stats.gauges[self.prefix + "active_faults"] += 0

    def create(self, stream) -> StreamFilter | None:
        if self.delay is None and self.abort is None:
            return None
        return FaultFilter(stream, self)

    # Decisions, kept here (not in the filter) so they are testable on a plain request.

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

    def _roll(self, numerator, denominator) -> bool:
        return numerator > 0 and self.rng.randrange(denominator) < numerator

    def delay_seconds(self, request) -> float | None:
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
        return seconds if self._roll(numerator, denominator) else None

    def abort_status(self, request) -> int | None:
        abort = self.abort
        if abort is None:
            return None
        status = abort["http_status"]
        if status == "header_controlled":
            text = request.headers.get(ABORT_HEADER)
            if text is None:
                return None
            try:
                status = int(text)
            except ValueError:
                return None
            if not 200 <= status < 600:
                return None
            numerator, denominator = _header_percentage(request, ABORT_PERCENT_HEADER,
                                                        abort["percentage"])
        else:
            numerator = abort["percentage"]["numerator"]
            denominator = abort["percentage"]["denominator"]
        return status if self._roll(numerator, denominator) else None

    def overflowing(self) -> bool:
        if self.max_active is not None and self.active >= self.max_active:
            self.stats.counters[self.prefix + "faults_overflow"] += 1
            return True
        return False

    def count(self, request, what: str) -> None:
        counters = self.stats.counters
        counters[self.prefix + what] += 1
        if self.cluster_stats:
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
    __slots__ = ("factory", "active")

    def __init__(self, stream, factory: FaultFilterFactory):
        super().__init__(stream)
        self.factory = factory
        self.active = False

    def on_request_headers(self, request, end_stream: bool):
        factory = self.factory
        if not factory.eligible(request, getattr(self.stream, "info", None)):
            return None
        if factory.overflowing():
            return None
        seconds = factory.delay_seconds(request)
        status = factory.abort_status(request)
        if seconds is None and status is None:
            return None
        factory.activate()
        self.active = True
        reply = None
        if status is not None:
            factory.count(request, "aborts_injected")
            reply = LocalReply(status, ABORT_BODY, details=ABORT_DETAILS, flags="FI")
        if seconds is None:
            return reply
        factory.count(request, "delays_injected")
        if reply is None:
            return Delay(seconds, flags="DI")
        return DelayThenReply(seconds, reply, flags="DI")

    def on_log(self) -> None:
        if self.active:
            self.active = False
            self.factory.deactivate()
