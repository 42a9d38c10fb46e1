"""Differential: virtual host and route matching, rewrites, redirects, direct responses,
cluster_header and weighted_clusters, through Envoy and Baton on the same bootstrap."""

from __future__ import annotations

import pytest

from .differential.bootstraps import bootstrap, cluster, http_listener, tag
from .differential.cases import Case, run_case
from .differential.client import build_request, one, sequential
from .differential.compare import (differential, each_proxy, header, upstream_header,
                                   within_binomial)
from .differential.proxies import ProxyPair, Recorder


def routing_bootstrap(upstreams: dict[str, int]):
    def route(match: dict, name: str, cluster_name: str = "a", **action) -> dict:
        return {"match": match, "route": {"cluster": cluster_name, **action},
                "request_headers_to_add": tag(name)}

    def hdr(name: str, **matcher) -> dict:
        return {"name": name, **matcher}

    vhosts = [
        # A route's upgrade_configs over the connection manager's (which enables websocket).
        {"name": "upgrade", "domains": ["upgrade.test"], "routes": [
            route({"prefix": "/ws-off"}, "ws-off",
                  upgrade_configs=[{"upgrade_type": "websocket", "enabled": False}]),
            route({"prefix": "/custom-on"}, "custom-on",
                  upgrade_configs=[{"upgrade_type": "Custom-Proto"}]),
            route({"prefix": "/"}, "upgrade-default")]},
        {"name": "exact", "domains": ["exact.test"],
         "routes": [route({"prefix": "/"}, "exact")]},
        {"name": "port", "domains": ["port.test:8080"],
         "routes": [route({"prefix": "/"}, "port")]},
        {"name": "suffix", "domains": ["*.suffix.test"],
         "routes": [route({"prefix": "/"}, "suffix")]},
        {"name": "prefixdom", "domains": ["prefix.*"],
         "routes": [route({"prefix": "/"}, "prefixdom")]},
        {"name": "default", "domains": ["*"], "routes": [
            route({"path": "/exact-path"}, "path"),
            route({"safe_regex": {"regex": "/regex/[0-9]+"}}, "regex"),
            route({"prefix": "/CaseSens", "case_sensitive": False}, "case-insensitive"),
            route({"prefix": "/Strict"}, "case-sensitive"),
            route({"prefix": "/hdr", "headers": [hdr("x-match", string_match={"exact": "yes"})]}, "hdr-exact"),
            route({"prefix": "/hdr", "headers": [hdr("x-match", string_match={"prefix": "pre"})]}, "hdr-prefix"),
            route({"prefix": "/hdr", "headers": [hdr("x-present", present_match=True)]}, "hdr-present"),
            route({"prefix": "/hdr", "headers": [hdr("x-match", safe_regex_match={"regex": "r[0-9]+"})]},
                  "hdr-regex"),
            route({"prefix": "/hdr", "headers": [hdr("x-match", exact_match="legacy")]}, "hdr-legacy-exact"),
            route({"prefix": "/hdr", "headers": [hdr("x-inv", string_match={"exact": "no"}, invert_match=True)]},
                  "hdr-invert"),
            route({"prefix": "/hdr"}, "hdr-fallback"),
            route({"prefix": "/query", "query_parameters": [{"name": "q", "string_match": {"exact": "1"}}]},
                  "query-exact"),
            route({"prefix": "/query", "query_parameters": [{"name": "flag", "present_match": True}]},
                  "query-present"),
            route({"prefix": "/query"}, "query-fallback"),
            route({"prefix": "/method", "headers": [hdr(":method", string_match={"exact": "POST"})]},
                  "method-post"),
            route({"prefix": "/method"}, "method-other"),
            route({"prefix": "/rewrite/"}, "prefix-rewrite", prefix_rewrite="/new/"),
            route({"prefix": "/rx/"}, "regex-rewrite",
                  regex_rewrite={"pattern": {"regex": "^/rx/([a-z]+)/([0-9]+)$"}, "substitution": "/\\2/\\1"}),
            route({"prefix": "/hostrw"}, "host-rewrite", host_rewrite_literal="rewritten.test"),
            {"match": {"prefix": "/direct-empty"}, "direct_response": {"status": 204}},
            {"match": {"prefix": "/direct"},
             "direct_response": {"status": 418, "body": {"inline_string": "short and stout\n"}}},
            {"match": {"prefix": "/redir/https"}, "redirect": {"https_redirect": True}},
            {"match": {"prefix": "/redir/host"}, "redirect": {"host_redirect": "other.test"}},
            {"match": {"prefix": "/redir/path"}, "redirect": {"path_redirect": "/elsewhere"}},
            {"match": {"prefix": "/redir/prefix/"}, "redirect": {"prefix_rewrite": "/moved/"}},
            {"match": {"prefix": "/redir/port"}, "redirect": {"port_redirect": 8443}},
            {"match": {"prefix": "/redir/strip"},
             "redirect": {"path_redirect": "/stripped", "strip_query": True, "response_code": "FOUND"}},
            {"match": {"prefix": "/redir/permanent"},
             "redirect": {"host_redirect": "new.test", "response_code": "PERMANENT_REDIRECT"}},
            {"match": {"prefix": "/by-header"}, "route": {"cluster_header": "x-cluster"},
             "request_headers_to_add": tag("cluster-header")},
            {"match": {"prefix": "/weighted"}, "route": {"weighted_clusters": {"clusters": [
                {"name": "a", "weight": 70}, {"name": "b", "weight": 20}, {"name": "c", "weight": 10}]}}},
        ]},
    ]

    def template(ports: dict[str, int], admin: int) -> dict:
        route_config = {"name": "routing", "virtual_hosts": vhosts}
        return bootstrap(admin, [http_listener("routing", ports["routing"], route_config,
                                               upgrade_configs=[{"upgrade_type": "websocket"}])],
                         [cluster(n, [upstreams[n]]) for n in ("a", "b", "c")])
    return template


