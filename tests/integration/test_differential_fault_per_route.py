"""Differential: fault injection and local rate limits per route (typed_per_filter_config), as
Istio sends them: the HCM's fault filter with no fault of its own and a local rate limit with a
stat_prefix alone (a TypedStruct, Istio's EnvoyFilter shape); a route's HTTPFault (an abort by
HTTP status, one by gRPC status, one by request header, a delay), a virtual host's, a route's
own over its virtual host's, a route's LocalRateLimit, and a route without any on the same
listener. Status, body, headers, the access log's flags and details, and the stats, on one
Envoy+Baton pair."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from .differential.bootstraps import (FAULT_TYPE, LOCAL_RATELIMIT_TYPE, bootstrap, cluster,
                                      http_listener, percent)
from .differential.client import one
from .differential.compare import differential, header, observe
from .differential.proxies import PROXIES, module_pair
from ..waiting import wait_until

FAULT = "envoy.filters.http.fault"
RL = "envoy.filters.http.local_ratelimit"
ALL = {"numerator": 1000000, "denominator": "MILLION"}      # istiod's percentage of 100
DELAY = 0.15
TOKENS = 2
LOG_FORMAT = "%REQ(X-TEST-KEY)%\t%RESPONSE_CODE%\t%RESPONSE_FLAGS%\t%RESPONSE_CODE_DETAILS%\n"
ACCESS_LOG = [{"name": "envoy.access_loggers.stdout", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}}}}]


def fault(**config) -> dict:
    return {FAULT: {"@type": FAULT_TYPE, **config}}


def route(prefix: str, per_filter: dict | None = None) -> dict:
    return {"match": {"prefix": prefix}, "route": {"cluster": "a"},
            **({"typed_per_filter_config": per_filter} if per_filter else {})}


def per_route_bootstrap(upstreams: dict[str, int]):
    limit = {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
             "type_url": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
             "value": {"stat_prefix": "route_rl",
                       "token_bucket": {"max_tokens": TOKENS, "tokens_per_fill": TOKENS,
                                        "fill_interval": "3600s"},
                       "filter_enabled": {"runtime_key": "rl_on", "default_value": percent(100)},
                       "filter_enforced": {"runtime_key": "rl_enforced", "default_value": percent(100)}}}
    routes = {"name": "per_route", "virtual_hosts": [
        {"name": "vh", "domains": ["vh.test"],
         "typed_per_filter_config": fault(abort={"http_status": 418, "percentage": ALL}),
         "routes": [route("/own", fault(abort={"http_status": 503, "percentage": {"numerator": 0}})),
                    route("/")]},
        {"name": "all", "domains": ["*"], "routes": [
            route("/abort", fault(abort={"http_status": 503, "percentage": ALL})),
            route("/grpc", fault(abort={"grpc_status": 14, "percentage": ALL})),
            route("/delay", fault(delay={"fixed_delay": f"{DELAY}s", "percentage": ALL})),
            route("/hdr", fault(abort={"header_abort": {}, "percentage": ALL})),
            route("/rl", {RL: limit}),
            route("/")]}]}
    filters = [{"name": FAULT, "typed_config": {"@type": FAULT_TYPE}},
               {"name": RL, "typed_config": {
                   "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                   "type_url": "type.googleapis.com/" + LOCAL_RATELIMIT_TYPE.rsplit("/", 1)[-1],
                   "value": {"stat_prefix": "http_local_rate_limiter"}}}]

    def template(ports: dict[str, int], admin: int) -> dict:
        return bootstrap(admin, [http_listener("per_route", ports["per_route"], routes,
                                               http_filters=filters, access_log=ACCESS_LOG)],
                         [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-fault-route", per_route_bootstrap, ["per_route"])


CASES = {     # case -> (path, host, request headers, timed)
    "route-abort": ("/abort", "diff.test", (), False),
    "route-plain": ("/plain", "diff.test", (), False),
    "route-grpc": ("/grpc", "diff.test", (("content-type", "application/grpc"),), False),
    "route-grpc-plain": ("/grpc", "diff.test", (), False),
    "route-delay": ("/delay", "diff.test", (), True),
    "route-header-grpc": ("/hdr", "diff.test", (("content-type", "application/grpc"),
                                                ("x-envoy-fault-abort-grpc-request", "8")), False),
    # An HTTP status out of range leaves the word to the gRPC header.
    "route-header-bad-http": ("/hdr", "diff.test", (("x-envoy-fault-abort-request", "700"),
                                                    ("x-envoy-fault-abort-grpc-request", "8")), False),
    "route-header-none": ("/hdr", "diff.test", (), False),
    "vhost-abort": ("/x", "vh.test", (), False),
    "vhost-route-own": ("/own", "vh.test", (), False),
    **{f"route-rl-{i}": ("/rl", "diff.test", (), False) for i in range(TOKENS + 1)},
}
STATS = ("http.per_route.fault.", "route_rl.", "http_local_rate_limiter.")


def _log_lines(target, keys: list[str]) -> dict[str, list[str]]:
    """The access log lines of the requests with x-test-key in `keys` (flushed within about a
    second: waited for once): key -> [code, flags, details]."""
    def find():
        found = {}
        with open(target.process.log_path, "rb") as f:
            for text in f.read().decode(errors="replace").splitlines():
                key, _, rest = text.partition("\t")
                if key in keys and text.count("\t") == 3:
                    found[key] = rest.split("\t")
        return found if len(found) == len(keys) else None
    return wait_until(find, 10, f"{target.name}'s access log lines of {keys}")


def _send_all(recorder, target) -> dict:
    """Every case on one proxy, in order, then their log lines (one wait for the flush) and
    the stats: case -> observation, and "stats"."""
    seen = {}
    for case, (path, host, headers, timed) in CASES.items():
        key = target.key(case)
        resp = one(target.port, "GET", path, [("host", host), *headers, ("x-test-key", key)])
        obs = seen[case] = observe(resp, target)
        obs["upstream requests"] = recorder.count(key)
        if timed:
            # 10 ms of slack: Envoy arms its timers from the event loop's cached time.
            obs["delayed"] = DELAY - 0.010 <= resp.elapsed < DELAY + 2.0 or resp.elapsed
    lines = _log_lines(target, [target.key(case) for case in CASES])
    for case in CASES:
        seen[case]["log"] = lines[target.key(case)]
    seen["stats"] = {name: value for name, value in target.stats().items()
                     if name.startswith(STATS)}
    return seen


@pytest.fixture(scope="module")
def sent(pair, recorder):
    """What each proxy answered to every case, both proxies at once (the flush of the access
    log, about a second, waited out together): proxy name -> _send_all's."""
    def on(name):
        try:
            return _send_all(recorder, pair.target(name))
        except AssertionError as exc:
            return exc
        except Exception as exc:    # a timeout, a closed connection: said by each case
            return AssertionError(f"{name}: the exchange failed: {type(exc).__name__}: {exc}")
    with ThreadPoolExecutor(len(PROXIES)) as pool:
        return dict(zip(PROXIES, pool.map(on, PROXIES)))


