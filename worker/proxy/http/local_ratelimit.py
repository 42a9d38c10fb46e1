"""envoy.filters.http.local_ratelimit: a token bucket in front of the router; 429 when empty.

Config: the dict xds/http_filters.py builds (_local_ratelimit). From `context` this reads
only `context.stats` (worker/stats.py Stats). Stats, as Envoy names them:
<stat_prefix>.http_local_rate_limit.{enabled, ok, rate_limited, enforced, shadow_mode (0)}
(stat_prefix is the filter's own, not the connection manager's).

Envoy's behaviour, checked against Envoy 1.40:
- filter_enabled / filter_enforced decide per request (unset = 0%: the filter does nothing
  until enabled). Enabled: "enabled" counts, a token is taken; "ok" if there was one, else
  "rate_limited", and only if enforced too: "enforced" counts and the request is answered
  with `status` (429), body "local_rate_limited", details "local_rate_limited", flag RL,
  plus response_headers_to_add. Rate limited but not enforced: the request goes on, with
  request_headers_to_add_when_not_enforced.
- The bucket refills continuously at tokens_per_fill / fill_interval, up to max_tokens, and
  starts full. Baton computes the refill lazily from the elapsed time when a request takes a
  token: no timer.
- enable_x_ratelimit_headers (DRAFT_VERSION_03): x-ratelimit-limit (max_tokens),
  x-ratelimit-remaining (whole tokens left), x-ratelimit-reset (0 while a token is left,
  else the seconds until the next one, rounded up), on the 429 and on the upstream's
  response.
- A route's or virtual host's typed_per_filter_config under this filter's name (a whole
  LocalRateLimit) is used instead of the filter's own: its own bucket, status, headers and
  stats (its stat_prefix), one per config, shared by the routes it is given to.

Difference from Envoy: Envoy's bucket is shared by all worker threads of the process; Baton's
lives in the factory, i.e. one bucket per worker process (and per listener config). With N
workers the process admits up to N times the configured rate, as when Envoy runs with
local_rate_limit_per_downstream_connection over N connections. Size max_tokens and
tokens_per_fill per worker.
"""

from __future__ import annotations

import math
import random
import time

from .filter import FilterFactory, LocalReply, StreamFilter, register
from .formatter import compile_header_value
from .per_route import per_route_config, routes_carry

BODY = "local_rate_limited"
DETAILS = "local_rate_limited"


class TokenBucket:
    """Continuous refill, computed when asked, as Envoy 1.40's bucket does it
    (AtomicTokenBucketImpl in source/common/common/token_bucket_impl.cc, after folly's
    TokenBucket; the local rate limit's only bucket since the timer-based fill was removed):
    no token count is kept, only a moment, in seconds of `clock` (monotonic). Envoy keeps the
    moment the bucket was empty; Baton keeps the moment it is full again (`full_at`: that
    one plus max_tokens / rate), so the common case, a full bucket, is one clock read, a
    compare, an add and a store: the token taken is back one token's time from now. The
    tokens held at `now` are max_tokens - (full_at - now) * rate, at most max_tokens (the
    same state as Envoy's, shifted by a constant): a token is taken when that is >= 1."""

    __slots__ = ("max_tokens", "rate", "per_token", "spare", "full_at", "clock")

    def __init__(self, max_tokens: int, tokens_per_fill: int, fill_interval: float,
                 clock=time.monotonic):
        self.max_tokens = max_tokens
        self.rate = tokens_per_fill / fill_interval     # tokens per second
        self.per_token = 1 / self.rate                  # seconds a token takes to come back
        # How far ahead full_at may be with a whole token still held: (max_tokens - 1) tokens'
        # time.
        self.spare = (max_tokens - 1) / self.rate
        self.clock = clock
        self.full_at = clock()                          # starts full

    def consume(self) -> bool:
        """Take a token if there is one."""
        return self.take_at(self.clock())

    def take_at(self, now: float) -> bool:
        """consume() at `now`, a reading of `clock` (LocalRateLimitFactory.create writes the
        full bucket's case in place and calls this for the others)."""
        full_at = self.full_at
        if now >= full_at:                  # full: one taken, full again a token's time on
            self.full_at = now + self.per_token
            return True
        if full_at - now <= self.spare:     # a whole token held
            self.full_at = full_at + self.per_token
            return True
        return False

    def tokens(self) -> float:
        """What the bucket holds now (Envoy's remainingTokens: a clock read of its own)."""
        return self.max_tokens - max(0.0, self.full_at - self.clock()) * self.rate

    def remaining(self) -> int:
        return int(self.tokens())

    def reset_seconds(self) -> int:
        """0 while a whole token is left, else seconds until the next one (rounded up)."""
        tokens = self.tokens()
        if tokens >= 1:
            return 0
        return math.ceil((1 - tokens) / self.rate)


