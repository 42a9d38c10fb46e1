"""The proxy-wasm map encoding read as proxy-wasm-cpp-host's PairsUtil::toPairs reads it
(Envoy 1.40): a map with bytes after its last pair, or a key or value not ended by its NUL,
is refused whole, not read up to the damage."""

from __future__ import annotations

import pytest

from baton.worker.wasm.maps import parse_pairs, serialize_pairs

PAIRS = [(b"x-a", b"1"), (b":path", b"/x")]


def test_a_well_formed_map_reads_back():
    assert parse_pairs(serialize_pairs(PAIRS)) == PAIRS


@pytest.mark.parametrize("damage", [
    lambda data: data + b"\0",                      # one byte after the last pair
    lambda data: data + b"x-extra\0",               # a pair's bytes not counted
    lambda data: data[:-1] + b"!",                  # the last value's NUL replaced
    lambda data: data.replace(b"x-a\0", b"x-a!"),   # a key's NUL replaced
])
def test_a_damaged_map_is_refused_whole(damage):
    with pytest.raises(ValueError):
        parse_pairs(damage(serialize_pairs(PAIRS)))
