"""Differential: %REQ(X)% and %RESP(X)% of a header sent more than once log its first value
alone, on HTTP/1.1 and HTTP/2 (Envoy's formatter takes the header map's first entry)."""

from __future__ import annotations

import subprocess

import pytest

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.compare import differential
from .differential.proxies import module_pair
from .test_differential_resilience import logged

FORMAT = "%REQ(X-TEST-KEY)% %REQ(X-MULTI)% %RESP(X-MULTI)% %REQ(X-MULTI?X-NONE)%\n"
ACCESS_LOG = [{"name": "envoy.access_loggers.stdout", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    "log_format": {"text_format_source": {"inline_string": FORMAT}}}}]


def headers_bootstrap(upstreams: dict[str, int]):
    routes = {"name": "al", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def template(ports: dict[str, int], admin: int) -> dict:
        return bootstrap(admin, [http_listener("al", ports["al"], routes, access_log=ACCESS_LOG)],
                         [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-al-headers", headers_bootstrap, ["al"])


@pytest.mark.parametrize("version", ["--http1.1", "--http2-prior-knowledge"])
def test_a_repeated_header_logs_its_first_value(pair, version):
    def run(target):
        key = target.key("multi" + version)
        subprocess.run(["curl", "-s", "-o", "/dev/null", "-m", "5", version,
                        "-H", f"x-test-key: {key}", "-H", "x-multi: a", "-H", "x-multi: b",
                        "-H", "x-test-response-header: x-multi:1",
                        "-H", "x-test-response-header: x-multi:2",
                        f"http://127.0.0.1:{target.port}/u"], check=True, timeout=10)
        return logged(target, key)[1:]
    differential(pair, run, lambda obs: _check(obs == ["a", "1", "a"], obs))


def _check(condition: bool, obs) -> None:
    if not condition:
        pytest.fail(f"unexpected observation: {obs}")