def _always(percentage) -> bool:
    """A FractionalPercent that every roll passes (Envoy: numerator >= denominator)."""
    return percentage["numerator"] >= percentage["denominator"]


def compile_header_options(options):
    """[translated HeaderValueOption] -> [(name, f(info) -> value, append_action, keep_empty)]."""
    return [(o["name"], compile_header_value(o["value"]), o["append_action"],
             o["keep_empty_value"]) for o in options]


def apply_header_options(headers, compiled, info) -> None:
    """Envoy's append actions on a worker/codecs/message.py Headers."""
    for name, render, action, keep_empty in compiled:
        value = render(info)
        if not value and not keep_empty:
            continue
        if action == "APPEND_IF_EXISTS_OR_ADD":
            headers.add(name, value)
        elif action == "ADD_IF_ABSENT":
            if name not in headers:
                headers.add(name, value)
        elif action == "OVERWRITE_IF_EXISTS_OR_ADD":
            headers.set(name, value)
        elif name in headers:          # OVERWRITE_IF_EXISTS
            headers.set(name, value)


def _rendered(compiled, info):
    """Header options for a local reply (nothing exists yet: ADD and OVERWRITE both add,
    OVERWRITE_IF_EXISTS adds nothing)."""
    out = []
    for name, render, action, keep_empty in compiled:
        value = render(info)
        if (value or keep_empty) and action != "OVERWRITE_IF_EXISTS":
            out.append((name, value))
    return out


@register("envoy.filters.http.local_ratelimit")
class LocalRateLimitFactory(FilterFactory):
    clears_route_cache = False

    def __init__(self, config: dict, context, clock=time.monotonic):
        super().__init__(config, context)
        self.rng = random.Random()                # tests replace it with a seeded one
        self.clock = clock
        # The name a route's typed_per_filter_config gives its own limit by: the HCM entry's
        # (Envoy's filter config name). by_route: a route's limit (a factory of its own, with
        # its bucket and stats) looked up once per route; None while no route of the table
        # has one (routes_changed), and then no route is looked at.
        self.filter_name = config.get("filter_name") or self.name
        self.by_route = None
        self.by_config = None
        self.bucket = TokenBucket(config["max_tokens"], config["tokens_per_fill"],
                                  config["fill_interval"], clock)
        self.status = config["status"]
        self.enabled = config["filter_enabled"]
        self.enforced = config["filter_enforced"]
        # Decided here, not per request: enabled for every request (no dice to roll), or none.
        self.always_enabled = _always(self.enabled)
        self.never_enabled = self.enabled["numerator"] <= 0
        self.always_enforced = _always(self.enforced)
        self.response_headers = compile_header_options(config["response_headers_to_add"])
        self.request_headers = compile_header_options(
            config["request_headers_to_add_when_not_enforced"])
        self.x_headers = config["x_ratelimit_headers"]
        self.idle = self.never_enabled       # create() makes nothing (until a route has some)
        self.counters = context.stats.counters
        prefix = f"{config['stat_prefix']}.http_local_rate_limit."
        self.stat_enabled = prefix + "enabled"
        self.stat_ok = prefix + "ok"
        self.stat_limited = prefix + "rate_limited"
        self.stat_enforced = prefix + "enforced"
        # Listed at 0, as in Envoy (shadow_mode stays 0: Baton refuses shadow mode).
        for name in (self.stat_enabled, self.stat_ok, self.stat_limited, self.stat_enforced,
                     prefix + "shadow_mode"):
            self.counters[name] += 0

    def _roll(self, percentage) -> bool:
        numerator = percentage["numerator"]
        return numerator > 0 and self.rng.randrange(percentage["denominator"]) < numerator

    def routes_changed(self, table) -> bool:
        """A route table is installed (HttpConfig.set_routes). Envoy's filter takes a route's
        (or its virtual host's) LocalRateLimit instead of its own (getConfig: the most
        specific per-filter config), each with its own token bucket, shared by the requests
        of the routes it is given to; a new table brings new buckets. Answers whether `idle`
        changed."""
        if routes_carry(table, self.filter_name):
            self.by_route, self.by_config = {}, {}
        else:
            self.by_route = self.by_config = None
        idle = self.never_enabled and self.by_route is None
        changed, self.idle = idle != self.idle, idle
        return changed

    def _route_limit(self, route) -> "LocalRateLimitFactory":
        """A route's limit, the first time it is seen (create() reads by_route after)."""
        by_route = self.by_route
        config = per_route_config(route, self.filter_name)
        if config is None:
            found = self
        else:
            kept = self.by_config.get(id(config))
            if kept is None:
                kept = self.by_config[id(config)] = (
                    config, LocalRateLimitFactory(config, self.context, self.clock))
            found = kept[1]
        if len(by_route) >= 4096:       # routes of tables replaced since: forget them
            by_route.clear()
        by_route[route] = found
        return found

    def create(self, stream) -> StreamFilter | None:
        by_route = self.by_route
        if by_route is not None:
            route = stream.route
            if route is not None and route.per_filter is not None:
                limit = by_route.get(route) or self._route_limit(route)
                if limit is not self:
                    return limit.create(stream)
        if self.never_enabled:
            return None
        if self.always_enabled:
            try:
                made_before = stream.filters
            except AttributeError:      # (a stream that keeps no list: the filter decides)
                made_before = None
        else:
            made_before = None
        if not made_before and made_before.__class__ is list:
            # No filter before this one was made for the stream (the stream fills its list
            # as it calls the factories), so nothing can answer or hold the request before
            # this filter's turn, which comes at once: the token is taken here, as Envoy's
            # decodeHeaders takes it, and a request let through with no x-ratelimit headers
            # to add needs no filter at all (no object, no response hook). (Tested without
            # getattr's call and a new empty list to compare with.)
            counters = self.counters
            counters[self.stat_enabled] += 1
            # TokenBucket.consume written in place for a full bucket (a limit far above the
            # rate: the common case), one call fewer for every request.
            bucket = self.bucket
            now = bucket.clock()
            if now >= bucket.full_at:
                bucket.full_at = now + bucket.per_token
                taken = True
            else:
                taken = bucket.take_at(now)
            if taken:
                counters[self.stat_ok] += 1
                if not self.x_headers:
                    return None
                made = LocalRateLimitFilter(stream, self, True)
                made.x_headers = self.x_ratelimit_headers()
                return made
            return LocalRateLimitFilter(stream, self, False)
        return LocalRateLimitFilter(stream, self)

    def x_ratelimit_headers(self):
        bucket = self.bucket
        return [("x-ratelimit-limit", str(bucket.max_tokens)),
                ("x-ratelimit-remaining", str(bucket.remaining())),
                ("x-ratelimit-reset", str(bucket.reset_seconds()))]


