"""Differential: envoy.filters.http.ext_authz over gRPC against a real authorization server
(authz_server.py, grpcio), Envoy 1.40 and Baton on the same bootstrap. Allowed: the
server's headers reach the upstream (appended, set, removed), its response headers the
client, and what the server saw of the request (method, path, host, scheme, protocol, size,
body, header names) is the same; denied: the server's status, body and headers, or 403;
the call failing or timing out: 403, or through with failure_mode_allow and its header;
a route's ExtAuthzPerRoute turning it off or adding context_extensions; Istio's CUSTOM
action (ext_authz enabled by the RBAC filter's shadow result); the counters; the HTTP
service variant (the check as an HTTP request; 200, a denial, a 5xx, a late answer)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..waiting import wait_until

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.client import curl, one
from .differential.compare import differential, header, observe, upstream_header
from .differential.proxies import PROXIES, ProxyPair, Recorder

T = "type.googleapis.com/"
EXT_AUTHZ = T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE = T + "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
RBAC = T + "envoy.extensions.filters.http.rbac.v3.RBAC"
SERVER = Path(__file__).resolve().parent / "authz_server.py"
H2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def ext_authz(**extra):
    return {"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": EXT_AUTHZ, "transport_api_version": "V3",
        "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "0.5s"}, **extra}}


# Istio's CUSTOM action: an RBAC filter whose shadow DENY rules name the requests to check,
# and ext_authz enabled by the policy id those rules leave in the dynamic metadata.
CUSTOM = [
    {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": RBAC, "shadow_rules_stat_prefix": "istio_ext_authz_", "shadow_rules": {
            "action": "DENY", "policies": {"istio-ext-authz-ns[default]-policy[ext]-rule[0]": {
                "permissions": [{"url_path": {"path": {"prefix": "/custom"}}}],
                "principals": [{"any": True}]}}}}},
    ext_authz(filter_enabled_metadata={
        "filter": "envoy.filters.http.rbac",
        "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
        "value": {"string_match": {"prefix": "istio-ext-authz"}}})]


def http_ext_authz(**extra):
    """The HTTP service variant, with every header list set."""
    def exact(*names):
        return {"patterns": [{"exact": n} for n in names]}
    return {"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": EXT_AUTHZ, "transport_api_version": "V3", "http_service": {
            "server_uri": {"uri": "http://authz-http", "cluster": "authz_http", "timeout": "0.5s"},
            "path_prefix": "/check",
            "authorization_request": {"allowed_headers": exact("x-authz"),
                                      "headers_to_add": [{"key": "x-from-proxy", "value": "1"}]},
            "authorization_response": {
                "allowed_upstream_headers": exact("x-authz-set", "x-authz-seen"),
                "allowed_upstream_headers_to_append": exact("x-authz-append"),
                "allowed_client_headers": exact("x-denied"),
                "allowed_client_headers_on_success": exact("x-authz-client")}}, **extra}}


def authz_bootstrap(upstreams, authz_ports):
    routes = {"name": "authz", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/open"}, "route": {"cluster": "a"},
         "typed_per_filter_config": {"envoy.filters.http.ext_authz": {
             "@type": PER_ROUTE, "disabled": True}}},
        {"match": {"prefix": "/ctx"}, "route": {"cluster": "a"},
         "typed_per_filter_config": {"envoy.filters.http.ext_authz": {
             "@type": PER_ROUTE, "check_settings": {"context_extensions": {"team": "blue"}}}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def template(ports, admin):
        return bootstrap(admin, [
            http_listener("authz", ports["authz"], routes, http_filters=[ext_authz()]),
            http_listener("failopen", ports["failopen"], routes, http_filters=[ext_authz(
                failure_mode_allow=True, failure_mode_allow_header_add=True, stat_prefix="fo")]),
            http_listener("body", ports["body"], routes, http_filters=[ext_authz(
                with_request_body={"max_request_bytes": 16})]),
            http_listener("custom", ports["custom"], routes, http_filters=CUSTOM),
            http_listener("http", ports["http"], routes, http_filters=[http_ext_authz()]),
            http_listener("off", ports["off"], routes, http_filters=[ext_authz(
                filter_enabled={"default_value": {"numerator": 0}},
                deny_at_disable={"default_value": True}, status_on_error={"code": 503})])],
            [cluster("a", [upstreams["a"]]),
             cluster("authz", [authz_ports["grpc"]], typed_extension_protocol_options=H2),
             cluster("authz_http", [authz_ports["http"]])])
    return template


def start_server(*args):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([sys.executable, str(SERVER), *args], stdout=subprocess.PIPE,
                            text=True, env=env, cwd="/")
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        proc.kill()
        proc.wait(10)
        raise RuntimeError(f"authz server did not start: {line!r}")
    return proc, int(line.split()[1])


@pytest.fixture(scope="module")
def authz():
    """{"grpc": port, "http": port}: the two authorization servers."""
    procs, ports = [], {}
    try:
        for kind, args in (("grpc", ()), ("http", ("http",))):
            proc, ports[kind] = start_server(*args)
            procs.append(proc)
        yield ports
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def recorder():
    rec = Recorder("a")
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def pair(recorder, authz, tmp_path_factory):
    p = ProxyPair(tmp_path_factory.mktemp("diff-ext-authz"), authz_bootstrap(recorder.ports, authz),
                  ["authz", "failopen", "body", "custom", "http", "off"])
    yield p
    p.stop()


def exchange(recorder, case, method, path, headers=(), listener="authz", body=None):
    def run(target):
        key = target.key(case)
        sent = [("host", "svc"), *headers, ("x-test-key", key)]
        if body is not None:
            sent.append(("content-length", str(len(body))))
        resp = one(target.ports[listener], method, path, sent, body)
        obs = observe(resp, target)
        obs["upstream requests"] = recorder.count(key)
        return obs
    return run


def passed(obs):
    assert obs["status"] == 200 and obs["upstream requests"] == 1, obs


def test_allowed_the_servers_headers_go_upstream_and_to_the_client(pair, recorder):
    def expect(obs):
        passed(obs)
        assert upstream_header(obs, "x-authz-append") == "a", obs
        assert upstream_header(obs, "x-authz-remove-me") is None, obs
        assert header(obs, "x-authz-response") == "ok", obs
    differential(pair, exchange(recorder, "allow", "GET", "/x?q=1", [
        ("x-authz", "allow"), ("x-authz-set", "client"), ("x-authz-added", "client"),
        ("x-authz-remove-me", "1")]), expect)


def test_denied_the_servers_status_body_and_headers_or_403(pair, recorder):
    def expect(status, body):
        def check(obs):
            assert obs["status"] == status and obs["body"] == body, obs
            assert obs["upstream requests"] == 0, obs
        return check
    differential(pair, exchange(recorder, "deny", "GET", "/x", [("x-authz", "deny")]),
                 expect(401, "nope"))
    differential(pair, exchange(recorder, "deny-bare", "GET", "/x", [("x-authz", "deny-bare")]),
                 expect(403, ""))
    differential(pair, exchange(recorder, "none", "GET", "/x"), passed)


def test_a_failed_or_late_check_is_403_unless_failure_mode_allow(pair, recorder):
    def refused(obs):
        assert obs["status"] == 403 and obs["upstream requests"] == 0, obs
    for verdict in ("fail", "slow"):
        differential(pair, exchange(recorder, f"{verdict}-closed", "GET", "/x",
                                    [("x-authz", verdict)]), refused)

        def through(obs):
            passed(obs)
            assert upstream_header(obs, "x-envoy-auth-failure-mode-allowed") == "true", obs
        differential(pair, exchange(recorder, f"{verdict}-open", "GET", "/x",
                                    [("x-authz", verdict)], listener="failopen"), through)


def test_per_route_disabled_and_context_extensions(pair, recorder):
    differential(pair, exchange(recorder, "open", "GET", "/open", [("x-authz", "deny")]), passed)

    def context(obs):
        passed(obs)
        assert upstream_header(obs, "x-authz-context") == '{"team": "blue"}', obs
    differential(pair, exchange(recorder, "ctx", "GET", "/ctx", [("x-authz", "allow")]), context)


def test_the_request_body_goes_in_the_check(pair, recorder):
    def seen_body(obs):
        passed(obs)
        assert '"body": "hello"' in upstream_header(obs, "x-authz-check"), obs
    differential(pair, exchange(recorder, "body", "POST", "/x", [("x-authz", "allow")],
                                listener="body", body=b"hello"), seen_body)


def test_istio_custom_action_checks_only_what_the_shadow_rules_name(pair, recorder):
    def denied(obs):
        assert obs["status"] == 401 and obs["upstream requests"] == 0, obs
    differential(pair, exchange(recorder, "custom", "GET", "/custom/x", [("x-authz", "deny")],
                                listener="custom"), denied)
    differential(pair, exchange(recorder, "not-custom", "GET", "/other", [("x-authz", "deny")],
                                listener="custom"), passed)


def test_the_counters(pair):
    deltas = {}
    cases = [("authz", "/x", "allow"), ("authz", "/x", "deny"), ("authz", "/x", "fail"),
             ("failopen", "/x", "fail"), ("custom", "/other", "deny"),
             ("custom", "/custom", "allow")]
    for name in PROXIES:
        target = pair.target(name)

        def counters():
            return {k: v for k, v in target.stats().items() if "ext_authz" in k}
        before = counters()
        for listener, path, verdict in cases:
            one(target.ports[listener], "GET", path, [("host", "svc"), ("x-authz", verdict)])

        def delta():
            after = counters()
            return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        try:
            wait_until(lambda: sum(delta().values()) >= 15, 10, "the ext_authz counters")
        finally:
            deltas[name] = delta()
    # Under the HCM's prefix and the route's cluster's, both with the filter's stat_prefix;
    # a request the shadow rules do not name counts as disabled.
    assert deltas[PROXIES[0]] == {
        "cluster.a.ext_authz.denied": 1, "cluster.a.ext_authz.error": 1,
        "cluster.a.ext_authz.fo.error": 1, "cluster.a.ext_authz.fo.failure_mode_allowed": 1,
        "cluster.a.ext_authz.ok": 2, "http.authz.ext_authz.denied": 1,
        "http.authz.ext_authz.error": 1, "http.authz.ext_authz.ok": 1,
        "http.custom.ext_authz.disabled": 1, "http.custom.ext_authz.ok": 1,
        "http.custom.rbac.istio_ext_authz_.shadow_allowed": 1,
        "http.custom.rbac.istio_ext_authz_.shadow_denied": 1,
        "http.failopen.ext_authz.fo.error": 1,
        "http.failopen.ext_authz.fo.failure_mode_allowed": 1}, deltas
    assert len(set(map(repr, deltas.values()))) == 1, deltas


def test_the_http_service_variant(pair, recorder):
    """http_service: the check is an HTTP request to the service (path_prefix + the path, the
    allowed headers and headers_to_add); 200 lets the request on with the allowed upstream
    headers set or appended and the allowed client headers; any other status is the answer,
    with the allowed client headers; a 5xx or a late answer is an error: 403."""
    def allowed(obs):
        passed(obs)
        assert upstream_header(obs, "x-authz-set") == "s", obs
        assert header(obs, "x-authz-client") == "ok", obs
    differential(pair, exchange(recorder, "http-allow", "GET", "/x?q=1",
                                [("x-authz", "allow"), ("x-authz-append", "c"),
                                 ("x-other", "o")], listener="http"), allowed)

    def denied(status, body):
        def check(obs):
            assert obs["status"] == status and obs["body"] == body, obs
            assert obs["upstream requests"] == 0, obs
        return check
    differential(pair, exchange(recorder, "http-deny", "GET", "/x", [("x-authz", "deny")],
                                listener="http"), denied(401, "nope"))
    differential(pair, exchange(recorder, "http-fail", "GET", "/x", [("x-authz", "fail")],
                                listener="http"), denied(403, ""))      # a 5xx is an error
    differential(pair, exchange(recorder, "http-slow", "GET", "/x", [("x-authz", "slow")],
                                listener="http"), denied(403, ""))
    differential(pair, exchange(recorder, "http-post", "POST", "/x", [("x-authz", "allow")],
                                listener="http", body=b"abc"), allowed)


def test_an_http2_request_is_checked_as_envoy_checks_it(pair, recorder):
    """Over HTTP/2 the Check carries protocol HTTP/2 and the request's headers as the
    connection manager has them; the answer's headers reach the upstream the same way."""
    def run(target):
        key = target.key("h2-allow")
        resp = curl(target.ports["authz"], "/h2?x=1", "-H", "x-authz: allow", "-H",
                    f"x-test-key: {key}", http2=True)
        obs = observe(resp, target)
        obs["upstream requests"] = recorder.count(key)
        return obs

    def expect(obs):
        passed(obs)
        assert '"protocol": "HTTP/2"' in upstream_header(obs, "x-authz-check"), obs
    differential(pair, run, expect)


def test_deny_at_disable_answers_status_on_error_without_asking(pair, recorder):
    def refused(obs):
        assert obs["status"] == 503 and obs["upstream requests"] == 0, obs
    differential(pair, exchange(recorder, "off", "GET", "/x", [("x-authz", "allow")],
                                listener="off"), refused)
