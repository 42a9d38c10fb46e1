"""The route table (worker/proxy/http/routing.py): virtual host and route selection, each
matcher, each action, header mutation order, redirects, rewrites and hash keys.

Expected values marked "Envoy 1.40" were observed on a live Envoy 1.40 with the same
route configuration (direct_response / redirect routes, an echo upstream).
"""

from baton.worker.proxy.lb import xxhash64

import pytest

from baton.worker.codecs.message import Headers, Request
from baton.worker.proxy.http.route_match import parse_query
from baton.worker.proxy.http.route_regex import (RegexError, compile_re2, compile_substitution,
                                                 replace_all)
from baton.worker.proxy.http.routing import RouteTable
from tests.unit.test_http_config import ok_rc, rc


def table(data):
    return RouteTable(ok_rc(data, clusters=None))


def req(path="/", host="h", headers=(), method="GET", scheme="http"):
    return Request(method, path, host, Headers(list(headers)), scheme=scheme)


def direct(name, **match):
    return {"match": match or {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": name}}}


def named(name, match=None, **action):
    return {"name": name, "match": match or {"prefix": "/"}, "route": action or {"cluster": "c1"}}


# --- virtual hosts ---------------------------------------------------------------------------

DOMAINS = {"virtual_hosts": [
    {"name": "exact", "domains": ["foo.com"], "routes": [direct("exact")]},
    {"name": "exactport", "domains": ["foo.com:8000"], "routes": [direct("exactport")]},
    {"name": "suf", "domains": ["*.foo.com"], "routes": [direct("suf")]},
    {"name": "suf2", "domains": ["*oo.com"], "routes": [direct("suf2")]},
    {"name": "pre", "domains": ["foo.*"], "routes": [direct("pre")]},
    {"name": "pre2", "domains": ["fo*"], "routes": [direct("pre2")]},
    {"name": "star", "domains": ["*"], "routes": [direct("star")]}]}


@pytest.mark.parametrize("host, vhost", [     # Envoy 1.40
    ("foo.com", "exact"), ("FOO.com", "exact"), ("foo.com:8000", "exactport"),
    ("foo.com:9000", "pre"), ("a.foo.com", "suf"), ("a.foo.com:80", "star"),
    (".foo.com", "suf2"), ("boo.com", "suf2"), ("oo.com", "star"), ("foo.org", "pre"),
    ("fox", "pre2"), ("fo", "star"), ("zzz", "star"), ("[::1]:80", "star")])
def test_domain_precedence(host, vhost):
    found = table(DOMAINS).route(req(host=host))
    assert found is not None and found.virtual_host == vhost


def test_ignore_port_in_host_matching():
    data = {"ignore_port_in_host_matching": True, "virtual_hosts": [
        {"name": "a", "domains": ["a.com"], "routes": [direct("a")]},
        {"name": "v6", "domains": ["[::1]"], "routes": [direct("v6")]}]}
    t = table(data)
    assert t.route(req(host="a.com:8080")).virtual_host == "a"
    assert t.route(req(host="[::1]:80")).virtual_host == "v6"
    assert t.route(req(host="b.com")) is None


def test_no_virtual_host_and_no_host():
    t = table({"virtual_hosts": [{"name": "a", "domains": ["a.com"], "routes": [direct("a")]}]})
    assert t.route(req(host="b.com")) is None
    assert t.route(req(host="")) is None
    only_default = table(rc(direct("x")))
    assert only_default.route(req(host="")) is not None
    assert table({"virtual_hosts": []}).route(req()) is None


# --- route matchers --------------------------------------------------------------------------

def first(routes, **request):
    found = table(rc(*routes)).route(req(**request))
    return found.name if found is not None else None


def test_routes_match_in_order():
    routes = [named("a", {"prefix": "/a"}), named("b", {"prefix": "/"}),
              named("c", {"prefix": "/a/b"})]
    assert first(routes, path="/a/b") == "a"
    assert first(routes, path="/x") == "b"
    assert first([named("a", {"prefix": "/a"})], path="/b") is None


@pytest.mark.parametrize("match, path, expected", [
    ({"prefix": "/api"}, "/api/v1", True),
    ({"prefix": "/api"}, "/API/v1", False),
    ({"prefix": "/api", "case_sensitive": False}, "/API/v1", True),
    ({"prefix": "/a?x"}, "/a?x=1", True),                       # prefix sees the query
    ({"path": "/a"}, "/a?x=1", True),
    ({"path": "/a"}, "/a/", False),
    ({"path": "/A", "case_sensitive": False}, "/a", True),
    ({"safe_regex": {"regex": "/v[0-9]+/.*"}}, "/v12/x?q=1", True),
    ({"safe_regex": {"regex": "/v[0-9]+"}}, "/v12/x", False),   # full match, not search
    ({"safe_regex": {"regex": "/a$"}}, "/a\n", False),          # RE2's $ is end of text
    ({"safe_regex": {"regex": "/a{,2}"}}, "/a{,2}", True),      # RE2: not a repetition
    ({"safe_regex": {"regex": "/[[:digit:]]+"}}, "/123", True),
    ({"safe_regex": {"regex": "(?i)/abc|/def"}}, "/DEF", True),
    ({"path_separated_prefix": "/api"}, "/api", True),
    ({"path_separated_prefix": "/api"}, "/api/x", True),
    ({"path_separated_prefix": "/api"}, "/api?x", True),
    ({"path_separated_prefix": "/api"}, "/apix", False),
])
def test_path_matchers(match, path, expected):
    assert (first([named("r", match)], path=path) == "r") is expected


@pytest.mark.parametrize("matcher, headers, expected", [
    ({"string_match": {"exact": "1"}}, [("x", "1")], True),
    ({"string_match": {"exact": "1"}}, [("x", "2")], False),
    ({"string_match": {"exact": "1"}}, [], False),
    ({"exact_match": "1"}, [("x", "1")], True),
    ({"prefix_match": "ab"}, [("x", "abc")], True),
    ({"suffix_match": "bc"}, [("x", "abc")], True),
    ({"contains_match": "b"}, [("x", "abc")], True),
    ({"string_match": {"exact": "ABC", "ignore_case": True}}, [("x", "abc")], True),
    ({"string_match": {"safe_regex": {"regex": "a.c"}}}, [("x", "abc")], True),
    ({"safe_regex_match": {"regex": "\\d{3}"}}, [("x", "1234")], False),
    ({"safe_regex_match": {"regex": "\\d{3}"}, "invert_match": True}, [("x", "1234")], True),
    ({"string_match": {"exact": "1,2"}}, [("x", "1"), ("x", "2")], True),  # joined with ','
    ({}, [("x", "")], True),                                     # name only: present
    ({"present_match": True}, [], False),
    ({"present_match": False}, [], True),
    ({"present_match": True, "invert_match": True}, [], True),
    ({"string_match": {"exact": "1"}, "invert_match": True}, [], False),   # missing: no match
    ({"string_match": {"exact": "1"}, "invert_match": True,
      "treat_missing_header_as_empty": True}, [], True),
    ({"string_match": {"exact": ""}, "treat_missing_header_as_empty": True}, [], True),
    ({"range_match": {"start": -10, "end": 0}}, [("x", "-1")], True),
    ({"range_match": {"start": -10, "end": 0}}, [("x", "0")], False),
    ({"range_match": {"start": -10, "end": 0}}, [("x", "x")], False),
    ({"range_match": {"start": -10, "end": 0}, "invert_match": True}, [("x", "-1")], False),
])
def test_header_matchers(matcher, headers, expected):
    route_ = named("r", {"prefix": "/", "headers": [{"name": "x", **matcher}]})
    assert (first([route_], headers=headers) == "r") is expected


def test_header_matcher_on_pseudo_headers():
    route_ = named("r", {"prefix": "/", "headers": [
        {"name": ":method", "string_match": {"exact": "POST"}},
        {"name": ":authority", "string_match": {"suffix": ".com"}}]})
    assert first([route_], method="POST", host="a.com") == "r"
    assert first([route_], method="GET", host="a.com") is None


@pytest.mark.parametrize("matcher, query, expected", [
    ({"string_match": {"exact": "1"}}, "a=1", True),
    ({"string_match": {"exact": "a b"}}, "a=a%20b", True),      # values percent-decoded
    ({"string_match": {"exact": "1"}}, "a=2&a=1", False),       # the first value counts
    ({"string_match": {"prefix": "x"}}, "b=x", False),
    ({"present_match": True}, "a", True),
    ({"present_match": True}, "b=1", False),
    ({"present_match": False}, "a=1", False),
    ({}, "a=", True),
])
def test_query_parameter_matchers(matcher, query, expected):
    route_ = named("r", {"prefix": "/", "query_parameters": [{"name": "a", **matcher}]})
    assert (first([route_], path="/p?" + query) == "r") is expected


def test_grpc_and_connect_matchers():
    grpc = named("g", {"prefix": "/", "grpc": {}})
    assert first([grpc], headers=[("content-type", "application/grpc+proto")]) == "g"
    assert first([grpc], headers=[("content-type", "application/json")]) is None
    routes = [named("p", {"prefix": ""}), named("c", {"connect_matcher": {}})]
    assert first(routes, method="CONNECT", path="h:443") == "c"   # no path for CONNECT
    assert first(routes[1:], method="GET") is None


# --- actions ---------------------------------------------------------------------------------

def only(*routes, **fields):
    return table(rc(*routes, **fields)).route(req())


def test_route_attributes_and_retry_inheritance():
    data = {"virtual_hosts": [{"name": "v", "domains": ["*"],
                               "retry_policy": {"retry_on": "5xx", "num_retries": 4},
                               "routes": [named("inherit", {"prefix": "/i"}),
                                          named("own", {"prefix": "/o"}, cluster="c1",
                                                timeout="2s", idle_timeout="7s",
                                                retry_policy={"retry_on": "reset"})]}]}
    t = table(data)
    inherit, own = t.route(req("/i")), t.route(req("/o"))
    assert inherit.kind == "cluster" and inherit.timeout == 15.0
    assert inherit.retry.retry_on == {"5xx"} and inherit.retry.num_retries == 4
    assert own.retry.retry_on == {"reset"} and own.retry.num_retries == 1   # replaced whole
    assert own.retry.base == 0.025 and own.retry.max == pytest.approx(0.25)
    assert own.timeout == 2.0 and own.idle_timeout == 7.0 and own.idle_timeout_set
    assert inherit.pick_cluster(req(), None) == "c1"


def test_weighted_pick():
    r = only(named("w", weighted_clusters={"clusters": [{"name": "c1", "weight": 1},
                                                        {"name": "c2", "weight": 3}]}))
    assert r.pick_cluster(req(), lambda: 0.0) == "c1"
    assert r.pick_cluster(req(), lambda: 0.2499) == "c1"
    assert r.pick_cluster(req(), lambda: 0.25) == "c2"
    assert r.pick_cluster(req(), lambda: 0.9999) == "c2"
    import random
    rng = random.Random(7)
    picks = [r.pick_cluster(req(), rng) for _ in range(2000)]
    assert 0.2 < picks.count("c1") / len(picks) < 0.3


def test_cluster_header():
    r = only(named("h", cluster_header="X-Cluster", cluster_not_found_response_code="NOT_FOUND"))
    assert r.pick_cluster(req(headers=[("x-cluster", "c2"), ("x-cluster", "c1")]), None) == "c2"
    assert r.pick_cluster(req(), None) is None
    assert r.pick_cluster(req(headers=[("x-cluster", "")]), None) is None
    assert r.cluster_not_found_status == 404


@pytest.mark.parametrize("match, action, path, new_path", [
    ({"prefix": "/api/"}, {"prefix_rewrite": "/"}, "/api/v1?q=1", "/v1?q=1"),
    ({"prefix": "/API", "case_sensitive": False}, {"prefix_rewrite": "/x"}, "/api/v1", "/x/v1"),
    ({"path": "/a"}, {"prefix_rewrite": "/b"}, "/a?q", "/b?q"),
    ({"safe_regex": {"regex": "/a/.*"}}, {"prefix_rewrite": "/b"}, "/a/c?q", "/b?q"),
    ({"prefix": "/"}, {"regex_rewrite": {"pattern": {"regex": "^/svc/([^/]+)/(.*)$"},
                                         "substitution": "/\\2/instance/\\1"}},
     "/svc/foo/bar?x=1", "/bar/instance/foo?x=1"),
    ({"prefix": "/"}, {"regex_rewrite": {"pattern": {"regex": "o"}, "substitution": "0"}},
     "/foo/boo", "/f00/b00"),
    ({"prefix": "/"}, {"regex_rewrite": {"pattern": {"regex": "(o)"}, "substitution": "\\2"}},
     "/foo", "/foo"),                                            # invalid rewrite: unchanged
])
def test_path_rewrites(match, action, path, new_path):
    request = req(path)
    table(rc(named("r", match, cluster="c1", **action))).route(request).rewrite(request)
    assert request.path == new_path
    assert request.headers.get("x-envoy-original-path") == path


def test_no_rewrite_leaves_request_alone():
    request = req("/a")
    only(named("r")).rewrite(request)
    assert request.path == "/a" and request.authority == "h" and len(request.headers) == 0


def test_host_rewrites():
    request = req(host="orig")
    r = only(named("r", cluster="c1", host_rewrite_literal="new.host"))
    r.rewrite(request)
    assert request.authority == "new.host"
    assert request.headers.get("x-envoy-original-host") == "orig"
    request = req(host="orig", headers=[("x-host", "from.header")])
    only(named("r", cluster="c1", host_rewrite_header="X-Host")).rewrite(request,
                                                                         envoy_headers=False)
    assert request.authority == "from.header" and "x-envoy-original-host" not in request.headers
    assert only(named("r", cluster="c1", auto_host_rewrite=True)).auto_host_rewrite is True


def test_weighted_cluster_host_rewrite_then_route_rewrite():
    """Envoy 1.40: the weighted cluster's host_rewrite_literal applies first, the route's
    last (it wins), and x-envoy-original-host holds the value before the last rewrite."""
    r = only(named("w", host_rewrite_literal="route.host", weighted_clusters={"clusters": [
        {"name": "c1", "weight": 1, "host_rewrite_literal": "wc.host"}]}))
    request = req(host="h")
    r.rewrite(request, "c1")
    assert request.authority == "route.host"
    assert request.headers.get("x-envoy-original-host") == "wc.host"


# --- header mutations ------------------------------------------------------------------------

def apply(steps, headers):
    """Envoy's semantics for a route's mutation steps (templates used as plain values here)."""
    from baton.worker.proxy.http.route_rewrite import ADD_IF_ABSENT, APPEND, OVERWRITE, REMOVE
    for kind, name, value, _, keep_empty in steps:
        if kind == REMOVE:
            headers.remove(name)
            continue
        if not value and not keep_empty:
            continue
        if kind == APPEND:
            headers.add(name, value)
        elif kind == ADD_IF_ABSENT:
            if name not in headers:
                headers.add(name, value)
        elif kind == OVERWRITE or name in headers:
            headers.remove(name)
            headers.add(name, value)


def hv(key, value, action="OVERWRITE_IF_EXISTS_OR_ADD"):
    return {"header": {"key": key, "value": value}, "append_action": action}


def mutation_config(most_specific):
    append = "APPEND_IF_EXISTS_OR_ADD"
    return {"most_specific_header_mutations_wins": most_specific,
            "request_headers_to_add": [hv("x-a", "global"), hv("x-b", "global", append)],
            "response_headers_to_add": [hv("y-a", "global")],
            "virtual_hosts": [{
                "name": "v", "domains": ["*"],
                "request_headers_to_add": [hv("x-a", "vhost"), hv("x-b", "vhost", append)],
                "response_headers_to_add": [hv("y-a", "vhost")],
                "routes": [{
                    "match": {"prefix": "/"},
                    "request_headers_to_add": [
                        hv("x-a", "route"), hv("x-b", "route", append), hv("x-d", "1"),
                        hv("x-d", "2"), hv("x-e", "a", append), hv("x-e", "b"),
                        hv("x-e", "c", append)],
                    "response_headers_to_add": [hv("y-a", "route")],
                    "route": {"weighted_clusters": {"clusters": [{
                        "name": "c1", "weight": 1,
                        "request_headers_to_add": [hv("x-a", "wc"), hv("x-b", "wc", append)],
                        "response_headers_to_add": [hv("y-a", "wc")]}]}}}]}]}


@pytest.mark.parametrize("most_specific, expected, response", [   # Envoy 1.40
    (False, [("x-b", "client"), ("x-b", "wc"), ("x-d", "2"), ("x-e", "b"), ("x-b", "route"),
             ("x-e", "a"), ("x-e", "c"), ("x-b", "vhost"), ("x-a", "global"),
             ("x-b", "global")], "global"),
    (True, [("x-b", "client"), ("x-b", "wc"), ("x-b", "global"), ("x-b", "vhost"),
            ("x-a", "route"), ("x-d", "2"), ("x-e", "b"), ("x-b", "route"), ("x-e", "a"),
            ("x-e", "c")], "route"),
])
def test_header_mutation_order_matches_envoy(most_specific, expected, response):
    r = table(mutation_config(most_specific)).route(req())
    headers = Headers([("x-a", "client"), ("x-b", "client")])
    apply(r.request_plan("c1"), headers)
    assert headers.items == expected
    response_headers = Headers()
    apply(r.response_plan("c1"), response_headers)
    assert response_headers.items == [("y-a", response)]


def test_mutation_tuples():
    r = only(named("r"), request_headers_to_remove=["X-Gone"], request_headers_to_add=[
        {"header": {"key": "x-e", "value": "%REQ(x-missing)%"}, "keep_empty_value": True}])
    from baton.worker.proxy.http.route_rewrite import APPEND, REMOVE
    assert r.request_plan("c1") == (
        (REMOVE, "x-gone", None, False, False),
        (APPEND, "x-e", "%REQ(x-missing)%", True, True))
    assert r.response_plan() == ()


# --- redirects and direct responses ----------------------------------------------------------

REDIRECTS = rc(
    {"match": {"prefix": "/r/https"}, "redirect": {"https_redirect": True}},
    {"match": {"prefix": "/r/port"}, "redirect": {"port_redirect": 8443}},
    {"match": {"prefix": "/r/hostport"}, "redirect": {"host_redirect": "bar.com:99",
                                                      "port_redirect": 8443}},
    {"match": {"prefix": "/r/host"}, "redirect": {"host_redirect": "bar.com"}},
    {"match": {"prefix": "/r/path"}, "redirect": {"path_redirect": "/new"}},
    {"match": {"prefix": "/r/qpath"}, "redirect": {"path_redirect": "/new?a=1",
                                                   "strip_query": True}},
    {"match": {"prefix": "/r/strip"}, "redirect": {"strip_query": True,
                                                   "response_code": "FOUND"}},
    {"match": {"prefix": "/r/pre/"}, "redirect": {"prefix_rewrite": "/p/"}},
    {"match": {"prefix": "/r/rx"}, "redirect": {"regex_rewrite": {
        "pattern": {"regex": "/r/rx/(\\w+)"}, "substitution": "/y/\\1"}}},
    {"match": {"prefix": "/r/nopath"}, "redirect": {"path_redirect": "rel"}},
    {"match": {"prefix": "/r/scheme"}, "redirect": {"scheme_redirect": "ftp"}},
    {"match": {"prefix": "/d/301"}, "direct_response": {"status": 301}},
    {"match": {"prefix": "/d/201"}, "direct_response": {"status": 201,
                                                        "body": {"inline_string": "made"}}},
    {"match": {"prefix": "/d/empty"}, "direct_response": {"status": 200}})


@pytest.mark.parametrize("host, path, xfp, status, location", [    # Envoy 1.40
    ("foo.com", "/r/https?q=1", None, 301, "https://foo.com/r/https?q=1"),
    ("foo.com:80", "/r/https", None, 301, "https://foo.com/r/https"),
    ("foo.com:8080", "/r/https", None, 301, "https://foo.com:8080/r/https"),
    ("foo.com:443", "/r/https", None, 301, "https://foo.com:443/r/https"),
    ("foo.com:80", "/r/https", "https", 301, "https://foo.com:80/r/https"),
    ("[::1]:80", "/r/https", None, 301, "https://[::1]/r/https"),
    ("foo.com", "/r/port/x", None, 301, "http://foo.com:8443/r/port/x"),
    ("foo.com:77", "/r/port/x", None, 301, "http://foo.com:8443/r/port/x"),
    ("[::1]:80", "/r/port", None, 301, "http://[::1]:8443/r/port"),
    ("foo.com:77", "/r/hostport", None, 301, "http://bar.com:99:8443/r/hostport"),
    ("foo.com:77", "/r/host/a?b", None, 301, "http://bar.com/r/host/a?b"),
    ("foo.com:443", "/r/host", "https", 301, "https://bar.com/r/host"),
    ("foo.com", "/r/path/z?q=1", None, 301, "http://foo.com/new?q=1"),
    ("foo.com:80", "/r/path", None, 301, "http://foo.com:80/new"),
    ("foo.com", "/r/qpath?q=2", None, 301, "http://foo.com/new?a=1"),
    ("foo.com", "/r/strip?q=2", None, 302, "http://foo.com/r/strip"),
    ("foo.com", "/r/pre/abc?q", None, 301, "http://foo.com/p/abc?q"),
    ("foo.com", "/r/rx/abc?q=3", None, 301, "http://foo.com/y/abc?q=3"),
    ("foo.com", "/r/nopath", None, 301, "http://foo.com/rel"),
    ("foo.com", "/r/scheme", None, 301, "ftp://foo.com/r/scheme"),
    ("foo.com:80", "/d/301?x", None, 301, "http://foo.com:80/d/301?x"),
    ("foo.com", "/d/201", None, 201, "http://foo.com/d/201"),
    ("foo.com", "/d/empty", None, 200, None),
])
def test_redirect_location(host, path, xfp, status, location):
    headers = [("x-forwarded-proto", xfp)] if xfp else []
    request = req(path, host=host, headers=headers)
    r = table(REDIRECTS).route(request)
    assert r.redirect_location(request) == (status, location)


def test_direct_bodies():
    t = table(REDIRECTS)
    assert t.route(req("/d/201")).direct() == (201, b"made")
    assert t.route(req("/d/empty")).direct() == (200, b"")
    assert t.route(req("/d/201")).kind == "direct_response"


# --- hash keys -------------------------------------------------------------------------------

def blake(value):
    """The hash policy's digest: XXH64, seed 0 (Envoy's)."""
    return xxhash64(value.encode("latin-1"))


def rotl(h):
    return ((h << 1) | (h >> 63)) & ((1 << 64) - 1)


def hashed(policies, **request):
    r = only(named("h", cluster="c1", hash_policy=policies))
    return r.hash_key(req(**request), "10.0.0.1")


def test_hash_keys():
    assert hashed([{"header": {"header_name": "x-user"}}],
                  headers=[("x-user", "alice")]) == blake("alice")
    assert hashed([{"header": {"header_name": "x-user"}}]) is None
    assert hashed([{"header": {"header_name": ":path"}}], path="/p") == blake("/p")
    assert hashed([{"cookie": {"name": "s"}}],
                  headers=[("cookie", "a=1; s=\"xyz\"; b=2")]) == blake("xyz")
    assert hashed([{"connection_properties": {"source_ip": True}}]) == blake("10.0.0.1")
    assert hashed([{"query_parameter": {"name": "u"}}], path="/?u=7&u=8") == blake("7")
    both = [{"header": {"header_name": "x-a"}}, {"header": {"header_name": "x-b"}}]
    assert hashed(both, headers=[("x-a", "1"), ("x-b", "2")]) == rotl(blake("1")) ^ blake("2")
    assert hashed(both, headers=[("x-b", "2")]) == blake("2")
    terminal = [{"header": {"header_name": "x-a"}, "terminal": True},
                {"header": {"header_name": "x-b"}}]
    assert hashed(terminal, headers=[("x-a", "1"), ("x-b", "2")]) == blake("1")
    assert hashed(terminal, headers=[("x-b", "2")]) == blake("2")


# --- RE2 translation -------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["(a)\\1", "(?=a)", "(?<!a)b", "(?>a)", "a*+", "a**",
                                     "\\Z", "\\pL", "(?U)a", "a{1001}", "(a", "a)",
                                     "x(?i)y|z", "[[:nope:]]"])
