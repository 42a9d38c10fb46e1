"""Differential: Envoy's CORS filter as Istio configures it (the filter without settings in
every HCM, the CorsPolicy in typed_per_filter_config of the virtual host and of one route):
preflights answered or passed on, response headers, the route's policy over the virtual
host's."""

from __future__ import annotations

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.client import one
from .differential.compare import differential, header, observe
from .differential.proxies import module_pair

T = "type.googleapis.com/"
POLICY = T + "envoy.extensions.filters.http.cors.v3.CorsPolicy"
CORS_FILTER = {"name": "envoy.filters.http.cors",
               "typed_config": {"@type": T + "envoy.extensions.filters.http.cors.v3.Cors"}}
VHOST_POLICY = {"@type": POLICY,
                "allow_origin_string_match": [{"exact": "https://a.test"},
                                              {"safe_regex": {"regex": r"https://.*\.b\.test"}}],
                "allow_methods": "GET,POST", "allow_headers": "x-a,x-b", "expose_headers": "x-e",
                "max_age": "600", "allow_credentials": True}
ROUTE_POLICY = {"@type": POLICY, "allow_origin_string_match": [{"prefix": "https://own"}],
                "allow_methods": "PUT"}
ANY_ORIGIN = {"@type": POLICY, "allow_origin_string_match": [{"exact": "*"}]}


def cors_bootstrap(upstreams: dict[str, int]):
    route_config = {"name": "cors", "virtual_hosts": [
        {"name": "policy", "domains": ["cors.test"],
         "typed_per_filter_config": {"envoy.filters.http.cors": VHOST_POLICY},
         "routes": [
             {"match": {"prefix": "/own"}, "route": {"cluster": "a"},
              "typed_per_filter_config": {"envoy.filters.http.cors": ROUTE_POLICY}},
             {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]},
        {"name": "star", "domains": ["star.test"],
         "typed_per_filter_config": {"envoy.filters.http.cors": ANY_ORIGIN},
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]},
        {"name": "none", "domains": ["*"],
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}

    def template(ports: dict[str, int], admin: int) -> dict:
        return bootstrap(admin, [http_listener("cors", ports["cors"], route_config,
                                               http_filters=[CORS_FILTER])],
                         [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-cors", cors_bootstrap, ["cors"])


def exchange(recorder, case, method, path, host, headers=()):
    def run(target):
        key = target.key(case)
        resp = one(target.ports["cors"], method, path, [("host", host), *headers, ("x-test-key", key)])
        obs = observe(resp, target)
        obs["upstream requests"] = recorder.count(key)
        return obs
    return run


# (An OPTIONS that goes upstream: Envoy adds content-length: 0 to a body-less OPTIONS, which
# Baton's HTTP/1 codec does not; sent explicitly here so that the CORS cases compare.)
PREFLIGHT = [("access-control-request-method", "POST"), ("content-length", "0")]


def test_preflight_of_an_allowed_origin_is_answered_by_the_proxy(pair, recorder):
    def expect(obs):
        assert obs["status"] == 200 and obs["upstream requests"] == 0, obs
        assert header(obs, "access-control-allow-origin") == "https://x.b.test", obs
        assert header(obs, "access-control-allow-methods") == "GET,POST", obs
        assert header(obs, "access-control-max-age") == "600", obs
    differential(pair, exchange(recorder, "cors-preflight", "OPTIONS", "/p", "cors.test",
                                [("origin", "https://x.b.test"), *PREFLIGHT]), expect)


def test_preflight_of_another_origin_goes_upstream(pair, recorder):
    def expect(obs):
        assert obs["upstream requests"] == 1, obs
        assert header(obs, "access-control-allow-origin") is None, obs
    differential(pair, exchange(recorder, "cors-preflight-other", "OPTIONS", "/p", "cors.test",
                                [("origin", "https://evil.test"), *PREFLIGHT]), expect)


def test_options_without_request_method_is_no_preflight(pair, recorder):
    def expect(obs):
        assert obs["upstream requests"] == 1, obs
    differential(pair, exchange(recorder, "cors-options", "OPTIONS", "/p", "cors.test",
                                [("origin", "https://a.test"), ("content-length", "0")]), expect)


def test_a_request_of_an_allowed_origin_gets_the_response_headers(pair, recorder):
    def expect(obs):
        assert obs["upstream requests"] == 1, obs
        assert header(obs, "access-control-allow-origin") == "https://a.test", obs
        assert header(obs, "access-control-allow-credentials") == "true", obs
        assert header(obs, "access-control-expose-headers") == "x-e", obs
    differential(pair, exchange(recorder, "cors-actual", "GET", "/p", "cors.test",
                                [("origin", "https://a.test")]), expect)


def test_the_routes_policy_overrides_the_virtual_hosts(pair, recorder):
    differential(pair, exchange(recorder, "cors-route-own", "OPTIONS", "/own", "cors.test",
                                [("origin", "https://own.test"), *PREFLIGHT]))
    differential(pair, exchange(recorder, "cors-route-vhost-origin", "OPTIONS", "/own", "cors.test",
                                [("origin", "https://a.test"), *PREFLIGHT]))
    differential(pair, exchange(recorder, "cors-route-actual", "GET", "/own", "cors.test",
                                [("origin", "https://own.test")]))


def test_a_wildcard_origin_and_no_policy(pair, recorder):
    differential(pair, exchange(recorder, "cors-star", "OPTIONS", "/", "star.test",
                                [("origin", "https://anything.test"), *PREFLIGHT]))
    differential(pair, exchange(recorder, "cors-star-get", "GET", "/", "star.test",
                                [("origin", "https://anything.test")]))
    differential(pair, exchange(recorder, "cors-none", "OPTIONS", "/", "other.test",
                                [("origin", "https://a.test"), *PREFLIGHT]))
