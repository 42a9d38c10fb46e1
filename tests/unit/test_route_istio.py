"""What istiod puts in its routes (issue 14), translated and compiled: the gRPC retry
conditions, previous_hosts, x-envoy-attempt-count, max_grpc_timeout / max_stream_duration.
The behaviour on the wire is in tests/integration/test_differential_resilience.py (against
Envoy 1.40); here, the translation and the router's pure decisions."""

from types import SimpleNamespace

import pytest

from baton.worker.codecs.message import Headers, Request, Response
from baton.worker.proxy.http.router import (RetryState, grpc_timeout_header, route_timeout,
                                            set_grpc_timeout, stream_duration)
from baton.worker.proxy.http.routing import RouteTable
from tests.istio_routes import ISTIO_RETRY, ISTIO_TIMEOUTS
from tests.unit.test_http_config import ROUTER, ok_rc, rc, refused, route, translate_hcm

# A route as istiod 1.22 sends it (sidecar-istio-1.22.3-multiparty-lb-app1, outbound).
ISTIO_ACTION = {"cluster": "c1", "retry_policy": ISTIO_RETRY, **ISTIO_TIMEOUTS}

def istio_rc(**action):
    """A route config of one route: ISTIO_ACTION with `action` over it (None: field unset)."""
    action = {k: v for k, v in {**ISTIO_ACTION, **action}.items() if v is not None}
    return {"virtual_hosts": [{"name": "vh", "domains": ["*"],
                               "include_request_attempt_count": True,
                               "routes": [route(**action)]}]}


def compiled(data):
    return RouteTable(ok_rc(data, clusters=None)).virtual_hosts[0].routes[0]


def grpc_request(timeout=None, content_type="application/grpc"):
    headers = [("content-type", content_type)] if content_type else []
    if timeout is not None:
        headers.append(("grpc-timeout", timeout))
    return Request("POST", "/svc/Method", "h", Headers(headers))


def test_istios_route_translates_and_compiles():
    r = compiled(istio_rc())
    assert r.retry.retry_on == {"connect-failure", "refused-stream", "unavailable", "cancelled",
                                "retriable-status-codes"}
    assert r.retry.previous_hosts and r.retry.host_selection_attempts == 5
    assert r.attempt_count_to_upstream and not r.attempt_count_in_response
    assert r.timeout is None
    assert r.grpc_timeout == {"max": 0.0, "offset": 0.0}
    assert r.max_stream_duration == {"duration": 0.0, "grpc_max": 0.0, "grpc_offset": 0.0}
    assert r.express_cluster is None            # the router does what the lane cannot


def test_a_predicate_baton_lacks_is_refused_with_its_path():
    policy = {"retry_on": "5xx", "retry_host_predicate": [
        {"name": "envoy.retry_host_predicates.omit_canary_hosts"}]}
    errors = refused(rc(route(cluster="c1", retry_policy=policy)))
    assert errors == ["rc.virtual_hosts[0].routes[0].route.retry_policy.retry_host_predicate[0]: "
                      "'envoy.retry_host_predicates.omit_canary_hosts' not supported (only "
                      "envoy.retry_host_predicates.previous_hosts)"]


def test_connection_manager_max_stream_duration():
    result, errors = translate_hcm({"http_filters": [ROUTER], "common_http_protocol_options": {
        "max_stream_duration": "1.5s"}})
    assert errors == [] and result["max_stream_duration"] == 1.5
    result, errors = translate_hcm({"http_filters": [ROUTER]})
    assert errors == [] and result["max_stream_duration"] is None


def retry_state(retry_on, **policy):
    spec = {"retry_on": retry_on.split(","), "num_retries": 1, "per_try_timeout": None,
            "retriable_status_codes": [503], "base_interval": 0.025, "max_interval": 0.25,
            **policy}
    from baton.worker.proxy.http.routing import RetryPolicy
    return RetryState(RetryPolicy(spec))


def response(status=200, **headers):
    return Response(status, Headers([(k.replace("_", "-"), v) for k, v in headers.items()]))


@pytest.mark.parametrize("retry_on, resp, expected", [
    ("unavailable", response(200, grpc_status="14"), True),
    ("unavailable", response(200, grpc_status="13"), False),
    ("cancelled", response(200, grpc_status="1"), True),
    ("deadline-exceeded", response(200, grpc_status="4"), True),
    ("resource-exhausted", response(200, grpc_status="8"), True),
    ("internal", response(200, grpc_status="13"), True),
    ("unavailable", response(200), False),                     # no trailers-only status
    ("retriable-status-codes", response(503), True),
    # An upstream Envoy's rate limit is retried only for envoy-ratelimited, whatever else.
    ("5xx", response(503, x_envoy_ratelimited="true"), False),
    ("envoy-ratelimited", response(429, x_envoy_ratelimited="true"), True),
    ("envoy-ratelimited", response(429), False),
])
def test_retriable_responses(retry_on, resp, expected):
    assert retry_state(retry_on).retriable_response(resp) is expected