class LocalRateLimitFilter(StreamFilter):
    __slots__ = ("factory", "x_headers", "allowed")

    def __init__(self, stream, factory: LocalRateLimitFactory, allowed: bool | None = None):
        self.stream = stream            # StreamFilter's, set here: one call less per request
        self.factory = factory
        self.x_headers = None       # computed at request time, sent with the response
        self.allowed = allowed      # the token taken by the factory (True, False), or not yet

    def on_request_headers(self, request, end_stream: bool):
        factory = self.factory
        allowed = self.allowed
        if allowed is None:
            if not factory.always_enabled and not factory._roll(factory.enabled):
                return None
            counters = factory.counters
            counters[factory.stat_enabled] += 1
            if factory.bucket.consume():
                if factory.x_headers:
                    self.x_headers = factory.x_ratelimit_headers()
                counters[factory.stat_ok] += 1
                return None
        elif allowed:
            return None
        return self._limited(request)

    def _limited(self, request):
        """The bucket was empty: "rate_limited", and the 429 if enforced."""
        factory = self.factory
        counters = factory.counters
        if factory.x_headers:
            self.x_headers = factory.x_ratelimit_headers()
        counters[factory.stat_limited] += 1
        info = getattr(self.stream, "info", None)
        if not factory.always_enforced and not factory._roll(factory.enforced):
            if factory.request_headers:
                apply_header_options(request.headers, factory.request_headers, info)
            return None
        counters[factory.stat_enforced] += 1
        headers = _rendered(factory.response_headers, info)
        if self.x_headers:
            headers.extend(self.x_headers)
            self.x_headers = None       # already on the reply
        return LocalReply(factory.status, BODY, headers, details=DETAILS, flags="RL")

    def on_response_headers(self, response, end_stream: bool):
        if self.x_headers:
            for name, value in self.x_headers:
                response.headers.set(name, value)
        return None
