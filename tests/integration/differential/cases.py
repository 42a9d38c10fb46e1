"""A one-request case as a row of a table: what to send and what Envoy is recorded to do."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .client import one
from .compare import differential, observe
from .proxies import ProxyPair


@dataclass
class Case:
    name: str
    path: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    expect: Callable[[dict], None] | None = None
    method: str = "GET"
    body: bytes | None = None
    host: str | None = "diff.test"          # None: send no Host header
    listener: str | None = None             # None: the bootstrap's first listener

    def __str__(self):
        return self.name


def run_case(pair: ProxyPair, case: Case) -> dict:
    def run(target):
        headers = [("host", case.host)] if case.host is not None else []
        headers += [*case.headers, ("x-test-key", target.key(case.name))]
        port = target.ports[case.listener] if case.listener else target.port
        return observe(one(port, case.method, case.path, headers, case.body), target)
    return differential(pair, run, case.expect)["envoy" if "envoy" in pair.targets_by_name else "baton"]
