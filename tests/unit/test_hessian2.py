"""The Hessian 2.0 reader (worker/codecs/hessian2.py) against the tests' own writer, which
writes every value in each form the spec allows, and on garbage."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from baton.tests.integration.rpc_peers.hessian_writer import Writer, encode
from baton.worker.codecs.hessian2 import Date, HessianError, JavaObject, Reader, write_string

_text = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", "a" * 31, "b" * 32, "c" * 1023, "d" * 1024, "\u00e9t\u00e9", "\U0001F600x", "\u20ac" * 40])
_scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
            | st.sampled_from([0, -16, 47, 48, -2048, 2047, -0x40000, 0x3ffff, 2**31, -2**31 - 1])
            | st.floats(allow_nan=False) | st.sampled_from([0.0, 1.0, -128.0, 32767.0, 1.5, -0.001])
            | _text | st.binary(max_size=40) | st.integers(-2**40, 2**40).map(Date))
_field_names = st.lists(st.from_regex(r"[a-z][a-zA-Z0-9]{0,8}", fullmatch=True), unique=True,
                        max_size=4)


def _objects(children):
    return st.builds(lambda t, names, values: JavaObject(t, dict(zip(names, values))),
                     st.sampled_from(["com.example.User", "com.example.Order"]),
                     _field_names, st.lists(children, min_size=4, max_size=4))


_values = st.recursive(
    _scalars,
    lambda children: (st.lists(children, max_size=6)
                      | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), children, max_size=5)
                      | _objects(children)),
    max_leaves=25)


@settings(max_examples=200, deadline=None)
@given(st.lists(_values, min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_every_written_value_reads_back(values, rng):
    data = encode(*values, rng=rng)
    reader = Reader(data)
    got = [reader.read() for _ in values]
    assert reader.at_end
    assert repr(got) == repr(values)


@settings(max_examples=200, deadline=None)
@given(st.lists(_values, min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_skipping_lands_where_reading_does(values, rng):
    data = encode(*values, rng=rng)
    reader = Reader(data)
    for _ in values:
        reader.skip()
    assert reader.pos == len(data)


@settings(max_examples=300, deadline=None)
@given(_text)
def test_write_string_reads_back(text):
    assert Reader(write_string(text)).read_string() == text


def test_long_strings_are_chunked():
    text = "\u00e9" * 70000
    data = write_string(text)
    assert data[:1] == b"R"
    assert Reader(data).read_string() == text


def test_references_resolve_to_the_same_object():
    shared = {"k": [1, 2]}
    data = encode([shared, shared], rng=random.Random(3))
    got = Reader(data).read()
    assert got[0] is got[1] and got[0] == shared


def test_a_supplementary_character_counts_as_two_units():
    # Java writes U+1F600 as a surrogate pair, two 3-byte sequences, length 2.
    data = bytes((2,)) + "\ud83d".encode("utf-8", "surrogatepass") + \
        "\ude00".encode("utf-8", "surrogatepass")
    assert Reader(data).read() == "\U0001F600"
    assert Reader(bytes((2,)) + "\U0001F600".encode()).read() == "\U0001F600"


def test_deep_nesting_is_refused():
    data = b"W" * 100 + b"Z" * 100
    with pytest.raises(HessianError, match="deeper"):
        Reader(data).read()


@pytest.mark.parametrize("data", [b"", b"S\x00", b"S\x00\x05ab", b"I\x00", b"Q\x90", b"O\x90",
                                  b"\x70\x90", b"X\xbf", b"\x40", b"C\x01aZ", b"H\x91",
                                  b"\x02\xff\xfe", b"R\x00\x01a\x90"])
def test_malformed_input_raises_hessian_error(data):
    with pytest.raises(HessianError):
        Reader(data).read()


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_raises_only_hessian_error(data):
    reader = Reader(data)
    try:
        while not reader.at_end:
            reader.read()
    except HessianError:
        pass


@settings(max_examples=500, deadline=None)
@given(_values, st.randoms(use_true_random=False), st.data())
def test_mutated_values_raise_only_hessian_error(value, rng, data):
    raw = bytearray(encode(value, rng=rng))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    reader = Reader(bytes(raw))
    try:
        reader.read()
    except HessianError:
        pass