def test_re2_refusals(pattern):
    with pytest.raises(RegexError):
        compile_re2(pattern)


@pytest.mark.parametrize("pattern, text, matches", [
    ("a\\z", "a", True), ("(?<n>a)b", "ab", True), ("\\Qa.b\\E", "a.b", True),
    ("\\Qa.b\\E", "axb", False), ("\\x{41}", "A", True), ("\\w+", "é", False),
    ("x(?i)y", "xY", True), ("x(?i)y", "XY", False), ("[^[:space:]]+", "ab", True),
])
def test_re2_semantics(pattern, text, matches):
    assert (compile_re2(pattern).fullmatch(text) is not None) is matches


def test_replace_all_is_re2_global_replace():
    regex = compile_re2("x*")
    assert replace_all(regex, ["-"], "abxd") == "-a-b-d-"          # Python's re.sub: -a-b--d-
    regex = compile_re2("(a)(b)?")
    assert replace_all(regex, compile_substitution("[\\2\\1\\\\]", regex.groups), "ab a") == \
        "[ba\\] [a\\]"
    assert compile_substitution("\\3", 2) is None


def test_parse_query():
    assert parse_query("a=1&b&a=2&&c=%41+#frag") == {"a": "1", "b": "", "c": "A+"}
    assert parse_query("c=%41", decode=False) == {"c": "%41"}


