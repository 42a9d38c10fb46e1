"""Differential: envoy.filters.http.buffer (max_request_bytes, the per-route BufferPerRoute
disable and override) on the filter API's body hooks: bodies under, at and over the limit,
content-length and chunked, HTTP/1.1 and HTTP/2; the 413 and downstream_rq_too_large."""

from __future__ import annotations

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.client import Closed, Connection, curl, one
from .differential.compare import differential, observe, upstream_header
from .differential.proxies import module_pair

BUFFER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute"
LIMIT = 2048
ROUTE_LIMIT = 8192
FILTER_NAME = "buffer-it"


def buffer_bootstrap(upstreams: dict[str, int]):
    routes = [
        {"match": {"prefix": "/off"}, "route": {"cluster": "a"},
         "typed_per_filter_config": {FILTER_NAME: {"@type": PER_ROUTE_TYPE, "disabled": True}}},
        {"match": {"prefix": "/big"}, "route": {"cluster": "a"},
         "typed_per_filter_config": {FILTER_NAME: {
             "@type": PER_ROUTE_TYPE, "buffer": {"max_request_bytes": ROUTE_LIMIT}}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]
    route_config = {"name": "buffer", "virtual_hosts": [{"name": "all", "domains": ["*"],
                                                           "routes": routes}]}
    filters = [{"name": FILTER_NAME, "typed_config": {"@type": BUFFER_TYPE,
                                                       "max_request_bytes": LIMIT}}]

    def template(ports: dict[str, int], admin: int) -> dict:
        return bootstrap(admin, [http_listener("buffer", ports["buffer"], route_config,
                                               http_filters=filters)],
                         [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-buffer", buffer_bootstrap, ["buffer"])


def post(path: str, size: int, chunked: bool = False):
    def run(target):
        body = bytes(range(256)) * (size // 256) + bytes(size % 256)
        before = target.stats("http.buffer.downstream_rq_too_large").get(
            "http.buffer.downstream_rq_too_large", 0)
        resp = one(target.ports["buffer"], "POST", path, [("host", "diff.test")], body,
                   chunked=chunked)
        obs = observe(resp, target)
        after = target.stats("http.buffer.downstream_rq_too_large").get(
            "http.buffer.downstream_rq_too_large", 0)
        obs["downstream_rq_too_large"] = after - before
        return obs
    return run


def buffered(size: int):
    def expect(obs):
        assert obs["status"] == 200, obs
        assert obs["upstream"]["body_length"] == size, obs
        assert obs["downstream_rq_too_large"] == 0, obs
    return expect


def too_large(obs):
    assert obs["status"] == 413, obs
    assert obs["body"] == "Payload Too Large", obs
    assert obs["downstream_rq_too_large"] == 1, obs


def test_content_length_under_the_limit(pair):
    differential(pair, post("/", 1000), buffered(1000))


def test_content_length_at_the_limit(pair):
    differential(pair, post("/", LIMIT), buffered(LIMIT))


def test_content_length_over_the_limit(pair):
    differential(pair, post("/", LIMIT + 1), too_large)


def test_chunked_under_the_limit_gets_a_content_length(pair):
    def expect(obs):
        buffered(1500)(obs)
        assert upstream_header(obs, "content-length") == "1500", obs
    differential(pair, post("/", 1500, chunked=True), expect)


def test_chunked_at_the_limit(pair):
    differential(pair, post("/", LIMIT, chunked=True), buffered(LIMIT))


def test_chunked_over_the_limit(pair):
    differential(pair, post("/", 3000, chunked=True), too_large)


def test_per_route_disabled_streams_any_size(pair):
    differential(pair, post("/off", 5000, chunked=True), buffered(5000))


def test_per_route_override_raises_the_limit(pair):
    differential(pair, post("/big", 5000), buffered(5000))


def test_per_route_override_still_limits(pair):
    differential(pair, post("/big", ROUTE_LIMIT + 1), too_large)


def test_bodiless_request_passes(pair):
    def run(target):
        return observe(one(target.ports["buffer"], "GET", "/", [("host", "diff.test")]), target)
    differential(pair, run, lambda obs: obs["status"] == 200 or (_ for _ in ()).throw(
        AssertionError(obs)))


def test_http2_one_data_frame_passes_over_the_limit(pair, tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(b"x" * 1000)
    big.write_bytes(b"y" * 3000)

    def run(target):
        port = target.ports["buffer"]
        under = curl(port, "/", "--data-binary", f"@{small}", "-H", "host: diff.test",
                     http2=True)
        over = curl(port, "/", "--data-binary", f"@{big}", "-H", "host: diff.test",
                    http2=True)
        return {"under": observe(under, target), "over": observe(over, target)}

    def expect(obs):
        assert obs["under"]["status"] == 200, obs
        assert obs["under"]["upstream"]["body_length"] == 1000, obs
        # One DATA frame with END_STREAM: Envoy buffers it past the filter (streaming), no 413.
        assert obs["over"]["status"] == 200, obs
    differential(pair, run, expect)


def test_no_request_served_behind_a_413_that_said_close(pair):
    """Four POSTs pipelined, the third over the limit: its 413 says connection: close, and
    the fourth, read in the same batch, is not served (RFC 9112 9.6; Envoy 1.40 [200, 200,
    413]; Baton served it too)."""
    small = b"POST /a HTTP/1.1\r\nhost: diff.test\r\ncontent-length: 5\r\n\r\nhello"
    chunked = (b"POST /b HTTP/1.1\r\nhost: diff.test\r\ntransfer-encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n0\r\n\r\n")
    big = b"POST /c HTTP/1.1\r\nhost: diff.test\r\ncontent-length: %d\r\n\r\n" % (LIMIT + 1000)
    requests = small + chunked + big + b"z" * (LIMIT + 1000) + small

    def run(target):
        with Connection(target.ports["buffer"]) as conn:
            conn.send(requests)
            seen = []
            while True:
                try:
                    seen.append(conn.read_response().status)
                except Closed:
                    return {"statuses": seen}

    def expect(obs):
        assert obs == {"statuses": [200, 200, 413]}, obs
    differential(pair, run, expect)
