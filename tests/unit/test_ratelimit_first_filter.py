"""The local rate limit first among the filters made for a stream takes its token in the
factory (local_ratelimit.py): what it counts, answers and adds is the same as when its
filter takes the token in on_request_headers."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

from baton.worker.codecs.message import Headers, Request, Response
from baton.worker.proxy.http.local_ratelimit import LocalRateLimitFactory
from baton.worker.proxy.http.stream_info import StreamInfo


def _factory(tokens=2, x_headers=False):
    config = {"max_tokens": tokens, "tokens_per_fill": tokens, "fill_interval": 3600.0,
              "status": 429, "filter_enabled": {"numerator": 100, "denominator": 100},
              "filter_enforced": {"numerator": 100, "denominator": 100},
              "response_headers_to_add": [], "request_headers_to_add_when_not_enforced": [],
              "x_ratelimit_headers": x_headers, "stat_prefix": "rl"}
    stats = SimpleNamespace(counters=Counter())
    return LocalRateLimitFactory(config, SimpleNamespace(stats=stats), clock=lambda: 0.0)


def _stream(made_before):
    """A stream as Stream.start has it while calling the factories: `filters` holds the
    filters made so far."""
    request = Request("GET", "/x", "a", Headers([("user-agent", "u")]))
    info = StreamInfo(request, 0.0, "HTTP/1.1", ("1.1.1.1", 1), ("2.2.2.2", 2))
    return SimpleNamespace(request=request, info=info, filters=list(made_before))


def _run(factory, made_before, requests=3):
    """[(a filter was made, the reply's status or None, the response's headers)]."""
    out = []
    for _ in range(requests):
        stream = _stream(made_before)
        made = factory.create(stream)
        reply = made.on_request_headers(stream.request, True) if made is not None else None
        response = Response(200, Headers([("server", "up")]))
        if made is not None and reply is None:
            made.on_response_headers(response, True)
        headers = reply.headers if reply is not None else list(response.headers)
        out.append((made is not None, reply.status if reply is not None else None,
                    [tuple(h) for h in headers]))
    return out


def test_first_filter_takes_the_token_in_the_factory_with_the_same_outcome():
    for x_headers in (False, True):
        first, later = _factory(x_headers=x_headers), _factory(x_headers=x_headers)
        got_first = _run(first, [])
        got_later = _run(later, [object()])     # a filter before it: the filter decides
        assert [r[1:] for r in got_first] == [r[1:] for r in got_later]
        assert [r[1] for r in got_first] == [None, None, 429]
        assert first.counters == later.counters
        assert first.counters["rl.http_local_rate_limit.enabled"] == 3
        assert first.counters["rl.http_local_rate_limit.ok"] == 2
        assert first.counters["rl.http_local_rate_limit.rate_limited"] == 1
        assert first.counters["rl.http_local_rate_limit.enforced"] == 1
        # Let through with nothing to add: no filter at all; else one (headers or the 429).
        assert [r[0] for r in got_first] == ([True] * 3 if x_headers else [False, False, True])
        assert all(r[0] for r in got_later)
        if x_headers:
            assert ("x-ratelimit-remaining", "1") in got_first[0][2]
            assert ("x-ratelimit-remaining", "0") in got_first[2][2]


def test_a_filter_made_before_it_leaves_the_token_to_its_turn():
    factory = _factory()
    stream = _stream([object()])
    made = factory.create(stream)
    assert made is not None
    assert factory.counters["rl.http_local_rate_limit.enabled"] == 0   # not before its turn
