"""What a case observed, normalised so Envoy's and Baton's runs compare exactly, and the runner
that makes a case differential.

Normalisation removes only what is random or time-dependent: the Date header (presence kept),
x-envoy-upstream-service-time (kept as "<ms>" when it is a number), a generated x-request-id
(kept as "<uuid4>" when it is one: its format is compared, not its value), each proxy's own
listener port (so Host: 127.0.0.1:PORT from curl compares) and the "#proxy" tail of x-test-key.
On retried requests, x-envoy-expected-rq-timeout-ms is compared in whole seconds (see record).
Everything else, including x-forwarded-for, x-envoy-expected-rq-timeout-ms of first attempts,
content-length of local replies and the order of repeated headers, is compared as is.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from concurrent.futures import ThreadPoolExecutor

from .client import Response
from .proxies import ONLY, PROXIES, ProxyPair, Target

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _value(name: str, value: str, target: Target) -> str:
    for port in target.ports.values():
        value = value.replace(str(port), "<port>")
    if name == "x-request-id" and UUID4.match(value):
        return "<uuid4>"
    if name == "x-test-key":
        return value.rsplit("#", 1)[0]
    return value


def _headers(headers, target: Target, drop=()) -> list[list[str]]:
    out = []
    for name, value in headers:
        if name in drop:
            continue
        if name == "date":
            value = "<present>"
        elif name == "x-envoy-upstream-service-time" and value.isdigit():
            value = "<ms>"
        out.append([name, _value(name, value, target)])
    # Sorted by name; stable, so repeated headers keep their relative order.
    return sorted(out, key=lambda nv: nv[0])


def record(data: dict, target: Target) -> dict:
    """A recorder's JSON record, normalised.

    On a retry (attempt > 1) Envoy's x-envoy-expected-rq-timeout-ms is what is LEFT of the route
    timeout (15000 minus the time spent so far, 14985, say), which depends on timing: such
    values are compared in whole seconds, rounded up, so that a retry after a 0 ms back-off
    (15000) and one after 25 ms (14975) read the same. A per-try timeout (a short fixed
    value) stays exact."""
    out = dict(data)
    headers = data["headers"]
    if data.get("attempt", 0) > 1:
        headers = [[n, f"<={-(-int(v) // 1000)}s left>"]
                   if n == "x-envoy-expected-rq-timeout-ms" and v.isdigit() and int(v) >= 1000 else [n, v]
                   for n, v in headers]
    out["headers"] = _headers(headers, target)
    out["path"] = _value(":path", data["path"], target)
    return out


def observe(resp: Response, target: Target) -> dict:
    """status, response headers and either the upstream's record or the body."""
    obs = {"status": resp.status, "interim": resp.interim}
    is_record = resp.header("x-recorder") is not None and \
        (resp.header("content-type") or "").startswith("application/json")
    if is_record and resp.body:
        obs["headers"] = _headers(resp.headers, target, drop=("content-length",))
        obs["upstream"] = record(json.loads(resp.body), target)
    else:
        obs["headers"] = _headers(resp.headers, target)
        if len(resp.body) > 4096:
            obs["body"] = {"length": len(resp.body), "sha256": hashlib.sha256(resp.body).hexdigest()}
        else:
            obs["body"] = resp.body.decode("latin-1")
    return obs


# ---- reading observations in expectations ----

def header(obs: dict, name: str) -> str | None:
    """The first response header `name` (None if absent)."""
    return next((v for n, v in obs["headers"] if n == name), None)


def upstream_header(obs: dict, name: str) -> str | None:
    return next((v for n, v in obs["upstream"]["headers"] if n == name), None)


def upstream_headers(obs: dict, name: str) -> list[str]:
    return [v for n, v in obs["upstream"]["headers"] if n == name]


# ---- comparing ----

def diff(a, b, path: str = "") -> list[str]:
    """Every place where `a` (Envoy) and `b` (Baton) differ, as 'path: envoy=... baton=...'."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            if k not in b:
                out.append(f"{path}.{k}: envoy={a[k]!r} baton=<absent>")
            elif k not in a:
                out.append(f"{path}.{k}: envoy=<absent> baton={b[k]!r}")
            else:
                out += diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and path.endswith("headers"):
        # Header lists: say which entries are missing or extra, not index by index.
        missing = [h for h in a if h not in b]
        extra = [h for h in b if h not in a]
        if missing or extra:
            return [f"{path}: only envoy={missing} only baton={extra}"]
        if a != b:
            return [f"{path}: same headers, different order: envoy={a} baton={b}"]
        return []
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += diff(x, y, f"{path}[{i}]")
        return out
    return [] if a == b else [f"{path or '.'}: envoy={a!r} baton={b!r}"]


def _observe(pair: ProxyPair, name: str, run):
    target = pair.target(name)
    try:
        return run(target)
    except AssertionError:
        raise
    except Exception as exc:    # a timeout, a closed connection: say which proxy it was
        raise AssertionError(f"{name}: the exchange failed: {type(exc).__name__}: {exc}") from exc


def differential(pair: ProxyPair, run, expect=None, *, at_once: bool = False):
    """Run `run(target) -> observation` on Envoy, check Envoy against `expect(observation)`
    (the suite's record of Envoy's behaviour), then run it on Baton and require the same
    observation. With BATON_DIFF_ONLY set, only that proxy runs and `expect` is checked on it.

    `at_once`: both proxies run together, a thread each, for a case that waits out a quiet
    period or a timeout on each (half the wall time); only where `run` shares nothing between
    the two calls but the pair. Results are checked in the same order and with the same
    messages as in turn (Envoy's expectation first)."""
    seen = {}
    if at_once:
        with ThreadPoolExecutor(len(PROXIES)) as pool:
            running = {name: pool.submit(_observe, pair, name, run) for name in PROXIES}
            observed = {name: running[name].result for name in PROXIES}
    else:
        observed = {name: (lambda name=name: _observe(pair, name, run)) for name in PROXIES}
    for name in PROXIES:
        seen[name] = observed[name]()
        if expect is not None and (name == "envoy" or ONLY == "baton"):
            expect(seen[name])
    if len(seen) == 2:
        differences = diff(seen["envoy"], seen["baton"])
        assert not differences, "Baton differs from Envoy:\n  " + "\n  ".join(differences)
    return seen


def each_proxy(pair: ProxyPair, check) -> None:
    """For statistical cases: `check(target)` asserts each proxy against the configured
    expectation on its own; failures of all proxies are reported together."""
    failures = []
    for name in PROXIES:
        try:
            check(pair.target(name))
        except Exception as exc:    # an assertion, or the exchange itself failing
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


def within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """`count` successes of `n` trials is within `sigmas` standard deviations of n*p."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1
