"""Differential: request trailers a proxy-wasm plugin adds at the end of the body
(tests/fixtures/wasm/body.wat, /trailer: x-wasm-trailer: added) reach an HTTP/2 upstream,
through Envoy 1.40 and Baton (toward HTTP/1.1 both drop request trailers, so the unit tests
alone had them). The upstream (h2_trailer_upstream.py) answers with the headers, body size
and trailers it received; downstream is HTTP/1.1, with a content-length or chunked body, and
HTTP/2."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest
import wasmtime

from .conftest import start_ready_process
from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.client import curl, one
from .differential.compare import differential
from .differential.proxies import ProxyPair
from .test_differential_wasm import FIXTURES, wasm_filter

UPSTREAM = Path(__file__).resolve().parent / "h2_trailer_upstream.py"
T = "type.googleapis.com/"
H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
BODY = b"some body " * 100
# What differs between the proxies by nature, or between requests.
VARYING = ("x-request-id", "x-envoy-expected-rq-timeout-ms", "user-agent")


def trailers_bootstrap(upstream_port: int):
    code = wasmtime.wat2wasm((FIXTURES / "body.wat").read_text())
    plugin = wasm_filter({"inline_bytes": base64.b64encode(code).decode()}, "", "")
    routes = {"name": "h2", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "h2"}}]}]}

    def template(ports: dict[str, int], admin: int) -> dict:
        return bootstrap(admin, [http_listener("trailers", ports["trailers"], routes,
                                               http_filters=[plugin])],
                         [cluster("h2", [upstream_port], typed_extension_protocol_options=H2)])
    return template


@pytest.fixture(scope="module")
def upstream():
    proc, port = start_ready_process([sys.executable, str(UPSTREAM), "0"])
    yield port
    proc.kill()
    proc.wait(10)


@pytest.fixture(scope="module")
def pair(upstream, tmp_path_factory):
    p = ProxyPair(tmp_path_factory.mktemp("diff-wasm-h2-trailers"), trailers_bootstrap(upstream),
                  ["trailers"])
    yield p
    p.stop()


def seen(status: int, body: bytes) -> dict:
    """What the upstream received, as the response tells it."""
    if status != 200:
        return {"status": status, "body": body.decode("latin-1")}
    record = json.loads(body)
    # The pseudo-headers' order is not this test's (Envoy's follows the downstream protocol).
    record["pseudo"] = sorted(h for h in record["headers"] if h[0].startswith(":"))
    record["headers"] = [h for h in record["headers"]
                         if h[0] not in VARYING and not h[0].startswith(":")]
    return {"status": status, **record}


def post(path: str, chunked: bool = False):
    def run(target):
        resp = one(target.ports["trailers"], "POST", path, [("host", "diff.test")], BODY,
                   chunked=chunked)
        return seen(resp.status, resp.body)
    return run


def added(obs):
    assert obs["status"] == 200, obs
    assert obs["trailers"] == [["x-wasm-trailer", "added"]], obs
    assert obs["body_length"] == len(BODY), obs


def test_a_trailer_the_plugin_adds_reaches_an_http2_upstream(pair):
    differential(pair, post("/trailer"), added)


def test_a_trailer_the_plugin_adds_to_a_chunked_body_reaches_it(pair):
    differential(pair, post("/trailer-chunked", chunked=True), added)


def test_a_trailer_the_plugin_adds_to_an_http2_request_reaches_it(pair):
    def run(target):
        resp = curl(target.ports["trailers"], "/trailer-h2", "--data-binary", BODY.decode(),
                    "-H", "host: diff.test", http2=True)
        return seen(resp.status, resp.body)
    differential(pair, run, added)


def test_a_request_the_plugin_leaves_has_no_trailers(pair):
    def expect(obs):
        assert obs["status"] == 200 and obs["trailers"] == [], obs
    differential(pair, post("/plain"), expect)