def test_retriable_headers():
    state = retry_state("retriable-headers", retriable_headers=[
        {"name": "x-retry", "kind": "present", "string": None, "range": None, "present": True,
         "invert": False, "treat_missing_as_empty": False}])
    assert state.retriable_response(response(200, x_retry="1"))
    assert not state.retriable_response(response(200))


@pytest.mark.parametrize("retry_on, failure, expected", [
    # refused-stream: an HTTP/2 REFUSED_STREAM only, not any reset (Envoy's reset reasons).
    ("refused-stream", dict(reset=True, refused=True), True),
    ("refused-stream", dict(reset=True), False),
    ("connect-failure", dict(connect_failure=True), True),
    ("connect-failure", dict(reset=True), False),
    ("reset-before-request", dict(connect_failure=True, started=False), True),
    ("reset-before-request", dict(reset=True, started=True), False),
    ("reset", dict(reset=True), True),
])
def test_retriable_failures(retry_on, failure, expected):
    args = {"reset": False, "connect_failure": False, "timeout": False, **failure}
    assert retry_state(retry_on).retriable_failure(**args) is expected


def test_grpc_timeout_header_units():
    assert grpc_timeout_header(Headers([("grpc-timeout", "1500m")])) == 1.5
    assert grpc_timeout_header(Headers([("grpc-timeout", "2S")])) == 2.0
    assert grpc_timeout_header(Headers([("grpc-timeout", "1M")])) == 60.0
    assert grpc_timeout_header(Headers([("grpc-timeout", "123456789m")])) is None   # 9 digits
    assert grpc_timeout_header(Headers([("grpc-timeout", "5x")])) is None
    assert grpc_timeout_header(Headers([])) is None


@pytest.mark.parametrize("action, request_, expected", [
    # max_grpc_timeout 0s: the header is the timeout, none without it (Istio's routes).
    ({"max_stream_duration": None}, grpc_request("2S"), 2.0),
    ({"max_stream_duration": None}, grpc_request(), None),
    # not gRPC: the route's own timeout.
    ({"max_stream_duration": None, "timeout": "3s"}, grpc_request("2S", "text/plain"), 3.0),
    ({"max_stream_duration": None, "max_grpc_timeout": "1s"}, grpc_request("2S"), 1.0),
    ({"max_stream_duration": None, "max_grpc_timeout": "1s"}, grpc_request(), 1.0),
    ({"max_stream_duration": None, "grpc_timeout_offset": "0.5s"}, grpc_request("2S"), 1.5),
    # the offset is not taken when it would leave nothing
    ({"max_stream_duration": None, "grpc_timeout_offset": "3s"}, grpc_request("2S"), 2.0),
    # With max_stream_duration the route has no overall timeout, its own `timeout` and
    # max_grpc_timeout included (Envoy's usingNewTimeouts; the duration bounds the stream).
    ({"max_stream_duration": {"grpc_timeout_header_max": "1s"}, "max_grpc_timeout": "0s"},
     grpc_request("2S"), None),
    ({"max_stream_duration": {"max_stream_duration": "5s"}, "timeout": "3s"},
     grpc_request("2S"), None),
])
def test_route_timeout_of_grpc_requests(action, request_, expected):
    r = compiled(istio_rc(**action))
    assert route_timeout(r, request_) == expected


def test_max_grpc_timeout_tells_the_upstream_its_time():
    r = compiled(istio_rc(max_stream_duration=None, max_grpc_timeout="1s"))
    request = grpc_request("5S")
    set_grpc_timeout(r, request, route_timeout(r, request), r.retry)
    assert request.headers.get("grpc-timeout") == "1000m"


@pytest.mark.parametrize("msd, hcm, headers, expected", [
    (None, None, [], None),
    (None, 2.0, [], 2.0),                                         # the HCM's
    ({"max_stream_duration": "1s"}, 2.0, [], 1.0),               # the route's replaces it
    ({"max_stream_duration": "0s"}, 2.0, [], None),              # 0: none for this route
    ({"grpc_timeout_header_max": "0s"}, 2.0, [("grpc-timeout", "300m")], 0.3),
    ({"grpc_timeout_header_max": "0.1s"}, None, [("grpc-timeout", "300m")], 0.1),
    ({"grpc_timeout_header_max": "0s", "grpc_timeout_header_offset": "0.1s"}, None,
     [("grpc-timeout", "300m")], pytest.approx(0.2)),
    ({"grpc_timeout_header_max": "0s"}, 2.0, [], 2.0),            # no header: the HCM's
])
def test_stream_duration(msd, hcm, headers, expected):
    action = {"cluster": "c1"}
    if msd is not None:
        action["max_stream_duration"] = msd
    r = compiled(rc(route(**action)))
    request = Request("POST", "/", "h", Headers([("content-type", "application/grpc"),
                                                 *headers]))
    assert stream_duration(r, request, SimpleNamespace(max_stream_duration=hcm)) == expected


