"""Differential: the HTTP/1.1 codec and connection handling as a client sees them: request bodies
(content-length, chunked, empty, large), HEAD, 100-continue, oversized headers (431, at the exact
byte), malformed requests (400), transfer-codings other than chunked (501), HTTP/1.0 and the
versions Envoy takes for it (0.9, 1.2, 2.0: 426), pipelining, keep-alive, absolute-form targets
(userinfo dropped, invalid URLs 400), and real clients: curl over HTTP/1.1 and over HTTP/2 with
prior knowledge (h2c, codec_type AUTO)."""

from __future__ import annotations

import hashlib
import os

import pytest

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.client import Connection, build_request, curl, one
from .differential.compare import differential, header, observe, upstream_header
from .differential.proxies import module_pair

BODY = os.urandom(10_000)
BIG_BODY = os.urandom(1 << 20)


def protocol_bootstrap(upstreams: dict[str, int]):
    route_config = {"name": "protocol", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "direct\n"}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    # The cases that wait for the close after an error reply meet the FIN held for
    # delayed_close_timeout (Envoy's default: a second): short here, on both proxies.
    def template(ports: dict[str, int], admin: int) -> dict:
        return bootstrap(admin, [
            # `via` on: Envoy appends it to every response, local replies and codec errors too.
            http_listener("proto", ports["proto"], route_config, max_request_headers_kb=8, via="diffproxy",
                          delayed_close_timeout="0.1s"),
            http_listener("http10", ports["http10"], route_config, delayed_close_timeout="0.1s",
                          http_protocol_options={"accept_http_10": True, "default_host_for_http_10": "legacy.test"}),
        ], [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-protocol", protocol_bootstrap, ["proto", "http10"])


def host_and_key(target, case):
    return [("host", "diff.test"), ("x-test-key", target.key(case))]


def check(condition: bool, obs) -> None:
    if not condition:
        pytest.fail(f"unexpected observation: {obs}")


# ---- bodies ----

def body_case(pair, case, method, body, chunked=False, expect=None):
    def run(target):
        return observe(one(target.port, method, "/upload", host_and_key(target, case), body, chunked=chunked), target)
    differential(pair, run, expect)


def received(method: str, body: bytes, framing: str):
    def expect(obs):
        up = obs["upstream"]
        check(obs["status"] == 200 and up["method"] == method, obs)
        check(up["body_length"] == len(body) and up["body_sha256"] == hashlib.sha256(body).hexdigest(), obs)
        check(up["framing"] == framing, obs)
    return expect


def test_post_content_length(pair):
    body_case(pair, "post-content-length", "POST", BODY,
              expect=lambda obs: (received("POST", BODY, "content-length")(obs),
                                  check(upstream_header(obs, "content-length") == str(len(BODY)), obs)))


def test_post_chunked_upload(pair):
    # Envoy forwards a chunked request body chunked (no content-length is invented).
    body_case(pair, "post-chunked", "POST", BODY, chunked=True,
              expect=lambda obs: (received("POST", BODY, "chunked")(obs),
                                  check(upstream_header(obs, "content-length") is None, obs)))


def test_post_empty_body(pair):
    body_case(pair, "post-empty", "POST", b"",
              expect=lambda obs: (received("POST", b"", "content-length")(obs),
                                  check(upstream_header(obs, "content-length") == "0", obs)))


def test_put_one_mebibyte(pair):
    body_case(pair, "put-1mib", "PUT", BIG_BODY, expect=received("PUT", BIG_BODY, "content-length"))


def test_get_without_body_has_no_framing(pair):
    body_case(pair, "get-no-body", "GET", None, expect=received("GET", b"", "none"))


def test_response_body_one_mebibyte(pair):
    def run(target):
        resp = one(target.port, "GET", "/big", [*host_and_key(target, "response-1mib"),
                                                ("x-test-body-size", str(1 << 20))])
        return observe(resp, target)
    differential(pair, run, lambda obs: check(obs["status"] == 200 and obs["body"]["length"] == 1 << 20, obs))


def test_head(pair):
    def run(target):
        with Connection(target.port) as conn:
            obs = observe(conn.request("HEAD", "/head", host_and_key(target, "head")), target)
            # The connection is still usable: the HEAD response carried no body.
            obs["next status"] = conn.request("GET", "/direct", [("host", "diff.test")]).status
        return obs
    differential(pair, run, lambda obs: check(
        obs["status"] == 200 and obs["body"] == "" and header(obs, "content-length") is not None
        and obs["next status"] == 200, obs))


def test_expect_100_continue(pair):
    # The client waits for "100 Continue" before sending its body. Envoy answers the 100 itself
    # and does not forward the expect header upstream.
    def run(target):
        with Connection(target.port) as conn:
            head = build_request("POST", "/continue", [*host_and_key(target, "expect-100"),
                                                       ("expect", "100-continue"),
                                                       ("content-length", str(len(BODY)))])
            conn.send(head)
            interim = conn.read_head()
            conn.send(BODY)
            obs = observe(conn.read_response(), target)
        obs["interim"] = [interim[1]]
        return obs

    def expect(obs):
        received("POST", BODY, "content-length")(obs)
        check(obs["interim"] == [100], obs)
        check(upstream_header(obs, "expect") is None, obs)
    differential(pair, run, expect)


# ---- bad input ----

def raw_case(pair, data: bytes, expect, listener: str = "proto"):
    """Send raw bytes; observe the response (and its HTTP version) and whether the proxy then
    closed the connection."""
    def run(target):
        with Connection(target.ports[listener]) as conn:
            conn.send(data)
            resp = conn.read_response()
            obs = observe(resp, target)
            obs["version"] = resp.version
            obs["closed after"] = conn.wait_closed(5)
        return obs
    differential(pair, run, expect)


def local_close(status: int, body: str):
    def expect(obs):
        check(obs["status"] == status and obs["body"] == body, obs)
        check(header(obs, "connection") == "close" and obs["closed after"] is True, obs)
    return expect


def test_large_headers_431(pair):
    # max_request_headers_kb: 8 on this listener.
    raw_case(pair, build_request("GET", "/", [("host", "diff.test"), ("x-big", "a" * 9000)]),
             local_close(431, "Request Header Fields Too Large"))


def test_malformed_header_line_400(pair):
    raw_case(pair, b"GET / HTTP/1.1\r\nhost: diff.test\r\nthis is not a header\r\n\r\n",
             local_close(400, "Bad Request"))


def test_malformed_request_line_400(pair):
    raw_case(pair, b"NOT HTTP AT ALL\r\n\r\n", local_close(400, "Bad Request"))


def test_content_length_and_chunked_400(pair):
    # Both framings at once is a request-smuggling shape; Envoy refuses it.
    raw_case(pair, b"POST / HTTP/1.1\r\nhost: diff.test\r\ncontent-length: 3\r\n"
                   b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
             local_close(400, "Bad Request"))


def test_http10_rejected_by_default(pair):
    # accept_http_10 is false by default: 426 Upgrade Required.
    raw_case(pair, b"GET / HTTP/1.0\r\n\r\n", local_close(426, "Upgrade Required"))


def test_http10_accepted_with_default_host(pair, recorder):
    def run(target):
        with Connection(target.ports["http10"]) as conn:
            conn.send(b"GET /old HTTP/1.0\r\nx-test-key: " + target.key("http10").encode() + b"\r\n\r\n")
            resp = conn.read_response()
            obs = observe(resp, target)
            obs["version"] = resp.version
            obs["closed after"] = conn.wait_closed(5)
        return obs

    def expect(obs):
        # Upstream gets HTTP/1.1 with the configured default host; the client an HTTP/1.0
        # response, and the connection closes (no keep-alive was asked for).
        check(obs["status"] == 200 and obs["version"] == "HTTP/1.0", obs)
        check(obs["upstream"]["version"] == "HTTP/1.1" and upstream_header(obs, "host") == "legacy.test", obs)
        check(obs["closed after"] is True, obs)
    differential(pair, run, expect)


# ---- connections ----

def test_pipelined_requests(pair):
    def run(target):
        with Connection(target.port) as conn:
            conn.send(b"".join(build_request("GET", f"/p{i}", host_and_key(target, f"pipelined-{i}"))
                               for i in range(3)))
            return [observe(conn.read_response(), target) for _ in range(3)]
    differential(pair, run, lambda obs: check([o["upstream"]["path"] for o in obs] == ["/p0", "/p1", "/p2"], obs))


def test_pipelined_64_routed_requests(pair):
    # A deep pipeline of routed requests, answered in order on the same connection.
    def run(target):
        with Connection(target.port) as conn:
            conn.send(b"".join(build_request("GET", f"/deep{i}", [("host", "diff.test")]) for i in range(64)))
            paths = [observe(conn.read_response(), target)["upstream"]["path"] for _ in range(64)]
            return {"paths": paths, "open after": not conn.wait_closed(0.2)}
    differential(pair, run, lambda obs: check(obs["paths"] == [f"/deep{i}" for i in range(64)]
                                              and obs["open after"] is True, obs))


def test_pipelined_local_reply_then_routed(pair):
    # A local reply (direct response) with a routed request pipelined behind it: both are
    # answered, in order, and the connection stays open. (Envoy, recorded but not made a case:
    # with three or more requests pipelined behind local replies, Envoy 1.40 answers two and
    # closes the connection; clients.sequential avoids that shape.)
    def run(target):
        with Connection(target.port) as conn:
            conn.send(build_request("GET", "/direct", [("host", "diff.test")])
                      + build_request("GET", "/after", host_and_key(target, "pipelined-local")))
            out = [observe(conn.read_response(), target), observe(conn.read_response(), target)]
            out.append({"open after": not conn.wait_closed(0.2)})
        return out
    differential(pair, run, lambda obs: check(obs[0]["body"] == "direct\n" and obs[1]["upstream"]["path"] == "/after"
                                              and obs[2]["open after"] is True, obs))


def test_keep_alive_reuse(pair):
    def run(target):
        with Connection(target.port) as conn:
            out = [observe(conn.request("GET", f"/k{i}", host_and_key(target, f"keepalive-{i}")), target)
                   for i in range(5)]
            out.append({"open after": not conn.wait_closed(0.2)})
        return out
    differential(pair, run, lambda obs: check(all(o["status"] == 200 for o in obs[:5])
                                              and obs[5]["open after"] is True, obs))


def test_connection_close_request(pair):
    def run(target):
        with Connection(target.port) as conn:
            obs = observe(conn.request("GET", "/bye", [*host_and_key(target, "connection-close"),
                                                       ("connection", "close")]), target)
            obs["closed after"] = conn.wait_closed(5)
        return obs
    differential(pair, run, lambda obs: check(obs["status"] == 200 and header(obs, "connection") == "close"
                                              and obs["closed after"] is True, obs))


def test_absolute_form_target(pair):
    # An absolute URI in the request line: Envoy routes on its authority and sends the upstream
    # the path only, with that authority as Host.
    def run(target):
        return observe(one(target.port, "GET", "http://abs.test/p?q=1", host_and_key(target, "absolute-form")), target)
    differential(pair, run, lambda obs: check(obs["upstream"]["path"] == "/p?q=1"
                                              and upstream_header(obs, "host") == "abs.test", obs))


# ---- real clients ----

def test_curl_http11(pair):
    def run(target):
        resp = curl(target.port, "/curl?x=1", "-H", f"x-test-key: {target.key('curl-http11')}")
        obs = observe(resp, target)
        obs["version"] = resp.version
        return obs
    differential(pair, run, lambda obs: check(
        obs["version"] == "HTTP/1.1" and obs["upstream"]["path"] == "/curl?x=1"
        and upstream_header(obs, "user-agent").startswith("curl/")
        and upstream_header(obs, "host") == "127.0.0.1:<port>", obs))


def test_curl_http2_upgrade_is_served_as_http11(pair):
    """curl --http2 on http:// asks for an h2c upgrade; Envoy declines it and answers over
    HTTP/1.1, and the upstream never sees the Upgrade or HTTP2-Settings headers."""
    def run(target):
        resp = curl(target.port, "/h2c-upgrade", "--http2", "-H", f"x-test-key: {target.key('curl-h2c')}")
        obs = observe(resp, target)
        obs["version"] = resp.version
        return obs
    differential(pair, run, lambda obs: check(
        obs["version"] == "HTTP/1.1" and obs["status"] == 200
        and upstream_header(obs, "upgrade") is None and upstream_header(obs, "http2-settings") is None, obs))


def test_curl_http2_prior_knowledge_get(pair):
    def run(target):
        resp = curl(target.port, "/h2?x=1", "-H", f"x-test-key: {target.key('curl-h2-get')}", http2=True)
        obs = observe(resp, target)
        obs["version"] = resp.version
        return obs
    # The upstream (HTTP/1.1 cluster) sees :authority as Host.
    differential(pair, run, lambda obs: check(
        obs["version"] == "HTTP/2" and obs["status"] == 200 and obs["upstream"]["version"] == "HTTP/1.1"
        and upstream_header(obs, "host") == "127.0.0.1:<port>" and obs["upstream"]["path"] == "/h2?x=1", obs))


def test_curl_http2_prior_knowledge_post(pair):
    def run(target):
        resp = curl(target.port, "/h2post", "-H", f"x-test-key: {target.key('curl-h2-post')}",
                    "--data-binary", "hello h2", http2=True)
        return observe(resp, target)
    # curl sends content-length over HTTP/2; the HTTP/1.1 upstream request carries it too.
    differential(pair, run, lambda obs: check(
        obs["upstream"]["method"] == "POST" and obs["upstream"]["body_length"] == 8
        and obs["upstream"]["framing"] == "content-length", obs))


def test_curl_http2_direct_response(pair):
    def run(target):
        resp = curl(target.port, "/direct", http2=True)
        obs = observe(resp, target)
        obs["version"] = resp.version
        return obs
    differential(pair, run, lambda obs: check(obs["version"] == "HTTP/2" and obs["body"] == "direct\n", obs))


@pytest.mark.parametrize("extra", [[("x-h%d" % i, "v") for i in range(150)],      # > 100 fields
                                   [("x-big%d" % i, "v" * 1000) for i in range(70)]],  # > 60 KiB
                         ids=["too-many", "too-large"])
def test_http2_headers_over_the_limits_reset_the_stream_and_the_connection_lives(pair, extra):
    """HTTP/2 (HTTP/1.1 answers 431): Envoy 1.40 resets the stream, INTERNAL_ERROR, counts
    http2.header_overflow or header_list_size_too_large, and serves the next stream."""
    import socket

    import h2.config
    import h2.connection
    import h2.events

    def run(target):
        with socket.create_connection(("127.0.0.1", target.port), timeout=10) as sock:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="utf-8"))
            conn.initiate_connection()
            base = [(":method", "GET"), (":scheme", "http"), (":authority", "x"),
                    (":path", "/direct")]
            conn.send_headers(1, base + extra, end_stream=True)
            conn.send_headers(3, base, end_stream=True)
            sock.sendall(conn.data_to_send())
            seen = {}
            while len(seen) < 2:
                data = sock.recv(65536)
                if not data:
                    seen["closed"] = True
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        seen[event.stream_id] = dict(event.headers)[":status"]
                    elif isinstance(event, h2.events.StreamReset):
                        seen[event.stream_id] = f"reset {int(event.error_code)}"
                sock.sendall(conn.data_to_send())
        return seen
    differential(pair, run, lambda obs: check(obs == {1: "reset 2", 3: "200"}, obs))


