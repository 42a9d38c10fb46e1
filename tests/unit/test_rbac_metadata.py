"""RBAC's metadata matcher (Envoy's MetadataMatcher): each ValueMatcher kind matches its
own value type only (source/common/common/matchers.cc)."""

from __future__ import annotations

from .test_rbac import engine, facts, translate


def _metadata_policy(value, invert=False):
    return engine({"policies": {"p": {"permissions": [{"any": True}], "principals": [
        {"metadata": {"filter": "f", "path": [{"key": "k"}], "value": value, "invert": invert}}]}}})


def test_metadata_value_matchers_match_their_own_value_type_only():
    """Envoy's ValueMatcher: string_match wants a string value, list_match a list with one
    matching element; Baton made both the same matcher, so each matched the other's type."""
    def matches(value, found):
        return _metadata_policy(value).decide(facts(metadata={"f": {"k": found}}))[0]
    string = {"string_match": {"exact": "a"}}
    listed = {"list_match": {"one_of": string}}
    assert matches(string, "a") and not matches(string, ["a"])
    assert matches(listed, ["b", "a"]) and not matches(listed, "a") and not matches(listed, ["b"])
    assert matches({"bool_match": True}, True)
    assert not matches({"bool_match": True}, False) and not matches({"bool_match": True}, 1)
    assert matches({"double_match": {"exact": 2}}, 2.0) and not matches({"double_match": {"exact": 2}}, "2")
    assert matches({"double_match": {"range": {"start": 1, "end": 3}}}, 1)
    assert not matches({"double_match": {"range": {"start": 1, "end": 3}}}, 3)
    assert not matches({"double_match": {"exact": 1}}, True)
    assert matches({"present_match": True}, "") and matches({"present_match": True}, None)
    assert not matches({"present_match": False}, "x")
    assert matches({"null_match": {}}, None) and not matches({"null_match": {}}, "")
    assert matches({"list_match": {"one_of": {"bool_match": True}}}, [False, True])
    assert matches({"or_match": {"value_matchers": [string, {"bool_match": True}]}}, True)
    # Nothing at the path: no kind matches it (Envoy's unset Value), invert makes it a match.
    for value in (string, listed, {"present_match": True}, {"null_match": {}}):
        assert not _metadata_policy(value).decide(facts(metadata={"f": {}}))[0]
        assert _metadata_policy(value, invert=True).decide(facts(metadata={}))[0]


def test_an_unset_metadata_value_matcher_is_refused():
    _, errors = translate({"rules": {"policies": {"p": {"permissions": [{"any": True}],
        "principals": [{"metadata": {"filter": "f", "path": [{"key": "k"}], "value": {}}}]}}}})
    assert any("value.match_pattern: required" in e for e in errors), errors
