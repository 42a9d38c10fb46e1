"""Differential: retries (5xx, retriable-status-codes, gateway-error, reset, connect-failure,
per_try_timeout, x-envoy-retry-on), route timeouts, upstream resets and connect failures, a
cluster with no healthy upstream, and upstream responses that do not parse (502 UPE, with the
access log's flags and details), against a recording upstream that fails on purpose."""

from __future__ import annotations

import pytest

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.cases import Case, run_case
from .differential.client import curl, one
from .differential.compare import differential, header, observe, upstream_header
from .differential.addresses import closed_port
from .differential.proxies import ProxyPair, Recorder
from ..istio_routes import ISTIO_RETRY, ISTIO_TIMEOUTS
from ..waiting import wait_until

RESET_BEFORE_HEADERS = "upstream connect error or disconnect/reset before headers. reset reason: "


ACCESS_LOG_FORMAT = "%REQ(X-TEST-KEY)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"


# On stdout, which each proxy's process log holds (a file of the test's own would need to be
# writable by Baton's unprivileged workers).
ACCESS_LOG = [{"name": "envoy.access_loggers.stdout", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}}}}]


def route(prefix: str, cluster_name: str = "a", **action) -> dict:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster_name, **action}}


# What istiod (1.22) puts on every outbound route (issue 14), on its own virtual host.
ISTIO_HOST = "istio.test"
ISTIO_VHOST = {
    "name": "istio", "domains": [ISTIO_HOST],
    "include_request_attempt_count": True, "include_attempt_count_in_response": True,
    "routes": [
        route("/grpc-timeout-capped", timeout="0s", max_grpc_timeout="0.3s"),
        route("/grpc-timeout", timeout="0s", max_grpc_timeout="0s"),
        route("/grpc-offset", timeout="0s", max_grpc_timeout="0s", grpc_timeout_offset="0.1s"),
        route("/grpc-stream", timeout="0s", max_grpc_timeout="0s", max_stream_duration={
            "max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}),
        route("/duration", max_stream_duration={"max_stream_duration": "0.3s"}),
        route("/down", "down", retry_policy=ISTIO_RETRY),
        # Istio's policy with more re-picks: at its 5, a run failed about 1 time in 200 by chance.
        route("/two-hosts", "two", retry_policy={**ISTIO_RETRY, "host_selection_retry_max_attempts": "20"}),
        route("/", retry_policy=ISTIO_RETRY, **ISTIO_TIMEOUTS),
    ]}
# A connection manager with max_stream_duration, and a route that turns it off.
DURATION_ROUTES = {"name": "duration", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
    route("/no-limit", max_stream_duration={"max_stream_duration": "0s"}),
    route("/")]}]}


def resilience_bootstrap(upstreams: dict[str, int], down_port: int):

    routes = [
        route("/retry-5xx", retry_policy={"retry_on": "5xx", "num_retries": 2}),
        route("/retry-codes", retry_policy={"retry_on": "retriable-status-codes",
                                            "retriable_status_codes": [409], "num_retries": 2}),
        route("/retry-gw", retry_policy={"retry_on": "gateway-error", "num_retries": 2}),
        route("/retry-reset", retry_policy={"retry_on": "reset", "num_retries": 2}),
        route("/retry-connect", "down", retry_policy={"retry_on": "connect-failure", "num_retries": 2}),
        route("/per-try", timeout="5s",
              retry_policy={"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "0.2s"}),
        route("/timeout", timeout="0.3s"),
        route("/connect-fail", "down"),
        route("/empty", "empty"),
        route("/"),
    ]

    def template(ports: dict[str, int], admin: int) -> dict:
        route_config = {"name": "resilience", "virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": routes}, ISTIO_VHOST]}
        return bootstrap(admin, [http_listener("resilience", ports["resilience"], route_config,
                                               access_log=ACCESS_LOG),
                                 http_listener("duration", ports["duration"], DURATION_ROUTES,
                                               common_http_protocol_options={
                                                   "max_stream_duration": "0.3s"})],
                         [cluster("a", [upstreams["a"]]), cluster("down", [down_port]), cluster("empty", []),
                          # Random picks: only the previous_hosts predicate keeps a retry off
                          # the host that failed.
                          cluster("two", [upstreams["p"], upstreams["q"]], lb_policy="RANDOM")])
    return template