# ---- where llhttp and Envoy 1.40 part ways (issue 13) ----

@pytest.mark.parametrize("codings", ["identity, chunked", "gzip, chunked", "chunked, chunked",
                                     "chunked;a=1", "identity", ""])
def test_transfer_encoding_other_than_chunked_501(pair, codings):
    # Envoy implements chunked alone: any other list is 501, never read as chunked (llhttp
    # alone would take "identity, chunked" as chunked, or refuse some lists with a 400).
    raw_case(pair, b"POST /te HTTP/1.1\r\nhost: diff.test\r\ntransfer-encoding: " + codings.encode()
             + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n", local_close(501, "Not Implemented"))


def test_transfer_encoding_in_two_headers_501(pair):
    raw_case(pair, b"POST /te HTTP/1.1\r\nhost: diff.test\r\ntransfer-encoding: identity\r\n"
                   b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
             local_close(501, "Not Implemented"))


def test_transfer_encoding_501_to_http10_in_http10(pair):
    raw_case(pair, b"POST /te HTTP/1.0\r\nhost: diff.test\r\ntransfer-encoding: identity, chunked\r\n\r\n"
                   b"3\r\nabc\r\n0\r\n\r\n",
             lambda obs: (local_close(501, "Not Implemented")(obs), check(obs["version"] == "HTTP/1.0", obs)),
             listener="http10")


def test_transfer_encoding_chunked_in_capitals_is_chunked(pair):
    body_case(pair, "te-capitals", "POST", BODY, chunked=True,
              expect=received("POST", BODY, "chunked"))


def refused_as_http10(obs):
    # The refusal of HTTP/1.0 goes out as HTTP/1.1, the version Envoy asks for.
    local_close(426, "Upgrade Required")(obs)
    check(obs["version"] == "HTTP/1.1", obs)


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/9.9", b"HTTP/0.9"])
def test_other_versions_are_http10_426(pair, version):
    # Envoy takes any one-digit version other than 1.1 for HTTP/1.0 (not accepted here).
    raw_case(pair, b"GET /v " + version + b"\r\nhost: diff.test\r\n\r\n", refused_as_http10)


@pytest.mark.parametrize("data", [b"HEAD / HTTP/1.0\r\nhost: diff.test\r\n\r\n", b"HEAD /x\r\n"],
                         ids=["http10", "without-version"])
def test_head_refused_as_http10_gets_the_426_body(pair, data):
    # The refusal's body goes out on a HEAD too, as Envoy 1.40 sends it (Baton sent the head
    # alone, its content-length announcing 16 bytes that never came).
    raw_case(pair, data, refused_as_http10)


def test_request_line_without_version_426_at_once(pair):
    # HTTP/0.9's form: Envoy answers right after the line, without waiting for headers.
    raw_case(pair, b"GET /x\r\n", refused_as_http10)


def test_request_line_without_version_after_a_request_426(pair):
    def run(target):
        with Connection(target.port) as conn:
            conn.send(build_request("GET", "/first", host_and_key(target, "before-http09")) + b"GET /x\r\n")
            first = observe(conn.read_response(), target)
            resp = conn.read_response()
            second = observe(resp, target)
            second["version"] = resp.version
            second["closed after"] = conn.wait_closed(5)
        return [first, second]
    differential(pair, run, lambda obs: (check(obs[0]["status"] == 200, obs), refused_as_http10(obs[1])))


def test_request_line_without_version_served_as_http10_when_accepted(pair):
    # With accept_http_10 the line is an HTTP/1.0 request without headers: the default host.
    def run(target):
        with Connection(target.ports["http10"]) as conn:
            conn.send(b"GET /x\r\n")
            resp = conn.read_response()
            obs = observe(resp, target)
            obs["version"] = resp.version
            obs["closed after"] = conn.wait_closed(5)
        return obs
    differential(pair, run, lambda obs: check(
        obs["status"] == 200 and obs["version"] == "HTTP/1.0" and obs["upstream"]["path"] == "/x"
        and upstream_header(obs, "host") == "legacy.test" and obs["closed after"] is True, obs))


def test_http20_with_keep_alive_served_as_http10_when_accepted(pair):
    def run(target):
        with Connection(target.ports["http10"]) as conn:
            resp = conn.request("GET", "/v2", [*host_and_key(target, "http20-as-10"),
                                               ("connection", "keep-alive")], version="HTTP/2.0")
            obs = observe(resp, target)
            obs["version"] = resp.version
            obs["open after"] = not conn.wait_closed(0.2)
        return obs
    differential(pair, run, lambda obs: check(
        obs["status"] == 200 and obs["version"] == "HTTP/1.0"
        and header(obs, "connection") == "keep-alive" and obs["open after"] is True, obs))


@pytest.mark.parametrize("target, host, path", [
    ("http://user@abs.test/u", "abs.test", "/u"),
    ("http://u:p@abs.test:8080/x?q=1", "abs.test:8080", "/x?q=1"),
    ("http://@abs.test/e", "abs.test", "/e"),
])
def test_absolute_form_userinfo_is_dropped(pair, target, host, path):
    def run(t):
        return observe(one(t.port, "GET", target, host_and_key(t, f"userinfo-{target}")), t)
    differential(pair, run, lambda obs: check(obs["upstream"]["path"] == path
                                              and upstream_header(obs, "host") == host, obs))


@pytest.mark.parametrize("target", [b"http://a@b@abs.test/", b"http://user@/x", b"http:///x",
                                    b"http://abs.test:99999/", b"http://abs.test:/", b"http://ab_s.test/",
                                    b"ftp://abs.test/", b"relative", b"*"])
def test_invalid_absolute_form_400(pair, target):
    raw_case(pair, b"GET " + target + b" HTTP/1.1\r\nhost: diff.test\r\n\r\n", local_close(400, "Bad Request"))


def head_of(size: int) -> bytes:
    """A GET whose head (request line to the empty line) is exactly `size` bytes."""
    base = build_request("GET", "/limit", [("host", "diff.test"), ("x-pad", "")])
    return build_request("GET", "/limit", [("host", "diff.test"), ("x-pad", "p" * (size - len(base)))])


def test_request_head_limit_is_the_head_as_sent(pair):
    # max_request_headers_kb: 8 here. Envoy counts the head's bytes as sent: 8192 pass, 8193
    # do not.
    def run(target):
        with Connection(target.port) as conn:
            conn.send(head_of(8 * 1024))
            return {"status": conn.read_response().status}
    differential(pair, run, lambda obs: check(obs["status"] == 200, obs))
    raw_case(pair, head_of(8 * 1024 + 1), local_close(431, "Request Header Fields Too Large"))
