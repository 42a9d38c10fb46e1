"""Differential: the fault filter (abort and delay, fixed and header-controlled, by percentage,
with a header matcher) and the local rate limit filter, one listener per filter setup."""

from __future__ import annotations

from .differential.bootstraps import (FAULT_TYPE, LOCAL_RATELIMIT_TYPE, bootstrap, cluster, http_listener,
                                      percent)
from .differential.client import build_request, one, sequential
from .differential.compare import differential, each_proxy, header, observe, within_binomial
from .differential.proxies import module_pair

ABORT_PERCENT = 25
FAULT_REQUESTS = 2000
RATE_LIMIT_TOKENS = 3


def fault(**config) -> dict:
    return {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT_TYPE, **config}}


LISTENER_FILTERS = {
    "abort": [fault(abort={"http_status": 503, "percentage": percent(100)})],
    "header_fault": [fault(abort={"header_abort": {}, "percentage": percent(100)},
                           delay={"header_delay": {}, "percentage": percent(100)})],
    "delay": [fault(delay={"fixed_delay": "0.2s", "percentage": percent(100)})],
    "abort_pct": [fault(abort={"http_status": 503, "percentage": percent(ABORT_PERCENT)})],
    "abort_matched": [fault(abort={"http_status": 418, "percentage": percent(100)},
                            headers=[{"name": "x-fault", "present_match": True}])],
    "ratelimit": [{"name": "envoy.filters.http.local_ratelimit", "typed_config": {
        "@type": LOCAL_RATELIMIT_TYPE, "stat_prefix": "diff_rl",
        # One bucket for the listener that never refills during the test.
        "token_bucket": {"max_tokens": RATE_LIMIT_TOKENS, "tokens_per_fill": RATE_LIMIT_TOKENS,
                         "fill_interval": "3600s"},
        "filter_enabled": {"runtime_key": "diff_rl_enabled", "default_value": percent(100)},
        "filter_enforced": {"runtime_key": "diff_rl_enforced", "default_value": percent(100)},
        "response_headers_to_add": [{"header": {"key": "x-limited", "value": "yes"}}]}}],
}


def filters_bootstrap(upstreams: dict[str, int]):
    route_config = {"name": "filters", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def template(ports: dict[str, int], admin: int) -> dict:
        listeners = [http_listener(name, ports[name], route_config, http_filters=filters)
                     for name, filters in LISTENER_FILTERS.items()]
        return bootstrap(admin, listeners, [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-filters", filters_bootstrap, list(LISTENER_FILTERS))


def exchange(recorder, listener: str, case: str, headers=(), min_elapsed: float | None = None):
    """One GET on `listener`: the observation, how many requests reached the upstream and,
    with `min_elapsed`, whether the response took at least that long."""
    def run(target):
        key = target.key(case)
        resp = one(target.ports[listener], "GET", "/f", [("host", "diff.test"), *headers, ("x-test-key", key)])
        obs = observe(resp, target)
        obs["upstream requests"] = recorder.count(key)
        if min_elapsed is not None:
            # 10 ms of slack: Envoy arms its timers from the event loop's cached time, so a
            # delay can end a few milliseconds before the full time has passed on our clock.
            obs["took at least the delay"] = resp.elapsed >= min_elapsed - 0.010 or resp.elapsed
        return obs
    return run


def aborted(status: int):
    def expect(obs):
        assert obs["status"] == status, obs
        assert obs["body"] == "fault filter abort", obs
        assert header(obs, "content-type") == "text/plain", obs
        assert obs["upstream requests"] == 0, obs
    return expect


def passed(obs):
    assert obs["status"] == 200, obs
    assert obs["upstream requests"] == 1, obs


def delayed(obs):
    passed(obs)
    assert obs["took at least the delay"] is True, obs


def test_fault_abort_100_percent(pair, recorder):
    differential(pair, exchange(recorder, "abort", "fault-abort-100"), aborted(503))


def test_fault_abort_from_header(pair, recorder):
    differential(pair, exchange(recorder, "header_fault", "fault-abort-header",
                                [("x-envoy-fault-abort-request", "429")]), aborted(429))


def test_fault_header_controlled_without_headers_passes(pair, recorder):
    differential(pair, exchange(recorder, "header_fault", "fault-header-absent"), passed)


def test_fault_delay_from_header(pair, recorder):
    differential(pair, exchange(recorder, "header_fault", "fault-delay-header",
                                [("x-envoy-fault-delay-request", "300")], min_elapsed=0.3), delayed)


def test_fault_fixed_delay(pair, recorder):
    differential(pair, exchange(recorder, "delay", "fault-delay-fixed", min_elapsed=0.2), delayed)


def test_fault_abort_header_matcher_applies(pair, recorder):
    differential(pair, exchange(recorder, "abort_matched", "fault-matcher-hit", [("x-fault", "1")]),
                 aborted(418))


def test_fault_abort_header_matcher_misses(pair, recorder):
    differential(pair, exchange(recorder, "abort_matched", "fault-matcher-miss"), passed)


def test_fault_abort_percentage(pair):
    # Each proxy on its own against the configured 25%, within 5 binomial sigmas.
    request = build_request("GET", "/f", [("host", "diff.test")])

    def check(target):
        statuses = [r.status for r in sequential(target.ports["abort_pct"], request, FAULT_REQUESTS)]
        aborted_count = statuses.count(503)
        assert aborted_count + statuses.count(200) == FAULT_REQUESTS, set(statuses)
        assert within_binomial(aborted_count, FAULT_REQUESTS, ABORT_PERCENT / 100), \
            f"{aborted_count} of {FAULT_REQUESTS} aborted, configured {ABORT_PERCENT}%"
    each_proxy(pair, check)


def test_local_ratelimit_429_after_max_tokens(pair):
    def run(target):
        return [observe(one(target.ports["ratelimit"], "GET", "/f", [("host", "diff.test")]), target)
                for _ in range(RATE_LIMIT_TOKENS + 2)]

    def expect(observations):
        assert [o["status"] for o in observations] == [200] * RATE_LIMIT_TOKENS + [429, 429], observations
        limited = observations[-1]
        assert limited["body"] == "local_rate_limited", limited
        assert header(limited, "x-limited") == "yes", limited
        assert header(limited, "content-type") == "text/plain", limited
    differential(pair, run, expect)