@pytest.fixture(scope="module")
def recorder():
    rec = Recorder("a", "p", "q")
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def pair(recorder, tmp_path_factory):
    p = ProxyPair(tmp_path_factory.mktemp("diff-resilience"),
                  resilience_bootstrap(recorder.ports, closed_port()), ["resilience", "duration"])
    yield p
    p.stop()


def upstream_answered(status: int, attempt: int, **headers: str):
    """The client got the upstream's own answer `status`, on attempt number `attempt`."""
    def expect(obs):
        assert obs["status"] == status, obs
        assert obs["upstream"]["attempt"] == attempt, obs
        for name, value in headers.items():
            assert upstream_header(obs, name.replace("_", "-")) == value, obs["upstream"]["headers"]
    return expect


def local(status: int, body: str):
    def expect(obs):
        assert obs["status"] == status, obs
        assert obs["body"] == body, obs
        assert "upstream" not in obs
    return expect


FAIL_503 = [("x-test-status", "503")]

CASES = [
    Case("retry-5xx-succeeds-on-third", "/retry-5xx", [*FAIL_503, ("x-test-fail-first", "2")],
         expect=upstream_answered(200, 3)),
    # Retries exhausted: the client gets the last upstream answer itself (503, the record).
    Case("retry-5xx-exhausted", "/retry-5xx", FAIL_503, expect=upstream_answered(503, 3)),
    Case("retry-retriable-status-code", "/retry-codes", [("x-test-status", "409"), ("x-test-fail-first", "1")],
         expect=upstream_answered(200, 2)),
    Case("retry-retriable-status-code-other-not-retried", "/retry-codes",
         [("x-test-status", "500"), ("x-test-fail-first", "1")], expect=upstream_answered(500, 1)),
    Case("retry-gateway-error-502", "/retry-gw", [("x-test-status", "502"), ("x-test-fail-first", "1")],
         expect=upstream_answered(200, 2)),
    Case("retry-gateway-error-not-500", "/retry-gw", [("x-test-status", "500"), ("x-test-fail-first", "1")],
         expect=upstream_answered(500, 1)),
    Case("retry-reset", "/retry-reset", [("x-test-reset", "1"), ("x-test-fail-first", "1")],
         expect=upstream_answered(200, 2)),
    Case("no-retry-policy-500-passes-through", "/", [("x-test-status", "500")], expect=upstream_answered(500, 1)),
    # An external request may not ask for retries (x-envoy-retry-on is dropped: one attempt);
    # test_differential_internal has the internal side.
    Case("x-envoy-retry-on-header-external-ignored", "/",
         [*FAIL_503, ("x-test-fail-first", "1"), ("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "1")],
         expect=upstream_answered(503, 1)),
    Case("upstream-reset-503", "/", [("x-test-reset", "1")],
         expect=local(503, RESET_BEFORE_HEADERS + "connection termination")),
    Case("upstream-close-503", "/", [("x-test-reset", "close")],
         expect=local(503, RESET_BEFORE_HEADERS + "connection termination")),
    # Envoy 1.40's body names the reset reason only (the transport failure reason goes to the
    # access log's %UPSTREAM_TRANSPORT_FAILURE_REASON%, not to the client).
    Case("connect-failure-503", "/connect-fail", expect=local(503, RESET_BEFORE_HEADERS + "remote connection failure")),
    Case("no-healthy-upstream-503", "/empty", expect=local(503, "no healthy upstream")),
    Case("expected-rq-timeout-default", "/", expect=upstream_answered(200, 1, x_envoy_expected_rq_timeout_ms="15000")),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_resilience(pair, case):
    run_case(pair, case)


TIMER_SLACK = 0.010


def timed(pair, case: str, path: str, headers, low: float, high: float, expect):
    """A case whose elapsed time must fall in [low, high) seconds; both proxies must agree."""
    timed_on(pair, case, "resilience", path, headers, low, high, expect)


def test_route_timeout_504(pair):
    timed(pair, "route-timeout", "/timeout", [("x-test-delay-ms", "2000")], 0.3, 1.5,
          local(504, "upstream request timeout"))


def test_per_try_timeout_then_success(pair):
    # The first attempt hangs for 2 s; per_try_timeout 0.2 s cuts it and the retry answers.
    # x-envoy-expected-rq-timeout-ms carries the per-try timeout.
    timed(pair, "per-try-timeout", "/per-try", [("x-test-delay-ms", "2000"), ("x-test-fail-first", "1")],
          0.2, 1.5, upstream_answered(200, 2, x_envoy_expected_rq_timeout_ms="200"))


def test_retry_connect_failure_counts_retries(pair):
    def run(target):
        before = target.stats("cluster.down.upstream_rq_retry").get("cluster.down.upstream_rq_retry", 0)
        obs = observe(one(target.port, "GET", "/retry-connect", [("host", "diff.test")]), target)
        after = target.stats("cluster.down.upstream_rq_retry").get("cluster.down.upstream_rq_retry", 0)
        obs["stat cluster.down.upstream_rq_retry delta"] = after - before
        return obs

    def expect(obs):
        # After retries Envoy words the body differently.
        local(503, "upstream connect error or disconnect/reset before headers. "
              "retried and the latest reset reason: remote connection failure")(obs)
        assert obs["stat cluster.down.upstream_rq_retry delta"] == 2, obs
    differential(pair, run, expect)


# ---- upstream responses that do not parse ----

BAD_GATEWAY = (502, RESET_BEFORE_HEADERS + "protocol error")


def logged(target, key: str) -> list[str]:
    """The access log line of the request with x-test-key `key`, split: [key, code, flags,
    details], from the proxy's process log (flushed about once a second: waited for)."""
    path = target.process.log_path

    def line():
        for text in path.read_text(errors="replace").splitlines():
            if text.startswith(key + " "):
                return text.split(" ")
        return None
    return wait_until(line, 10, f"{target.name}'s access log line for {key}")


def upstream_garbage_case(pair, case: str, bad: str, expect):
    """An upstream answering `bad` (recorder.BAD_RESPONSES): the client's answer, the access log
    line (flags and details) and the cluster's stats, Envoy and Baton alike."""
    def run(target):
        stats = ("cluster.a.upstream_cx_protocol_error", "cluster.a.upstream_rq_502")
        before = target.stats("cluster.a.")
        key = target.key(case)
        obs = observe(one(target.port, "GET", "/", [("host", "diff.test"), ("x-test-key", key),
                                                     ("x-test-bad-response", bad)]), target)
        after = target.stats("cluster.a.")
        obs["stats delta"] = {name: after.get(name, 0) - before.get(name, 0) for name in stats}
        obs["access log"] = logged(target, key)[1:]
        return obs
    differential(pair, run, expect)


def refused_upstream(obs):
    assert (obs["status"], obs["body"]) == BAD_GATEWAY, obs
    assert obs["access log"] == ["502", "UPE", "upstream_reset_before_response_started{protocol_error}"], obs
    assert obs["stats delta"] == {"cluster.a.upstream_cx_protocol_error": 1, "cluster.a.upstream_rq_502": 1}, obs


def test_connect_failure_details_name_the_transport_reason(pair):
    """Envoy 1.40 writes why the connect failed into the details (and into
    %UPSTREAM_TRANSPORT_FAILURE_REASON%), in words with underscores; the client's body names
    the reset reason only. Baton wrote the errno's number and left the details without it."""
    def run(target):
        key = target.key("connect-fail-details")
        obs = observe(one(target.port, "GET", "/connect-fail", [("host", "diff.test"),
                                                                ("x-test-key", key)]), target)
        obs["access log"] = logged(target, key)[1:]
        return obs

    def expect(obs):
        assert (obs["status"], obs["body"]) == (503, RESET_BEFORE_HEADERS + "remote connection failure"), obs
        assert obs["access log"] == ["503", "UF", "upstream_reset_before_response_started"
                                     "{remote_connection_failure|delayed_connect_error:_Connection_refused}"], obs
    differential(pair, run, expect)


def served_by_upstream(obs):
    assert obs["status"] == 200 and obs["body"] == "ok", obs
    assert obs["access log"] == ["200", "-", "via_upstream"], obs


@pytest.mark.parametrize("bad", ["status-line", "not-http", "headers-256k", "headers-101", "head-80k-plus-1"])
def test_unparsable_upstream_response_is_502_upe(pair, bad):
    upstream_garbage_case(pair, f"bad-response-{bad}", bad, refused_upstream)


def test_upstream_head_of_exactly_80_kib_is_served(pair):
    # Envoy 1.40's limit on an upstream response head: 80 KiB as sent, status line included.
    upstream_garbage_case(pair, "bad-response-head-80k", "head-80k", served_by_upstream)


# ---- what istiod sends (issue 14) ----

def istio(name: str, path: str, headers=(), expect=None) -> Case:
    return Case(name, path, list(headers), expect=expect, host=ISTIO_HOST)


def attempts(n: int):
    """x-envoy-attempt-count: n, to the upstream and in the response."""
    def expect(obs):
        assert upstream_header(obs, "x-envoy-attempt-count") == str(n), obs
        assert header(obs, "x-envoy-attempt-count") == str(n), obs
    return expect


def both(*checks):
    def expect(obs):
        for check in checks:
            check(obs)
    return expect


GRPC = [("content-type", "application/grpc")]
ISTIO_CASES = [
    # unavailable: a trailers-only grpc-status 14 (here on every attempt) is retried twice.
    istio("istio-grpc-unavailable-retried", "/", [("x-test-response-header", "grpc-status: 14")],
          both(upstream_answered(200, 3), attempts(3))),
    istio("istio-grpc-cancelled-retried", "/", [("x-test-response-header", "grpc-status: 1"),
                                                ("x-test-fail-first", "1")],
          both(upstream_answered(200, 3), attempts(3))),
    istio("istio-grpc-internal-not-retried", "/", [("x-test-response-header", "grpc-status: 13")],
          both(upstream_answered(200, 1), attempts(1))),
    istio("istio-503-retried", "/", [*FAIL_503, ("x-test-fail-first", "1")],
          both(upstream_answered(200, 2), attempts(2))),
    istio("istio-500-not-retried", "/", [("x-test-status", "500")], upstream_answered(500, 1)),
    # An upstream Envoy's rate limit: not retried, though 503 is a retriable status.
    istio("istio-ratelimited-503-not-retried", "/",
          [*FAIL_503, ("x-test-fail-first", "1"),
           ("x-test-response-header", "x-envoy-ratelimited: true")], upstream_answered(503, 1)),
    # refused-stream is an HTTP/2 REFUSED_STREAM, not a closed connection: no retry.
    istio("istio-reset-not-retried", "/", [("x-test-reset", "1"), ("x-test-fail-first", "1")],
          local(503, RESET_BEFORE_HEADERS + "connection termination")),
    istio("istio-connect-failure-retried", "/down", [],
          local(503, "upstream connect error or disconnect/reset before headers. "
                "retried and the latest reset reason: remote connection failure")),
    # max_grpc_timeout: grpc-timeout is the route timeout, and Envoy writes back what is left.
    istio("grpc-timeout-to-upstream", "/grpc-timeout", [*GRPC, ("grpc-timeout", "2S")],
          upstream_answered(200, 1)),
    istio("grpc-timeout-capped", "/grpc-timeout-capped", [*GRPC, ("grpc-timeout", "2S")],
          upstream_answered(200, 1)),
    istio("grpc-timeout-uncapped-none", "/grpc-timeout-capped", GRPC, upstream_answered(200, 1)),
    istio("grpc-timeout-offset", "/grpc-offset", [*GRPC, ("grpc-timeout", "2S")],
          upstream_answered(200, 1)),
    istio("grpc-timeout-not-grpc", "/grpc-timeout", [("grpc-timeout", "2S")],
          upstream_answered(200, 1)),
    istio("grpc-timeout-stream-max", "/grpc-stream", [*GRPC, ("grpc-timeout", "2S")],
          upstream_answered(200, 1)),
    istio("grpc-timeout-istio-route", "/", [*GRPC, ("grpc-timeout", "2S")],
          upstream_answered(200, 1)),
]


@pytest.mark.parametrize("case", ISTIO_CASES, ids=str)
def test_istio_route(pair, case):
    run_case(pair, case)


def timed_on(pair, case: str, listener: str, path: str, headers, low: float, high: float,
             expect, host: str = "diff.test"):
    """timed() on any listener and host."""
    def run(target):
        resp = one(target.ports[listener], "GET", path,
                   [("host", host), *headers, ("x-test-key", target.key(case))])
        obs = observe(resp, target)
        # Envoy's timers run on a clock its event loop caches per iteration, so under load
        # it answers a timeout up to a few ms early by the client's clock: 10 ms of slack.
        obs["elapsed_in_range"] = low - TIMER_SLACK <= resp.elapsed < high or resp.elapsed
        return obs

    def check(obs):
        assert obs["elapsed_in_range"] is True, f"took {obs['elapsed_in_range']:.3f}s, wanted [{low}, {high})"
        expect(obs)
    differential(pair, run, check)


def grpc_local(grpc_status: str, message: str):
    """Envoy's local reply to a gRPC request: trailers-only, HTTP 200."""
    def expect(obs):
        assert obs["status"] == 200 and obs["body"] == "", obs
        assert header(obs, "grpc-status") == grpc_status, obs
        assert header(obs, "grpc-message") == message, obs
    return expect


def test_grpc_timeout_header_is_the_route_timeout(pair):
    timed_on(pair, "grpc-timeout-expires", "resilience", "/grpc-timeout",
             [*GRPC, ("grpc-timeout", "300m"), ("x-test-delay-ms", "2000")], 0.3, 1.5,
             grpc_local("14", "upstream request timeout"), host=ISTIO_HOST)


def test_grpc_timeout_header_is_the_stream_duration(pair):
    timed_on(pair, "grpc-stream-duration-expires", "resilience", "/grpc-stream",
             [*GRPC, ("grpc-timeout", "300m"), ("x-test-delay-ms", "2000")], 0.3, 1.5,
             grpc_local("4", "downstream duration timeout"), host=ISTIO_HOST)


def test_route_max_stream_duration(pair):
    timed_on(pair, "route-duration", "resilience", "/duration", [("x-test-delay-ms", "2000")],
             0.3, 1.5, local(504, "downstream duration timeout"), host=ISTIO_HOST)


def test_connection_manager_max_stream_duration(pair):
    timed_on(pair, "hcm-duration", "duration", "/", [("x-test-delay-ms", "2000")], 0.3, 1.5,
             local(504, "downstream duration timeout"))


def test_a_route_turns_the_connection_managers_duration_off(pair):
    timed_on(pair, "hcm-duration-off", "duration", "/no-limit", [("x-test-delay-ms", "600")],
             0.6, 2.0, upstream_answered(200, 1))


def test_grpc_local_reply_over_http2(pair):
    # The same trailers-only answer on an HTTP/2 connection (curl, prior knowledge): a HEADERS
    # frame that ends the stream.
    def run(target):
        resp = curl(target.port, "/grpc-timeout", "-H", f"host: {ISTIO_HOST}",
                    "-H", "content-type: application/grpc", "-H", "grpc-timeout: 300m",
                    "-H", "x-test-delay-ms: 2000",
                    "-H", f"x-test-key: {target.key('grpc-timeout-h2')}", http2=True)
        return observe(resp, target)
    differential(pair, run, grpc_local("14", "upstream request timeout"))


def test_previous_hosts_keeps_retries_off_the_failed_host(pair):
    # Host p answers 503 to everything, q answers. With random picks and no predicate a
    # request would fail 1 time in 8 (p, then p and p again); with previous_hosts and 5
    # re-picks, about 1 in 8,000 (20 requests on two proxies: a run in 200 failed by chance);
    # with the 20 re-picks of this route, about 1 in 10^13: 20 requests must all end on q.
    def run(target):
        ends = []
        for i in range(20):
            resp = one(target.port, "GET", "/two-hosts", [
                ("host", ISTIO_HOST), *FAIL_503, ("x-test-fail-on", "p"),
                ("x-test-key", target.key(f"previous-hosts-{i}"))])
            ends.append((resp.status, resp.header("x-recorder")))
        return {"answers": sorted(set(ends))}
    differential(pair, run, lambda obs: obs == {"answers": [(200, "q")]} or pytest.fail(str(obs)))