def test_mutation_steps_decide_per_route_what_requests_do():
    """route_rewrite.mutation_steps: a level's mutations as steps, once per route (appends
    last, as Envoy defers them); a template rendered per request only when it has %."""
    from baton.worker.proxy.http.route_rewrite import (ADD_IF_ABSENT, APPEND, OVERWRITE,
                                                       OVERWRITE_IF_EXISTS, REMOVE,
                                                       mutation_steps)
    spec = {"remove": ["x-a"], "add": [
        ("x-b", "v", "APPEND_IF_EXISTS_OR_ADD", False),
        ("x-c", "%REQ(x-d)%", "ADD_IF_ABSENT", True),
        ("x-e", "", "OVERWRITE_IF_EXISTS_OR_ADD", False),
        ("x-f", "w", "OVERWRITE_IF_EXISTS", False),
        ("x-g", "w", "NOT_AN_ACTION", False)]}
    assert mutation_steps(spec) == (
        (REMOVE, "x-a", None, False, False), (ADD_IF_ABSENT, "x-c", "%REQ(x-d)%", True, True),
        (OVERWRITE, "x-e", "", False, False), (OVERWRITE_IF_EXISTS, "x-f", "w", False, False),
        (APPEND, "x-b", "v", False, False))
    assert mutation_steps(None) == ()