def case(sent, name: str):
    """differential()'s run for one case, read from what was sent."""
    def run(target):
        seen = sent[target.name]
        if isinstance(seen, Exception):
            raise seen
        return seen[name]
    return run


def aborted(status: int, flags="FI"):
    def expect(obs):
        assert obs["status"] == status, obs
        assert obs["body"] == "fault filter abort", obs
        assert obs["upstream requests"] == 0, obs
        assert obs["log"] == [str(status), flags, "fault_filter_abort"], obs
    return expect


def passed(obs):
    assert obs["status"] == 200, obs
    assert obs["upstream requests"] == 1, obs
    assert obs["log"] == ["200", "-", "via_upstream"], obs


def test_a_routes_abort(pair, sent):
    differential(pair, case(sent, "route-abort"), aborted(503))


def test_a_route_without_a_fault_on_the_same_listener_is_untouched(pair, sent):
    differential(pair, case(sent, "route-plain"), passed)


def test_a_routes_grpc_abort_to_a_grpc_request(pair, sent):
    def expect(obs):
        assert obs["status"] == 200 and obs["upstream requests"] == 0, obs
        assert header(obs, "grpc-status") == "14", obs
        assert header(obs, "grpc-message") == "fault filter abort", obs
        assert obs["log"] == ["200", "FI", "fault_filter_abort"], obs
    differential(pair, case(sent, "route-grpc"), expect)


def test_a_routes_grpc_abort_to_a_plain_request(pair, sent):
    differential(pair, case(sent, "route-grpc-plain"), aborted(200))


def test_a_routes_delay(pair, sent):
    def expect(obs):
        assert obs["status"] == 200 and obs["upstream requests"] == 1, obs
        assert obs["delayed"] is True, obs
        assert obs["log"] == ["200", "DI", "via_upstream"], obs
    differential(pair, case(sent, "route-delay"), expect)


def test_a_routes_header_controlled_abort(pair, sent):
    def expect(obs):
        assert obs["status"] == 200 and obs["upstream requests"] == 0, obs
        assert header(obs, "grpc-status") == "8", obs
        assert obs["log"] == ["200", "FI", "fault_filter_abort"], obs
    differential(pair, case(sent, "route-header-grpc"), expect)
    differential(pair, case(sent, "route-header-bad-http"), aborted(200))
    differential(pair, case(sent, "route-header-none"), passed)


def test_a_virtual_hosts_fault_and_a_routes_own_over_it(pair, sent):
    differential(pair, case(sent, "vhost-abort"), aborted(418))
    differential(pair, case(sent, "vhost-route-own"), passed)


def test_a_routes_local_rate_limit(pair, sent):
    def run(target):
        return [case(sent, f"route-rl-{i}")(target) for i in range(TOKENS + 1)]

    def expect(observations):
        assert [o["status"] for o in observations] == [200] * TOKENS + [429], observations
        limited = observations[-1]
        assert limited["body"] == "local_rate_limited", limited
        assert limited["log"] == ["429", "RL", "local_rate_limited"], limited
    differential(pair, run, expect)


def test_the_stats(pair, sent):
    """A route's faults count in the filter's counters; a route's rate limit under its own
    stat_prefix; the filter's own limit, never enabled, counts nothing."""
    def expect(stats):
        assert stats["http.per_route.fault.aborts_injected"] == 6, stats
        assert stats["http.per_route.fault.delays_injected"] == 1, stats
        assert stats["http.per_route.fault.active_faults"] == 0, stats
        assert stats["route_rl.http_local_rate_limit.enabled"] == TOKENS + 1, stats
        assert stats["route_rl.http_local_rate_limit.ok"] == TOKENS, stats
        assert stats["route_rl.http_local_rate_limit.enforced"] == 1, stats
        assert stats["http_local_rate_limiter.http_local_rate_limit.enabled"] == 0, stats
    differential(pair, case(sent, "stats"), expect)
