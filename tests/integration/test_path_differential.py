"""Path normalization before routing, Baton against a real Envoy 1.40 on the same bootstrap.

One listener per setting: normalize_path; with merge_slashes; each
path_with_escaped_slashes_action (REJECT_REQUEST, UNESCAPE_AND_REDIRECT with both others,
UNESCAPE_AND_FORWARD alone and with normalize_path). Every path of PATHS goes through each
listener of each proxy; what the upstream received (or the status, location and body the
proxy answered itself) must be the same. Also Envoy's counters for the rejects and redirects.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import Baton, free_port
from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.client import Connection
from .differential.proxies import Envoy, Recorder

PATHS = ["/a/./b", "/a/../b", "/../a", "/a/b/..", "/a/b/.", "/a//b", "/a/%2e%2e/b", "/a/%2E/b",
         "/a%2Fb", "/a%2fb", "/a%5Cb", "/a\\b", "/a%41b", "/a%7eb", "/a%zzb", "/a%", "/a%2",
         '/a"b', "/a<b>", "/a`b", "/a{b}", "/a|b", "/a^b", "/a[b]", "/a%00b", "/a%25b", "/a%20b",
         "/a?x=/../y", "/a/..?x", "/a%2F..%2Fb", "/a%3Bb", "/a;b", "/a@b:c", "/a/.%2e/b",
         "/a/%2e%2E", "//a//b//", "/a/b%2F%2Fc", "/a%2e", "/.hidden/x", "/a/...", "/a%2Db",
         "/a%7Bb", "/a'b", "/a!$&()*+,=b", "/a%2fb?q=%2f", "/a/b/../../../c", "/%2e%2e/%2e/x/"]
SETTINGS = {
    "norm": {"normalize_path": True},
    "norm_merge": {"normalize_path": True, "merge_slashes": True},
    "reject": {"path_with_escaped_slashes_action": "REJECT_REQUEST"},
    "redirect": {"path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
                 "normalize_path": True, "merge_slashes": True},
    "forward": {"path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD"},
    "forward_norm": {"path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD",
                     "normalize_path": True},
}
ROUTES = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
    {"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]}


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    recorder = Recorder("app")
    results = {}
    try:
        for kind in ("envoy", "baton"):
            ports = {name: free_port() for name in SETTINGS}
            admin = free_port()
            config = bootstrap(admin, [http_listener(name, ports[name], ROUTES, **extra)
                                       for name, extra in SETTINGS.items()],
                               [cluster("app", [recorder.ports["app"]])])
            workdir = Path(tmp_path_factory.mktemp(kind))
            proxy = (Envoy(workdir, config) if kind == "envoy"
                     else Baton(workdir, config, concurrency=1)).start()
            try:
                results[kind] = {(name, path): answer(ports[name], path)
                                 for name in SETTINGS for path in PATHS}
                results[kind]["stats"] = counters(admin)
            finally:
                proxy.stop()
    finally:
        recorder.stop()
    return results


def answer(port, path):
    with Connection(port) as conn:
        conn.send(b"GET " + path.encode() + b" HTTP/1.1\r\nhost: x\r\n\r\n")
        response = conn.read_response()
    if response.status == 200:
        return json.loads(response.body)["path"]
    return response.status, response.header("location"), response.body


def counters(admin):
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as r:
        lines = r.read().decode().splitlines()
    wanted = ("downstream_rq_failed_path_normalization",
              "downstream_rq_redirected_with_normalized_path")
    return {name: int(value) for name, _, value in (l.partition(": ") for l in lines)
            if name.endswith(wanted) and value.strip().isdigit()}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_paths_reach_the_upstream_as_envoy_sends_them(observed, setting):
    envoy = {path: observed["envoy"][(setting, path)] for path in PATHS}
    baton = {path: observed["baton"][(setting, path)] for path in PATHS}
    assert baton == envoy


def test_rejects_and_redirects_are_counted_as_envoy_counts_them(observed):
    envoy = {k: v for k, v in observed["envoy"]["stats"].items() if v}
    assert envoy                                   # the cases above do reject and redirect
    assert {k: v for k, v in observed["baton"]["stats"].items() if v} == envoy
