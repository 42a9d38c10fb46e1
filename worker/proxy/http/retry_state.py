"""A request's retries as the router counts them (Envoy's RetryStateImpl): which responses
and failures its retry policy retries, in Envoy's order, how many retries are left, and the
fully jittered exponential back-off between attempts. The router (router.py) asks; the
circuit breaker and the scheduling stay there.
"""

from __future__ import annotations

import random

GATEWAY_ERRORS = frozenset({502, 503, 504})
# retry_on name -> the grpc-status it retries (gRPC's status codes).
GRPC_RETRY_ON = {"cancelled": "1", "deadline-exceeded": "4", "resource-exhausted": "8",
                 "internal": "13", "unavailable": "14"}


class RetryState:
    __slots__ = ("policy", "remaining", "attempt")

    def __init__(self, policy):
        self.policy = policy
        self.remaining = policy.num_retries
        self.attempt = 0

    def retriable_response(self, response) -> bool:
        """Envoy's order: a response an upstream Envoy rate limited is retried only for
        envoy-ratelimited; then status, retriable headers, and a trailers-only grpc-status."""
        policy = self.policy
        on = policy.retry_on
        headers = response.headers
        if "x-envoy-ratelimited" in headers:
            return "envoy-ratelimited" in on
        status = response.status
        if "5xx" in on and status >= 500:
            return True
        if "gateway-error" in on and status in GATEWAY_ERRORS:
            return True
        if "retriable-4xx" in on and status == 409:
            return True
        if "retriable-status-codes" in on and status in policy.retriable_status_codes:
            return True
        if "retriable-headers" in on and any(m.matches(headers)
                                             for m in policy.retriable_headers):
            return True
        if not on.isdisjoint(GRPC_RETRY_ON):
            grpc_status = headers.get("grpc-status")
            if grpc_status is not None:
                return any(GRPC_RETRY_ON[name] == grpc_status.strip()
                           for name in on.intersection(GRPC_RETRY_ON))
        return False

    def retriable_failure(self, reset: bool, connect_failure: bool, timeout: bool,
                          refused: bool = False, started: bool = True) -> bool:
        """A failure with no response: Envoy retries any reset for reset, 5xx and
        gateway-error; refused-stream only an HTTP/2 REFUSED_STREAM; connect-failure only
        a failed connection; reset-before-request one that came before the request was
        sent."""
        on = self.policy.retry_on
        if "reset-before-request" in on and not started and (reset or connect_failure):
            return True
        if connect_failure:
            return bool(on & {"connect-failure", "5xx", "gateway-error", "reset"})
        if timeout:
            return bool(on & {"5xx", "gateway-error"})
        if reset:
            return bool(on & {"reset", "5xx", "gateway-error"}) or \
                (refused and "refused-stream" in on)
        return False

    def backoff(self) -> float:
        """Envoy's fully jittered exponential back-off."""
        self.attempt += 1
        policy = self.policy
        ceiling = min(policy.base * ((1 << self.attempt) - 1), policy.max)
        return random.random() * ceiling
