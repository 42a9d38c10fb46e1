"""h2fields.py's field checks, held to the rules they were first written as: the cheaper forms
the codec uses must refuse exactly what those did (RFC 9113 8.2.1)."""

from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st

from baton.worker.codecs import h2fields
from baton.worker.codecs.h2fields import _regular_field, analyze_request

# RFC 9113 8.2.1 as one regex: no NUL, CR or LF; no whitespace at either end.
_SPEC_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z").search

_EDGE_BYTES = st.sampled_from(b"\x00\r\n \t\x0bax\x7f\xff")
values = st.one_of(st.binary(max_size=12),
                   st.lists(_EDGE_BYTES, max_size=8).map(bytes))


@settings(max_examples=300, deadline=None)
@given(values)
def test_value_verdict_is_the_spec_regex(value):
    error = _regular_field(b"x-field", value)
    assert (error == "invalid value for header b'x-field'") == bool(_SPEC_BAD_VALUE(value))


# The other byte classes, as regexes (RFC 9110 5.1's token, RFC 9113 8.2.1 and 8.3.1).
_SPEC = {"name": re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]").search,
         "method": re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z]").search,
         "target": re.compile(rb"[\x00-\x20\x7f]").search}
_CHECKS = {"name": h2fields._bad_name, "method": h2fields._bad_method,
           "target": h2fields._bad_target}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=12), st.lists(st.integers(0, 255), max_size=6).map(bytes))
def test_byte_classes_are_the_spec_regexes(any_bytes, few_bytes):
    for value in (any_bytes, few_bytes, b"GET" + few_bytes, b"x-" + few_bytes):
        for kind, spec in _SPEC.items():
            assert _CHECKS[kind](value) == bool(spec(value)), (kind, value)


def test_every_byte_in_every_class():
    for byte in range(256):
        value = b"a" + bytes((byte,)) + b"a"
        for kind, spec in _SPEC.items():
            assert _CHECKS[kind](value) == bool(spec(value)), (kind, byte)
        assert (_regular_field(b"x", value) is None) == (byte not in b"\x00\r\n"), byte


def test_schemes():
    for scheme in (b"http", b"https", b"h2c+x.y-z", b"A"):
        assert h2fields._pseudo_error(b"GET", b"/", scheme, b"a", None) is None, scheme
    for scheme in (b"", b"1http", b"ht tp", b"http:", b"+"):
        assert h2fields._pseudo_error(b"GET", b"/", scheme, b"a", None) == \
            "missing or invalid :scheme", scheme


def test_value_edges():
    for value in (b" a", b"a ", b"\ta", b"a\t", b" ", b"\t", b"a\x00b", b"a\rb", b"a\nb", b"\n"):
        assert _regular_field(b"x", value) == "invalid value for header b'x'", value
    for value in (b"", b"a", b"a b", b"a\tb", b"\x0ba\x0b", b"\xff"):
        assert _regular_field(b"x", value) is None, value


_NAMES = st.sampled_from([b"user-agent", b"x-request-id", b"te", b"expect", b"cookie", b"host",
                          b"content-length", b"connection", b"X-Upper", b"", b"a b", b":path"])
_VALUES = st.sampled_from([b"", b"a", b" a", b"a\n", b"trailers", b"100-continue", b"12", b"x"])
_PSEUDO = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")]
blocks = st.lists(st.tuples(_NAMES, _VALUES), max_size=6).map(lambda fields: _PSEUDO + fields)


@settings(max_examples=300, deadline=None)
@given(blocks, blocks)
def test_names_learned_before_change_no_verdict(earlier, block):
    """A request's analysis is the same whether or not its names were seen before (h2fields'
    _plain_names): the earlier block teaches names, each with any value."""
    h2fields._plain_names.clear()
    fresh = analyze_request(block, 65536, 100)
    analyze_request(earlier, 65536, 100)
    analyze_request(block, 65536, 100)
    assert analyze_request(block, 65536, 100) == fresh


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"a b", b"", b"h:1", b"\x7f", b"GET", b"get", b"G T"]),
                min_size=1, max_size=4))
def test_remembered_pseudo_values_change_no_verdict(values):
    """_pseudo_error's verdicts are the same whether the :authority was seen before or not."""
    h2fields._good_authorities.clear()
    fresh = [h2fields._pseudo_error(value, b"/", b"http", value, None) for value in values]
    again = [h2fields._pseudo_error(value, b"/", b"http", value, None) for value in values]
    assert again == fresh
    assert [h2fields._pseudo_error(value, b"/", b"http", value, None)
            for value in reversed(values)] == fresh[::-1]