@pytest.fixture(scope="module")
def recorder():
    rec = Recorder("a", "b", "c")
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def pair(recorder, tmp_path_factory):
    p = ProxyPair(tmp_path_factory.mktemp("diff-routing"), routing_bootstrap(recorder.ports), ["routing"])
    yield p
    p.stop()


# ---- expectations (Envoy's behaviour, as this suite records it) ----

def routed(route: str, path: str | None = None, upstream: str = "a", host: str | None = None):
    def expect(obs):
        assert obs["status"] == 200, obs
        assert upstream_header(obs, "x-route") == route, obs["upstream"]["headers"]
        assert obs["upstream"]["upstream"] == upstream
        if path is not None:
            assert obs["upstream"]["path"] == path
        if host is not None:
            assert upstream_header(obs, "host") == host
    return expect


def local(status: int, body: str | None = None, **headers: str):
    def expect(obs):
        assert obs["status"] == status, obs
        assert "upstream" not in obs, obs
        if body is not None:
            assert obs["body"] == body, obs
        for name, value in headers.items():
            assert header(obs, name.replace("_", "-")) == value, obs["headers"]
    return expect


def prefix_rewritten(obs):
    routed("prefix-rewrite", path="/new/deep/thing?x=1")(obs)
    # Envoy keeps the path the client sent in x-envoy-original-path.
    assert upstream_header(obs, "x-envoy-original-path") == "/rewrite/deep/thing?x=1"


def regex_rewritten(obs):
    routed("regex-rewrite", path="/42/abc")(obs)
    assert upstream_header(obs, "x-envoy-original-path") == "/rx/abc/42"


def host_rewritten(obs):
    routed("host-rewrite", host="rewritten.test")(obs)
    # The client's Host is not kept in x-forwarded-host unless append_x_forwarded_host is set.
    assert upstream_header(obs, "x-forwarded-host") is None


