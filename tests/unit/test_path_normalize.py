"""worker/proxy/http/path_normalize.py: Envoy's path normalization, sans IO.

The table is what Envoy 1.40 sent upstream for each path (measured; the live comparison is
tests/integration/test_path_differential.py); the properties are over arbitrary paths.
"""

import pytest
from hypothesis import given, settings, strategies as st

from baton.worker.proxy.http.path_normalize import (CONTINUE, REDIRECT, REJECT, canonical,
                                                    normalize)


@pytest.mark.parametrize("path, expected", [
    ("/a/./b", "/a/b"), ("/a/../b", "/b"), ("/../a", "/a"), ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"), ("/a//b", "/a//b"), ("/a/%2e%2e/b", "/b"), ("/a/%2E/b", "/a/b"),
    ("/a%2Fb", "/a%2Fb"), ("/a\\b", "/a/b"), ("/a%41b", "/aAb"), ("/a%7eb", "/a~b"),
    ("/a%zzb", "/a%zzb"), ("/a%", "/a%"), ('/a"b', "/a%22b"), ("/a<b>", "/a%3Cb%3E"),
    ("/a`b", "/a%60b"), ("/a{b}", "/a%7Bb%7D"), ("/a|b", "/a%7Cb"), ("/a^b", "/a%5Eb"),
    ("/a[b]", "/a[b]"), ("/a%00b", None), ("/a%25b", "/a%25b"), ("/a%2e", "/a."),
    ("/a/...", "/a/..."), ("/a!$&()*+,=b", "/a!$&()*+,=b"), ("/a/.%2e/b", "/b"),
])
def test_canonical_paths_as_envoy_1_40(path, expected):
    assert canonical(path) == expected


def test_escaped_slash_actions():
    assert normalize("/a%2Fb", False, False, "KEEP_UNCHANGED") == (CONTINUE, "/a%2Fb")
    assert normalize("/a%2fb", False, False, "REJECT_REQUEST") == (REJECT, None)
    assert normalize("/a%2fb%5C?q=%2f", False, False, "UNESCAPE_AND_FORWARD") == (
        CONTINUE, "/a/b\\?q=%2f")
    assert normalize("/a%2F..%2Fb", True, True, "UNESCAPE_AND_REDIRECT") == (REDIRECT, "/b")
    # Nothing to unescape: no redirect, the other settings still apply.
    assert normalize("/a//b", True, True, "UNESCAPE_AND_REDIRECT") == (CONTINUE, "/a/b")
    # gRPC cannot follow a redirect: Envoy rejects instead.
    assert normalize("/a%2Fb", False, False, "UNESCAPE_AND_REDIRECT", grpc=True) == (
        REJECT, None)


paths = st.text(alphabet="/.\\%2eEfFaA5cC0~-", max_size=24).map(lambda p: "/" + p)


@settings(max_examples=500, deadline=None)
@given(paths)
def test_canonical_is_idempotent_and_leaves_no_dot_segments(path):
    once = canonical(path)
    if once is None:
        assert "%00" in path
        return
    assert canonical(once) == once
    assert once.startswith("/") and "\\" not in once
    segments = once.split("/")
    assert "." not in segments and ".." not in segments


@settings(max_examples=300, deadline=None)
@given(paths, st.text(alphabet="/.%2fa=&", max_size=10), st.booleans(), st.booleans(),
       st.sampled_from(["KEEP_UNCHANGED", "REJECT_REQUEST", "UNESCAPE_AND_FORWARD",
                        "UNESCAPE_AND_REDIRECT"]))
def test_the_query_is_never_touched(path, query, normalize_path, merge, action):
    verdict, new = normalize(f"{path}?{query}", normalize_path, merge, action)
    if verdict != REJECT:
        assert new.partition("?")[2] == query
