"""local_ratelimit.TokenBucket takes a token exactly when Envoy 1.40's bucket would
(AtomicTokenBucketImpl: the moment T it was empty, tokens = min(max_tokens, (now - T) * rate),
a token taken moves T on by 1 / rate), and reports what it holds as Envoy's remainingTokens.
Clock steps and rates are powers of two, so the floats are exact and the model's exact
fractions decide every boundary case the same way."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import example, given, settings
from hypothesis import strategies as st

from baton.worker.proxy.http.local_ratelimit import TokenBucket


class Clock:
    def __init__(self):
        self.now = 4096.0

    def __call__(self):
        return self.now


class EnvoyBucket:
    """The model: Envoy's state and arithmetic, in exact fractions."""

    def __init__(self, max_tokens, rate, now):
        self.max_tokens, self.rate = max_tokens, Fraction(rate)
        self.empty_at = Fraction(now) - max_tokens / self.rate     # starts full

    def tokens(self, now):
        return min(self.max_tokens, (Fraction(now) - self.empty_at) * self.rate)

    def consume(self, now):
        if Fraction(now) <= self.empty_at:
            return False
        total = self.tokens(now)
        if total < 1:
            return False
        self.empty_at = Fraction(now) - (total - 1) / self.rate
        return True


@settings(max_examples=60, deadline=None)
@given(max_tokens=st.integers(1, 6), rate_exp=st.integers(-3, 3),
       steps=st.lists(st.tuples(st.integers(0, 24), st.booleans()), max_size=40))
@example(max_tokens=2, rate_exp=0, steps=[(0, True)] * 3 + [(4, True), (4, True), (4, True)])
@example(max_tokens=1, rate_exp=-1, steps=[(0, True), (8, True), (8, True), (8, True)])
def test_takes_a_token_when_envoys_bucket_would(max_tokens, rate_exp, steps):
    rate = 2.0 ** rate_exp                       # tokens per second: 1/8 .. 8
    clock = Clock()
    bucket = TokenBucket(max_tokens, 1, 1 / rate, clock)
    model = EnvoyBucket(max_tokens, rate, clock.now)
    for eighths, ask in steps:
        clock.now += eighths / 8
        if ask:
            assert bucket.consume() == model.consume(clock.now)
        assert bucket.tokens() == model.tokens(clock.now)