def test_grpc_timeout_values_as_envoy_writes_them():
    from baton.worker.proxy.http.router import grpc_timeout_value
    assert grpc_timeout_value(2.0) == "2000m"
    assert grpc_timeout_value(0.3) == "300m"
    assert grpc_timeout_value(200_000.0) == "200000S"


def test_grpc_local_reply_headers():
    from baton.worker.proxy.http import grpc_reply
    assert grpc_reply.is_grpc(Headers([("content-type", "application/grpc+proto")]))
    assert not grpc_reply.is_grpc(Headers([("content-type", "application/grpc-web")]))
    assert grpc_reply.reply_headers(504, b"upstream request timeout", None) == [
        ("content-type", "application/grpc"), ("grpc-status", "14"),
        ("grpc-message", "upstream request timeout")]
    assert grpc_reply.reply_headers(404, b"", None) == [
        ("content-type", "application/grpc"), ("grpc-status", "12")]
    assert grpc_reply.percent_encoded("50% \u00e9") == "50%25 %C3%A9"


class _RoundRobin:
    """A cluster whose balancer answers in turn from `hosts`."""

    def __init__(self, *hosts):
        self.hosts, self.picks = list(hosts), 0

    def pick(self, exclude=(), hash_key=None):
        host = self.hosts[self.picks % len(self.hosts)]
        self.picks += 1
        return host


def _router(cluster, tried, attempts):
    from baton.worker.proxy.http.router import Router
    from baton.worker.proxy.http.routing import RetryPolicy
    router = Router.__new__(Router)
    router.cluster, router.tried, router.hash_key = cluster, list(tried), None
    router.retry = RetryState(RetryPolicy({
        "retry_on": ["5xx"], "num_retries": 2, "per_try_timeout": None,
        "retriable_status_codes": [], "base_interval": 0.025, "max_interval": 0.25,
        "previous_hosts": True, "host_selection_attempts": attempts}))
    return router


def test_previous_hosts_picks_again_up_to_the_attempts():
    # The balancer would give "a" (tried) three times before "b": 5 re-picks reach "b".
    cluster = _RoundRobin("a", "a", "a", "b")
    assert _router(cluster, ["a"], 5)._pick_avoiding_tried() == "b" and cluster.picks == 4
    # One re-pick only: the last pick stands, tried or not (Envoy's bound).
    cluster = _RoundRobin("a", "a", "a", "b")
    assert _router(cluster, ["a"], 1)._pick_avoiding_tried() == "a" and cluster.picks == 2


def test_route_upgrade_configs():
    r = compiled(rc(route(cluster="c1", upgrade_configs=[
        {"upgrade_type": "WebSocket", "enabled": False}, {"upgrade_type": "CONNECT"}])))
    assert r.upgrades == {"websocket": False, "connect": True}
    assert not r.allows_upgrade("websocket", {"websocket"})
    assert r.allows_upgrade("connect", set()) and r.allows_upgrade("h2c", {"h2c"})
    assert r.express_cluster is None
    assert not r.connect_terminate
    # HBONE's connect_terminate: the route terminates the CONNECT itself (connect_tunnel.py),
    # not on another upgrade type, and not as a POST tunnel.
    r = compiled(rc(route(cluster="c1", upgrade_configs=[
        {"upgrade_type": "CONNECT", "connect_config": {}}])))
    assert r.connect_terminate and r.upgrades == {"connect": True} and r.express_cluster is None
    errors = refused(rc(route(cluster="c1", upgrade_configs=[
        {"upgrade_type": "websocket", "connect_config": {}}])))
    assert errors == ["rc.virtual_hosts[0].routes[0].route.upgrade_configs[0].connect_config: "
                      "only for upgrade_type CONNECT"]
    errors = refused(rc(route(cluster="c1", upgrade_configs=[
        {"upgrade_type": "CONNECT", "connect_config": {"allow_post": True}}])))
    assert errors == ["rc.virtual_hosts[0].routes[0].route.upgrade_configs[0].connect_config"
                      ".allow_post: not supported"]
