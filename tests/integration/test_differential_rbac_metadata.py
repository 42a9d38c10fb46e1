"""Differential: RBAC's metadata principal matches as Envoy's MetadataMatcher does, each
ValueMatcher kind on its own value type only. A first RBAC filter's shadow rules write the
dynamic metadata `envoy.filters.http.rbac` `shadow_engine_result: "allowed"` (a string) and
`shadow_effective_policy_id`; the second filter's RBACPerRoute on each route allows on one
metadata matcher. Baton made string_match and list_match one string matcher (a list matcher
allowed a string value), and NACKed bool, double, present, null and or matchers."""

from __future__ import annotations

import pytest

from .differential.bootstraps import bootstrap, cluster, http_listener
from .differential.compare import differential, observe
from .differential.client import one
from .differential.proxies import module_pair

T = "type.googleapis.com/"
RBAC = T + "envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE = T + "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
ALLOWED = {"string_match": {"exact": "allowed"}}
# (case, metadata key, value matcher, invert, Envoy 1.40's status)
CASES = [
    ("string", "shadow_engine_result", ALLOWED, False, 200),
    ("string-prefix", "shadow_engine_result", {"string_match": {"prefix": "allow"}}, False, 200),
    ("list-on-a-string", "shadow_engine_result", {"list_match": {"one_of": ALLOWED}}, False, 403),
    ("bool-on-a-string", "shadow_engine_result", {"bool_match": True}, False, 403),
    ("double-on-a-string", "shadow_engine_result", {"double_match": {"exact": 1}}, False, 403),
    ("null-on-a-string", "shadow_engine_result", {"null_match": {}}, False, 403),
    ("present", "shadow_engine_result", {"present_match": True}, False, 200),
    ("present-absent", "nothing_here", {"present_match": True}, False, 403),
    ("absent-inverted", "nothing_here", ALLOWED, True, 200),
    ("or", "shadow_engine_result", {"or_match": {"value_matchers": [
        {"bool_match": True}, ALLOWED]}}, False, 200),
]


def _route(case: str, key: str, value: dict, invert: bool) -> dict:
    rules = {"policies": {"by-metadata": {"permissions": [{"any": True}], "principals": [
        {"metadata": {"filter": "envoy.filters.http.rbac", "path": [{"key": key}],
                      "value": value, "invert": invert}}]}}}
    return {"match": {"path": f"/{case}"}, "route": {"cluster": "a"}, "typed_per_filter_config": {
        "envoy.filters.http.rbac": {"@type": PER_ROUTE, "rbac": {"rules": rules}}}}


def metadata_bootstrap(upstreams):
    routes = [_route(case, key, value, invert) for case, key, value, invert, _ in CASES]
    filters = [
        {"name": "shadow", "typed_config": {"@type": RBAC, "shadow_rules": {"policies": {
            "everyone": {"permissions": [{"any": True}], "principals": [{"any": True}]}}}}},
        {"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC, "rules": {}}}]

    def template(ports, admin):
        return bootstrap(admin, [http_listener("meta", ports["meta"], {"name": "meta", "virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": routes}]}, http_filters=filters)],
            [cluster("a", [upstreams["a"]])])
    return template


recorder, pair = module_pair("diff-rbac-metadata", metadata_bootstrap, ["meta"])


@pytest.mark.parametrize("case, status", [(c[0], c[4]) for c in CASES])
def test_a_metadata_matcher_matches_its_own_value_type(pair, recorder, case, status):
    def run(target):
        key = target.key(f"meta-{case}")
        obs = observe(one(target.ports["meta"], "GET", f"/{case}",
                          [("host", "svc"), ("x-test-key", key)]), target)
        obs["upstream requests"] = recorder.count(key)
        return obs

    def expect(obs):
        assert (obs["status"], obs["upstream requests"]) == (status, int(status == 200)), obs
    differential(pair, run, expect)
