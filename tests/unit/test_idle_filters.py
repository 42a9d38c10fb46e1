"""Filters with nothing to do cost (almost) nothing per request (issue 17): what each decides
once, at config time or at its first request, and that the result is what the per-request
path gave (CORS, local rate limit, the access log's header fields)."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

from baton.worker.codecs.message import Headers, Request
from baton.worker.proxy.http import cors
from baton.worker.proxy.http.cors import CorsFactory
from baton.worker.proxy.http.formatter import DEFAULT_FORMAT, _getter, _parse, compile_format
from baton.worker.proxy.http.local_ratelimit import LocalRateLimitFactory
from baton.worker.proxy.http.stream_info import StreamInfo

from .test_formatter import START, completed_info
from .test_istio_http_filters import VHOST, route_object, routes


def _stream(route, headers, hcm=None):
    request = Request("GET", "/x", "a", Headers(headers))
    return SimpleNamespace(route=route, request=request, hcm=hcm,
                           info=StreamInfo(request, 0.0, "HTTP/1.1", ("1.1.1.1", 1), ("2.2.2.2", 2)))


def test_cors_first_in_the_chain_gives_a_request_without_origin_no_filter():
    config, _ = routes(VHOST)
    route = route_object(config, 1)
    first = CorsFactory({}, None)
    hcm = SimpleNamespace(filter_factories=[first])
    assert first.create(_stream(route, [("user-agent", "u")], hcm)) is None
    with_origin = first.create(_stream(route, [("origin", "https://a.test")], hcm))
    assert with_origin is not None and with_origin.policy["allow_methods"] == "GET,POST"
    # Second in its chain: an earlier filter could add an Origin, so the filter is made and
    # reads the header when its turn comes.
    later = CorsFactory({}, None)
    hcm = SimpleNamespace(filter_factories=[object(), later])
    f = later.create(_stream(route, [("user-agent", "u")], hcm))
    assert f is not None and f.on_request_headers(f.stream.request, True) is None


def test_cors_merges_a_routes_policy_once(monkeypatch):
    calls = []
    real = cors.effective_policy
    monkeypatch.setattr(cors, "effective_policy", lambda route: calls.append(route) or real(route))
    config, _ = routes(VHOST)
    route, other = route_object(config, 1), route_object(config, 0)
    factory = CorsFactory({}, None)
    for r in (route, route, other, route, other):
        assert factory.create(_stream(r, [("origin", "https://a.test")])) is not None
    assert calls == [route, other]
    no_policy = route_object(routes()[0], 1)
    assert factory.create(_stream(no_policy, [("origin", "https://a.test")])) is None
    assert factory.create(_stream(no_policy, [("origin", "https://a.test")])) is None
    assert calls == [route, other, no_policy]


def _rate_limit(enabled, tokens=2):
    percent = {"numerator": enabled, "denominator": 100}
    config = {"max_tokens": tokens, "tokens_per_fill": tokens, "fill_interval": 3600.0,
              "status": 429, "filter_enabled": percent,
              "filter_enforced": {"numerator": 100, "denominator": 100},
              "response_headers_to_add": [], "request_headers_to_add_when_not_enforced": [],
              "x_ratelimit_headers": False, "stat_prefix": "rl"}
    stats = SimpleNamespace(counters=Counter())
    return LocalRateLimitFactory(config, SimpleNamespace(stats=stats), clock=lambda: 0.0), \
        stats.counters


class _NoDice:
    def randrange(self, n):
        raise AssertionError("a 100% (or 0%) percentage needs no roll")


def test_rate_limit_always_enabled_rolls_no_dice_and_still_counts_and_limits():
    factory, counters = _rate_limit(100)
    factory.rng = _NoDice()
    results = []
    for _ in range(3):
        f = factory.create(_stream(None, []))
        results.append(f.on_request_headers(f.stream.request, True))
    assert results[:2] == [None, None] and results[2].status == 429
    assert counters["rl.http_local_rate_limit.enabled"] == 3
    assert counters["rl.http_local_rate_limit.ok"] == 2
    assert counters["rl.http_local_rate_limit.rate_limited"] == 1
    assert counters["rl.http_local_rate_limit.enforced"] == 1
    never, counters = _rate_limit(0)
    never.rng = _NoDice()
    assert never.create(_stream(None, [])) is None
    assert counters["rl.http_local_rate_limit.enabled"] == 0


def _field_by_field(fmt, info):
    """The line as each getter alone renders it (the access log before the one pass)."""
    out = []
    for part in _parse(fmt):
        if isinstance(part, str):
            out.append(part)
        else:
            value = _getter(part)(info)
            out.append("-" if value is None else str(value))
    return "".join(out)


def test_access_log_reads_request_headers_in_one_pass_with_the_same_result():
    formats = [DEFAULT_FORMAT,
               "%REQ(X-MULTI)% %REQ(x-empty)% %REQ(X-NONE?USER-AGENT)% %REQ(:AUTHORITY)% "
               "%REQ(:PATH?X-REQUEST-ID)% %REQ(X-NONE?:METHOD)% %REQ(X-MULTI):1% %REQ(X-NONE)%\n"]
    for fmt in formats:
        render = compile_format(fmt)
        for info in (completed_info(), _without_request(completed_info())):
            assert render(info) == _field_by_field(fmt, info)
    line = compile_format(formats[1])(completed_info())
    assert line == "a  curl/8.0 example.com /p?q=1 GET a -\n"


def _without_request(info):
    info.request = None
    return info


def test_default_start_time_is_kept_per_millisecond_and_follows_second_and_millisecond():
    render = compile_format("%START_TIME%")
    lines = []
    for start in (START, START + 0.0002, START + 0.001, START + 1.0, START + 0.0004999):
        info = completed_info()
        info.start_time = start
        lines.append(render(info))
    assert lines == ["2026-11-22T02:54:26.909Z", "2026-11-22T02:54:26.909Z",
                     "2026-11-22T02:54:26.910Z", "2026-11-22T02:54:27.909Z",
                     "2026-11-22T02:54:26.910Z"]
