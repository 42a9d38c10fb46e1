"""What a route matches on: Envoy's StringMatcher, HeaderMatcher and QueryParameterMatcher,
and the path matchers (prefix, path, path_separated_prefix, safe_regex), compiled once from the
translated route_config (xds/http.py) into small callables.

- `prefix` looks at the whole :path (query included, as Envoy does), `path`, `safe_regex` and
  `path_separated_prefix` at the path without its query. A CONNECT request has no path for
  these matchers (_path_test gives None for a connect_matcher).
- Repeated headers are matched joined with ','; case-insensitive matching is ASCII-only, as
  Envoy's (absl::AsciiStrToLower).
"""

from __future__ import annotations

__all__ = ["parse_query"]

import re
from urllib.parse import unquote_to_bytes

from .route_regex import compile_re2

_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def _lower(value: str) -> str:
    """ASCII-only lower case, as Envoy's (absl::AsciiStrToLower)."""
    return value.lower() if value.isascii() else value.translate(_ASCII_LOWER)


def _decode(text: str) -> str:
    return unquote_to_bytes(text).decode("latin-1") if "%" in text else text


def parse_query(query: str, decode: bool = True) -> dict:
    """'a=1&b&a=2' -> {"a": "1", "b": ""}: the first value of each name, names and values
    percent-decoded (not '+'), as Envoy's query parameter matchers see them."""
    params = {}
    end = query.find("#")
    if end >= 0:
        query = query[:end]
    for item in query.split("&"):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if decode:
            name, value = _decode(name), _decode(value)
        params.setdefault(name, value)
    return params


_INT64 = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)


def _string_matcher(spec):
    """{"kind", "value", "ignore_case"} -> value -> bool."""
    kind, value = spec["kind"], spec["value"]
    if kind == "safe_regex":
        return compile_re2(value).fullmatch
    if spec.get("ignore_case"):
        value = _lower(value)
        if kind == "exact":
            return lambda v: _lower(v) == value
        if kind == "prefix":
            return lambda v: _lower(v).startswith(value)
        if kind == "suffix":
            return lambda v: _lower(v).endswith(value)
        return lambda v: value in _lower(v)
    if kind == "exact":
        return value.__eq__
    if kind == "prefix":
        return lambda v: v.startswith(value)
    if kind == "suffix":
        return lambda v: v.endswith(value)
    return lambda v: value in v


class _HeaderMatcher:
    """Envoy's HeaderMatcher: repeated headers are matched joined with ','; a missing header
    does not match (inverted or not) unless treat_missing_header_as_empty; present_match
    compares presence, then invert applies."""

    __slots__ = ("name", "test", "present", "invert", "missing_as_empty")

    def __init__(self, spec):
        self.name = spec["name"]
        self.invert = spec["invert"]
        self.missing_as_empty = spec["treat_missing_as_empty"]
        self.present = None
        kind = spec["kind"]
        if kind == "present":
            self.present = spec["present"]
            self.test = None
        elif kind == "range":
            start, end = spec["range"]

            def in_range(v):
                if not _INT64.fullmatch(v):
                    return False
                return start <= int(v) < end
            self.test = in_range
        else:
            self.test = _string_matcher(spec["string"])

    def matches(self, request) -> bool:
        value = request.get(self.name)
        if self.present is not None:
            return ((value is not None) == self.present) != self.invert
        if value is None:
            if not self.missing_as_empty:
                return False
            value = ""
        return bool(self.test(value)) != self.invert


class _QueryMatcher:
    __slots__ = ("name", "test", "present")

    def __init__(self, spec):
        self.name = spec["name"]
        self.present = spec["present"]
        self.test = _string_matcher(spec["string"]) if spec["string"] else None

    def matches(self, params: dict) -> bool:
        value = params.get(self.name)
        if value is None:
            return False
        if self.present is not None:
            return self.present
        return self.test is None or bool(self.test(value))


def _path_test(match):
    """-> (test(path, path_only) -> int | None, matched length for prefix rewrites)."""
    kind, value, sensitive = match["path_kind"], match["path_value"], match["case_sensitive"]
    if kind == "prefix":
        if sensitive:
            return lambda path, path_only: path.startswith(value)
        low = _lower(value)
        return lambda path, path_only: _lower(path[:len(low)]) == low
    if kind == "path":
        if sensitive:
            return lambda path, path_only: path_only == value
        low = _lower(value)
        return lambda path, path_only: _lower(path_only) == low
    if kind == "path_separated_prefix":
        size = len(value)
        if sensitive:
            return lambda path, path_only: (path_only.startswith(value) and (
                len(path_only) == size or path_only[size] == "/"))
        low = _lower(value)
        return lambda path, path_only: (_lower(path_only[:size]) == low and (
            len(path_only) == size or path_only[size] == "/"))
    if kind == "safe_regex":
        full = compile_re2(value).fullmatch
        return lambda path, path_only: full(path_only) is not None
    if kind == "connect":
        return None
    raise ValueError(f"unknown path match {kind!r}")