CASES = [
    # virtual hosts
    Case("vhost-exact", "/", host="exact.test", expect=routed("exact")),
    Case("vhost-exact-case-insensitive-host", "/", host="EXACT.Test", expect=routed("exact")),
    Case("vhost-suffix-wildcard", "/", host="api.suffix.test", expect=routed("suffix")),
    # "*.suffix.test" needs at least one character before ".suffix.test".
    Case("vhost-suffix-bare-falls-to-default", "/exact-path", host="suffix.test", expect=routed("path")),
    Case("vhost-prefix-wildcard", "/", host="prefix.anything.example", expect=routed("prefixdom")),
    Case("vhost-host-with-port", "/", host="port.test:8080", expect=routed("port")),
    # Envoy: a Host with a port not listed in domains retries the match without the port
    # only when strip_matching_host_port is set; otherwise "exact.test:9999" goes to "*".
    Case("vhost-port-not-listed", "/exact-path", host="exact.test:9999", expect=routed("path")),
    Case("vhost-default-star", "/exact-path", host="unknown.example", expect=routed("path")),
    # route matching
    Case("route-path-exact", "/exact-path?a=b", expect=routed("path", path="/exact-path?a=b")),
    Case("route-path-no-prefix-match", "/exact-path/more", expect=local(404, "")),
    Case("route-safe-regex", "/regex/123", expect=routed("regex")),
    # safe_regex matches the whole path (no query), so a trailing letter misses.
    Case("route-safe-regex-full-match", "/regex/123x", expect=local(404, "")),
    Case("route-case-insensitive-prefix", "/casesens/x", expect=routed("case-insensitive")),
    Case("route-case-sensitive-miss", "/strict", expect=local(404, "")),
    Case("route-miss-404", "/nowhere", expect=local(404, "")),
    # header matchers, in route order
    Case("header-exact", "/hdr", [("x-match", "yes")], expect=routed("hdr-exact")),
    Case("header-string-match-prefix", "/hdr", [("x-match", "prefixed")], expect=routed("hdr-prefix")),
    Case("header-present", "/hdr", [("x-present", "")], expect=routed("hdr-present")),
    Case("header-safe-regex", "/hdr", [("x-match", "r42")], expect=routed("hdr-regex")),
    Case("header-legacy-exact-match", "/hdr", [("x-match", "legacy")], expect=routed("hdr-legacy-exact")),
    # invert_match of exact "no": a different value matches. Envoy (1.40) records a surprise
    # here: an ABSENT header does not match an inverted matcher either (a missing header fails
    # every matcher unless treat_missing_header_as_empty is set), so the request falls through.
    Case("header-invert-different", "/hdr", [("x-inv", "yes")], expect=routed("hdr-invert")),
    Case("header-invert-absent-no-match", "/hdr", expect=routed("hdr-fallback")),
    Case("header-invert-equal-falls-through", "/hdr", [("x-inv", "no")], expect=routed("hdr-fallback")),
    # query parameters
    Case("query-exact", "/query?q=1", expect=routed("query-exact")),
    Case("query-exact-mismatch", "/query?q=2", expect=routed("query-fallback")),
    Case("query-present", "/query?a=b&flag", expect=routed("query-present")),
    # method routes through the :method pseudo-header
    Case("method-post-route", "/method", method="POST", body=b"x", expect=routed("method-post")),
    Case("method-get-route", "/method", expect=routed("method-other")),
    # rewrites
    Case("prefix-rewrite", "/rewrite/deep/thing?x=1", expect=prefix_rewritten),
    Case("regex-rewrite", "/rx/abc/42", expect=regex_rewritten),
    Case("host-rewrite-literal", "/hostrw", expect=host_rewritten),
    # direct responses (Envoy adds content-type text/plain to a body)
    Case("direct-response-body", "/direct", expect=local(418, "short and stout\n", content_type="text/plain")),
    Case("direct-response-empty", "/direct-empty", expect=local(204, "")),
    # redirects (301 by default, location built from the request)
    Case("redirect-https", "/redir/https?q=1", expect=local(301, "", location="https://diff.test/redir/https?q=1")),
    Case("redirect-host", "/redir/host/x", expect=local(301, "", location="http://other.test/redir/host/x")),
    Case("redirect-path-keeps-query", "/redir/path?q=1", expect=local(301, "", location="http://diff.test/elsewhere?q=1")),
    Case("redirect-prefix-rewrite", "/redir/prefix/a/b", expect=local(301, "", location="http://diff.test/moved/a/b")),
    Case("redirect-port", "/redir/port", expect=local(301, "", location="http://diff.test:8443/redir/port")),
    Case("redirect-strip-query-302", "/redir/strip?q=1", expect=local(302, "", location="http://diff.test/stripped")),
    Case("redirect-308", "/redir/permanent", expect=local(308, "", location="http://new.test/redir/permanent")),
    # cluster_header
    Case("cluster-header", "/by-header", [("x-cluster", "b")], expect=routed("cluster-header", upstream="b")),
    # Envoy: an unknown cluster named by the header answers 503 with an empty body.
    Case("cluster-header-unknown", "/by-header", [("x-cluster", "nope")], expect=local(503, "")),
    Case("cluster-header-missing", "/by-header", expect=local(503, "")),
    # defaults of the connection manager (use_remote_address false, no server_name)
    Case("server-header-default", "/exact-path", [("x-test-response-header", "server: upstream-server")],
         expect=lambda obs: (routed("path")(obs), header(obs, "server") == "envoy" or pytest.fail(obs))),
    Case("xff-untouched-without-use-remote-address", "/exact-path", [("x-forwarded-for", "198.51.100.7")],
         expect=lambda obs: upstream_header(obs, "x-forwarded-for") == "198.51.100.7" or pytest.fail(obs)),
    # Without use_remote_address and without x-forwarded-for the request is internal, so the
    # client's x-request-id is kept.
    Case("x-request-id-preserved-internal", "/exact-path", [("x-request-id", "client-chosen-id-2")],
         expect=lambda obs: upstream_header(obs, "x-request-id") == "client-chosen-id-2" or pytest.fail(obs)),
    Case("xff-absent-without-use-remote-address", "/exact-path",
         expect=lambda obs: (upstream_header(obs, "x-forwarded-for") is None
                             and upstream_header(obs, "x-request-id") == "<uuid4>") or pytest.fail(obs)),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_routing(pair, case):
    run_case(pair, case)


WEIGHTS = {"a": 0.7, "b": 0.2, "c": 0.1}
SPLIT_REQUESTS = 10_000


def test_weighted_clusters_10000_requests(pair):
    # Not compared request by request: each proxy's split must match the configured weights
    # within 5 binomial standard deviations.
    request = build_request("GET", "/weighted", [("host", "diff.test")])

    def check(target):
        counts = {n: 0 for n in WEIGHTS}
        for resp in sequential(target.port, request, SPLIT_REQUESTS):
            assert resp.status == 200, resp
            counts[resp.header("x-recorder")] += 1
        for name, p in WEIGHTS.items():
            assert within_binomial(counts[name], SPLIT_REQUESTS, p), (name, counts)
    each_proxy(pair, check)


# upgrade_configs on a route: it refuses what the connection manager allows, allows what the
# connection manager does not list; without one, the connection manager's list holds. Only
# the verdict is compared (403, or forwarded to the upstream): how a proxy passes on an
# upstream's answer that does not switch protocols is the upgrade path's own business.
UPGRADES = [("/", "websocket", "forwarded"), ("/ws-off", "websocket", 403),
            ("/custom-on", "custom-proto", "forwarded"), ("/", "custom-proto", 403)]


@pytest.mark.parametrize("path, kind, verdict", UPGRADES, ids=[f"{p}-{k}" for p, k, _ in UPGRADES])
def test_route_upgrade_configs(pair, path, kind, verdict):
    def run(target):
        resp = one(target.port, "GET", path, [("host", "upgrade.test"), ("upgrade", kind),
                                              ("connection", "upgrade")])
        return {"status": resp.status, "x-recorder": resp.header("x-recorder")}

    def expect(obs):
        assert obs == ({"status": 200, "x-recorder": "a"} if verdict == "forwarded" else
                       {"status": verdict, "x-recorder": None}), obs
    differential(pair, run, expect)
