"""Waiting on a readiness signal with a deadline, for every test ring (never a fixed sleep)."""

from __future__ import annotations

import time


def wait_until(predicate, timeout: float, what: str, poll: float = 0.02):
    """Poll `predicate` until it returns something true and return that value; AssertionError
    naming `what` once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)
