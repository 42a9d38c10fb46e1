"""h2fields.py's field checks, held to the rules they were first written as: the cheaper forms
the codec uses must refuse exactly what those did (RFC 9113 8.2.1)."""

from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st

from baton.worker.codecs.h2fields import _regular_field

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


def test_value_edges():
    for value in (b" a", b"a ", b"\ta", b"a\t", b" ", b"\t", b"a\x00b", b"a\rb", b"a\nb", b"\n"):
        assert _regular_field(b"x", value) == "invalid value for header b'x'", value
    for value in (b"", b"a", b"a b", b"a\tb", b"\x0ba\x0b", b"\xff"):
        assert _regular_field(b"x", value) is None, value
